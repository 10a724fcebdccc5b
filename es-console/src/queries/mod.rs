//! The console's own reads of the store: every one bound (values never formatted into SQL;
//! the schema comes from [`SchemaName`](es_postgres::SchemaName)), every one served by an
//! index and capped in size, so a page costs the same on a store of a thousand events or of
//! ten million.

use chrono::{DateTime, Utc};
use es_core::{Position, Upcasters};
use es_postgres::PgEventStore;
use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;
use sqlx::postgres::PgRow;
use sqlx::{AssertSqlSafe, Row};
use uuid::Uuid;

use crate::ConsoleError;

mod sagas;

pub use sagas::{DeadLetterView, Deadline, OutboxCommand, SagaInstance};
pub(crate) use sagas::{dead_letters, saga_tables};

/// The most rows a page shows, whatever it asks for.
pub const MAX_PAGE: usize = 200;
/// Rows a page shows when it does not say.
pub const DEFAULT_PAGE: usize = 50;
/// The most events of one correlation id a trace shows.
pub const TRACE_LIMIT: usize = es_core::trace::LIMIT;

/// A requested page size, capped to [`MAX_PAGE`].
pub(crate) fn page_size(asked: Option<usize>) -> usize {
    asked.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE)
}

/// The columns an event is read with, in [`event_from_row`]'s order.
const EVENT_COLUMNS: &str = "event_id, stream_id, stream_version, transaction_id, position, \
    event_type, schema_version, CASE WHEN isfinite(recorded_at) THEN recorded_at END, \
    correlation_id, causation_id, metadata::text, payload::text";

/// One stored event, with its payload as stored and as upcast to the current version.
#[derive(Clone, Debug, Serialize)]
pub struct EventView {
    /// The event's id.
    pub event_id: Uuid,
    /// Its stream.
    pub stream_id: String,
    /// Its version in the stream.
    pub stream_version: u64,
    /// Its place in the global log.
    pub position: Position,
    /// Its type, as stored.
    pub event_type: String,
    /// Its schema version, as stored.
    pub schema_version: u32,
    /// When the store wrote it.
    pub recorded_at: DateTime<Utc>,
    /// The id of the piece of work it belongs to.
    pub correlation_id: Uuid,
    /// What caused it.
    pub causation_id: Option<Uuid>,
    /// Its metadata, as stored (the stored JSON text, unchanged).
    pub metadata: Box<RawValue>,
    /// Its payload, as stored (the stored JSON text, unchanged).
    pub payload: Box<RawValue>,
    /// What readers decode it as, after the upcasters.
    pub upcast: Upcast,
}

/// An event as readers see it after the store's upcasters.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Upcast {
    /// No upcaster lifts its type at its version: readers see it as stored.
    AsStored,
    /// Lifted: the event(s) readers decode instead (none when it was retired).
    Lifted {
        /// Each as (type, schema version, payload).
        events: Vec<UpcastEvent>,
    },
    /// An upcaster failed on it: readers cannot decode it.
    Failed {
        /// Why.
        reason: String,
    },
}

/// One event an upcaster produced.
#[derive(Clone, Debug, Serialize)]
pub struct UpcastEvent {
    /// Its type.
    pub event_type: String,
    /// The schema version its payload is at.
    pub schema_version: u32,
    /// Its payload.
    pub payload: Value,
}

