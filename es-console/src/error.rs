//! What a console request fails with, shown as an error page (or JSON for `/api`).

use axum::Json;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};

/// Why a console request, or starting the console, failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConsoleError {
    /// An admin operation (status, parked events, replay...).
    #[error(transparent)]
    Admin(#[from] es_admin::AdminError),
    /// Reading the store.
    #[error(transparent)]
    Store(#[from] es_core::StoreError),
    /// A query of the console's own.
    #[error("reading the store: {0}")]
    Query(#[from] sqlx::Error),
    /// A row the console read holds something it cannot show (a hand-edited or corrupt row).
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// What was read (which event, which row).
        what: String,
        /// What was wrong with it.
        reason: String,
    },
    /// Nothing there.
    #[error("{0}")]
    NotFound(String),
    /// A request the console cannot make sense of (a bad parameter).
    #[error("{0}")]
    BadRequest(String),
    /// A mutation refused: read-only console, missing or wrong token, failed CSRF check.
    #[error("{0}")]
    Forbidden(String),
    /// The console was set up wrongly.
    #[error("{0}")]
    Config(String),
    /// Serving failed (binding the address, the connection loop).
    #[error("serving the console: {0}")]
    Serve(#[from] std::io::Error),
}

impl ConsoleError {
    /// The HTTP status the error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            ConsoleError::NotFound(_) => StatusCode::NOT_FOUND,
            ConsoleError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ConsoleError::Forbidden(_) => StatusCode::FORBIDDEN,
            ConsoleError::Admin(es_admin::AdminError::Unknown { .. }) => StatusCode::NOT_FOUND,
            ConsoleError::Admin(es_admin::AdminError::Busy(_)) => StatusCode::CONFLICT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The error and its causes, one sentence each.
    pub fn report(&self) -> String {
        let mut out = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(cause) = source {
            let text = cause.to_string();
            if !out.contains(&text) {
                out.push_str(": ");
                out.push_str(&text);
            }
            source = cause.source();
        }
        out
    }

    pub(crate) fn malformed(what: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        ConsoleError::Malformed {
            what: what.into(),
            reason: reason.to_string(),
        }
    }
}

/// An error page, kept in the response's extensions so that [`crate::security::guard`], which
/// knows where the console is mounted, can render it again with links inside the mount point.
#[derive(Clone, Debug)]
pub(crate) struct ErrorPage {
    title: &'static str,
    report: String,
}

impl ErrorPage {
    /// The page, its links under `prefix`.
    pub(crate) fn render(&self, prefix: &str) -> String {
        let mut body = crate::html::Html::default();
        body.raw("<p class=\"bad\">").text(&self.report).raw("</p>");
        crate::html::page(prefix, self.title, false, body)
    }
}

/// An error shown as a page.
impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        let title = match self.status() {
            StatusCode::NOT_FOUND => "Not found",
            StatusCode::FORBIDDEN => "Refused",
            StatusCode::BAD_REQUEST => "Bad request",
            _ => "Error",
        };
        let page = ErrorPage {
            title,
            report: self.report(),
        };
        let mut response = (self.status(), Html(page.render(""))).into_response();
        response.extensions_mut().insert(page);
        response
    }
}

/// An error of a JSON endpoint: `{"error": "..."}`.
#[derive(Debug)]
pub(crate) struct ApiError(pub(crate) ConsoleError);

impl<E: Into<ConsoleError>> From<E> for ApiError {
    fn from(error: E) -> Self {
        ApiError(error.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.0.status(),
            Json(serde_json::json!({ "error": self.0.report() })),
        )
            .into_response()
    }
}
