//! The event store contract every store implements.

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use futures_core::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};

use uuid::Uuid;

use crate::{ExpectedVersion, NewEvent, Position, RecordedEvent, StoreError, StreamId, Upcasters};

/// What an append wrote (or had written before, for a repeated append).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppendResult {
    /// The stream version of the first appended event.
    pub first_version: u64,
    /// The stream version after the append: the version the next append expects.
    pub last_version: u64,
    /// The global position of each appended event, in append order.
    pub positions: Vec<Position>,
    /// True when every event id was already stored with the same content, so this call wrote
    /// nothing and reports the original append.
    pub deduplicated: bool,
}

/// An append-only store of event streams with one global log.
///
/// Guarantees every implementation holds (and `es_core::testing::conformance` checks):
/// - `append` writes all its events at consecutive versions after the stream's current one, or
///   none of them; under concurrent writers each version is won by exactly one append.
/// - `append` is idempotent by event id: when every id of the append is already stored in that
///   stream, in the same order, with the same type, schema version and payload, it writes
///   nothing and returns the original result with `deduplicated` set, whatever the expected
///   version. Any other reuse of a stored id is [`StoreError::EventIdReused`].
/// - `read_all` returns events in one global order that never changes once read: a reader that
///   resumes after the last position it saw never skips an event.
#[async_trait]
pub trait EventStore: Send + Sync {
    /// Appends `events` to `stream` if it is at the `expected` version.
    ///
    /// An empty `events` writes nothing but still checks the expected version.
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError>;

