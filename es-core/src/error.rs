//! Errors of the event store contract and of command handling.

use std::error::Error as StdError;

use uuid::Uuid;

use crate::{
    ConflictError, EventDecodeError, InvalidStreamId, Position, StreamId, TruncationRefusal,
};

/// A boxed error from a store's backend (a database driver, an I/O layer).
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// What an [`EventStore`](crate::EventStore) operation can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The stream was not at the expected version; nothing was written.
    #[error(transparent)]
    Conflict(#[from] ConflictError),
    /// An event id in the append is already stored with other content, in another stream, or
    /// beside ids that are not stored; nothing was written.
    #[error(
        "event id {event_id} in the append to stream {stream} is already stored as another event ({reason})"
    )]
    EventIdReused {
        /// The offending id.
        event_id: Uuid,
        /// The stream the append was for.
        stream: StreamId,
        /// What differs.
        reason: String,
    },
    /// An event in an append is not storable (empty type name, schema version 0, an id twice in
    /// one append); nothing was written.
    #[error("invalid event {event_id} for stream {stream}: {reason}")]
    InvalidEvent {
        /// The offending event.
        event_id: Uuid,
        /// The stream the append was for.
        stream: StreamId,
        /// What is wrong.
        reason: String,
    },
    /// A stored row could not be read back as an event.
    #[error("malformed stored event{}{}: field {field}: {reason}", fmt_id(.event_id), fmt_pos(.position))]
    Malformed {
        /// The event's id, when it could be read.
        event_id: Option<Uuid>,
        /// The event's position, when it could be read.
        position: Option<Position>,
        /// The column or field that was wrong.
        field: &'static str,
        /// What was wrong with it.
        reason: String,
    },
    /// The stream was deleted (see [`StreamLifecycle::delete_stream`](crate::StreamLifecycle)):
    /// reads and appends are refused until it is deliberately recreated
    /// ([`StreamLifecycle::recreate_stream`](crate::StreamLifecycle)); nothing was written.
    #[error("stream {stream} is deleted")]
    StreamDeleted {
        /// The deleted stream.
        stream: StreamId,
    },
    /// The stream was archived by an operator: its events left the live log and are read on
    /// request only (the PostgreSQL store's `read_archived_stream`); nothing was written.
    #[error("stream {stream} is archived")]
    StreamArchived {
        /// The archived stream.
        stream: StreamId,
    },
    /// A read asked only for events a truncation hides, or a load found the events before
    /// `before` hidden with no usable snapshot covering them.
    #[error("stream {stream} is truncated: its events before version {before} are hidden")]
    StreamTruncated {
        /// The truncated stream.
        stream: StreamId,
        /// The first version still readable.
        before: u64,
    },
    /// [`StreamLifecycle::truncate_before`](crate::StreamLifecycle) was refused; nothing changed.
    #[error("cannot truncate stream {stream} before version {before}: {reason}")]
    TruncationRefused {
        /// The stream.
        stream: StreamId,
        /// The version asked to become the first readable one.
        before: u64,
        /// Why it was refused.
        reason: TruncationRefusal,
    },
    /// The backend failed; `transient` says whether retrying the same call may succeed (a dropped
    /// connection, a timeout, a serialization failure). After a transient failure of an append
    /// the outcome is unknown: re-send the same event ids, which is safe.
    #[error("event store backend failed{}: {source}", if *.transient { " (transient)" } else { "" })]
    Backend {
        /// The backend's error.
        #[source]
        source: BoxError,
        /// Whether the same call may succeed when retried.
        transient: bool,
    },
}

fn fmt_id(id: &Option<Uuid>) -> String {
    id.map(|id| format!(" {id}")).unwrap_or_default()
}

fn fmt_pos(position: &Option<Position>) -> String {
    position
        .map(|p| format!(" at position {p}"))
        .unwrap_or_default()
}

impl StoreError {
    /// Whether retrying may succeed: the same call after a dropped connection or a timeout,
    /// the whole transaction after a serialization failure.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::Backend {
                transient: true,
                ..
            }
        )
    }

    /// The conflict, when this is one.
    pub fn as_conflict(&self) -> Option<&ConflictError> {
        match self {
            StoreError::Conflict(conflict) => Some(conflict),
            _ => None,
        }
    }
}

/// What executing a command can fail with. `E` is the aggregate's own domain error, kept as the
/// user's type.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError<E: StdError + 'static> {
    /// The aggregate rejected the command.
    #[error("command rejected: {0}")]
    Domain(#[source] E),
    /// The stream kept changing under the command: the retries ran out, or the caller's own
    /// expected version did not hold.
    #[error(transparent)]
    Conflict(ConflictError),
    /// A stored event of the aggregate could not be decoded.
    #[error(transparent)]
    Decode(#[from] EventDecodeError),
    /// An event the aggregate emitted could not be encoded.
    #[error("cannot encode event {event_type}: {source}")]
    Encode {
        /// The type of the event.
        event_type: &'static str,
        /// The serializer's error.
        #[source]
        source: serde_json::Error,
    },
    /// The aggregate id does not make a valid stream id.
    #[error("invalid aggregate id: {0}")]
    InvalidId(#[from] InvalidStreamId),
    /// The store failed.
    #[error(transparent)]
    Store(StoreError),
}

impl<E: StdError + 'static> From<StoreError> for CommandError<E> {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Conflict(conflict) => CommandError::Conflict(conflict),
            other => CommandError::Store(other),
        }
    }
}
