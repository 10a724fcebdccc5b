//! The projection runner's statements, built once per store schema.

use std::sync::Arc;

use crate::SchemaName;

pub(crate) struct Statements {
    pub(crate) load_checkpoint: Arc<str>,
    pub(crate) lock_checkpoint: Arc<str>,
    pub(crate) init_checkpoint: Arc<str>,
    pub(crate) save_checkpoint: Arc<str>,
    pub(crate) park: Arc<str>,
    pub(crate) list_parked: Arc<str>,
    pub(crate) unpark: Arc<str>,
    pub(crate) delete_parked: Arc<str>,
    pub(crate) lag: Arc<str>,
    pub(crate) delete_checkpoint: Arc<str>,
    pub(crate) move_parked: Arc<str>,
}

impl Statements {
    pub(crate) fn new(schema: &SchemaName) -> Self {
        let s = schema.quoted();
        let horizon = "(SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint)";
        Self {
            load_checkpoint: format!(
                "SELECT transaction_id, position FROM {s}.projection_checkpoints WHERE projection = $1"
            )
            .into(),
            // Every batch transaction takes this row lock first: it fences out any other
            // transaction applying from the same checkpoint, whoever holds the advisory lock.
            lock_checkpoint: format!(
                "SELECT transaction_id, position FROM {s}.projection_checkpoints \
                 WHERE projection = $1 FOR UPDATE"
            )
            .into(),
            init_checkpoint: format!(
                "INSERT INTO {s}.projection_checkpoints (projection, transaction_id, position) \
                 VALUES ($1, 0, 0) ON CONFLICT (projection) DO NOTHING"
            )
            .into(),
            save_checkpoint: format!(
                "INSERT INTO {s}.projection_checkpoints (projection, transaction_id, position) \
                 VALUES ($1, $2, $3) ON CONFLICT (projection) DO UPDATE \
                 SET transaction_id = EXCLUDED.transaction_id, position = EXCLUDED.position, \
                     updated_at = now()"
            )
            .into(),
            park: format!(
                "INSERT INTO {s}.parked_events (projection, event_id, transaction_id, position, \
                   stream_id, event_type, error, attempts) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                 ON CONFLICT (projection, event_id) DO UPDATE SET error = EXCLUDED.error, \
                   attempts = {s}.parked_events.attempts + EXCLUDED.attempts, parked_at = now()"
            )
            .into(),
            list_parked: format!(
                "SELECT event_id, transaction_id, position, stream_id, event_type, error, attempts, \
                   parked_at FROM {s}.parked_events WHERE projection = $1 \
                 ORDER BY transaction_id, position"
            )
            .into(),
            unpark: format!(
                "DELETE FROM {s}.parked_events WHERE projection = $1 AND event_id = $2"
            )
            .into(),
            delete_checkpoint: format!(
                "DELETE FROM {s}.projection_checkpoints WHERE projection = $1"
            )
            .into(),
            move_parked: format!(
                "UPDATE {s}.parked_events SET projection = $2 WHERE projection = $1"
            )
            .into(),
            delete_parked: format!("DELETE FROM {s}.parked_events WHERE projection = $1").into(),
            lag: format!(
                "SELECT count(*), min(recorded_at), \
                   (SELECT count(*) FROM {s}.parked_events WHERE projection = $1) \
                 FROM {s}.events WHERE (transaction_id, position) > ($2, $3) \
                   AND transaction_id < {horizon}"
            )
            .into(),
        }
    }
}
