//! The projection runner's statements, built once per store schema.

use std::sync::Arc;

use crate::SchemaName;

pub(crate) struct Statements {
    pub(crate) load_checkpoint: Arc<str>,
    pub(crate) lock_checkpoints: Arc<str>,
    pub(crate) init_checkpoints: Arc<str>,
    pub(crate) save_checkpoints: Arc<str>,
    pub(crate) mark_rebuilding: Arc<str>,
    pub(crate) clear_rebuilding: Arc<str>,
    pub(crate) park: Arc<str>,
    pub(crate) list_parked: Arc<str>,
    pub(crate) claim_parked: Arc<str>,
    pub(crate) share_checkpoint: Arc<str>,
    pub(crate) delete_parked: Arc<str>,
    pub(crate) move_parked: Arc<str>,
    pub(crate) lag: Arc<str>,
    pub(crate) delete_checkpoints: Arc<str>,
    pub(crate) layout: Arc<str>,
    pub(crate) set_layout: Arc<str>,
    pub(crate) checkpoint_keys: Arc<str>,
    pub(crate) raw_event: Arc<str>,
}

impl Statements {
    pub(crate) fn new(schema: &SchemaName) -> Self {
        let s = schema.quoted();
        let horizon = "(SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint)";
        Self {
            load_checkpoint: format!(
                "SELECT transaction_id, position, rebuild_started_at IS NOT NULL \
                 FROM {s}.projection_checkpoints WHERE projection = $1"
            )
            .into(),
            // Every batch transaction takes these row locks first (always in key order, so two
            // transactions locking overlapping sets never deadlock): they fence out any other
            // transaction applying from the same checkpoint, whoever holds the advisory lock.
            lock_checkpoints: format!(
                "SELECT projection, transaction_id, position, rebuild_started_at IS NOT NULL \
                 FROM {s}.projection_checkpoints WHERE projection = ANY($1) \
                 ORDER BY projection FOR UPDATE"
            )
            .into(),
            init_checkpoints: format!(
                "INSERT INTO {s}.projection_checkpoints (projection, transaction_id, position) \
                 SELECT k, 0, 0 FROM UNNEST($1::text[]) AS k ON CONFLICT ON CONSTRAINT projection_checkpoints_pkey DO NOTHING"
            )
            .into(),
            save_checkpoints: format!(
                "UPDATE {s}.projection_checkpoints \
                 SET transaction_id = $2, position = $3, updated_at = clock_timestamp() \
                 WHERE projection = ANY($1)"
            )
            .into(),
            mark_rebuilding: format!(
                "UPDATE {s}.projection_checkpoints SET rebuild_started_at = clock_timestamp() \
                 WHERE projection = ANY($1)"
            )
            .into(),
            clear_rebuilding: format!(
                "UPDATE {s}.projection_checkpoints SET rebuild_started_at = NULL \
                 WHERE projection = ANY($1) AND rebuild_started_at IS NOT NULL"
            )
            .into(),
            park: format!(
                "INSERT INTO {s}.parked_events (projection, event_id, transaction_id, position, \
                   stream_id, event_type, error, attempts) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                 ON CONFLICT ON CONSTRAINT parked_events_pkey DO UPDATE SET error = EXCLUDED.error, \
                   attempts = {s}.parked_events.attempts + EXCLUDED.attempts, parked_at = now()"
            )
            .into(),
            list_parked: format!(
                "SELECT event_id, transaction_id, position, stream_id, event_type, error, attempts, \
                   {} FROM {s}.parked_events WHERE projection = $1 \
                 ORDER BY transaction_id, position",
                crate::convert::finite("parked_at")
            )
            .into(),
            // A replay claims a parked event by deleting its row in the transaction that applies
            // it: a concurrent replay (or rebuild) waits on the row, then finds it gone.
            claim_parked: format!(
                "DELETE FROM {s}.parked_events WHERE projection = $1 AND event_id = $2 \
                 RETURNING attempts"
            )
            .into(),
            // A replay holds its projection's checkpoint row in share mode: rebuilds and swaps,
            // which lock it for update before touching the read model, wait for the replay,
            // and a replay waits for them.
            share_checkpoint: format!(
                "SELECT 1 FROM {s}.projection_checkpoints WHERE projection = $1 FOR SHARE"
            )
            .into(),
            delete_parked: format!("DELETE FROM {s}.parked_events WHERE projection = ANY($1)")
                .into(),
            move_parked: format!(
                "UPDATE {s}.parked_events SET projection = $2 \
                 WHERE projection = $1 AND event_id = $3"
            )
            .into(),
            delete_checkpoints: format!(
                "DELETE FROM {s}.projection_checkpoints WHERE projection = ANY($1)"
            )
            .into(),
            layout: format!("SELECT parts FROM {s}.projection_layouts WHERE projection = $1")
                .into(),
            set_layout: format!(
                "INSERT INTO {s}.projection_layouts (projection, parts) VALUES ($1, $2) \
                 ON CONFLICT ON CONSTRAINT projection_layouts_pkey DO UPDATE SET parts = EXCLUDED.parts"
            )
            .into(),
            // The checkpoints of a projection's runners (`name`, `name#i/n`), for stores that
            // predate the layouts table.
            checkpoint_keys: format!(
                "SELECT projection FROM {s}.projection_checkpoints \
                 WHERE projection = $1 OR left(projection, length($1) + 1) = $1 || '#'"
            )
            .into(),
            // The columns of a row that stay readable whatever else is wrong with it.
            raw_event: format!(
                "SELECT event_id, stream_id, event_type FROM {s}.events \
                 WHERE transaction_id = $1 AND position = $2"
            )
            .into(),
            lag: format!(
                "SELECT count(*), \
                   extract(epoch FROM clock_timestamp() - min(recorded_at))::float8, \
                   (SELECT count(*) FROM {s}.parked_events WHERE projection = $1) \
                 FROM {s}.events WHERE (transaction_id, position) > ($2, $3) \
                   AND transaction_id < {horizon}"
            )
            .into(),
        }
    }
}
