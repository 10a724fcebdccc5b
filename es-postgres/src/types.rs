//! The event types a store holds, per category and schema version: what start-up checks
//! compare a service's registry against.

use es_core::StoreError;
use sqlx::{AssertSqlSafe, Connection};

use crate::PgEventStore;
use crate::error::store_error;

/// Events counted per transaction while catching the type counts up.
const CHUNK: i64 = 50_000;

/// Events of one type stored in one category at one schema version.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoredType {
    /// The stream category (the stream id up to its first `-`).
    pub category: String,
    /// The event type, as stored.
    pub event_type: String,
    /// The schema version, as stored.
    pub schema_version: u32,
    /// How many such events are stored.
    pub events: u64,
}

impl PgEventStore {
    /// Every event type stored, per category and schema version, with how many events of
    /// each, as of the transaction horizon.
    ///
    /// The counts are kept in the store and brought up to date here, by counting the events
    /// appended since the last call (the first call on a large store reads it all, in
    /// transactions of 50,000 events; calls after that read only what is new). Appends pay
    /// nothing for them. Concurrent calls take turns.
    pub async fn stored_types(&self) -> Result<Vec<StoredType>, StoreError> {
        let s = self.schema().quoted();
        let horizon = "pg_snapshot_xmin(pg_current_snapshot())::text::bigint";
        let count = format!(
            "WITH chunk AS ( \
                 SELECT stream_id, event_type, schema_version, transaction_id, position \
                 FROM {s}.events \
                 WHERE (transaction_id, position) > ($1, $2) \
                   AND transaction_id < (SELECT {horizon}) \
                 ORDER BY transaction_id, position LIMIT $3), \
             counted AS ( \
                 INSERT INTO {s}.event_types AS t (category, event_type, schema_version, events) \
                 SELECT split_part(stream_id, '-', 1), event_type, schema_version, count(*) \
                 FROM chunk GROUP BY 1, 2, 3 \
                 ON CONFLICT ON CONSTRAINT event_types_pkey \
                 DO UPDATE SET events = t.events + EXCLUDED.events), \
             last AS ( \
                 SELECT transaction_id, position FROM chunk \
                 ORDER BY transaction_id DESC, position DESC LIMIT 1) \
             UPDATE {s}.event_types_counted c \
             SET transaction_id = last.transaction_id, position = last.position \
             FROM last RETURNING (SELECT count(*) FROM chunk)"
        );
        let mut conn = self.pool().acquire().await.map_err(store_error)?;
        self.check_tenancy(&mut conn).await.map_err(refused)?;
        // A store has its counting row from its first migration; a row tenant gets its own on
        // its first count.
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {s}.event_types_counted DEFAULT VALUES \
             ON CONFLICT ON CONSTRAINT event_types_counted_pkey DO NOTHING"
        )))
        .execute(&mut *conn)
        .await
        .map_err(store_error)?;
        loop {
            let mut tx = conn.begin().await.map_err(store_error)?;
            // The row lock makes concurrent callers take turns: each chunk is counted once.
            let (transaction, position): (i64, i64) = sqlx::query_as(AssertSqlSafe(format!(
                "SELECT transaction_id, position FROM {s}.event_types_counted FOR UPDATE"
            )))
            .fetch_one(&mut *tx)
            .await
            .map_err(store_error)?;
            let counted: Option<i64> = sqlx::query_scalar(AssertSqlSafe(count.clone()))
                .bind(transaction)
                .bind(position)
                .bind(CHUNK)
                .fetch_optional(&mut *tx)
                .await
                .map_err(store_error)?;
            tx.commit().await.map_err(store_error)?;
            if counted.unwrap_or(0) < CHUNK {
                break;
            }
        }
        let rows: Vec<(String, String, i32, i64)> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT category, event_type, schema_version, events FROM {s}.event_types \
             ORDER BY category, event_type, schema_version"
        )))
        .fetch_all(&mut *conn)
        .await
        .map_err(store_error)?;
        Ok(rows
            .into_iter()
            .map(|(category, event_type, version, events)| StoredType {
                category,
                event_type,
                schema_version: u32::try_from(version).unwrap_or(0),
                events: u64::try_from(events).unwrap_or(0),
            })
            .collect())
    }
}

impl PgEventStore {
    /// The schema gate: every event type stored (any category, any schema version) that
    /// `catalogue` (the code's event types and upcasters) could not decode, and why. Empty
    /// when the code reads everything stored; run it before a deploy, refusing the deploy
    /// otherwise (`es-admin schema check` does, with exit code 1). Where upcasters lift a
    /// stored type and version, one stored payload of it is run through the chain, to check
    /// that what it ends as is a type of the code at its current version. Counts are as of the
    /// transaction horizon: events of transactions still open are not judged.
    pub async fn unreadable_types(
        &self,
        catalogue: &es_core::EventCatalogue,
    ) -> Result<Vec<crate::UnreadableType>, StoreError> {
        let mut unreadable = Vec::new();
        for stored in self.stored_types().await? {
            let (event_type, version) = (&stored.event_type, stored.schema_version);
            let reason = if catalogue.unreadable(event_type, version).is_none()
                && catalogue.needs_sample(event_type, version)
            {
                // Only a real payload says where the upcaster chain ends. Old versions sit
                // early in the table, so the scan finds one soon.
                let sample: Option<String> = sqlx::query_scalar(AssertSqlSafe(format!(
                    "SELECT payload::text FROM {}.events \
                     WHERE event_type = $1 AND schema_version = $2 \
                       AND split_part(stream_id, '-', 1) = $3 LIMIT 1",
                    self.schema().quoted()
                )))
                .bind(event_type)
                .bind(i32::try_from(version).unwrap_or(i32::MAX))
                .bind(&stored.category)
                .fetch_optional(self.pool())
                .await
                .map_err(store_error)?;
                match sample.map(|text| serde_json::from_str(&text)) {
                    Some(Ok(payload)) => catalogue.unreadable_sample(event_type, version, payload),
                    Some(Err(error)) => Some(format!("a stored payload is not JSON: {error}")),
                    None => None,
                }
            } else {
                catalogue.unreadable(event_type, version)
            };
            if let Some(reason) = reason {
                unreadable.push(crate::UnreadableType::new(stored, reason));
            }
        }
        Ok(unreadable)
    }
}

/// A session refused for a row-tenancy schema, as the store contract's error.
pub(crate) fn refused(error: crate::PgError) -> StoreError {
    match error {
        crate::PgError::Database(error) => store_error(error),
        crate::PgError::Store(error) => error,
        other => StoreError::Backend {
            source: Box::new(other),
            transient: false,
        },
    }
}
