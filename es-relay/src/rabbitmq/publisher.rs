//! The RabbitMQ publisher: persistent messages to a topic exchange, publisher confirms awaited
//! in order, never two messages of one event stream in flight at once.

use std::collections::HashMap;

use async_trait::async_trait;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use lapin::{Confirmation, PublisherConfirm};

use super::{BROKER, unavailable};
use crate::{Message, Publisher, RelayError};

/// The longest routing key AMQP carries.
const MAX_ROUTING_KEY: usize = 255;

/// Publishes a relay's messages to a durable topic exchange, routing key `{topic}`.
///
/// Each message is persistent, carries the event id as `message_id` and the envelope in
/// headers, and counts as published once the broker confirmed it (publisher confirms). Messages
/// of different event streams are pipelined; the next message of a stream is sent only after
/// the previous one was confirmed, so a refused message can never be overtaken by a later one
/// of its stream (the broker may refuse one and take the next: a full queue that rejects
/// publishes, an internal error). RabbitMQ keeps no record a relay could read back, so after a crash between
/// the broker's confirm and the checkpoint, the batch is published again: consumers remove the
/// repeats by message id (the [`Inbox`](crate::Inbox) does).
///
/// A lost connection is opened again at the next publish (the runner retries with backoff).
pub struct RabbitMqPublisher {
    uri: String,
    exchange: String,
    /// Whether a message no queue takes counts as published.
    unroutable_ok: bool,
    open: tokio::sync::Mutex<Option<(Connection, Channel)>>,
}

/// How long a confirm may take before the publish counts as failed (a broker under a memory
/// or disk alarm blocks publishers without a word).
const CONFIRM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

impl RabbitMqPublisher {
    /// Connects to `uri` (`amqp://user:password@host:5672/%2f`) and declares the durable
    /// topic exchange `exchange` when it does not exist.
    pub async fn connect(uri: &str, exchange: &str) -> Result<Self, RelayError> {
        let publisher = Self {
            uri: uri.to_owned(),
            exchange: exchange.to_owned(),
            unroutable_ok: false,
            open: tokio::sync::Mutex::new(None),
        };
        let opened = publisher.open().await?;
        *publisher.open.lock().await = Some(opened);
        Ok(publisher)
    }

    /// Counts a message no queue is bound to take as published (it is dropped). By default
    /// such a message fails the batch, which is retried with backoff until a queue is bound:
    /// a relay started before its consumers' queues exist would otherwise lose what it
    /// publishes meanwhile.
    pub fn allow_unroutable(mut self) -> Self {
        self.unroutable_ok = true;
        self
    }

    async fn open(&self) -> Result<(Connection, Channel), RelayError> {
        // Named after the exchange, so operators can tell the relay's connection apart.
        let properties = ConnectionProperties::default()
            .with_connection_name(LongString::from(format!("es-relay to {}", self.exchange)));
        let connection = Connection::connect(&self.uri, properties)
            .await
            .map_err(unavailable)?;
        let channel = connection.create_channel().await.map_err(unavailable)?;
        channel
            .exchange_declare(
                ShortString::from(self.exchange.as_str()),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(unavailable)?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(unavailable)?;
        Ok((connection, channel))
    }

    /// Publishes in rounds: each round sends the next message of every event stream that has
    /// one, then awaits that round's confirms. Streams interleaved in the log (the usual live
    /// case) go out in one round; a stream with many events in the batch takes one round trip
    /// per event, which is what keeping its order through a refused message costs.
    async fn send(&self, channel: &Channel, messages: &[Message]) -> Result<(), RelayError> {
        let mut queues: Vec<std::collections::VecDeque<&Message>> = Vec::new();
        let mut index_of: HashMap<&str, usize> = HashMap::new();
        for message in messages {
            let index = *index_of.entry(message.stream.as_str()).or_insert_with(|| {
                queues.push(std::collections::VecDeque::new());
                queues.len() - 1
            });
            queues[index].push_back(message);
        }
        let mut confirms: Vec<PublisherConfirm> = Vec::with_capacity(queues.len());
        loop {
            for queue in &mut queues {
                if let Some(message) = queue.pop_front() {
                    confirms.push(self.publish_one(channel, message).await?);
                }
            }
            if confirms.is_empty() {
                return Ok(());
            }
            for confirm in confirms.drain(..) {
                let confirmation = tokio::time::timeout(CONFIRM_TIMEOUT, confirm)
                    .await
                    .map_err(|_| RelayError::Unavailable {
                        broker: BROKER,
                        source: format!(
                            "no publisher confirm within {} s (a memory or disk alarm?)",
                            CONFIRM_TIMEOUT.as_secs()
                        )
                        .into(),
                    })?;
                confirmed(confirmation, self.unroutable_ok)?;
            }
        }
    }

    async fn publish_one(
        &self,
        channel: &Channel,
        message: &Message,
    ) -> Result<PublisherConfirm, RelayError> {
        channel
            .basic_publish(
                ShortString::from(self.exchange.as_str()),
                ShortString::from(routing_key(&message.topic)),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                message.payload.as_bytes(),
                properties(message),
            )
            .await
            .map_err(unavailable)
    }
}

#[async_trait]
impl Publisher for RabbitMqPublisher {
    fn broker(&self) -> &'static str {
        BROKER
    }

