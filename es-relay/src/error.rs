//! What a relay, a publisher or a consumer helper can fail with.

use es_core::{BoxError, EventRef, StoreError};

/// What stops a publish or a consume.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// The broker could not be reached or did not acknowledge in time; retrying may succeed.
    #[error("{broker} is unavailable: {source}")]
    Unavailable {
        /// Which broker.
        broker: &'static str,
        /// What was seen.
        #[source]
        source: BoxError,
    },
    /// The broker refused what was sent, and will refuse it again.
    #[error("{broker} refused the publish: {source}")]
    Refused {
        /// Which broker.
        broker: &'static str,
        /// What it said.
        #[source]
        source: BoxError,
    },
    /// The broker's stream holds messages this relay did not publish, after its own: the relay
    /// needs a stream of its own to know what it already published.
    #[error(
        "stream {stream} on {broker} holds a message (sequence {sequence}) that relay {relay} did \
         not publish; give the relay a stream of its own"
    )]
    Foreign {
        /// Which broker.
        broker: &'static str,
        /// The broker's stream.
        stream: String,
        /// The relay.
        relay: String,
        /// The foreign message's sequence.
        sequence: u64,
    },
    /// The mapping hook failed for an event.
    #[error("mapping {event} failed: {source}")]
    Map {
        /// The event.
        event: Box<EventRef>,
        /// Why.
        #[source]
        source: BoxError,
    },
    /// An event could not be turned into a message (decoding or upcasting it failed).
    #[error("{event} cannot be relayed: {source}")]
    Encode {
        /// The event.
        event: Box<EventRef>,
        /// Why.
        #[source]
        source: BoxError,
    },
    /// The database failed (the inbox, a dead-letter record).
    #[error("the database failed: {0}")]
    Database(#[from] es_postgres::sqlx::Error),
}

impl RelayError {
    /// Whether retrying may get past it: only [`RelayError::Unavailable`], and database
    /// errors the store classifies as transient.
    pub fn is_transient(&self) -> bool {
        match self {
            RelayError::Unavailable { .. } => true,
            RelayError::Database(error) => es_postgres::is_transient(error),
            _ => false,
        }
    }

    /// The error as a projection runner sees it: transient errors wrapped so that
    /// [`ProjectionRunner::run`](es_postgres::ProjectionRunner::run) rides them out.
    pub(crate) fn into_box(self) -> BoxError {
        if self.is_transient() {
            Box::new(StoreError::Backend {
                transient: true,
                source: Box::new(self),
            })
        } else {
            Box::new(self)
        }
    }
}
