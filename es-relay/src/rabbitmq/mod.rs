//! RabbitMQ: the relay's publisher (publisher confirms) and a consumer helper with the inbox
//! (manual acks, bounded redelivery, then a dead letter and the queue's dead-letter exchange).

mod consumer;
mod publisher;

pub use consumer::RabbitMqInbox;
pub use publisher::RabbitMqPublisher;

const BROKER: &str = "RabbitMQ";

fn unavailable(error: impl std::error::Error + Send + Sync + 'static) -> crate::RelayError {
    crate::RelayError::Unavailable {
        broker: BROKER,
        source: Box::new(error),
    }
}