fn event_from_row(row: &PgRow, upcasters: &Upcasters) -> Result<EventView, ConsoleError> {
    let event_id: Uuid = row
        .try_get(0)
        .map_err(|e| ConsoleError::malformed("event row (its event_id)", e))?;
    let what = |column: &str| format!("event {event_id} (column {column})");
    let get_i64 = |i: usize, column: &str| -> Result<u64, ConsoleError> {
        let value: i64 = row
            .try_get(i)
            .map_err(|e| ConsoleError::malformed(what(column), e))?;
        u64::try_from(value).map_err(|_| ConsoleError::malformed(what(column), "negative"))
    };
    let stream_version = get_i64(2, "stream_version")?;
    let transaction = get_i64(3, "transaction_id")?;
    let sequence = get_i64(4, "position")?;
    let event_type: String = row
        .try_get(5)
        .map_err(|e| ConsoleError::malformed(what("event_type"), e))?;
    let schema_version: i32 = row
        .try_get(6)
        .map_err(|e| ConsoleError::malformed(what("schema_version"), e))?;
    let schema_version = u32::try_from(schema_version)
        .map_err(|_| ConsoleError::malformed(what("schema_version"), "negative"))?;
    let metadata: String = row
        .try_get(10)
        .map_err(|e| ConsoleError::malformed(what("metadata"), e))?;
    let payload: String = row
        .try_get(11)
        .map_err(|e| ConsoleError::malformed(what("payload"), e))?;
    let payload = RawValue::from_string(payload)
        .map_err(|e| ConsoleError::malformed(what("payload"), format!("not JSON: {e}")))?;
    let upcast = if upcasters.lifts_from(&event_type, schema_version) {
        let value: Value = serde_json::from_str(payload.get())
            .map_err(|e| ConsoleError::malformed(what("payload"), format!("not JSON: {e}")))?;
        match upcasters.lift(&event_type, schema_version, value) {
            Ok(events) => Upcast::Lifted {
                events: events
                    .into_iter()
                    .map(|e| UpcastEvent {
                        event_type: e.event_type,
                        schema_version: e.schema_version,
                        payload: e.payload,
                    })
                    .collect(),
            },
            Err(reason) => Upcast::Failed { reason },
        }
    } else {
        Upcast::AsStored
    };
    Ok(EventView {
        event_id,
        stream_id: row
            .try_get(1)
            .map_err(|e| ConsoleError::malformed(what("stream_id"), e))?,
        stream_version,
        position: Position::new(transaction, sequence),
        event_type,
        schema_version,
        recorded_at: row
            .try_get::<Option<DateTime<Utc>>, _>(7)
            .map_err(|e| ConsoleError::malformed(what("recorded_at"), e))?
            // Read as NULL when it is `infinity`, which no Rust time holds.
            .ok_or_else(|| ConsoleError::malformed(what("recorded_at"), "not a finite time"))?,
        correlation_id: row
            .try_get(8)
            .map_err(|e| ConsoleError::malformed(what("correlation_id"), e))?,
        causation_id: row
            .try_get(9)
            .map_err(|e| ConsoleError::malformed(what("causation_id"), e))?,
        metadata: RawValue::from_string(metadata)
            .map_err(|e| ConsoleError::malformed(what("metadata"), format!("not JSON: {e}")))?,
        payload,
        upcast,
    })
}

fn events(rows: &[PgRow], store: &PgEventStore) -> Result<Vec<EventView>, ConsoleError> {
    use es_core::EventStore as _;
    let upcasters = store.upcasters();
    rows.iter().map(|r| event_from_row(r, &upcasters)).collect()
}

