//! The envelope every stored event travels in.

use chrono::{DateTime, Utc};
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::{DecodeError, DomainEvent, Metadata, Position, StreamId};

/// A stored event: its identity, place in its stream and in the global log, type and schema
/// version, when it was recorded, its tracing context, metadata and payload.
///
/// `P` is the payload: raw JSON as read from a store ([`RecordedEvent`]) or a typed event after
/// decoding.
#[derive(Clone, Debug)]
pub struct Envelope<P> {
    /// Unique id of the event; the idempotency key of appends.
    pub event_id: Uuid,
    /// The stream the event belongs to.
    pub stream_id: StreamId,
    /// The event's 1-based version in its stream.
    pub stream_version: u64,
    /// The event's place in the global log.
    pub position: Position,
    /// The event type name.
    pub event_type: String,
    /// The schema version the payload is at.
    pub schema_version: u32,
    /// When the store wrote the event, by the store's clock (PostgreSQL: the database's
    /// clock when the append statement inserted it).
    pub recorded_at: DateTime<Utc>,
    /// The id shared by every message of one piece of work.
    pub correlation_id: Uuid,
    /// The id of the command or event that caused this one.
    pub causation_id: Option<Uuid>,
    /// Free-form metadata.
    pub metadata: Metadata,
    /// Which of the events an upcaster split one stored event into this is: 0 for an event as
    /// stored (or the first of a split), 1, 2... for the others, which share the stored event's
    /// id. `(event_id, split_index)` identifies a decoded event.
    pub split_index: u32,
    /// The event's data.
    pub payload: P,
}

/// An event as a store returns it: the payload still JSON text at its stored schema version.
pub type RecordedEvent = Envelope<Payload>;

/// An event's payload as stored: JSON text, kept as the store returned it.
///
/// Not parsed when read: a store's column already holds JSON (PostgreSQL's `json` type checks
/// it on the way in), and decoding into a typed event parses it once, where it is needed. Text
/// that is not JSON (a hand-written row) fails that decoding with a [`DecodeError`] naming the
/// event, never earlier.
#[derive(Clone, PartialEq, Eq)]
pub struct Payload(Box<str>);

impl Payload {
    /// Payload text a store read back from where it keeps JSON.
    pub fn from_stored(text: impl Into<Box<str>>) -> Self {
        Self(text.into())
    }

    /// The JSON text.
    pub fn get(&self) -> &str {
        &self.0
    }
}

impl From<Box<RawValue>> for Payload {
    fn from(raw: Box<RawValue>) -> Self {
        Self(Box::<str>::from(raw))
    }
}

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::fmt::Display for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl<P> Envelope<P> {
    /// Who this event is, for error messages and logs.
    pub fn event_ref(&self) -> EventRef {
        EventRef {
            event_id: self.event_id,
            stream_id: self.stream_id.clone(),
            stream_version: self.stream_version,
            position: self.position,
            event_type: self.event_type.clone(),
            schema_version: self.schema_version,
        }
    }

    /// Replaces the payload, keeping the rest of the envelope.
    pub fn map<Q>(self, f: impl FnOnce(P) -> Q) -> Envelope<Q> {
        Envelope {
            event_id: self.event_id,
            stream_id: self.stream_id,
            stream_version: self.stream_version,
            position: self.position,
            event_type: self.event_type,
            schema_version: self.schema_version,
            recorded_at: self.recorded_at,
            correlation_id: self.correlation_id,
            causation_id: self.causation_id,
            metadata: self.metadata,
            split_index: self.split_index,
            payload: f(self.payload),
        }
    }

    /// A copy of the envelope around another payload; this one's payload is not copied.
    pub fn with_payload<Q>(&self, payload: Q) -> Envelope<Q> {
        Envelope {
            event_id: self.event_id,
            stream_id: self.stream_id.clone(),
            stream_version: self.stream_version,
            position: self.position,
            event_type: self.event_type.clone(),
            schema_version: self.schema_version,
            recorded_at: self.recorded_at,
            correlation_id: self.correlation_id,
            causation_id: self.causation_id,
            metadata: self.metadata.clone(),
            split_index: self.split_index,
            payload,
        }
    }
}

impl RecordedEvent {
    /// Decodes the payload into `E`, which must be at `E`'s current schema version (use the
    /// upcasters' decode to lift older events first).
    pub fn decode<E: DomainEvent>(self) -> Result<Envelope<E>, EventDecodeError> {
        match E::decode(&self.event_type, self.payload.get()) {
            Ok(event) => Ok(self.map(|_| event)),
            Err(source) => Err(EventDecodeError {
                event: Box::new(self.event_ref()),
                source,
            }),
        }
    }
}

/// Names one stored event: enough for an operator to find it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventRef {
    /// Its id.
    pub event_id: Uuid,
    /// Its stream.
    pub stream_id: StreamId,
    /// Its version in the stream.
    pub stream_version: u64,
    /// Its global position.
    pub position: Position,
    /// Its type name.
    pub event_type: String,
    /// Its stored schema version.
    pub schema_version: u32,
}

impl std::fmt::Display for EventRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "event {} ({} v{}) in stream {} at version {}, position {}",
            self.event_id,
            self.event_type,
            self.schema_version,
            self.stream_id,
            self.stream_version,
            self.position
        )
    }
}

/// A stored event that could not become a typed event.
#[derive(Debug, thiserror::Error)]
#[error("cannot decode {event}: {source}")]
pub struct EventDecodeError {
    /// The event that failed (boxed to keep `Result`s small on the happy path).
    pub event: Box<EventRef>,
    /// Why.
    #[source]
    pub source: DecodeError,
}
