//! Recording the store's, runners' and sagas' metrics (names in [`es_core::telemetry`]).
//! Counters and histograms are recorded where the work happens; gauges that need a query
//! (lag, horizon, outbox) are set by the `observe` methods, which a scrape or a timer calls.

use std::time::Duration;

use es_core::telemetry as names;
use es_core::{AppendResult, StoreError};

use crate::projection::RunnerState;

pub(crate) fn append_done(
    schema: &str,
    result: &Result<AppendResult, StoreError>,
    events: usize,
    took: Duration,
) {
    let outcome = match result {
        Ok(append) if append.deduplicated => "repeat",
        Ok(_) => "written",
        Err(StoreError::Conflict(_)) => "conflict",
        Err(StoreError::Backend { .. }) => "failed",
        Err(_) => "refused",
    };
    let schema = schema.to_owned();
    metrics::counter!(names::APPENDS, "schema" => schema.clone(), "outcome" => outcome)
        .increment(1);
    if outcome == "written" {
        metrics::counter!(names::APPENDED_EVENTS, "schema" => schema.clone())
            .increment(events as u64);
    }
    metrics::histogram!(names::APPEND_DURATION, "schema" => schema).record(took.as_secs_f64());
}

pub(crate) fn batch_done(projection: &str, events: usize, took: Duration) {
    let projection = projection.to_owned();
    metrics::counter!(names::PROJECTION_EVENTS, "projection" => projection.clone())
        .increment(events as u64);
    metrics::counter!(names::PROJECTION_BATCHES, "projection" => projection.clone()).increment(1);
    metrics::histogram!(names::PROJECTION_BATCH_DURATION, "projection" => projection)
        .record(took.as_secs_f64());
}

/// The `state` label of a runner: what this instance does, or, for an instance that does not
/// run it, whether another holds it (`running`) or nobody does (`idle`).
pub(crate) fn state_label(state: &RunnerState, rebuilding: bool, held: bool) -> &'static str {
    match state {
        RunnerState::Reconnecting { .. } => "reconnecting",
        RunnerState::Waiting => "waiting",
        _ if rebuilding => "rebuilding",
        RunnerState::Active => "running",
        _ if held => "running",
        _ => "idle",
    }
}

pub(crate) fn set_state(projection: &str, state: &str) {
    for label in names::PROJECTION_STATES {
        let value = if label == state { 1.0 } else { 0.0 };
        metrics::gauge!(names::PROJECTION_STATE, "projection" => projection.to_owned(), "state" => label)
            .set(value);
    }
}

pub(crate) fn gauge(name: &'static str, label: &'static str, value: &str, reading: f64) {
    metrics::gauge!(name, label => value.to_owned()).set(reading);
}

pub(crate) fn saga_command(saga: &str, outcome: &'static str, took: Duration) {
    let saga = saga.to_owned();
    metrics::counter!(names::SAGA_COMMANDS, "saga" => saga.clone(), "outcome" => outcome)
        .increment(1);
    metrics::histogram!(names::SAGA_COMMAND_DURATION, "saga" => saga).record(took.as_secs_f64());
}

pub(crate) fn seconds(duration: Option<Duration>) -> f64 {
    duration.map_or(0.0, |d| d.as_secs_f64())
}
