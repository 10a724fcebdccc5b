//! The broker side of a relay: what a publisher promises.

use async_trait::async_trait;

use crate::{Message, RelayError};

/// Publishes a relay's messages to a broker.
///
/// A relay hands it each batch in global-log order and moves its checkpoint only after
/// `publish` returned `Ok`; a batch may come again after a crash or a retry, so a publisher
/// must not publish twice what the broker already acknowledged.
#[async_trait]
pub trait Publisher: Send + Sync + 'static {
    /// The broker's name, for errors and logs.
    fn broker(&self) -> &'static str;

    /// Publishes `messages` for `relay`, in order (at least within each event stream), and
    /// returns once the broker acknowledged every one.
    async fn publish(&self, relay: &str, messages: &[Message]) -> Result<(), RelayError>;
}
