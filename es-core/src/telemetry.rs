//! The framework's metrics: every name it records through the [`metrics`] facade, in one
//! place, so operators and dashboards have one list (docs/operations.md shows it with alert
//! rules).
//!
//! Nothing is exported unless the service installs a recorder (for example
//! `es_admin::prometheus_recorder`); without one, recording builds the series' labels (a few
//! small allocations) and drops them.
//! Names follow Prometheus conventions: base units (seconds), `_total` on counters, and
//! labels of bounded cardinality (a projection, saga, relay, aggregate category or store
//! schema; never a stream or event id).

use std::time::Duration;

/// Counter: gauges that could not be set at a scrape, by `target` (`store`, or a projection's
/// or saga's name): the query behind them failed, and they keep their last value. Alert on it
/// growing, as on the scrape itself failing.
pub const OBSERVE_ERRORS: &str = "es_observe_errors_total";

/// Counter: commands handled, by `aggregate` (category) and `outcome` (`executed`,
/// `deduplicated`, `refused` by the domain, `conflict` with an expected version, `failed`).
pub const COMMANDS: &str = "es_commands_total";
/// Histogram: how long a command took from first load to stored events, by `aggregate` and
/// `outcome`.
pub const COMMAND_DURATION: &str = "es_command_duration_seconds";
/// Counter: commands decided again, by `aggregate` and `reason` (`conflict`: another writer
/// moved the stream; `resend`: an append's outcome was unknown and the same events were sent
/// again).
pub const COMMAND_RETRIES: &str = "es_command_retries_total";

/// Counter: appends to a PostgreSQL store, by `schema` and `outcome` (`written`, `repeat` of
/// an earlier append with the same event ids, `conflict`, `refused` for any other typed
/// refusal, `failed`).
pub const APPENDS: &str = "es_appends_total";
/// Counter: events written by appends, by `schema`.
pub const APPENDED_EVENTS: &str = "es_appended_events_total";
/// Histogram: how long an append took, by `schema`.
pub const APPEND_DURATION: &str = "es_append_duration_seconds";

/// Gauge: the position (sequence) of the last event readers of the global log can see, by
/// `schema`.
pub const LOG_HEAD: &str = "es_log_head_position";
/// Gauge: committed events readers of the global log do not see yet because an older
/// transaction is still open, by `schema`.
pub const HORIZON_HELD_BACK_EVENTS: &str = "es_horizon_held_back_events";
/// Gauge: how long the oldest of those has waited, in seconds (0 when none), by `schema`.
pub const HORIZON_HELD_BACK_SECONDS: &str = "es_horizon_held_back_seconds";
/// Gauge: age of the oldest open transaction holding the horizon, in seconds, by `schema`.
pub const HORIZON_OLDEST_TRANSACTION_SECONDS: &str = "es_horizon_oldest_transaction_seconds";

/// Counter: events a projection (or a part: `name#i/n`) took into account, by `projection`.
pub const PROJECTION_EVENTS: &str = "es_projection_events_total";
/// Counter: batches a projection committed, by `projection`.
pub const PROJECTION_BATCHES: &str = "es_projection_batches_total";
/// Histogram: how long a batch took from read to commit, by `projection`.
pub const PROJECTION_BATCH_DURATION: &str = "es_projection_batch_duration_seconds";
/// Gauge: readable events a projection has not taken into account, by `projection`.
pub const PROJECTION_LAG_EVENTS: &str = "es_projection_lag_events";
/// Gauge: age of the oldest of those, in seconds (0 when caught up), by `projection`.
pub const PROJECTION_LAG_SECONDS: &str = "es_projection_lag_seconds";
/// Gauge: events a projection parked, by `projection`.
pub const PROJECTION_PARKED: &str = "es_projection_parked_events";
/// Gauge: the sequence of the last event a projection took into account, by `projection`.
pub const PROJECTION_CHECKPOINT: &str = "es_projection_checkpoint_position";
/// Gauge: 1 for the state a projection is in and 0 for the others, by `projection` and
/// `state` (`idle`, `waiting`, `running`, `rebuilding`, `reconnecting`).
pub const PROJECTION_STATE: &str = "es_projection_state";
/// The values of [`PROJECTION_STATE`]'s `state` label.
pub const PROJECTION_STATES: [&str; 5] =
    ["idle", "waiting", "running", "rebuilding", "reconnecting"];

/// Gauge: saga commands waiting in the outbox (not dead-lettered), by `saga`.
pub const SAGA_OUTBOX_PENDING: &str = "es_saga_outbox_pending";
/// Gauge: saga commands dead-lettered, by `saga`.
pub const SAGA_OUTBOX_DEAD: &str = "es_saga_outbox_dead_lettered";
/// Gauge: age of the oldest pending saga command, in seconds (0 when none), by `saga`.
pub const SAGA_OUTBOX_OLDEST_SECONDS: &str = "es_saga_outbox_oldest_seconds";
/// Gauge: saga deadlines not fired yet, by `saga`.
pub const SAGA_DEADLINES_WAITING: &str = "es_saga_deadlines_waiting";
/// Gauge: saga deadlines due now and not fired, by `saga`.
pub const SAGA_DEADLINES_DUE: &str = "es_saga_deadlines_due";
/// Gauge: saga deadlines whose firing failed and is retried, by `saga`.
pub const SAGA_DEADLINES_FAILING: &str = "es_saga_deadlines_failing";
/// Counter: saga commands the dispatcher ran, by `saga` and `outcome` (`dispatched`,
/// `failed` and to be retried, `dead_lettered`).
pub const SAGA_COMMANDS: &str = "es_saga_commands_total";
/// Histogram: how long dispatching one saga command took, by `saga`.
pub const SAGA_COMMAND_DURATION: &str = "es_saga_command_duration_seconds";

