//! Recording the store's, runners' and sagas' metrics (names in [`es_core::telemetry`]).
//! Counters and histograms are recorded where the work happens; gauges that need a query
//! (lag, horizon, outbox) are set by the `observe` methods, which a scrape or a timer calls.
//! Every series carries the store's `schema`: one process may serve several stores.

use std::time::Duration;

use es_core::telemetry as names;
use es_core::{AppendResult, StoreError};
use metrics::Label;

use crate::projection::RunnerState;

pub(crate) fn append_done(
    schema: &str,
    result: &Result<AppendResult, StoreError>,
    events: usize,
    took: Duration,
) {
    let outcome = match result {
        // A check-only append (no events) wrote nothing.
        Ok(_) if events == 0 => return,
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

/// The labels of one projection's series.
pub(crate) fn projection(schema: &str, key: &str) -> Vec<Label> {
    vec![
        Label::new("schema", schema.to_owned()),
        Label::new("projection", key.to_owned()),
    ]
}

/// The labels of one saga's series.
pub(crate) fn saga(schema: &str, name: &str) -> Vec<Label> {
    vec![
        Label::new("schema", schema.to_owned()),
        Label::new("saga", name.to_owned()),
    ]
}

pub(crate) fn batch_done(labels: Vec<Label>, events: usize, took: Duration) {
    metrics::counter!(names::PROJECTION_EVENTS, labels.clone()).increment(events as u64);
    metrics::counter!(names::PROJECTION_BATCHES, labels.clone()).increment(1);
    metrics::histogram!(names::PROJECTION_BATCH_DURATION, labels).record(took.as_secs_f64());
}

/// The `state` label of a projection as one process sees it: what this instance does when it
/// contends for or reconnects the projection; otherwise `running` (or `rebuilding`) while some
/// instance holds its lock, and `idle` when none does, whatever an interrupted rebuild left.
pub(crate) fn state_label(state: &RunnerState, rebuilding: bool, held: bool) -> &'static str {
    match state {
        RunnerState::Reconnecting { .. } => "reconnecting",
        RunnerState::Waiting => "waiting",
        _ if held && rebuilding => "rebuilding",
        _ if held => "running",
        _ => "idle",
    }
}

pub(crate) fn set_state(labels: &[Label], state: &str) {
    for label in names::PROJECTION_STATES {
        let value = if label == state { 1.0 } else { 0.0 };
        let mut labels = labels.to_vec();
        labels.push(Label::new("state", label));
        metrics::gauge!(names::PROJECTION_STATE, labels).set(value);
    }
}

pub(crate) fn gauge(name: &'static str, labels: &[Label], reading: f64) {
    metrics::gauge!(name, labels.to_vec()).set(reading);
}

pub(crate) fn saga_command(labels: Vec<Label>, outcome: &'static str, took: Option<Duration>) {
    let mut with_outcome = labels.clone();
    with_outcome.push(Label::new("outcome", outcome));
    metrics::counter!(names::SAGA_COMMANDS, with_outcome).increment(1);
    // A command dead-lettered without running took no time worth a sample.
    if let Some(took) = took {
        metrics::histogram!(names::SAGA_COMMAND_DURATION, labels).record(took.as_secs_f64());
    }
}

pub(crate) fn seconds(duration: Option<Duration>) -> f64 {
    duration.map_or(0.0, |d| d.as_secs_f64())
}
