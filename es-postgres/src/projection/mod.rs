//! Projections into PostgreSQL read models: the trait a projection implements, what happens
//! when it fails, and the runner that feeds it the global log.

mod batch;
mod blue_green;
mod lock;
mod parked;
mod read_model;
mod readable;
mod rebuild;
mod runner;
mod sql;
pub(crate) mod supervise;

use std::time::Duration;

use async_trait::async_trait;
use es_core::{BoxError, DomainEvent, Envelope, EventRef, RecordedEvent, StoreError};
use sqlx::PgConnection;

pub use lock::LockHolder;
pub use parked::{ParkedEvent, ReplayReport};
pub use read_model::ReadModel;
pub use readable::UnreadableType;
pub use runner::{Progress, ProjectionRunner, ProjectionStatus, RunnerState};

/// A read model kept in PostgreSQL, fed the global log in order.
///
/// Each `apply` runs inside the runner's transaction; the runner commits the projection's
/// checkpoint in that same transaction, so an event's effect and the checkpoint past it commit
/// together or not at all: exactly once in effect, whatever crashes.
#[async_trait]
pub trait PgProjection: Send + Sync + 'static {
    /// The events it consumes (upcast to their current schema before `apply`).
    type Event: DomainEvent;

    /// A unique name: the key of its checkpoint, parked events and lock.
    fn name(&self) -> &str;

    /// Whether it wants events of this stream category; all, by default. Events it does not
    /// want, and events whose type is not one of `Self::Event`'s, are passed over undecoded (the
    /// checkpoint still moves past them).
    fn wants_category(&self, category: &str) -> bool {
        let _ = category;
        true
    }

    /// Event types of the categories it reads that it deliberately does not take; none by
    /// default. The runner passes over events whose type neither `Self::Event` knows nor an
    /// upcaster lifts, and warns once per type it was not told to ignore: a renamed type
    /// without an upcaster would otherwise vanish from the read model in silence.
    fn ignores(&self, event_type: &str) -> bool {
        let _ = event_type;
        false
    }

    /// The tables it writes, when it can be rebuilt blue/green
    /// ([`ProjectionRunner::rebuild_blue_green`]); `None` (the default) when it cannot.
    ///
    /// A projection that returns them must write only those tables, schema-qualified with the
    /// schema it was built for, so that a second instance built for another schema writes a
    /// complete next version there.
    fn read_model(&self) -> Option<ReadModel> {
        None
    }

    /// Hands a batch's events to something outside this database before the batch commits:
    /// what a relay to a message broker does, waiting for the broker's acknowledgement. None,
    /// by default.
    ///
    /// The runner calls it before the batch's transaction begins, so no transaction (and no
    /// transaction id holding back the cluster's readers) stays open while it waits. It gets
    /// the runner's key (the projection's name, with `#{index}/{parts}` for a part: what tells
    /// the parts' deliveries apart) and the events of the batch the projection wants, as
    /// stored (before upcasting). The batch's
    /// `apply` writes and its checkpoint commit only after it returned `Ok`; when it fails,
    /// nothing of the batch commits. It must therefore be idempotent: after a crash, a retry or
    /// a takeover by another instance, the same events are handed to it again. A transient
    /// error (see [`StoreError::is_transient`]: return
    /// [`StoreError::Backend`] with `transient: true` for a broker that is away) is ridden out
    /// by [`ProjectionRunner::run`] with backoff; any other stops the runner naming the batch's
    /// first event.
    async fn before_commit(&self, key: &str, events: &[&RecordedEvent]) -> Result<(), BoxError> {
        let _ = (key, events);
        Ok(())
    }

    /// Whether [`before_commit`](Self::before_commit) does anything; `false` by default, which
    /// spares the runner collecting each batch's events for it.
    ///
    /// A projection that delivers never parks an event (a parked event would never reach the
    /// other system, and a replay would deliver it out of order): its runner's default error
    /// policy stops instead (three retries, then stop), and a runner told to park refuses to
    /// start ([`ProjectionError::Unsupported`]). Its parts each deliver their own events;
    /// a rebuild, which runs all parts in one runner, is refused for a split one.
    fn delivers(&self) -> bool {
        false
    }

    /// Whether `apply` and `apply_batch` do anything; `true` by default. A projection that only
    /// delivers (a relay, whose "read model" is elsewhere) returns `false`, and the runner
    /// spares decoding each batch for them.
    fn applies(&self) -> bool {
        true
    }

    /// Creates the read model's tables if they do not exist.
    async fn setup(&self, conn: &mut PgConnection) -> Result<(), BoxError>;

    /// Removes every row of the read model, for an in-place rebuild.
    async fn reset(&self, conn: &mut PgConnection) -> Result<(), BoxError>;

    /// Applies one event to the read model, within the runner's transaction.
    async fn apply(
        &self,
        conn: &mut PgConnection,
        event: &Envelope<Self::Event>,
    ) -> Result<(), BoxError>;

    /// Applies a batch of events, in order, within the runner's transaction. By default one
    /// [`apply`](Self::apply) after another; override it to write a batch in a few statements
    /// (aggregate in memory, one upsert per row touched), which is what makes rebuilds fast.
    ///
    /// When it fails, the runner rolls the batch back and applies its events one by one with
    /// `apply`, so the error policy can single out the failing event.
    async fn apply_batch(
        &self,
        conn: &mut PgConnection,
        events: &[Envelope<Self::Event>],
    ) -> Result<(), BoxError> {
        for event in events {
            self.apply(conn, event).await?;
        }
        Ok(())
    }
}

