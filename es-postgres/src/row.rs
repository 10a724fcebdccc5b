//! Turning `events` rows into envelopes, refusing malformed ones with errors that name them.

use es_core::{Metadata, Payload, Position, RecordedEvent, StoreError, StreamId};
use sqlx::Row;
use sqlx::postgres::PgRow;

/// The columns every event read selects, in the order [`decode_event`] reads them.
/// `recorded_at` reads as `NULL` when no Rust date can hold it (see `convert::finite`).
pub(crate) const EVENT_COLUMNS: &str = "transaction_id, position, event_id, stream_id, \
     stream_version, event_type, schema_version, \
     CASE WHEN recorded_at BETWEEN '4000-01-01 00:00:00+00 BC'::timestamptz \
         AND '100000-01-01 00:00:00+00'::timestamptz \
     THEN recorded_at END, correlation_id, causation_id, metadata::text, payload::text";

/// What is known of the row being decoded, for naming it in an error.
#[derive(Default)]
struct Context {
    event_id: Option<uuid::Uuid>,
    position: Option<Position>,
}

impl Context {
    fn malformed(&self, field: &'static str, reason: impl Into<String>) -> StoreError {
        StoreError::Malformed {
            event_id: self.event_id,
            position: self.position,
            field,
            reason: reason.into(),
        }
    }

    fn get<'r, T>(&self, row: &'r PgRow, index: usize, field: &'static str) -> Result<T, StoreError>
    where
        T: sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
    {
        // The columns' types are the store's own (EVENT_COLUMNS over the migrated table), so
        // the per-value type check is skipped; each decoder still checks the value's length
        // and encoding, so a value of another type is an error, never a panic.
        row.try_get_unchecked(index)
            .map_err(|e| self.malformed(field, e.to_string()))
    }

    fn unsigned(&self, row: &PgRow, index: usize, field: &'static str) -> Result<u64, StoreError> {
        let value: i64 = self.get(row, index, field)?;
        u64::try_from(value).map_err(|_| self.malformed(field, format!("{value} is negative")))
    }
}

/// Decodes a row selected with [`EVENT_COLUMNS`].
pub(crate) fn decode_event(row: &PgRow) -> Result<RecordedEvent, StoreError> {
    let mut cx = Context::default();
    let position = Position::new(
        cx.unsigned(row, 0, "transaction_id")?,
        cx.unsigned(row, 1, "position")?,
    );
    cx.position = Some(position);
    let event_id = cx.get(row, 2, "event_id")?;
    cx.event_id = Some(event_id);

    let stream: String = cx.get(row, 3, "stream_id")?;
    let stream_id = StreamId::new(stream).map_err(|e| cx.malformed("stream_id", e.to_string()))?;
    let schema_version: i32 = cx.get(row, 6, "schema_version")?;
    let metadata_text: String = cx.get(row, 10, "metadata")?;
    let payload_text: String = cx.get(row, 11, "payload")?;

    let metadata = Metadata::from_stored_json(metadata_text)
        .map_err(|e| cx.malformed("metadata", e.to_string()))?;
    // JSON by the column's type: decoding parses it once, later, where it is needed.
    let payload = Payload::from_stored(payload_text);

    Ok(RecordedEvent {
        event_id,
        stream_id,
        stream_version: cx.unsigned(row, 4, "stream_version")?,
        position,
        event_type: cx.get(row, 5, "event_type")?,
        schema_version: u32::try_from(schema_version)
            .map_err(|_| cx.malformed("schema_version", format!("{schema_version} is negative")))?,
        recorded_at: cx
            .get::<Option<chrono::DateTime<chrono::Utc>>>(row, 7, "recorded_at")?
            .ok_or_else(|| cx.malformed("recorded_at", "not a time a date can hold"))?,
        correlation_id: cx.get(row, 8, "correlation_id")?,
        causation_id: cx.get(row, 9, "causation_id")?,
        metadata,
        split_index: 0,
        payload,
    })
}
