//! NATS JetStream: the relay's publisher and a pull-consumer helper with the inbox.

mod consumer;
mod publisher;

pub use consumer::JetStreamInbox;
pub use publisher::JetStreamPublisher;

const BROKER: &str = "NATS JetStream";

fn unavailable(error: impl std::error::Error + Send + Sync + 'static) -> crate::RelayError {
    crate::RelayError::Unavailable {
        broker: BROKER,
        source: Box::new(error),
    }
}