/// What a runner does when applying an event fails (or the event does not decode).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ErrorPolicy {
    /// How many more times to try the event, waiting `backoff`, doubling, in between.
    pub retries: u32,
    /// The first wait between tries.
    pub backoff: Duration,
    /// What to do once the retries are spent.
    pub then: OnFailure,
}

/// The last resort of an [`ErrorPolicy`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnFailure {
    /// Stop the runner with an error naming the event; nothing of its batch is committed.
    Stop,
    /// Record the event in `parked_events` with its error and go on; it can be replayed later.
    Park,
    /// Log the event and go on.
    Skip,
}

impl ErrorPolicy {
    /// Stop at the first failure: the default for rebuilds.
    pub const STOP: ErrorPolicy = ErrorPolicy {
        retries: 0,
        backoff: Duration::ZERO,
        then: OnFailure::Stop,
    };

    /// Try `retries` more times with exponential backoff from `backoff`, then park the event.
    pub fn retry_then_park(retries: u32, backoff: Duration) -> Self {
        Self {
            retries,
            backoff,
            then: OnFailure::Park,
        }
    }
}

impl Default for ErrorPolicy {
    /// Three retries from 100 ms, then park.
    fn default() -> Self {
        Self::retry_then_park(3, Duration::from_millis(100))
    }
}

/// What stops a projection runner.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProjectionError {
    /// An event could not be applied and the policy said stop.
    #[error("projection {projection} stopped at {event}: {source}")]
    Failed {
        /// The projection.
        projection: String,
        /// The event it stopped at.
        event: Box<EventRef>,
        /// Why.
        #[source]
        source: BoxError,
    },
    /// A stored row could not be read as an event (written around the store's checks) and
    /// the policy said stop. The error names its position and what was wrong.
    #[error("projection {projection} stopped at a stored event it cannot read: {source}")]
    Unreadable {
        /// The projection.
        projection: String,
        /// The store's error, naming the row.
        #[source]
        source: StoreError,
    },
    /// Stored event types the projection cannot read (see
    /// [`ProjectionRunner::check_stored_types`]): running it would pass over or park them.
    #[error(
        "projection {projection} cannot read {} stored event type(s): {}",
        types.len(),
        types.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
    )]
    UnreadableTypes {
        /// The projection.
        projection: String,
        /// Each type, and why.
        types: Vec<UnreadableType>,
    },
    /// A blue/green rebuild was asked of projections that do not allow it.
    #[error("projection {projection} cannot be rebuilt blue/green: {reason}")]
    BlueGreen {
        /// The projection.
        projection: String,
        /// What is missing.
        reason: String,
    },
    /// What was asked cannot be done with a projection that delivers outside the database
    /// (a relay: [`PgProjection::delivers`]): splitting it into parts, parking its events or
    /// replaying parked ones.
    #[error("projection {projection} delivers outside the database, so {reason}")]
    Unsupported {
        /// The projection.
        projection: String,
        /// What cannot be done, and what to do instead.
        reason: String,
    },
    /// The runner is configured with another number of parts than the store records for the
    /// projection: running it would apply some events twice and others never.
    #[error(
        "projection {projection} is split into {stored} part(s) in the store, but this runner is \
         configured for {configured}: run it with {stored}, or rebuild it with {configured} \
         (a rebuild re-splits it)"
    )]
    Layout {
        /// The projection.
        projection: String,
        /// The runner's number of parts.
        configured: u32,
        /// The store's.
        stored: u32,
    },
    /// The session holding the runner's lock ended (killed, restarted, cut off): it no longer
    /// holds the projection and applies nothing more. Transient: a supervised run contends
    /// for the lock again.
    #[error("projection {projection} lost its lock: {reason}")]
    LockLost {
        /// The projection.
        projection: String,
        /// What was seen.
        reason: String,
    },
    /// The store failed.
    #[error("projection {projection}: {source}")]
    Store {
        /// The projection.
        projection: String,
        /// The store's error.
        #[source]
        source: BoxError,
        /// Whether retrying may get past it (see [`ProjectionError::is_transient`]).
        transient: bool,
    },
}

impl ProjectionError {
    /// Whether retrying may get past the error: a lost connection or lock, the database
    /// restarting, a serialization failure, a pool timeout (the classification is documented
    /// in docs/operations.md, "Faults"). [`ProjectionRunner::run`] rides these out by itself;
    /// everything else ends it.
    pub fn is_transient(&self) -> bool {
        match self {
            ProjectionError::LockLost { .. } => true,
            ProjectionError::Store { transient, .. } => *transient,
            _ => false,
        }
    }
}
