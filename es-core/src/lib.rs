//! The domain model and runtime of the event-sourcing framework: aggregates that decide and
//! evolve, the envelope every stored event travels in, the [`EventStore`] contract, command
//! handling with optimistic concurrency, sagas, and an in-memory store.
//!
//! This crate does no I/O and knows nothing of SQL; `es-postgres` implements the store contract
//! on PostgreSQL and `es-macros` derives the traits below.
//!
//! # Layout
//! - [`Aggregate`] (`aggregate.rs`): `handle` decides on a command, `apply` evolves the state.
//! - [`DomainEvent`] (`event.rs`): names, versions and encodes events; [`NewEvent`] is one
//!   about to be appended.
//! - [`Envelope`] (`envelope.rs`): a stored event with ids, versions, position, time,
//!   correlation, causation and metadata; [`RecordedEvent`] is one with a raw payload.
//! - [`ExpectedVersion`] and [`ConflictError`] (`version.rs`): optimistic concurrency.
//! - [`EventStore`] (`store.rs`): append with an expected version, read a stream, read the
//!   global log from a [`Position`], read one event or one correlation id's events.
//! - [`CommandHandler`] (`command.rs`): load, decide, append, retry; idempotent commands and
//!   their follow-ups ([`CommandContext`]).
//! - [`Metadata`] (`metadata.rs`): an event's free-form JSON object.
//! - [`Saga`] (`saga.rs`): process managers reacting to events with commands, with deadlines;
//!   [`SagaRunner`] runs one in memory.
//! - [`Repository`] (`repository.rs`): load from the newest usable snapshot, upcast on read,
//!   temporal loads (as of a version or a time).
//! - [`Upcasters`] (`upcast.rs`): schema evolution of stored events.
//! - [`EventCatalogue`] (`catalogue.rs`): the event types the code reads, for a deploy's
//!   schema gate and for consumers of the published events.
//! - [`SnapshotStore`] and [`SnapshotPolicy`] (`snapshot.rs`).
//! - [`InMemoryEventStore`] (`memory.rs`): for tests and the quickstart.
//! - `testing` (feature `testing`): a given/when/then kit and the store conformance suite.
//!
//! # Example
//! ```
//! use std::sync::Arc;
//! use es_core::{Aggregate, CommandHandler, DomainEvent, DecodeError, EventType, InMemoryEventStore};
//! use serde::{Deserialize, Serialize};
//! use serde_json::value::RawValue;
//!
//! #[derive(Default)]
//! struct Account { balance: i64 }
//!
//! enum AccountCommand { Deposit(i64), Withdraw(i64) }
//!
//! #[derive(Debug, Serialize, Deserialize)]
//! enum AccountEvent { Deposited { amount: i64 }, Withdrawn { amount: i64 } }
//!
//! impl DomainEvent for AccountEvent {
//!     const TYPES: &'static [EventType] = &[
//!         EventType { name: "Deposited", version: 1 },
//!         EventType { name: "Withdrawn", version: 1 },
//!     ];
//!     fn event_type(&self) -> &'static str {
//!         match self { Self::Deposited { .. } => "Deposited", Self::Withdrawn { .. } => "Withdrawn" }
//!     }
//!     fn encode(&self) -> Result<Box<RawValue>, serde_json::Error> { es_core::encode_tagged(self) }
//!     fn decode(t: &str, p: &str) -> Result<Self, DecodeError> { Ok(es_core::decode_tagged(t, p)?) }
//! }
//!
//! #[derive(Debug, thiserror::Error)]
//! #[error("insufficient funds")]
//! struct InsufficientFunds;
//!
//! impl Aggregate for Account {
//!     const CATEGORY: &'static str = "account";
//!     type Command = AccountCommand;
//!     type Event = AccountEvent;
//!     type Error = InsufficientFunds;
//!
//!     fn decide(&self, command: &AccountCommand) -> Result<Vec<AccountEvent>, InsufficientFunds> {
//!         match *command {
//!             AccountCommand::Deposit(amount) => Ok(vec![AccountEvent::Deposited { amount }]),
//!             AccountCommand::Withdraw(amount) if amount > self.balance => Err(InsufficientFunds),
//!             AccountCommand::Withdraw(amount) => Ok(vec![AccountEvent::Withdrawn { amount }]),
//!         }
//!     }
//!
//!     fn apply(&mut self, event: &AccountEvent) {
//!         match event {
//!             AccountEvent::Deposited { amount } => self.balance += amount,
//!             AccountEvent::Withdrawn { amount } => self.balance -= amount,
//!         }
//!     }
//! }
//!
//! # futures_util::FutureExt::now_or_never(async {
//! let handler = CommandHandler::<Account>::new(Arc::new(InMemoryEventStore::new()));
//! handler.execute("alice", AccountCommand::Deposit(100)).await?;
//! let done = handler.execute("alice", AccountCommand::Withdraw(30)).await?;
//! assert_eq!((done.state.balance, done.version), (70, 2));
//! assert!(handler.execute("alice", AccountCommand::Withdraw(500)).await.is_err());
//! # Ok::<(), es_core::CommandError<InsufficientFunds>>(())
//! # }).unwrap().unwrap();
//! ```

