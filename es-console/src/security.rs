//! Who may change anything: the console is read-only unless it was given an admin token, and
//! every mutating request is a POST that carries that token (a form field or a header) and
//! passes a CSRF check (the console's CSRF token, echoed back in the form, and
//! the browser's `Origin` / `Sec-Fetch-Site` headers saying the request came from the
//! console's own pages). Tokens are compared in constant time.
//!
//! Every request also passes [`guard`]: its `Host` must be one the console answers for (a
//! defence against DNS rebinding, where a page on `rebind.example` that resolves to
//! `127.0.0.1` would otherwise read every JSON endpoint from the operator's browser), and every
//! response carries headers that keep it out of frames, stop content sniffing, send no
//! referrer to other sites and allow nothing but the console's own inline CSS.

use std::fmt::Write as _;

use axum::extract::{Request, State};
use axum::http::header::{HOST, ORIGIN};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::{ConsoleError, Shared};

/// Hosts the console always answers for, whatever the port.
pub(crate) const LOOPBACK_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "[::1]"];

/// The headers every response carries. The console has no JavaScript, no images and no
/// frames, and its CSS is one inline `<style>`.
const RESPONSE_HEADERS: [(&str, &str); 4] = [
    ("x-frame-options", "DENY"),
    (
        "content-security-policy",
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; \
         frame-ancestors 'none'; base-uri 'none'",
    ),
    ("x-content-type-options", "nosniff"),
    // Not `no-referrer`: under it a browser sends `Origin: null` with the console's own form
    // POSTs, which the origin check must then refuse. `same-origin` sends no referrer to any
    // other site all the same (the console links to none), and the real `Origin` to itself.
    ("referrer-policy", "same-origin"),
];

/// The host part of a `Host` header or of an allowed host as configured, for comparison:
/// lowercase, without a port or a trailing dot; an IPv6 address in brackets.
pub(crate) fn host_name(authority: &str) -> String {
    let authority = authority.trim().to_ascii_lowercase();
    if authority.parse::<std::net::Ipv6Addr>().is_ok() {
        return format!("[{authority}]");
    }
    let host = if authority.starts_with('[') {
        match authority.find(']') {
            Some(end) => &authority[..=end],
            None => authority.as_str(),
        }
    } else {
        authority
            .split_once(':')
            .map_or(authority.as_str(), |(host, _)| host)
    };
    host.trim_end_matches('.').to_owned()
}

/// Paths an orchestrator or a scraper calls by the pod's address (a Kubernetes probe sends
/// `Host: 10.1.2.3:8080`): answered for any host. They show runner names and numbers, never
/// events.
fn any_host(path: &str) -> bool {
    path.starts_with("/health/") || path == "/metrics"
}

