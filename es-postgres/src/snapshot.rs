//! Snapshots in PostgreSQL: the newest one per stream, in the store's schema.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use es_core::personal;
use es_core::{Snapshot, SnapshotStore, StoreError, StreamId};
use serde_json::value::RawValue;
use sqlx::{AssertSqlSafe, PgPool};

use crate::PgEventStore;
use crate::convert::to_i64;
use crate::error::store_error;

/// The snapshot store beside a [`PgEventStore`]: same pool, same schema.
#[derive(Clone)]
pub struct PgSnapshotStore {
    pool: PgPool,
    keys: crate::PgKeyStore,
    load: Arc<str>,
    save: Arc<str>,
}

impl PgSnapshotStore {
    /// The snapshot store in `store`'s schema (created by its migrations).
    pub fn new(store: &PgEventStore) -> Self {
        let s = store.schema().quoted();
        Self {
            pool: store.pool().clone(),
            keys: store.key_store().clone(),
            load: format!(
                "SELECT stream_version, snapshot_version, state::text, {} \
                 FROM {s}.snapshots WHERE stream_id = $1",
                crate::convert::finite("taken_at")
            )
            .into(),
            // A slower writer never replaces a newer snapshot.
            save: format!(
                "INSERT INTO {s}.snapshots AS k \
                   (stream_id, stream_version, snapshot_version, state, taken_at) \
                 VALUES ($1, $2, $3, $4::json, $5) \
                 ON CONFLICT ON CONSTRAINT snapshots_pkey DO UPDATE SET stream_version = EXCLUDED.stream_version, \
                   snapshot_version = EXCLUDED.snapshot_version, state = EXCLUDED.state, \
                   taken_at = EXCLUDED.taken_at \
                 WHERE k.stream_version <= EXCLUDED.stream_version"
            )
            .into(),
        }
    }
}

#[async_trait]
impl SnapshotStore for PgSnapshotStore {
    async fn load(&self, stream: &StreamId) -> Result<Option<Snapshot>, StoreError> {
        let row: Option<(i64, i32, String, Option<DateTime<Utc>>)> =
            sqlx::query_as(AssertSqlSafe(self.load.clone()))
                .bind(stream.as_str())
                .fetch_optional(&self.pool)
                .await
                .map_err(store_error)?;
        let Some((stream_version, snapshot_version, state, taken_at)) = row else {
            return Ok(None);
        };
        let malformed = |field: &'static str, reason: String| StoreError::Malformed {
            event_id: None,
            position: None,
            field,
            reason: format!("snapshot of {stream}: {reason}"),
        };
        let state = if personal::is_sealed_state(&state) {
            let Some(keys) = self.keys.keys_of_stream(stream).await? else {
                // A subject of the stream was forgotten: the state may hold its data.
                return Ok(None);
            };
            let keys = keys.into_iter().map(|k| (k.id, k)).collect();
            let context = state_context(stream, stream_version, snapshot_version);
            match personal::open_state(&keys, &context, &state)
                .map_err(|e| malformed("snapshots.state", format!("does not open: {e}")))?
            {
                Some(state) => state,
                None => return Ok(None),
            }
        } else {
            state
        };
        Ok(Some(Snapshot {
            stream_id: stream.clone(),
            stream_version: u64::try_from(stream_version)
                .map_err(|_| malformed("snapshots.stream_version", "negative".into()))?,
            snapshot_version: u32::try_from(snapshot_version)
                .map_err(|_| malformed("snapshots.snapshot_version", "negative".into()))?,
            state: RawValue::from_string(state)
                .map_err(|e| malformed("snapshots.state", e.to_string()))?,
            taken_at: taken_at.ok_or_else(|| {
                malformed("snapshots.taken_at", "not a time a date can hold".into())
            })?,
        }))
    }

    /// The state of a stream holding personal data is sealed with the keys of all its data
    /// subjects (`es_core::personal::seal_state`); no snapshot is kept of a stream one of
    /// whose subjects was forgotten (its state may have been loaded before).
    async fn save(&self, snapshot: Snapshot) -> Result<(), StoreError> {
        let snapshot_version = i32::try_from(snapshot.snapshot_version).unwrap_or(i32::MAX);
        let stream_version = to_i64(snapshot.stream_version);
        let sealed;
        let state = match self.keys.keys_of_stream(&snapshot.stream_id).await? {
            None => {
                tracing::debug!(stream = %snapshot.stream_id, "no snapshot of a stream with a forgotten subject");
                return Ok(());
            }
            Some(keys) if keys.is_empty() => snapshot.state.get(),
            Some(keys) => {
                let context = state_context(&snapshot.stream_id, stream_version, snapshot_version);
                sealed = personal::seal_state(&keys, &context, snapshot.state.get()).map_err(
                    |reason| StoreError::Backend {
                        source: format!("sealing the snapshot of {}: {reason}", snapshot.stream_id)
                            .into(),
                        transient: false,
                    },
                )?;
                &sealed
            }
        };
        sqlx::query(AssertSqlSafe(self.save.clone()))
            .bind(snapshot.stream_id.as_str())
            .bind(stream_version)
            .bind(snapshot_version)
            .bind(state)
            .bind(snapshot.taken_at)
            .execute(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(())
    }
}

/// What a sealed snapshot state is bound to: moved to another stream or version, it does not
/// open.
fn state_context(stream: &StreamId, stream_version: i64, snapshot_version: i32) -> String {
    format!("{stream}\u{0}{stream_version}\u{0}{snapshot_version}")
}
