//! A JetStream pull consumer that hands each message to a handler in a database transaction
//! with the inbox, acknowledges only after the commit, and dead-letters what keeps failing.

use std::future::Future;
use std::time::Duration;

use async_nats::jetstream::AckKind;
use async_nats::jetstream::consumer::AckPolicy;
use async_nats::jetstream::consumer::PullConsumer;
use es_postgres::sqlx::PgPool;
use futures_util::StreamExt;

use super::unavailable;
use crate::consumer::{
    Handler, Received, Replay, Verdict, dead_letter, handle, replay_dead_letter,
};
use crate::{Inbox, RelayError};

/// Consumes a JetStream pull consumer into a handler, effective once per message.
///
/// For each message: a transaction records its id in the [`Inbox`] and, the first time, runs
/// the handler; after the commit the message is acknowledged (and the ack confirmed by the
/// server). A crash anywhere before the ack means a redelivery, which the inbox turns into a
/// no-op when the first handling had committed. A handler error (or panic) rolls back, is
/// counted in the database, and asks for a redelivery after a delay that doubles with each
/// failure; after `max_deliveries` failures the message is recorded as a dead letter with the
/// error and terminated on the broker. Transient database errors (a restart, a lost
/// connection, a serialization failure) do not count: the message simply comes again.
/// [`replay_dead_letter`](Self::replay_dead_letter) runs one through the handler again.
///
/// The consumer should have explicit acks (`AckPolicy::Explicit`, the default of pull
/// consumers) and an `ack_wait` longer than the handler takes.
pub struct JetStreamInbox {
    pool: PgPool,
    inbox: Inbox,
    consumer: String,
    max_deliveries: u64,
    retry_delay: Duration,
}

impl JetStreamInbox {
    /// A helper for the consumer named `consumer` (its inbox key), writing through `pool`:
    /// five deliveries at most, redeliveries 1 s apart at first.
    pub fn new(pool: PgPool, inbox: Inbox, consumer: impl Into<String>) -> Self {
        Self {
            pool,
            inbox,
            consumer: consumer.into(),
            max_deliveries: 5,
            retry_delay: Duration::from_secs(1),
        }
    }

    /// How many deliveries a failing message gets before it is dead-lettered.
    pub fn max_deliveries(mut self, deliveries: u64) -> Self {
        self.max_deliveries = deliveries.max(1);
        self
    }

    /// The delay before the first redelivery of a failed message; it grows with each one.
    pub fn retry_delay(mut self, delay: Duration) -> Self {
        self.retry_delay = delay;
        self
    }

    /// Consumes `consumer` until `shutdown` completes. Lost NATS connections are ridden out by
    /// the client (it reconnects); a message whose handling was cut short is delivered again.
    /// Refuses a consumer that would stop redelivering before this helper dead-letters (its
    /// `max_deliver`) or that acknowledges more than one message at a time (`AckPolicy`
    /// other than explicit); returns an error when the consumer's message stream ends (the
    /// consumer was deleted).
    pub async fn run(
        &self,
        consumer: &PullConsumer,
        handler: &impl Handler,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), RelayError> {
        let config = &consumer.cached_info().config;
        if config.ack_policy != AckPolicy::Explicit {
            return Err(refused(format!(
                "consumer {} acknowledges with {:?}: acking one message would ack others that \
                 failed; use AckPolicy::Explicit",
                self.consumer, config.ack_policy
            )));
        }
        if config.max_deliver > 0 && (config.max_deliver as u64) < self.max_deliveries {
            return Err(refused(format!(
                "consumer {} stops redelivering after {} deliveries, before this helper's {} \
                 failures would dead-letter a message: raise max_deliver or lower \
                 max_deliveries",
                self.consumer, config.max_deliver, self.max_deliveries
            )));
        }
        let mut messages = consumer.messages().await.map_err(unavailable)?;
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let next = tokio::select! {
                () = &mut shutdown => return Ok(()),
                next = messages.next() => next,
            };
            match next {
                None => {
                    return Err(RelayError::Unavailable {
                        broker: super::BROKER,
                        source: format!("the messages of consumer {} ended", self.consumer).into(),
                    });
                }
                Some(Err(error)) => {
                    tracing::warn!(consumer = %self.consumer, %error, "receiving from JetStream failed");
                }
                Some(Ok(message)) => self.handle(&message, handler, config.max_deliver).await,
            }
        }
    }

    async fn handle(
        &self,
        message: &async_nats::jetstream::Message,
        handler: &impl Handler,
        max_deliver: i64,
    ) {
        let received = received(message);
        let mut verdict = handle(
            &self.pool,
            &self.inbox,
            &self.consumer,
            &received,
            handler,
            self.max_deliveries,
        )
        .await;
        // The broker's last delivery of it: whatever the count in the database says, there
        // will be no other chance to record it.
        let last = max_deliver > 0 && received.deliveries >= max_deliver as u64;
        if last && let Verdict::RetrySoon { error } | Verdict::Retry { error, .. } = &verdict {
            let reason =
                format!("{error} (the consumer's last delivery: max_deliver {max_deliver})");
            match self
                .inbox
                .dead_letter(&self.pool, &dead_letter(&self.consumer, &received, &reason))
                .await
            {
                Ok(()) => verdict = Verdict::DeadLettered,
                Err(error) => {
                    tracing::error!(consumer = %self.consumer, id = %received.id, %error, "the broker will not deliver the message again and recording it as a dead letter failed");
                }
            }
        }
        let ack = match verdict {
            Verdict::Ack => message.double_ack().await,
            Verdict::RetrySoon { .. } => {
                message.ack_with(AckKind::Nak(Some(self.retry_delay))).await
            }
            Verdict::Retry { failures, .. } => {
                let delay = self
                    .retry_delay
                    .saturating_mul(1 << failures.saturating_sub(1).min(10));
                message.ack_with(AckKind::Nak(Some(delay))).await
            }
            Verdict::DeadLettered => message.double_ack_with(AckKind::Term).await,
        };
        if let Err(error) = ack {
            // The message comes again after ack_wait; the inbox makes that harmless.
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

fn received(message: &async_nats::jetstream::Message) -> Received {
    let headers: Vec<(String, String)> = message
        .headers
        .iter()
        .flat_map(|map| map.iter())
        .flat_map(|(name, values)| {
            values
                .iter()
                .map(move |value| (name.to_string(), value.as_str().to_owned()))
        })
        .collect();
    let info = message.info().ok();
    let deliveries = info
        .as_ref()
        .map_or(1, |i| u64::try_from(i.delivered).unwrap_or(1));
    // Relayed messages carry their id; others are keyed by their place in the stream.
    let id = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("Nats-Msg-Id"))
        .map(|(_, v)| v.clone())
        .or_else(|| info.map(|i| format!("{}:{}", i.stream, i.stream_sequence)))
        .unwrap_or_default();
    let mut received = Received::new(
        id,
        message.subject.to_string(),
        headers,
        message.payload.to_vec(),
    );
    received.deliveries = deliveries;
    received
}

fn refused(reason: String) -> RelayError {
    RelayError::Refused {
        broker: super::BROKER,
        source: reason.into(),
    }
}
