//! Events leave the database: a relay from the event store's global log to a message broker,
//! and an inbox that makes a consumer's handling of a redelivered message a no-op.
//!
//! A [`Relay`] is a projection whose read model is a broker: a
//! [`ProjectionRunner`](es_postgres::ProjectionRunner) runs it, so it catches up, follows the
//! log live, runs as one active instance among several processes, splits into parts and rides
//! out database and broker outages exactly as projections do. Each batch is published, and
//! acknowledged by the broker, before its checkpoint commits. The
//! [`JetStreamPublisher`] (feature `nats`, on by default) makes what the stream already holds
//! recognisable, so that nothing is published twice, however long the relay was down.
//!
//! # Layout
//! - `relay.rs`: [`Relay`]: selecting events (categories, types), the payload form, topics,
//!   a mapping hook for integration events.
//! - `message.rs`: [`Message`], its [`header`]s, and the [`Mark`] a relay reads back.
//! - `publisher.rs`: the [`Publisher`] trait a broker implements.
//! - `nats/`: [`JetStreamPublisher`], and [`JetStreamInbox`], a pull-consumer helper.
//! - `rabbitmq/`: [`RabbitMqPublisher`] and [`RabbitMqInbox`] (feature `rabbitmq`, on by default).
//! - `inbox.rs`: [`Inbox`]: a consumer records each message id in its own transaction.
//! - `consumer.rs`: [`Received`] messages and the [`Handler`] consumer helpers call.
//! - `error.rs`: [`RelayError`].
//!
//! # Example
//! ```no_run
//! # #[cfg(feature = "nats")]
//! # async fn run<AccountEvent: es_core::DomainEvent>(
//! #     store: es_postgres::PgEventStore,
//! # ) -> Result<(), Box<dyn std::error::Error>> {
//! use es_postgres::ProjectionRunner;
//! use es_relay::{JetStreamPublisher, PayloadForm, Relay};
//!
//! let nats = async_nats::connect("127.0.0.1:4222").await?;
//! let publisher = JetStreamPublisher::new(nats, "BANK", "bank").await?;
//! let relay = Relay::<AccountEvent>::new(&store, "bank-to-nats", publisher)
//!     .categories(["account"])
//!     .payload(PayloadForm::Current);
//! // Publishes every account event on `bank.account.{type}`, then follows the log.
//! ProjectionRunner::new(store, relay).run(std::future::pending()).await?;
//! # Ok(())
//! # }
//! ```

mod consumer;
mod error;
mod inbox;
mod message;
#[cfg(feature = "nats")]
mod nats;
mod publisher;
#[cfg(feature = "rabbitmq")]
mod rabbitmq;
mod relay;

/// Re-exported for implementing [`Handler`] and [`Publisher`]: `#[es_relay::async_trait]`.
pub use async_trait::async_trait;
pub use consumer::{Handler, Received, Replay};
pub use error::RelayError;
pub use inbox::{Inbox, InboxDeadLetter};
pub use message::{
    Mark, Message, decode_header_value, format_position, header, header_value, parse_position,
    topic_segment,
};
#[cfg(feature = "nats")]
pub use nats::{JetStreamInbox, JetStreamPublisher};
pub use publisher::Publisher;
#[cfg(feature = "rabbitmq")]
pub use rabbitmq::{RabbitMqInbox, RabbitMqPublisher};
pub use relay::{Outgoing, PayloadForm, Relay};

#[cfg(feature = "nats")]
/// The NATS client, re-exported: publishers and consumer helpers take its types.
pub use async_nats;
#[cfg(feature = "rabbitmq")]
/// The AMQP client, re-exported: the RabbitMQ consumer helper takes its channels.
pub use lapin;

/// docs/relay.md: every Rust block in it is compiled as a doctest of this crate (it needs the
/// broker clients, which the main example does not build).
#[cfg(all(doctest, feature = "nats"))]
pub mod guide {
    #[doc = include_str!("../../docs/relay.md")]
    pub struct Relay;
}