pub(crate) fn limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn bigint(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Cheap numbers about the whole store.
#[derive(Clone, Debug, Serialize)]
pub struct StoreNumbers {
    /// Sequence numbers handed out so far: the number of events appended, plus those of
    /// appends that rolled back. Read from the sequence, not by counting.
    pub positions_issued: u64,
    /// The planner's estimate of the number of events (from the last `ANALYZE` or vacuum);
    /// `None` before the table was ever analyzed.
    pub events_estimate: Option<u64>,
    /// The planner's estimate of the number of streams; `None` before it was analyzed.
    pub streams_estimate: Option<u64>,
}

/// [`StoreNumbers`], in one cheap query.
pub(crate) async fn store_numbers(store: &PgEventStore) -> Result<StoreNumbers, ConsoleError> {
    let s = schema(store);
    let events = format!("{s}.events");
    let streams = format!("{s}.streams");
    let row = sqlx::query(
        "SELECT (SELECT pg_sequence_last_value(pg_get_serial_sequence($1, 'position'))), \
                (SELECT reltuples::bigint FROM pg_class WHERE oid = to_regclass($1)), \
                (SELECT reltuples::bigint FROM pg_class WHERE oid = to_regclass($2))",
    )
    .bind(&events)
    .bind(&streams)
    .fetch_one(store.pool())
    .await?;
    // reltuples is -1 for a table never analyzed.
    let count = |i: usize| -> Result<Option<u64>, ConsoleError> {
        let value: Option<i64> = row.try_get(i)?;
        Ok(value.and_then(|v| u64::try_from(v).ok()))
    };
    Ok(StoreNumbers {
        positions_issued: count(0)?.unwrap_or(0),
        events_estimate: count(1)?,
        streams_estimate: count(2)?,
    })
}

/// A stream category.
#[derive(Clone, Debug, Serialize)]
pub struct Category {
    /// Its name: stream ids up to their first `-`.
    pub category: String,
    /// Its events, as last counted by `PgEventStore::stored_types` (the schema gate, `schema
    /// check`); `None` when never counted.
    pub events_counted: Option<u64>,
}

/// The category of a stream id in SQL, as the index `streams_by_category` holds it.
const CATEGORY: &str = "split_part(stream_id, '-', 1) COLLATE \"C\"";

/// Categories after `after` (all from the first when `None`), at most `limit`, in byte order.
///
/// A skip scan over the index `streams_by_category`: one index probe per category, however
/// many streams each holds.
pub(crate) async fn categories(
    store: &PgEventStore,
    after: Option<&str>,
    limit_to: usize,
) -> Result<Vec<Category>, ConsoleError> {
    let s = schema(store);
    let next = |after: &str| {
        format!(
            "(SELECT {CATEGORY} FROM {s}.streams WHERE {CATEGORY} > {after} \
              ORDER BY {CATEGORY} LIMIT 1)"
        )
    };
    let sql = format!(
        "WITH RECURSIVE c(category) AS ( \
             SELECT {} \
             UNION ALL \
             SELECT {} FROM c WHERE c.category IS NOT NULL) \
         SELECT c.category, (SELECT sum(t.events)::bigint FROM {s}.event_types t \
                             WHERE t.category = c.category) \
         FROM c WHERE c.category IS NOT NULL LIMIT $2",
        next("$1::text COLLATE \"C\""),
        next("c.category"),
    );
    let rows = sqlx::query(AssertSqlSafe(sql))
        .bind(after.unwrap_or(""))
        .bind(limit(limit_to))
        .fetch_all(store.pool())
        .await?;
    rows.iter()
        .map(|row| {
            let events: Option<i64> = row.try_get(1)?;
            Ok(Category {
                category: row.try_get(0)?,
                events_counted: events.map(|n| n.max(0) as u64),
            })
        })
        .collect()
}

/// A stream, as listed.
#[derive(Clone, Debug, Serialize)]
pub struct StreamSummary {
    /// Its id.
    pub stream_id: String,
    /// Its version: how many events it holds.
    pub version: u64,
    /// When its last event was recorded.
    pub last_recorded_at: Option<DateTime<Utc>>,
}

/// The streams of `category` after the stream id `after`, at most `limit`, in byte order.
pub(crate) async fn streams(
    store: &PgEventStore,
    category: &str,
    after: Option<&str>,
    limit_to: usize,
) -> Result<Vec<StreamSummary>, ConsoleError> {
    let s = schema(store);
    // The category's part of the index `streams_by_category`, from `after` on.
    let sql = format!(
        "SELECT st.stream_id, st.version, {} FROM {s}.streams st \
         LEFT JOIN {s}.events e ON e.stream_id = st.stream_id AND e.stream_version = st.version \
         WHERE split_part(st.stream_id, '-', 1) COLLATE \"C\" = $1 \
           AND st.stream_id COLLATE \"C\" > $2 COLLATE \"C\" \
         ORDER BY st.stream_id COLLATE \"C\" LIMIT $3",
        finite("e.recorded_at")
    );
    let rows = sqlx::query(AssertSqlSafe(sql))
        .bind(category)
        .bind(after.unwrap_or(""))
        .bind(limit(limit_to))
        .fetch_all(store.pool())
        .await?;
    rows.iter()
        .map(|row| {
            let stream_id: String = row.try_get(0)?;
            let version: i64 = row.try_get(1)?;
            let last_recorded_at = row
                .try_get(2)
                .map_err(|e| ConsoleError::malformed(format!("stream {stream_id:?}"), e))?;
            Ok(StreamSummary {
                version: version.max(0) as u64,
                last_recorded_at,
                stream_id,
            })
        })
        .collect()
}

/// The version of the stream `id`; `None` when it does not exist.
pub(crate) async fn stream_version(
    store: &PgEventStore,
    id: &str,
) -> Result<Option<u64>, ConsoleError> {
    let s = schema(store);
    let version: Option<i64> = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT version FROM {s}.streams WHERE stream_id = $1"
    )))
    .bind(id)
    .fetch_optional(store.pool())
    .await?;
    Ok(version.map(|v| v.max(0) as u64))
}