/// Counter: messages a relay published and saw confirmed, by `relay`.
pub const RELAY_MESSAGES: &str = "es_relay_messages_total";
/// Histogram: how long publishing one batch took until the broker confirmed it, by `relay`.
pub const RELAY_PUBLISH_DURATION: &str = "es_relay_publish_duration_seconds";
/// Histogram: from an event's recording to the broker's confirmation of its message (the
/// last event of each batch), by `relay`: the delay from append to broker.
pub const RELAY_DELIVERY: &str = "es_relay_delivery_seconds";
/// Gauge: when the last event a relay published was recorded, as a Unix time in seconds, by
/// `relay`. A relay's lag behind the log is its projection's `es_projection_lag_seconds`.
pub const RELAY_LAST_PUBLISHED: &str = "es_relay_last_published_timestamp_seconds";

/// Gives every metric its help text (the `# HELP` lines of a Prometheus scrape). Call it once
/// after installing a recorder; `es_admin::prometheus_recorder` does.
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        COMMANDS,
        "Commands handled, by aggregate category and outcome"
    );
    describe_histogram!(COMMAND_DURATION, Unit::Seconds, "Time to handle a command");
    describe_counter!(
        COMMAND_RETRIES,
        "Commands decided again after a conflict or a re-send"
    );
    describe_counter!(
        APPENDS,
        "Appends, by outcome (written, repeat, conflict, refused, failed)"
    );
    describe_counter!(APPENDED_EVENTS, "Events written by appends");
    describe_histogram!(APPEND_DURATION, Unit::Seconds, "Time to append");
    describe_gauge!(
        LOG_HEAD,
        "Sequence of the last event readers of the global log see"
    );
    describe_gauge!(
        HORIZON_HELD_BACK_EVENTS,
        "Committed events held back by an open transaction"
    );
    describe_gauge!(
        HORIZON_HELD_BACK_SECONDS,
        Unit::Seconds,
        "How long the oldest held-back event has waited"
    );
    describe_gauge!(
        HORIZON_OLDEST_TRANSACTION_SECONDS,
        Unit::Seconds,
        "Age of the oldest transaction holding the horizon"
    );
    describe_counter!(
        PROJECTION_EVENTS,
        "Events a projection read and took into account"
    );
    describe_counter!(PROJECTION_BATCHES, "Batches a projection committed");
    describe_histogram!(
        PROJECTION_BATCH_DURATION,
        Unit::Seconds,
        "Time from reading a batch to its commit"
    );
    describe_gauge!(
        PROJECTION_LAG_EVENTS,
        "Readable events a projection has not taken into account"
    );
    describe_gauge!(
        PROJECTION_LAG_SECONDS,
        Unit::Seconds,
        "Age of the oldest event a projection has not taken into account"
    );
    describe_gauge!(PROJECTION_PARKED, "Events a projection parked");
    describe_gauge!(
        PROJECTION_CHECKPOINT,
        "Sequence of the last event a projection took into account"
    );
    describe_gauge!(
        PROJECTION_STATE,
        "1 for the state a projection is in (idle, waiting, running, rebuilding, reconnecting)"
    );
    describe_gauge!(SAGA_OUTBOX_PENDING, "Saga commands waiting to run");
    describe_gauge!(SAGA_OUTBOX_DEAD, "Saga commands dead-lettered");
    describe_gauge!(
        SAGA_OUTBOX_OLDEST_SECONDS,
        Unit::Seconds,
        "Age of the oldest pending saga command"
    );
    describe_gauge!(SAGA_DEADLINES_WAITING, "Saga deadlines not fired yet");
    describe_gauge!(SAGA_DEADLINES_DUE, "Saga deadlines due and not fired");
    describe_gauge!(
        SAGA_DEADLINES_FAILING,
        "Saga deadlines whose firing failed and is retried"
    );
    describe_counter!(
        SAGA_COMMANDS,
        "Saga commands run, by outcome (dispatched, failed, dead_lettered)"
    );
    describe_histogram!(
        SAGA_COMMAND_DURATION,
        Unit::Seconds,
        "Time to run one saga command"
    );
    describe_counter!(
        RELAY_MESSAGES,
        "Messages a relay published and saw confirmed"
    );
    describe_histogram!(
        RELAY_PUBLISH_DURATION,
        Unit::Seconds,
        "Time to publish a batch until the broker confirmed it"
    );
    describe_histogram!(
        RELAY_DELIVERY,
        Unit::Seconds,
        "Time from an event's recording to the broker's confirmation"
    );
    describe_gauge!(
        RELAY_LAST_PUBLISHED,
        Unit::Seconds,
        "Recording time of the last event a relay published"
    );
}

pub(crate) fn command_done(aggregate: &'static str, outcome: &'static str, took: Duration) {
    let labels = [("aggregate", aggregate), ("outcome", outcome)];
    metrics::counter!(COMMANDS, &labels).increment(1);
    metrics::histogram!(COMMAND_DURATION, &labels).record(took.as_secs_f64());
}

pub(crate) fn command_retried(aggregate: &'static str, reason: &'static str) {
    metrics::counter!(COMMAND_RETRIES, "aggregate" => aggregate, "reason" => reason).increment(1);
}
