//! Health endpoints: `/health/live` says the process answers; `/health/ready` says whether
//! every registered projection and saga runner is active (some instance, in this process or
//! another, holds its lock) and within the lag bound, naming those that are not. A projection
//! being rebuilt in place counts as ready while it runs, however far behind: it is meant to
//! be, and the rebuild is the fleet's, not this replica's. Readiness is the fleet's state (any
//! instance may hold a runner's lock): use it for alerting, not to take one replica out of a
//! load balancer.
//! `/metrics` serves Prometheus text when the console was given a handle.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::Shared;

/// How far behind a runner may be while the service still counts as ready.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadyBound {
    /// The most events a runner may have left to apply (default 10,000).
    pub max_lag_events: u64,
    /// The most time the oldest event it has left may have waited (default 60 s).
    pub max_lag: Duration,
}

impl Default for ReadyBound {
    fn default() -> Self {
        Self {
            max_lag_events: 10_000,
            max_lag: Duration::from_secs(60),
        }
    }
}

/// `200 live`: the process answers.
pub(crate) async fn live() -> &'static str {
    "live\n"
}

/// One runner's readiness.
#[derive(Debug, Serialize)]
struct RunnerHealth {
    kind: &'static str,
    name: String,
    active: bool,
    lag_events: u64,
    lag_seconds: f64,
    /// A projection being rebuilt in place: ready while running, whatever its lag.
    rebuilding: bool,
    ready: bool,
}

#[derive(Debug, Serialize)]
struct Readiness {
    ready: bool,
    /// Why not, naming the runner; absent when ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    runners: Vec<RunnerHealth>,
}

/// `200` with every runner's state when all are active and within the bound; `503` with the
/// reason (naming the failing runner) otherwise.
pub(crate) async fn ready(State(state): State<Shared>) -> Response {
    match readiness(&state).await {
        Ok(readiness) => {
            let code = if readiness.ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            (code, Json(readiness)).into_response()
        }
        Err(error) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Readiness {
                ready: false,
                reason: Some(format!(
                    "cannot read the runners' state: {}",
                    error.report()
                )),
                runners: Vec::new(),
            }),
        )
            .into_response(),
    }
}

async fn readiness(state: &crate::State) -> Result<Readiness, crate::ConsoleError> {
    let bound = state.ready;
    let mut runners = Vec::new();
    let mut reasons = Vec::new();
    let mut judge = |kind: &'static str,
                     name: &str,
                     active: bool,
                     rebuilding: bool,
                     lag_events: u64,
                     lag: Option<Duration>| {
        let lag = lag.unwrap_or_default();
        let ready = if !active {
            reasons.push(format!(
                "{kind} {name} is not running: no instance holds its lock"
            ));
            false
        } else if rebuilding {
            true
        } else if lag_events > bound.max_lag_events || lag > bound.max_lag {
            reasons.push(format!(
                "{kind} {name} lags {lag_events} events, {:.1} s (bound: {} events, {:.1} s)",
                lag.as_secs_f64(),
                bound.max_lag_events,
                bound.max_lag.as_secs_f64()
            ));
            false
        } else {
            true
        };
        runners.push(RunnerHealth {
            kind,
            name: name.to_owned(),
            active,
            lag_events,
            lag_seconds: lag.as_secs_f64(),
            rebuilding,
            ready,
        });
    };
    for view in state.admin.projection_views().await? {
        judge(
            "projection",
            &view.status.name,
            view.holder.is_some(),
            view.status.rebuilding,
            view.status.lag_events,
            view.status.lag,
        );
    }
    for view in state.admin.saga_views().await? {
        judge(
            "saga",
            &view.feed.name,
            view.holder.is_some(),
            false,
            view.feed.lag_events,
            view.feed.lag,
        );
    }
    Ok(Readiness {
        ready: reasons.is_empty(),
        reason: (!reasons.is_empty()).then(|| reasons.join("; ")),
        runners,
    })
}

/// Prometheus text: the registry's gauges set by `Admin::observe`, then everything the
/// recorder holds. 404 when the console has no handle.
#[cfg(feature = "prometheus")]
pub(crate) async fn metrics(State(state): State<Shared>) -> Response {
    let Some(handle) = &state.metrics else {
        return crate::ConsoleError::NotFound(
            "metrics are not served: the console was given no Prometheus handle".to_owned(),
        )
        .into_response();
    };
    // A target whose gauges cannot be set keeps its last values and is counted in
    // es_observe_errors_total: the scrape still carries everything else.
    state.admin.observe().await;
    (
        [("content-type", "text/plain; version=0.0.4")],
        handle.render(),
    )
        .into_response()
}

/// Without the `prometheus` feature there is nothing to serve.
#[cfg(not(feature = "prometheus"))]
pub(crate) async fn metrics(State(_): State<Shared>) -> Response {
    crate::ConsoleError::NotFound(
        "metrics are not served: es-console was built without its `prometheus` feature".to_owned(),
    )
    .into_response()
}