mod aggregate;
mod catalogue;
mod command;
mod envelope;
mod error;
mod event;
mod lifecycle;
mod memory;
mod metadata;
mod position;
mod repository;
mod saga;
mod snapshot;
mod store;
mod stream;
mod upcast;
mod version;

#[cfg(feature = "otel")]
pub mod otel;
pub mod personal;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
pub mod trace;

pub use aggregate::Aggregate;
/// Re-exported for implementing [`CommandDispatcher`] and stores: `#[es_core::async_trait]`.
pub use async_trait::async_trait;
pub use catalogue::{CatalogueEntry, EventCatalogue};
pub use command::{CommandContext, CommandHandler, Executed, RetryPolicy, derived_event_id};
pub use envelope::{Envelope, EventDecodeError, EventRef, Payload, RecordedEvent};
pub use error::{BoxError, CommandError, StoreError};
/// `#[derive(Aggregate)]` and `#[derive(DomainEvent)]` (feature `derive`): see `es-macros`.
#[cfg(feature = "derive")]
pub use es_macros::{Aggregate, DomainEvent};
pub use event::{
    DecodeError, DomainEvent, EventType, NewEvent, current_version, decode_tagged, encode_tagged,
};
pub use lifecycle::{
    STREAM_DELETED, StreamLifecycle, TruncationRefusal, is_store_type, is_tombstone, tombstone,
};
pub use memory::InMemoryEventStore;
pub use metadata::{InvalidMetadata, Metadata};
pub use personal::{InMemoryKeyStore, KeyStore, Personal, PersonalData, SubjectKey};
pub use position::Position;
pub use repository::{Loaded, Repository};
pub use saga::{
    Cause, CommandDispatcher, Deadline, DuplicateDeadline, Issued, Saga, SagaRunner,
    ScheduledDeadline, issue, issue_on_deadline, rescheduled_deadlines, saga_command_id,
};
pub use snapshot::{InMemorySnapshotStore, Snapshot, SnapshotDue, SnapshotPolicy, SnapshotStore};
pub use store::{AppendResult, EventStore, MAX_SCHEMA_VERSION, judge_repeat, validate_append};
pub use stream::{InvalidStreamId, MAX_STREAM_ID_LEN, StreamId};
pub use upcast::{Upcasted, UpcasterError, Upcasters};
pub use version::{ConflictError, ExpectedVersion};

/// What `es-macros` expands to, so a crate using the derives needs no dependency on these
/// itself. Not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use serde_json;

    use crate::EventType;

    /// How many event types `parts` hold together.
    pub const fn count_event_types(parts: &[&[EventType]]) -> usize {
        let mut n = 0;
        let mut i = 0;
        while i < parts.len() {
            n += parts[i].len();
            i += 1;
        }
        n
    }

    /// `parts` joined into one list, for an event enum that flattens other event types into
    /// its own. Fails compilation (a panic in const evaluation) when two share a name, since a
    /// stored type name must decode to one variant.
    pub const fn join_event_types<const N: usize>(parts: &[&[EventType]]) -> [EventType; N] {
        let mut out = [EventType {
            name: "",
            version: 0,
        }; N];
        let mut n = 0;
        let mut i = 0;
        while i < parts.len() {
            let mut j = 0;
            while j < parts[i].len() {
                let next = parts[i][j];
                let mut k = 0;
                while k < n {
                    if same_name(out[k].name, next.name) {
                        panic!("two event types of this DomainEvent enum share a type name");
                    }
                    k += 1;
                }
                out[n] = next;
                n += 1;
                j += 1;
            }
            i += 1;
        }
        out
    }

    const fn same_name(a: &str, b: &str) -> bool {
        let (a, b) = (a.as_bytes(), b.as_bytes());
        if a.len() != b.len() {
            return false;
        }
        let mut i = 0;
        while i < a.len() {
            if a[i] != b[i] {
                return false;
            }
            i += 1;
        }
        true
    }
}
