//! The `Server-Timing` header: how long the server spent on a response, for the browser's
//! developer tools, and for the test that holds every page under its time budget.

use std::time::Instant;

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;

/// The header's metric name: `Server-Timing: app;dur=12.3` (milliseconds).
pub const METRIC: &str = "app";

/// Times the rest of the stack and sets `Server-Timing` on its response.
pub(crate) async fn server_timing(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let mut response = next.run(request).await;
    let millis = started.elapsed().as_secs_f64() * 1000.0;
    if let Ok(value) = HeaderValue::from_str(&format!("{METRIC};dur={millis:.1}")) {
        response.headers_mut().insert("server-timing", value);
    }
    response
}