    async fn publish(&self, _relay: &str, messages: &[Message]) -> Result<(), RelayError> {
        let mut open = self.open.lock().await;
        let (connection, channel) = match open.take() {
            Some((connection, channel))
                if connection.status().connected() && channel.status().connected() =>
            {
                (connection, channel)
            }
            _ => self.open().await?,
        };
        match self.send(&channel, messages).await {
            Ok(()) => {
                *open = Some((connection, channel));
                Ok(())
            }
            Err(error) => {
                // Unknown what the channel still has in flight: start afresh next time.
                let _ = connection
                    .close(200, ShortString::from("relay retrying"))
                    .await;
                Err(error)
            }
        }
    }
}

fn confirmed(
    confirmation: lapin::Result<Confirmation>,
    unroutable_ok: bool,
) -> Result<(), RelayError> {
    match confirmation.map_err(unavailable)? {
        Confirmation::Ack(Some(returned)) if !unroutable_ok => Err(RelayError::Unavailable {
            broker: BROKER,
            source: format!(
                "no queue is bound for routing key {} ({}): bind one (or use allow_unroutable)",
                returned.delivery.routing_key, returned.reply_text
            )
            .into(),
        }),
        Confirmation::Ack(_) => Ok(()),
        Confirmation::Nack(_) => Err(RelayError::Unavailable {
            broker: BROKER,
            source: "the broker refused to take a message (nack); publishing again".into(),
        }),
        Confirmation::NotRequested => Err(RelayError::Refused {
            broker: BROKER,
            source: "the channel is not in confirm mode".into(),
        }),
    }
}

/// AMQP routing keys hold 255 bytes; topics are ASCII (made by `topic_segment`) or the
/// user's, cut at a character boundary.
fn routing_key(topic: &str) -> String {
    if topic.len() <= MAX_ROUTING_KEY {
        return topic.to_owned();
    }
    let mut end = MAX_ROUTING_KEY;
    while !topic.is_char_boundary(end) {
        end -= 1;
    }
    topic[..end].to_owned()
}

fn properties(message: &Message) -> BasicProperties {
    let mut headers = FieldTable::default();
    for (name, value) in &message.headers {
        headers.insert(
            ShortString::from(*name),
            AMQPValue::LongString(LongString::from(value.as_str())),
        );
    }
    BasicProperties::default()
        .with_message_id(ShortString::from(message.id.as_str()))
        .with_content_type(ShortString::from("application/json"))
        // Persistent: a durable queue keeps it through a broker restart.
        .with_delivery_mode(2)
        .with_headers(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_keys_fit_in_an_amqp_short_string() {
        assert_eq!(routing_key("a.b"), "a.b");
        assert_eq!(routing_key(&"x".repeat(300)).len(), 255);
        let wide = "é".repeat(200);
        let cut = routing_key(&wide);
        assert!(cut.len() <= 255 && wide.starts_with(&cut));
    }
}