/// Refuses a request for a host the console does not answer for (`421 Misdirected Request`),
/// and sets [`RESPONSE_HEADERS`] on every response.
pub(crate) async fn guard(State(state): State<Shared>, request: Request, next: Next) -> Response {
    let mut response = match request.headers().get(HOST) {
        Some(host) if !any_host(request.uri().path()) => {
            let host = host.to_str().map(host_name);
            match host {
                Ok(name) if state.security.allows_host(&name) => next.run(request).await,
                Ok(name) => misdirected(&state.security, &name),
                Err(_) => misdirected(&state.security, "(not text)"),
            }
        }
        _ => next.run(request).await,
    };
    if let Some(page) = response
        .extensions_mut()
        .remove::<crate::error::ErrorPage>()
        && !state.prefix.is_empty()
    {
        response = (
            response.status(),
            axum::response::Html(page.render(&state.prefix)),
        )
            .into_response();
    }
    let headers = response.headers_mut();
    for (name, value) in RESPONSE_HEADERS {
        headers.insert(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    response
}

fn misdirected(security: &Security, host: &str) -> Response {
    let mut allowed: Vec<&str> = LOOPBACK_HOSTS.to_vec();
    allowed.extend(security.hosts.iter().map(String::as_str));
    (
        StatusCode::MISDIRECTED_REQUEST,
        [("content-type", "text/plain; charset=utf-8")],
        format!(
            "421 Misdirected Request: this console does not answer for the host {host:?} \
             (it answers for {}, any port). A request naming another host may be a page \
             rebinding its own name to this address. To reach the console by this name, allow \
             it: Console::allowed_hosts([{host:?}]) (bank-admin serve --allow-host {host}).\n",
            allowed.join(", ")
        ),
    )
        .into_response()
}

/// The header an API client may carry the admin token in, instead of the form field.
pub const TOKEN_HEADER: &str = "x-admin-token";

/// What the CSRF token is derived from the admin token with: a fixed label, keyed by it.
const CSRF_LABEL: &[u8] = b"es-console CSRF token v1";

/// The console's secrets: the admin token, if mutations are allowed at all, and the CSRF
/// token derived from it (HMAC-SHA-256 of a fixed label keyed by the admin token), so every
/// replica given the same admin token accepts the forms of every other one.
#[derive(Clone)]
pub(crate) struct Security {
    admin_token: Option<String>,
    csrf: String,
    /// Hosts allowed besides [`LOOPBACK_HOSTS`], as [`host_name`] gives them.
    hosts: Vec<String>,
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Security")
            .field("admin_token", &self.admin_token.as_ref().map(|_| "…"))
            .field("hosts", &self.hosts)
            .finish_non_exhaustive()
    }
}

impl Security {
    /// Read-only: no admin token, hence no CSRF token (there are no forms).
    pub(crate) fn new() -> Self {
        Self {
            admin_token: None,
            csrf: String::new(),
            hosts: Vec::new(),
        }
    }

    /// Also answers for `hosts` (names or addresses; a port, if given, is ignored).
    pub(crate) fn with_hosts<I, S>(mut self, hosts: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        for host in hosts {
            let name = host_name(host.as_ref());
            if !name.is_empty() && !self.hosts.contains(&name) {
                self.hosts.push(name);
            }
        }
        self
    }

    /// Whether the console answers for `name` (as [`host_name`] gives it).
    pub(crate) fn allows_host(&self, name: &str) -> bool {
        LOOPBACK_HOSTS.contains(&name) || self.hosts.iter().any(|h| h == name)
    }

    /// Allows mutations by whoever presents `token`.
    pub(crate) fn with_admin_token(mut self, token: String) -> Result<Self, ConsoleError> {
        if token.len() < 8 {
            return Err(ConsoleError::Config(
                "the admin token must be at least 8 characters long".to_owned(),
            ));
        }
        self.csrf = csrf_token(&token);
        self.admin_token = Some(token);
        Ok(self)
    }

    /// Whether mutations are allowed at all (an admin token was given).
    pub(crate) fn writable(&self) -> bool {
        self.admin_token.is_some()
    }

    /// The CSRF token the console's forms carry (empty when read-only).
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

/// The CSRF token of a console with the admin token `admin_token`: hex HMAC-SHA-256 of
/// [`CSRF_LABEL`] keyed by it. The same on every replica given the same admin token; telling
/// nothing about the admin token to whoever reads it in a page.
fn csrf_token(admin_token: &str) -> String {
    use hmac::{KeyInit, Mac};
    let mut csrf = String::with_capacity(64);
    // HMAC takes a key of any length: this never fails.
    if let Ok(mut mac) = hmac::Hmac::<sha2::Sha256>::new_from_slice(admin_token.as_bytes()) {
        mac.update(CSRF_LABEL);
        for b in mac.finalize().into_bytes() {
            let _ = write!(csrf, "{b:02x}");
        }
    }
    csrf
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
            .with_admin_token("secret-token".to_owned())
            .expect("security")
    }

    #[test]
    fn replicas_with_the_same_admin_token_agree_on_the_csrf_token() {
        let (a, b) = (writable(), writable());
        assert_eq!(a.csrf(), b.csrf());
        assert_eq!(a.csrf().len(), 64);
        assert!(!a.csrf().contains("secret"));
        let other = Security::new()
            .with_admin_token("another-token".to_owned())
            .expect("security");
        assert_ne!(a.csrf(), other.csrf());
        // RFC 4231 test case 2, the HMAC-SHA-256 this derivation is.
        use hmac::{KeyInit, Mac};
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"Jefe").expect("key");
        mac.update(b"what do ya want for nothing?");
        let hex: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // A form from replica A is accepted by replica B.
        let mut headers = HeaderMap::new();
        headers.insert(HOST, HeaderValue::from_static("console.internal"));
        headers.insert(ORIGIN, HeaderValue::from_static("http://console.internal"));
        assert!(
            b.check(&headers, Some("secret-token"), Some(a.csrf()))
                .is_ok()
        );
        assert!(
            other
                .check(&headers, Some("another-token"), Some(a.csrf()))
                .is_err()
        );
    }

    #[test]
    fn hosts_are_compared_without_port_case_or_trailing_dot() {
        assert_eq!(host_name("LocalHost:8080"), "localhost");
        assert_eq!(host_name("localhost."), "localhost");
        assert_eq!(host_name("127.0.0.1"), "127.0.0.1");
        assert_eq!(host_name("[::1]:8080"), "[::1]");
        assert_eq!(host_name("::1"), "[::1]");
        assert_eq!(host_name("[::1]"), "[::1]");
        let security = Security::new().with_hosts(["Console.Internal:443", "10.0.0.5", "fe80::1"]);
        for allowed in [
            "localhost",
            "127.0.0.1",
            "[::1]",
            "console.internal",
            "10.0.0.5",
        ] {
            assert!(security.allows_host(allowed), "{allowed}");
        }
        assert!(security.allows_host(&host_name("[FE80::1]:80")));
        for refused in [
            "rebind.evil",
            "localhost.evil",
            "127.0.0.1.nip.io",
            "0.0.0.0",
            "",
        ] {
            assert!(!security.allows_host(&host_name(refused)), "{refused}");
        }
    }

    #[test]
    fn compares_secrets_whole() {
        assert!(constant_time_eq("abc", "abc"));
        assert!(!constant_time_eq("abc", "abd"));
        assert!(!constant_time_eq("abc", "abcd"));
    }

    #[test]
    fn read_only_refuses_everything() {
        let security = Security::new();
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
