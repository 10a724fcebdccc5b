//! Stream lifecycle: soft deletion with a tombstone, deliberate recreation, and truncation of
//! events a snapshot covers. Archiving and hard deletion are maintenance of the PostgreSQL store
//! (`es_postgres`); see docs/lifecycle.md.

use async_trait::async_trait;
use serde_json::value::RawValue;

use crate::{AppendResult, EventStore, ExpectedVersion, NewEvent, StoreError, StreamId};

/// The type of the tombstone [`StreamLifecycle::delete_stream`] appends to a deleted stream.
/// Types starting with `$` are the store's own: readers of the global log that select their own
/// types (projections, sagas, the relay) pass over it, and the repository starts a recreated
/// stream's state afresh at it.
pub const STREAM_DELETED: &str = "$StreamDeleted";

/// Why [`StreamLifecycle::truncate_before`] refused; see [`StoreError::TruncationRefused`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TruncationRefusal {
    /// No snapshot of the stream at or after the version before the truncation point: a load
    /// could not rebuild the hidden events' state.
    #[error("no snapshot covers the hidden events (newest snapshot: {})", fmt_snapshot(*.newest))]
    NoCoveringSnapshot {
        /// The stream version of the newest snapshot kept, if any.
        newest: Option<u64>,
    },
    /// The truncation point is past the stream's newest event, which always stays readable.
    #[error("the stream is at version {version}; its newest event stays readable")]
    BeyondEnd {
        /// The stream's version.
        version: u64,
    },
    /// The stream does not exist.
    #[error("the stream does not exist")]
    NoStream,
}

fn fmt_snapshot(newest: Option<u64>) -> String {
    newest.map_or_else(|| "none".to_owned(), |v| format!("version {v}"))
}

/// The tombstone appended when a stream whose last event is at `last_version` is deleted.
pub fn tombstone(last_version: u64) -> NewEvent {
    let payload = RawValue::from_string(format!("{{\"last_version\":{last_version}}}"))
        .unwrap_or_else(|_| empty_object());
    NewEvent::new(STREAM_DELETED, 1, payload)
}

fn empty_object() -> Box<RawValue> {
    // `{}` is valid JSON; the fallback of a fallback is never taken.
    RawValue::from_string("{}".to_owned()).unwrap_or_default()
}

/// Whether `event_type` is one of the store's own (it starts with `$`, as the tombstone's
/// does): appends refuse such types, and the schema gate and readers' type checks pass over
/// them.
pub fn is_store_type(event_type: &str) -> bool {
    event_type.starts_with('$')
}

/// Whether `event_type` is a tombstone's.
pub fn is_tombstone(event_type: &str) -> bool {
    event_type == STREAM_DELETED
}

/// Deleting, recreating and truncating streams. Implemented by the in-memory and the PostgreSQL
/// store; `es_core::testing::lifecycle` checks both the same way.
///
/// Rules every implementation holds:
/// - [`delete_stream`](Self::delete_stream) appends a tombstone event ([`STREAM_DELETED`]) at
///   the next version, under the same expected-version check and the same per-stream
///   serialisation as an append: a delete racing appends is ordered before or after each of
///   them, never between the events of one. The global log keeps every event, the tombstone
///   included, so its readers see the deletion and skip nothing.
/// - After a delete, `read_stream`, `read_stream_range`, `stream_version` and `append` on the
///   stream fail with [`StoreError::StreamDeleted`] naming it; `read_all` and `read_event` still
///   return its events.
/// - [`recreate_stream`](Self::recreate_stream) is the one way to write to a deleted stream
///   again. Versions go on after the tombstone, and reads start at the tombstone, so a reader
///   sees where the new life begins (the repository starts from the default state there).
/// - [`truncate_before`](Self::truncate_before) hides the events before a version from stream
///   reads when a snapshot covers them; the events stay in the store and in the global log.
#[async_trait]
pub trait StreamLifecycle: EventStore {
    /// Deletes `stream` if it is at the `expected` version: appends a tombstone and refuses
    /// reads and appends from then on. Returns the tombstone's append.
    ///
    /// A stream that does not exist cannot be deleted ([`StoreError::Conflict`] with no actual
    /// version); a deleted one again is [`StoreError::StreamDeleted`], which a caller retrying
    /// after an unknown outcome may take for success.
    async fn delete_stream(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
    ) -> Result<AppendResult, StoreError>;

    /// Appends `events` to a deleted (or absent) stream, bringing it back. A stream that is
    /// live is refused with [`StoreError::Conflict`] (expected [`ExpectedVersion::NoStream`]),
    /// so of two racing recreations one wins. Repeating a recreation's event ids after an
    /// unknown outcome returns the original result, as a repeated append does. An empty
    /// `events` writes nothing and only checks that the stream is deleted or absent.
    async fn recreate_stream(
        &self,
        stream: &StreamId,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError>;

    /// Hides the events of `stream` before version `before` from stream reads: `read_stream`
    /// starts at `before`, and a range entirely before it is [`StoreError::StreamTruncated`].
    /// Requires a snapshot at version `before - 1` or later (the repository loads from it), and
    /// `before` at most the stream's version (its newest event stays readable); otherwise
    /// [`StoreError::TruncationRefused`]. A truncation point never moves back: a smaller
    /// `before` than the current one changes nothing. Returns the truncation point in effect.
    async fn truncate_before(&self, stream: &StreamId, before: u64) -> Result<u64, StoreError>;
}
