//! Who may change anything: the console is read-only unless it was given an admin token, and
//! every mutating request is a POST that carries that token (a form field or a header) and
//! passes a CSRF check (the console's per-process CSRF token, echoed back in the form, and
//! the browser's `Origin` / `Sec-Fetch-Site` headers saying the request came from the
//! console's own pages). Tokens are compared in constant time.

use std::fmt::Write as _;

use axum::http::HeaderMap;
use axum::http::header::{HOST, ORIGIN};

use crate::ConsoleError;

/// The header an API client may carry the admin token in, instead of the form field.
pub const TOKEN_HEADER: &str = "x-admin-token";

/// The console's secrets: the admin token, if mutations are allowed at all, and the CSRF
/// token of this process.
#[derive(Clone)]
pub(crate) struct Security {
    admin_token: Option<String>,
    csrf: String,
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Security")
            .field("admin_token", &self.admin_token.as_ref().map(|_| "…"))
            .finish_non_exhaustive()
    }
}

impl Security {
    /// Read-only, with a fresh CSRF token.
    pub(crate) fn new() -> Result<Self, ConsoleError> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes)
            .map_err(|e| ConsoleError::Config(format!("no randomness for a CSRF token: {e}")))?;
        let mut csrf = String::with_capacity(64);
        for b in bytes {
            let _ = write!(csrf, "{b:02x}");
        }
        Ok(Self {
            admin_token: None,
            csrf,
        })
    }

    /// Allows mutations by whoever presents `token`.
    pub(crate) fn with_admin_token(mut self, token: String) -> Result<Self, ConsoleError> {
        if token.len() < 8 {
            return Err(ConsoleError::Config(
                "the admin token must be at least 8 characters long".to_owned(),
            ));
        }
        self.admin_token = Some(token);
        Ok(self)
    }

    /// Whether mutations are allowed at all (an admin token was given).
    pub(crate) fn writable(&self) -> bool {
        self.admin_token.is_some()
    }

    /// The CSRF token the console's forms carry.
    pub(crate) fn csrf(&self) -> &str {
        &self.csrf
    }

    /// Checks a mutating request: the console is writable, the request came from the
    /// console's own pages (CSRF token, `Origin`, `Sec-Fetch-Site`) and carries the admin
    /// token, in the form (`form_token`) or in the [`TOKEN_HEADER`] header.
    pub(crate) fn check(
        &self,
        headers: &HeaderMap,
        form_token: Option<&str>,
        form_csrf: Option<&str>,
    ) -> Result<(), ConsoleError> {
        let Some(expected) = &self.admin_token else {
            return Err(ConsoleError::Forbidden(
                "the console is read-only: start it with an admin token to allow changes"
                    .to_owned(),
            ));
        };
        self.check_origin(headers)?;
        let header_token = headers.get(TOKEN_HEADER).and_then(|v| v.to_str().ok());
        // A request carrying the token in a header is not a browser form: cross-site pages
        // cannot set custom headers. A form must echo the CSRF token.
        if header_token.is_none() && !form_csrf.is_some_and(|c| constant_time_eq(c, &self.csrf)) {
            return Err(ConsoleError::Forbidden(
                "the form's CSRF token is missing or stale: reload the page and try again"
                    .to_owned(),
            ));
        }
        match header_token.or(form_token) {
            Some(given) if constant_time_eq(given, expected) => Ok(()),
            Some(_) => Err(ConsoleError::Forbidden("wrong admin token".to_owned())),
            None => Err(ConsoleError::Forbidden(
                "an admin token is needed for this".to_owned(),
            )),
        }
    }

    /// A browser tells where a request came from: refuse another site's.
    fn check_origin(&self, headers: &HeaderMap) -> Result<(), ConsoleError> {
        if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok())
            && site != "same-origin"
            && site != "none"
        {
            return Err(ConsoleError::Forbidden(format!(
                "cross-site request refused (Sec-Fetch-Site: {site})"
            )));
        }
        if let Some(origin) = headers.get(ORIGIN) {
            let origin = origin.to_str().unwrap_or("");
            let host = headers
                .get(HOST)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let same = origin
                .split_once("://")
                .is_some_and(|(_, authority)| !host.is_empty() && authority == host);
            if !same {
                return Err(ConsoleError::Forbidden(format!(
                    "cross-origin request refused (Origin {origin:?}, console at {host:?})"
                )));
            }
        }
        Ok(())
    }
}

/// Compares two secrets in time that depends on their lengths only, not on where they differ.
pub(crate) fn constant_time_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn writable() -> Security {
        Security::new()
            .and_then(|s| s.with_admin_token("secret-token".to_owned()))
            .expect("security")
    }

    #[test]
    fn compares_secrets_whole() {
        assert!(constant_time_eq("abc", "abc"));
        assert!(!constant_time_eq("abc", "abd"));
        assert!(!constant_time_eq("abc", "abcd"));
    }

    #[test]
    fn read_only_refuses_everything() {
        let security = Security::new().expect("security");
        let csrf = security.csrf().to_owned();
        assert!(
            security
                .check(&HeaderMap::new(), Some("x"), Some(&csrf))
                .is_err()
        );
    }

    #[test]
    fn a_form_needs_the_token_and_the_csrf_token() {
        let security = writable();
        let csrf = security.csrf().to_owned();
        let mut headers = HeaderMap::new();
        headers.insert(HOST, HeaderValue::from_static("127.0.0.1:8080"));
        headers.insert(ORIGIN, HeaderValue::from_static("http://127.0.0.1:8080"));
        assert!(
            security
                .check(&headers, Some("secret-token"), Some(&csrf))
                .is_ok()
        );
        assert!(
            security
                .check(&headers, Some("secret-token"), None)
                .is_err()
        );
        assert!(
            security
                .check(&headers, Some("wrong"), Some(&csrf))
                .is_err()
        );
        assert!(security.check(&headers, None, Some(&csrf)).is_err());
        headers.insert(ORIGIN, HeaderValue::from_static("http://evil.example"));
        assert!(
            security
                .check(&headers, Some("secret-token"), Some(&csrf))
                .is_err()
        );
        headers.remove(ORIGIN);
        headers.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(
            security
                .check(&headers, Some("secret-token"), Some(&csrf))
                .is_err()
        );
    }
}
