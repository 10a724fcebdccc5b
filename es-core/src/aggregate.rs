//! Aggregates: the consistency boundary that decides on commands and evolves from events.

use crate::DomainEvent;

/// A consistency boundary in the domain: it decides whether a command is accepted, and which
/// events record that (`decide`), and rebuilds its state from those events (`apply`).
///
/// The state starts from [`Default`] and every stored event of the aggregate's stream is applied
/// to it in order. `apply` cannot fail and does no I/O: an event is a fact that already
/// happened, so the state must absorb it. Validation belongs in `decide`.
///
/// ```
/// use es_core::{Aggregate, DomainEvent, EventType, DecodeError};
/// # use serde::{Serialize, Deserialize};
/// # use serde_json::value::RawValue;
///
/// #[derive(Default)]
/// struct Counter { value: u64 }
///
/// #[derive(Debug, Serialize, Deserialize)]
/// enum CounterEvent { Incremented { by: u64 } }
///
/// impl DomainEvent for CounterEvent {
///     const TYPES: &'static [EventType] = &[EventType { name: "Incremented", version: 1 }];
///     fn event_type(&self) -> &'static str { "Incremented" }
///     fn encode(&self) -> Result<Box<RawValue>, serde_json::Error> { es_core::encode_tagged(self) }
///     fn decode(t: &str, p: &str) -> Result<Self, DecodeError> { Ok(es_core::decode_tagged(t, p)?) }
/// }
///
/// #[derive(Debug, thiserror::Error)]
/// #[error("increments must be positive")]
/// struct ZeroIncrement;
///
/// impl Aggregate for Counter {
///     const CATEGORY: &'static str = "counter";
///     type Command = u64;
///     type Event = CounterEvent;
///     type Error = ZeroIncrement;
///
///     fn decide(&self, by: &u64) -> Result<Vec<CounterEvent>, ZeroIncrement> {
///         if *by == 0 { return Err(ZeroIncrement); }
///         Ok(vec![CounterEvent::Incremented { by: *by }])
///     }
///
///     fn apply(&mut self, event: &CounterEvent) {
///         match event { CounterEvent::Incremented { by } => self.value += by }
///     }
/// }
/// ```
pub trait Aggregate: Default + Send + Sync + 'static {
    /// The stream category: the aggregate with id `42` lives in stream `"{CATEGORY}-42"`.
    const CATEGORY: &'static str;

    /// The version of the aggregate's snapshot format. Raise it whenever the state's serialized
    /// shape changes: snapshots written with another version are ignored, never misread.
    const SNAPSHOT_VERSION: u32 = 1;

    /// When a command handler snapshots this aggregate (with a snapshot store attached through
    /// [`Repository::with_snapshot_store`](crate::Repository::with_snapshot_store)). Never, by
    /// default.
    fn snapshot_policy() -> crate::SnapshotPolicy {
        crate::SnapshotPolicy::Never
    }

    /// The requests this aggregate decides on.
    type Command: Send + Sync;
    /// The facts it records.
    type Event: DomainEvent;
    /// Why it rejects a command; stays the user's type through the command handler.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Decides on a command: the events that record its effect, or a domain error.
    fn decide(&self, command: &Self::Command) -> Result<Vec<Self::Event>, Self::Error>;

    /// Evolves the state by one event.
    fn apply(&mut self, event: &Self::Event);
}