    /// The events of `stream` from version `from_version` (1-based, inclusive) on, in order.
    /// Streamed: a store does not hold a whole huge stream in memory.
    fn read_stream<'a>(
        &'a self,
        stream: &'a StreamId,
        from_version: u64,
    ) -> BoxStream<'a, Result<RecordedEvent, StoreError>>;

    /// The events of `stream` from version `from_version` to `to_version`, both inclusive, in
    /// order. Stores should bound the read itself; the default reads from `from_version` and
    /// stops after `to_version`.
    fn read_stream_range<'a>(
        &'a self,
        stream: &'a StreamId,
        from_version: u64,
        to_version: u64,
    ) -> BoxStream<'a, Result<RecordedEvent, StoreError>> {
        self.read_stream(stream, from_version)
            .try_take_while(move |event| std::future::ready(Ok(event.stream_version <= to_version)))
            .boxed()
    }

    /// Up to `limit` events of the global log after `after`, in global order.
    ///
    /// A store that meets a stored event it cannot read ([`StoreError::Malformed`]) returns the
    /// events before it; when it is the first, the error, which names its position: a reader
    /// that must go on can resume after that position.
    async fn read_all(
        &self,
        after: Position,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError>;

    /// The stored event with id `event_id`, if any.
    async fn read_event(&self, event_id: Uuid) -> Result<Option<RecordedEvent>, StoreError>;

    /// Up to `limit` events carrying `correlation_id`, in global order: one piece of work
    /// (a request, a saga's workflow) across every stream it touched. Unlike `read_all`, it
    /// may include events a global-log reader cannot see yet; it is for tracing, not for
    /// following.
    async fn read_correlated(
        &self,
        correlation_id: Uuid,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError>;

    /// The stream's current version, `None` when it does not exist.
    async fn stream_version(&self, stream: &StreamId) -> Result<Option<u64>, StoreError>;

    /// The position of the last event a reader of the global log can see now; `START` when the
    /// log is empty.
    async fn head(&self) -> Result<Position, StoreError>;

    /// The upcasters readers of this store lift old events through: the one place an
    /// application registers them. Repositories, projection runners and saga runners made over
    /// the store use these unless given others. None by default.
    fn upcasters(&self) -> Arc<Upcasters> {
        no_upcasters()
    }

    /// Collects a stream's events from `from_version` on (convenient for short streams).
    async fn read_stream_to_vec(
        &self,
        stream: &StreamId,
        from_version: u64,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.read_stream(stream, from_version).try_collect().await
    }
}

/// The largest schema version a store keeps (PostgreSQL stores it as `integer`).
pub const MAX_SCHEMA_VERSION: u32 = i32::MAX as u32;

/// Checks what every store refuses before it writes anything: an empty type name, schema version
/// 0 or above [`MAX_SCHEMA_VERSION`], or the same event id twice in one append.
pub fn validate_append(stream: &StreamId, events: &[NewEvent]) -> Result<(), StoreError> {
    let mut seen = HashSet::with_capacity(events.len());
    for event in events {
        let invalid = |reason: &str| StoreError::InvalidEvent {
            event_id: event.event_id,
            stream: stream.clone(),
            reason: reason.to_owned(),
        };
        if event.event_type.is_empty() {
            return Err(invalid("empty event type"));
        }
        if event.event_type.contains('\0') {
            return Err(invalid("event type contains a NUL character"));
        }
        if crate::lifecycle::is_store_type(&event.event_type) {
            // A forged tombstone would reset an aggregate mid-stream.
            return Err(invalid(
                "event types starting with `$` are the store's own (such as the tombstone of a \
                 deleted stream)",
            ));
        }
        if event.schema_version == 0 {
            return Err(invalid("schema versions start at 1"));
        }
        if event.schema_version > MAX_SCHEMA_VERSION {
            return Err(invalid(&format!(
                "schema version {} is above {MAX_SCHEMA_VERSION}, the largest a store keeps",
                event.schema_version
            )));
        }
        if !seen.insert(event.event_id) {
            return Err(invalid("the same event id appears twice in one append"));
        }
    }
    Ok(())
}

/// Decides whether `stored` events (those of an append's ids that are already in the store,
/// looked up by id) make the append a safe repeat of an earlier one.
///
/// Returns `Ok(Some(result))` for a repeat, `Ok(None)` when none of the ids is stored, and
/// [`StoreError::EventIdReused`] for any other reuse. Shared by every store so that they all
/// judge repeats the same way.
pub fn judge_repeat(
    stream: &StreamId,
    events: &[NewEvent],
    stored: &[RecordedEvent],
) -> Result<Option<AppendResult>, StoreError> {
    if stored.is_empty() {
        return Ok(None);
    }
    let reused = |event: &NewEvent, reason: String| StoreError::EventIdReused {
        event_id: event.event_id,
        stream: stream.clone(),
        reason,
    };
    let mut positions = Vec::with_capacity(events.len());
    let mut versions = Vec::with_capacity(events.len());
    for event in events {
        let Some(original) = stored.iter().find(|s| s.event_id == event.event_id) else {
            return Err(StoreError::EventIdReused {
                event_id: stored[0].event_id,
                stream: stream.clone(),
                reason: format!(
                    "the append mixes stored ids with ids that are not stored, such as {}",
                    event.event_id
                ),
            });
        };
        if original.stream_id != *stream {
            return Err(reused(
                event,
                format!("it is stored in stream {}", original.stream_id),
            ));
        }
        if original.event_type != event.event_type
            || original.schema_version != event.schema_version
        {
            return Err(reused(
                event,
                format!(
                    "it is stored as {} v{}, the append has {} v{}",
                    original.event_type,
                    original.schema_version,
                    event.event_type,
                    event.schema_version
                ),
            ));
        }
        if !same_json(original.payload.get(), event.payload.get()) {
            return Err(reused(event, "it is stored with another payload".into()));
        }
        positions.push(original.position);
        versions.push(original.stream_version);
    }
    let contiguous = versions.windows(2).all(|w| w[1] == w[0] + 1);
    if !contiguous {
        return Err(reused(
            &events[0],
            "the ids are stored, but not as one append in this order".into(),
        ));
    }
    Ok(Some(AppendResult {
        first_version: versions[0],
        last_version: versions[versions.len() - 1],
        positions,
        deduplicated: true,
    }))
}

/// JSON equality that ignores formatting and key order (a store may normalise both).
fn same_json(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    match (
        serde_json::from_str::<serde_json::Value>(a),
        serde_json::from_str::<serde_json::Value>(b),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// The empty registry, shared.
pub(crate) fn no_upcasters() -> Arc<Upcasters> {
    static EMPTY: OnceLock<Arc<Upcasters>> = OnceLock::new();
    Arc::clone(EMPTY.get_or_init(|| Arc::new(Upcasters::new())))
}
