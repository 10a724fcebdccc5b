//! The JetStream publisher: one that never publishes twice what the stream holds, however long
//! the relay was down.
//!
//! Each message carries `Nats-Msg-Id` (JetStream drops a repeat within its duplicate window)
//! and `Nats-Expected-Last-Sequence`: the stream's last sequence it must follow. Messages are
//! sent back to back and their acks awaited in order; because each names its predecessor, the
//! stream refuses every message after one it did not store, so what the stream holds of a batch
//! is always a prefix of it. The last message of the stream therefore says exactly how far the
//! relay got (its `Es-Position` and `Es-Split` headers): on start and after any failure, the
//! publisher reads it and passes over every message at or before it. A crash between the
//! broker's ack and the checkpoint's commit never republishes, beyond the duplicate window too.
//!
//! The price: the JetStream stream belongs to one relay (or one part of a split relay). A
//! message of another publisher after the relay's makes it stop with [`RelayError::Foreign`].

use async_nats::HeaderMap;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{Config, LastRawMessageErrorKind};
use async_nats::jetstream::{self, Context};
use async_trait::async_trait;
use bytes::Bytes;

use super::{BROKER, unavailable};
use crate::message::header;
use crate::{Mark, Message, Publisher, RelayError};

/// Publishes a relay's messages to a JetStream stream of its own, on subjects
/// `{prefix}.{topic}`.
pub struct JetStreamPublisher {
    context: Context,
    stream: String,
    prefix: String,
    /// What the stream holds, as far as this publisher knows; `None` after any failure, until
    /// read again from the stream.
    tail: tokio::sync::Mutex<Option<Tail>>,
}

#[derive(Clone, Copy, Debug)]
struct Tail {
    /// The stream's last sequence.
    sequence: u64,
    /// The relay's last message in it.
    mark: Option<Mark>,
}

impl JetStreamPublisher {
    /// A publisher into the JetStream stream `stream`, created (file storage, subjects
    /// `{prefix}.>`) when it does not exist. Create it yourself, then use
    /// [`from_context`](Self::from_context), for other settings (replicas, limits).
    pub async fn new(
        client: async_nats::Client,
        stream: &str,
        prefix: &str,
    ) -> Result<Self, RelayError> {
        let context = jetstream::new(client);
        context
            .get_or_create_stream(Config {
                name: stream.to_owned(),
                subjects: vec![format!("{prefix}.>")],
                ..Config::default()
            })
            .await
            .map_err(unavailable)?;
        Ok(Self::from_context(context, stream, prefix))
    }

    /// A publisher into an existing stream `stream` whose subjects take `{prefix}.>`.
    pub fn from_context(context: Context, stream: &str, prefix: &str) -> Self {
        Self {
            context,
            stream: stream.to_owned(),
            prefix: prefix.to_owned(),
            tail: tokio::sync::Mutex::new(None),
        }
    }

    /// Reads the stream's last sequence and, from its last message, how far `relay` got.
    async fn read_tail(&self, relay: &str) -> Result<Tail, RelayError> {
        let mut stream = self
            .context
            .get_stream(&self.stream)
            .await
            .map_err(unavailable)?;
        let sequence = stream
            .info()
            .await
            .map_err(unavailable)?
            .state
            .last_sequence;
        if sequence == 0 {
            return Ok(Tail {
                sequence,
                mark: None,
            });
        }
        let last = match stream.get_raw_message(sequence).await {
            Ok(message) => message,
            // Removed by the stream's limits or by hand: nothing to go by.
            Err(error) if error.kind() == LastRawMessageErrorKind::NoMessageFound => {
                return Ok(Tail {
                    sequence,
                    mark: None,
                });
            }
            Err(error) => return Err(unavailable(error)),
        };
        let get = |name: &str| last.headers.get(name).map(|v| v.as_str());
        if get(header::RELAY) != Some(relay) {
            return Err(RelayError::Foreign {
                broker: BROKER,
                stream: self.stream.clone(),
                relay: relay.to_owned(),
                sequence,
            });
        }
        Ok(Tail {
            sequence,
            mark: Mark::from_headers(get),
        })
    }

    async fn send(&self, tail: Tail, fresh: &[&Message]) -> Result<Tail, RelayError> {
        let mut acks = Vec::with_capacity(fresh.len());
        for (index, message) in fresh.iter().enumerate() {
            let mut headers = HeaderMap::new();
            for (name, value) in &message.headers {
                headers.insert(*name, value.as_str());
            }
            let publish = PublishMessage::build()
                .payload(Bytes::from(message.payload.clone()))
                .headers(headers)
                .message_id(&message.id)
                .expected_last_sequence(tail.sequence + index as u64);
            let subject = format!("{}.{}", self.prefix, message.topic);
            acks.push(
                self.context
                    .send_publish(subject, publish)
                    .await
                    .map_err(publish_error)?,
            );
        }
        let mut sequence = tail.sequence;
        for ack in acks {
            let ack = ack.await.map_err(publish_error)?;
            if ack.duplicate || ack.sequence != sequence + 1 {
                // Someone else moved the stream; read it again before going on.
                return Err(RelayError::Unavailable {
                    broker: BROKER,
                    source: format!(
                        "stream {} acknowledged sequence {} (duplicate: {}) where {} was expected",
                        self.stream,
                        ack.sequence,
                        ack.duplicate,
                        sequence + 1
                    )
                    .into(),
                });
            }
            sequence = ack.sequence;
        }
        Ok(Tail {
            sequence,
            mark: fresh.last().map(|m| m.mark()).or(tail.mark),
        })
    }
}

#[async_trait]
impl Publisher for JetStreamPublisher {
    fn broker(&self) -> &'static str {
        BROKER
    }

    async fn publish(&self, relay: &str, messages: &[Message]) -> Result<(), RelayError> {
        let mut known = self.tail.lock().await;
        let tail = match known.take() {
            Some(tail) => tail,
            None => self.read_tail(relay).await?,
        };
        let fresh: Vec<&Message> = messages
            .iter()
            .filter(|m| tail.mark.is_none_or(|mark| m.mark() > mark))
            .collect();
        if fresh.len() < messages.len() {
            tracing::info!(
                relay,
                stream = %self.stream,
                passed_over = messages.len() - fresh.len(),
                "the stream already holds these messages; not publishing them again"
            );
        }
        // On failure `known` stays empty: the next call reads the stream again.
        *known = Some(self.send(tail, &fresh).await?);
        Ok(())
    }
}

fn publish_error(error: async_nats::jetstream::context::PublishError) -> RelayError {
    match error.kind() {
        // Will not fit however often it is tried.
        PublishErrorKind::MaxPayloadExceeded => RelayError::Refused {
            broker: BROKER,
            source: Box::new(error),
        },
        // Timeouts, a lost connection, no stream leader yet, a stream that moved: all worth
        // another try after reading the stream again.
        _ => unavailable(error),
    }
}
