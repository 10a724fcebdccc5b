//! A RabbitMQ consumer that hands each delivery to a handler in a database transaction with
//! the inbox, acknowledges only after the commit, and gives up on what keeps failing.

use std::future::Future;

use es_postgres::sqlx::PgPool;
use futures_util::StreamExt;
use lapin::Channel;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, BasicRejectOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};

use super::unavailable;
use crate::consumer::{
    Handler, Received, Replay, Verdict, dead_letter, handle, replay_dead_letter,
};
use crate::{Inbox, RelayError};

/// Consumes a RabbitMQ queue into a handler, effective once per message.
///
/// Deliveries are taken with manual acks. For each: a transaction records its message id in the
/// [`Inbox`] and, the first time, runs the handler; the delivery is acknowledged after the
/// commit. A crash before the ack means a redelivery, which the inbox makes a no-op. A handler
/// error (or panic) rolls back and requeues the delivery; RabbitMQ does not count deliveries of
/// classic queues, so the failures are counted in the database, and after `max_deliveries` the
/// message is recorded as a dead letter and rejected without requeueing, which sends it to the
/// queue's dead-letter exchange when it has one (`x-dead-letter-exchange`). Transient database
/// errors do not count: the delivery is requeued after a short pause.
pub struct RabbitMqInbox {
    pool: PgPool,
    inbox: Inbox,
    consumer: String,
    max_deliveries: u64,
    prefetch: u16,
    retry_delay: std::time::Duration,
}

impl RabbitMqInbox {
    /// A helper for the consumer named `consumer` (its inbox key), writing through `pool`:
    /// five deliveries at most, 32 unacknowledged deliveries at a time.
    pub fn new(pool: PgPool, inbox: Inbox, consumer: impl Into<String>) -> Self {
        Self {
            pool,
            inbox,
            consumer: consumer.into(),
            max_deliveries: 5,
            prefetch: 32,
            retry_delay: std::time::Duration::from_millis(100),
        }
    }

    /// The pause before requeueing a failed delivery the first time; it doubles with each
    /// failure, up to 5 s.
    pub fn retry_delay(mut self, delay: std::time::Duration) -> Self {
        self.retry_delay = delay;
        self
    }

    /// How many deliveries a failing message gets before it is dead-lettered.
    pub fn max_deliveries(mut self, deliveries: u64) -> Self {
        self.max_deliveries = deliveries.max(1);
        self
    }

    /// Consumes `queue` on `channel` until `shutdown` completes; returns when the channel or
    /// connection closes (open a new one and call again) or on a permanent database error.
    pub async fn run(
        &self,
        channel: &Channel,
        queue: &str,
        handler: &impl Handler,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), RelayError> {
        channel
            .basic_qos(self.prefetch, BasicQosOptions::default())
            .await
            .map_err(unavailable)?;
        let mut deliveries = channel
            .basic_consume(
                ShortString::from(queue),
                // AMQP short strings hold 255 bytes.
                ShortString::from(format!(
                    "{}-{}",
                    self.consumer.chars().take(100).collect::<String>(),
                    uuid::Uuid::now_v7()
                )),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(unavailable)?;
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let next = tokio::select! {
                () = &mut shutdown => return Ok(()),
                next = deliveries.next() => next,
            };
            match next {
                None => return Ok(()),
                Some(Err(error)) => return Err(unavailable(error)),
                Some(Ok(delivery)) => self.handle(&delivery, handler).await,
            }
        }
    }

    async fn handle(&self, delivery: &Delivery, handler: &impl Handler) {
        let received = received(delivery);
        if received.id.is_empty() {
            // Without an id the inbox cannot tell one message from another.
            let reason = "the message has no message_id: the inbox cannot make its handling \
                          effective once";
            tracing::error!(consumer = %self.consumer, routing_key = %received.topic, reason);
            let mut keyed = received.clone();
            keyed.id = format!("no-id:{}", uuid::Uuid::now_v7());
            if let Err(error) = self
                .inbox
                .dead_letter(&self.pool, &dead_letter(&self.consumer, &keyed, reason))
                .await
            {
                tracing::warn!(consumer = %self.consumer, %error, "recording the dead letter failed; requeueing");
                tokio::time::sleep(self.retry_delay).await;
                let _ = delivery.acker.nack(requeue()).await;
                return;
            }
            let _ = delivery
                .acker
                .reject(BasicRejectOptions { requeue: false })
                .await;
            return;
        }
        let verdict = handle(
            &self.pool,
            &self.inbox,
            &self.consumer,
            &received,
            handler,
            self.max_deliveries,
        )
        .await;
        let acked = match verdict {
            Verdict::Ack => delivery.acker.ack(BasicAckOptions::default()).await,
            Verdict::RetrySoon { .. } => {
                // Requeued at once it would come straight back: give the database a moment.
                tokio::time::sleep(self.retry_delay).await;
                delivery.acker.nack(requeue()).await
            }
            Verdict::Retry { failures, .. } => {
                // RabbitMQ requeues without a delay: wait here, doubling, at most 5 s (this
                // consumer's other deliveries wait meanwhile).
                let delay = self
                    .retry_delay
                    .saturating_mul(1 << failures.saturating_sub(1).min(10))
                    .min(std::time::Duration::from_secs(5));
                tokio::time::sleep(delay).await;
                delivery.acker.nack(requeue()).await
            }
            Verdict::DeadLettered => {
                delivery
                    .acker
                    .reject(BasicRejectOptions { requeue: false })
                    .await
            }
        };
        if let Err(error) = acked {
            // The delivery comes again when the channel closes; the inbox makes that harmless.
            tracing::warn!(consumer = %self.consumer, id = %received.id, %error, "acknowledging failed");
        }
    }

    /// Runs the dead letter `message_id` through `handler` again, with the inbox. When the
    /// handler fails again the dead letter stays, with the new error.
    pub async fn replay_dead_letter(
        &self,
        message_id: &str,
        handler: &impl Handler,
    ) -> Result<Replay, RelayError> {
        replay_dead_letter(&self.pool, &self.inbox, &self.consumer, message_id, handler).await
    }
}

fn requeue() -> BasicNackOptions {
    BasicNackOptions {
        multiple: false,
        requeue: true,
    }
}

fn received(delivery: &Delivery) -> Received {
    let headers: Vec<(String, String)> = delivery
        .properties
        .headers()
        .as_ref()
        .map(|table| {
            table
                .inner()
                .iter()
                .filter_map(|(name, value)| {
                    let text = match value {
                        AMQPValue::LongString(s) => {
                            String::from_utf8_lossy(s.as_bytes()).into_owned()
                        }
                        AMQPValue::ShortString(s) => s.as_str().to_owned(),
                        _ => return None,
                    };
                    Some((name.as_str().to_owned(), text))
                })
                .collect()
        })
        .unwrap_or_default();
    // Relayed messages carry their id; one without is dead-lettered (see `handle`).
    let id = delivery
        .properties
        .message_id()
        .as_ref()
        .map(|id| id.as_str().to_owned())
        .unwrap_or_default();
    let mut received = Received::new(
        id,
        delivery.routing_key.as_str(),
        headers,
        delivery.data.clone(),
    );
    received.deliveries = if delivery.redelivered { 2 } else { 1 };
    received
}