/// Which page of a stream.
#[derive(Clone, Copy, Debug)]
pub(crate) enum StreamPage {
    /// Versions above this one, ascending.
    After(u64),
    /// Versions below this one (the page just before), shown ascending.
    Before(u64),
}

/// One page of the stream `id`'s events, in version order.
pub(crate) async fn stream_events(
    store: &PgEventStore,
    id: &str,
    page: StreamPage,
    limit_to: usize,
) -> Result<Vec<EventView>, ConsoleError> {
    let s = schema(store);
    let (condition, order, version) = match page {
        StreamPage::After(v) => (">", "ASC", v),
        StreamPage::Before(v) => ("<", "DESC", v),
    };
    let rows = sqlx::query(AssertSqlSafe(format!(
        "SELECT {EVENT_COLUMNS} FROM {s}.events WHERE stream_id = $1 \
         AND stream_version {condition} $2 ORDER BY stream_version {order} LIMIT $3"
    )))
    .bind(id)
    .bind(bigint(version))
    .bind(limit(limit_to))
    .fetch_all(store.pool())
    .await?;
    let mut events = events(&rows, store)?;
    if matches!(page, StreamPage::Before(_)) {
        events.reverse();
    }
    Ok(events)
}

/// The event `id`; `None` when no such event is stored.
pub(crate) async fn event(
    store: &PgEventStore,
    id: Uuid,
) -> Result<Option<EventView>, ConsoleError> {
    let s = schema(store);
    let row = sqlx::query(AssertSqlSafe(format!(
        "SELECT {EVENT_COLUMNS} FROM {s}.events WHERE event_id = $1"
    )))
    .bind(id)
    .fetch_optional(store.pool())
    .await?;
    Ok(events(row.as_slice(), store)?.pop())
}

/// The events of one piece of work, in global order, at most [`TRACE_LIMIT`].
pub(crate) async fn correlated(
    store: &PgEventStore,
    correlation_id: Uuid,
) -> Result<Vec<EventView>, ConsoleError> {
    let s = schema(store);
    let rows = sqlx::query(AssertSqlSafe(format!(
        "SELECT {EVENT_COLUMNS} FROM {s}.events WHERE correlation_id = $1 \
         ORDER BY transaction_id, position LIMIT $2"
    )))
    .bind(correlation_id)
    .bind(limit(TRACE_LIMIT))
    .fetch_all(store.pool())
    .await?;
    events(&rows, store)
}

/// Which page of the global log.
#[derive(Clone, Copy, Debug)]
pub(crate) enum LogPage {
    /// The newest events.
    Newest,
    /// Events after this position.
    After(Position),
    /// Events before this position.
    Before(Position),
    /// Events around this position: half before, it and the rest after.
    Around(Position),
}

