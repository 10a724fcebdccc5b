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
use async_nats::jetstream::context::PublishAckFuture;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{Config, LastRawMessageErrorKind, RetentionPolicy};
use async_nats::jetstream::{self, Context};
use async_trait::async_trait;
use bytes::Bytes;

use super::{BROKER, unavailable};
use crate::message::{header, header_value};
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

#[derive(Clone, Debug)]
struct Tail {
    /// The relay it was read for.
    relay: String,
    /// The stream's last sequence.
    sequence: u64,
    /// The relay's last message in it.
    mark: Option<Mark>,
}

/// How many publishes wait for their acks at most: the client blocks new publishes beyond its
/// own limit (5,000 by default) until acks are awaited, so a bigger batch would never finish.
const ACK_WINDOW: usize = 256;

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
        let info = stream.info().await.map_err(unavailable)?;
        if info.config.retention != RetentionPolicy::Limits {
            return Err(RelayError::Refused {
                broker: BROKER,
                source: format!(
                    "stream {} keeps messages until they are consumed ({:?} retention): the \
                     relay could not tell what it already published; give it a stream with \
                     limits retention",
                    self.stream, info.config.retention
                )
                .into(),
            });
        }
        let sequence = info.state.last_sequence;
        let unknown = Tail {
            relay: relay.to_owned(),
            sequence,
            mark: None,
        };
        if sequence == 0 {
            return Ok(unknown);
        }
        let last = match stream.get_raw_message(sequence).await {
            Ok(message) => message,
            // Removed by the stream's limits or by hand: nothing to go by.
            Err(error) if error.kind() == LastRawMessageErrorKind::NoMessageFound => {
                tracing::warn!(
                    relay,
                    stream = %self.stream,
                    sequence,
                    "the stream's last message is gone; relying on its duplicate window"
                );
                return Ok(unknown);
            }
            Err(error) => return Err(unavailable(error)),
        };
        let get = |name: &str| last.headers.get(name).map(|v| v.as_str());
        if get(header::RELAY) != Some(header_value(relay).as_str()) {
            return Err(RelayError::Foreign {
                broker: BROKER,
                stream: self.stream.clone(),
                relay: relay.to_owned(),
                sequence,
            });
        }
        Ok(Tail {
            mark: Mark::from_headers(get),
            ..unknown
        })
    }

    /// Sends one message chained to `after` (the stream's last sequence).
    async fn send_one(
        &self,
        message: &Message,
        after: u64,
    ) -> Result<PublishAckFuture, RelayError> {
        let mut headers = HeaderMap::new();
        for (name, value) in &message.headers {
            // Values are free of CR and LF (`header_value`), which the client refuses.
            headers.insert(*name, value.as_str());
        }
        let publish = PublishMessage::build()
            .payload(Bytes::from(message.payload.clone()))
            .headers(headers)
            .message_id(&message.id)
            .expected_stream(&self.stream)
            .expected_last_sequence(after);
        let subject = format!("{}.{}", self.prefix, message.topic);
        self.context
            .send_publish(subject, publish)
            .await
            .map_err(publish_error)
    }

    /// Awaits an ack; `Ok(None)` for a duplicate the stream already held.
    async fn acked(&self, ack: PublishAckFuture, after: u64) -> Result<Option<u64>, RelayError> {
        let ack = ack.await.map_err(publish_error)?;
        if ack.stream != self.stream {
            return Err(RelayError::Refused {
                broker: BROKER,
                source: format!(
                    "stream {} stored the message, not {}: the prefix belongs to another stream",
                    ack.stream, self.stream
                )
                .into(),
            });
        }
        if ack.duplicate {
            return Ok(None);
        }
        if ack.sequence != after + 1 {
            return Err(moved(&self.stream, ack.sequence, after + 1));
        }
        Ok(Some(ack.sequence))
    }

    async fn send(&self, tail: Tail, fresh: &[&Message]) -> Result<Tail, RelayError> {
        let mut sequence = tail.sequence;
        let mut rest = fresh;
        if tail.mark.is_none() && sequence > 0 {
            // The stream holds messages but none says how far the relay got (its last one is
            // gone): send the whole batch one at a time, passing over those the stream still
            // recognises as duplicates (a later one may be a duplicate after an earlier one
            // left the window).
            for message in rest {
                let ack = self.send_one(message, sequence).await?;
                if let Some(stored) = self.acked(ack, sequence).await? {
                    sequence = stored;
                }
            }
            rest = &[];
        }
        let mut waiting = std::collections::VecDeque::with_capacity(ACK_WINDOW);
        let mut acked = sequence;
        for (index, message) in rest.iter().enumerate() {
            if waiting.len() == ACK_WINDOW
                && let Some(ack) = waiting.pop_front()
            {
                acked = self.expect_stored(ack, acked).await?;
            }
            waiting.push_back(self.send_one(message, sequence + index as u64).await?);
        }
        for ack in waiting {
            acked = self.expect_stored(ack, acked).await?;
        }
        Ok(Tail {
            relay: tail.relay,
            sequence: acked,
            mark: fresh.last().map(|m| m.mark()).or(tail.mark),
        })
    }

    /// Awaits an ack that must be a new message right after `after`.
    async fn expect_stored(&self, ack: PublishAckFuture, after: u64) -> Result<u64, RelayError> {
        match self.acked(ack, after).await? {
            Some(stored) => Ok(stored),
            // A repeat in a chained run: another instance published it; read the stream again.
            None => Err(moved(&self.stream, after, after + 1)),
        }
    }
}

/// Someone else moved the stream; it is read again before going on.
fn moved(stream: &str, found: u64, expected: u64) -> RelayError {
    RelayError::Unavailable {
        broker: BROKER,
        source: format!(
            "stream {stream} acknowledged sequence {found} where {expected} was expected (or a \
             repeat): another publisher moved it"
        )
        .into(),
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
            Some(tail) if tail.relay == relay => tail,
            _ => self.read_tail(relay).await?,
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