/// One page of the global log, in global order (by the primary key, `(transaction_id,
/// position)`), up to the store's readable head (`EventStore::head`, the last event below the
/// transaction horizon).
///
/// Bounded by the head, as every reader of the log is: a row above the horizon may yet be
/// joined, below it, by an event a still-running older transaction commits later, so a page
/// that showed it (and keyed "later" past it) would skip that event for good.
pub(crate) async fn log(
    store: &PgEventStore,
    page: LogPage,
    limit_to: usize,
) -> Result<Vec<EventView>, ConsoleError> {
    use es_core::EventStore as _;
    let head = store.head().await?;
    let s = schema(store);
    let query = |condition: &str, order: &str, at: Position, n: usize| {
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM {s}.events \
             WHERE (transaction_id, position) {condition} ($1, $2) \
               AND (transaction_id, position) <= ($4, $5) \
             ORDER BY transaction_id {order}, position {order} LIMIT $3"
        );
        async move {
            sqlx::query(AssertSqlSafe(sql))
                .bind(bigint(at.transaction))
                .bind(bigint(at.sequence))
                .bind(limit(n))
                .bind(bigint(head.transaction))
                .bind(bigint(head.sequence))
                .fetch_all(store.pool())
                .await
        }
    };
    let (mut before, after) = match page {
        LogPage::Newest => (query("<=", "DESC", head, limit_to).await?, Vec::new()),
        LogPage::Before(at) => (query("<", "DESC", at, limit_to).await?, Vec::new()),
        LogPage::After(at) => (Vec::new(), query(">", "ASC", at, limit_to).await?),
        LogPage::Around(at) => {
            let half = limit_to / 2;
            (
                query("<", "DESC", at, half).await?,
                query(">=", "ASC", at, limit_to - half).await?,
            )
        }
    };
    before.reverse();
    before.extend(after);
    events(&before, store)
}

/// A timestamp column read as `NULL` when it holds `infinity` (which no Rust time holds).
pub(crate) fn finite(column: &str) -> String {
    format!("CASE WHEN isfinite({column}) THEN {column} END")
}

/// The store's schema as a quoted SQL identifier: the one part of the console's SQL that is
/// not a bound parameter. [`SchemaName`](es_postgres::SchemaName) admits only lowercase ASCII
/// letters, digits and `_`, so quoting needs no escaping.
pub(crate) fn schema(store: &PgEventStore) -> String {
    format!("\"{}\"", store.schema().as_str())
}

/// An event a projection parked.
#[derive(Clone, Debug, Serialize)]
pub struct ParkedView {
    /// The event's id.
    pub event_id: Uuid,
    /// Its position.
    pub position: Position,
    /// Its stream.
    pub stream_id: String,
    /// Its type.
    pub event_type: String,
    /// The last error applying it.
    pub error: String,
    /// How many times applying it failed.
    pub attempts: u32,
    /// When it was (last) parked.
    pub parked_at: Option<DateTime<Utc>>,
}

/// The oldest `limit` events the projection (or part) `key` parked, by position.
pub(crate) async fn parked(
    store: &PgEventStore,
    key: &str,
    limit_to: usize,
) -> Result<Vec<ParkedView>, ConsoleError> {
    let s = schema(store);
    let rows = sqlx::query(AssertSqlSafe(format!(
        "SELECT event_id, transaction_id, position, stream_id, event_type, error, attempts, {} \
         FROM {s}.parked_events WHERE projection = $1 \
         ORDER BY transaction_id, position LIMIT $2",
        finite("parked_at")
    )))
    .bind(key)
    .bind(limit(limit_to))
    .fetch_all(store.pool())
    .await?;
    rows.iter()
        .map(|row| {
            let transaction: i64 = row.try_get(1)?;
            let sequence: i64 = row.try_get(2)?;
            let attempts: i32 = row.try_get(6)?;
            Ok(ParkedView {
                event_id: row.try_get(0)?,
                position: Position::new(transaction.max(0) as u64, sequence.max(0) as u64),
                stream_id: row.try_get(3)?,
                event_type: row.try_get(4)?,
                error: row.try_get(5)?,
                attempts: attempts.max(0) as u32,
                parked_at: row.try_get(7)?,
            })
        })
        .collect()
}
