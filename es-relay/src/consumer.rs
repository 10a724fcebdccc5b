//! What a consumer helper hands a handler, and the handler trait: broker-neutral.

use async_trait::async_trait;
use es_core::{BoxError, DomainEvent, Position};
use es_postgres::sqlx::{self, PgConnection, PgPool};
use serde::de::DeserializeOwned;
use tracing::Instrument;
use uuid::Uuid;

use crate::inbox::InboxDeadLetter;
use crate::message::{decode_header_value, header, parse_position};
use crate::{Inbox, RelayError};

/// A message as a consumer helper received it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Received {
    /// The broker-level message id (the event id, for relayed events): the inbox key.
    pub id: String,
    /// Subject or routing key.
    pub topic: String,
    /// Headers, in the order received.
    pub headers: Vec<(String, String)>,
    /// The payload.
    pub payload: Vec<u8>,
    /// How often the broker has delivered it, this time included.
    pub deliveries: u64,
}

impl Received {
    /// A message made by hand: for replaying a dead letter, or for tests of a handler.
    pub fn new(
        id: impl Into<String>,
        topic: impl Into<String>,
        headers: Vec<(String, String)>,
        payload: Vec<u8>,
    ) -> Self {
        Self {
            id: id.into(),
            topic: topic.into(),
            headers,
            payload,
            deliveries: 1,
        }
    }

    /// The first header named `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The relayed event's id.
    pub fn event_id(&self) -> Option<Uuid> {
        self.header(header::EVENT_ID)?.parse().ok()
    }

    /// The relayed event's type.
    pub fn event_type(&self) -> Option<String> {
        self.header(header::EVENT_TYPE).map(decode_header_value)
    }

    /// The relayed event's position in its store's global log.
    pub fn position(&self) -> Option<Position> {
        parse_position(self.header(header::POSITION)?)
    }

    /// The relayed event's stream.
    pub fn stream(&self) -> Option<String> {
        self.header(header::STREAM).map(decode_header_value)
    }

    /// The relayed event as `E`, from its type header and payload: how a consumer sharing the
    /// producer's event types reads it.
    pub fn decode<E: DomainEvent>(&self) -> Result<E, BoxError> {
        let event_type = self
            .event_type()
            .ok_or_else(|| format!("message {} has no {} header", self.id, header::EVENT_TYPE))?;
        let payload = std::str::from_utf8(&self.payload)?;
        Ok(E::decode(&event_type, payload)?)
    }

    /// The payload, deserialized from JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.payload)
    }
}

/// Handles messages a consumer helper receives.
#[async_trait]
pub trait Handler: Send + Sync {
    /// Applies `message`'s effects within `tx`, the transaction that also records the message
    /// in the inbox: both commit, or neither. An error rolls both back; the message is
    /// delivered again later, and dead-lettered once it has failed too often.
    async fn handle(&self, tx: &mut PgConnection, message: &Received) -> Result<(), BoxError>;
}

/// What became of a dead letter given to `replay_dead_letter`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Replay {
    /// There is no such dead letter (replayed or discarded already).
    NotFound,
    /// Handled (or found handled before, in the inbox); the dead letter is gone.
    Applied,
    /// The handler failed again; the dead letter stays, with this error.
    FailedAgain(String),
}

/// Why handling a message did not commit.
enum Failure {
    /// The database was away or busy: try again later; does not count against the message.
    Retry(String),
    /// The handler failed, or the message cannot be handled (its id or data): counts toward
    /// dead-lettering it.
    Handler(String),
}

/// An error of the inbox's own statements (begin, record, commit), sorted: transient database
/// errors are retried without counting, everything else counts against the message.
fn failure(error: &(dyn std::error::Error + 'static)) -> Failure {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(sqlx) = e.downcast_ref::<sqlx::Error>()
            && es_postgres::is_transient(sqlx)
        {
            return Failure::Retry(error.to_string());
        }
        current = e.source();
    }
    Failure::Handler(error.to_string())
}

/// The inbox key of a message id: the id itself, or for ids PostgreSQL text or an index key
/// cannot hold (NUL, over 200 bytes) a name-based UUID of it.
pub(crate) fn inbox_key(id: &str) -> String {
    if id.len() <= 200 && !id.contains('\0') && !id.starts_with("uuid5:") {
        id.to_owned()
    } else {
        format!(
            "uuid5:{}",
            uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, id.as_bytes())
        )
    }
}

/// One transaction: the message's id into the inbox and, the first time, the handler's
/// effects. Commits both or neither. A panicking handler counts as a failing one.
async fn apply(
    pool: &PgPool,
    inbox: &Inbox,
    consumer: &str,
    received: &Received,
    handler: &impl Handler,
) -> Result<(), Failure> {
    use futures_util::FutureExt;
    let key = inbox_key(&received.id);
    let mut tx = pool.begin().await.map_err(|e| failure(&e))?;
    let first = inbox
        .receive(&mut tx, consumer, &key)
        .await
        .map_err(|e| failure(&e))?;
    if !first {
        tracing::debug!(consumer, id = %received.id, "handled before; acknowledging");
        return tx.commit().await.map_err(|e| failure(&e));
    }
    let handled = std::panic::AssertUnwindSafe(handler.handle(&mut tx, received))
        .catch_unwind()
        .await;
    match handled {
        Ok(Ok(())) => tx.commit().await.map_err(|e| failure(&e)),
        // Counted even when the database is behind it (a statement timeout on this message's
        // query would otherwise come back forever); the doubling delay rides out outages.
        Ok(Err(error)) => {
            let _ = tx.rollback().await;
            Err(Failure::Handler(error.to_string()))
        }
        Err(panic) => {
            let _ = tx.rollback().await;
            Err(Failure::Handler(format!(
                "the handler panicked: {}",
                panic_text(panic.as_ref())
            )))
        }
    }
}

/// What a consumer helper tells its broker after handling a message.
pub(crate) enum Verdict {
    /// Handled (now or before): acknowledge.
    Ack,
    /// The database was away: deliver it again soon; it does not count against the message.
    RetrySoon {
        /// What failed.
        error: String,
    },
    /// The handler failed for the `failures`-th time: deliver it again later.
    Retry {
        /// How many times it failed so far.
        failures: u64,
        /// What failed.
        error: String,
    },
    /// Failed too often: recorded as a dead letter; the broker should drop (or dead-letter)
    /// it.
    DeadLettered,
}

/// Handles one received message with the inbox and decides what the broker is told; logs
/// each failure. Never fails: what it cannot record is retried.
/// A header that holds a UUID: anything else (a hostile or huge value) stays out of spans.
fn uuid_header(received: &Received, name: &str) -> Option<Uuid> {
    received.header(name).and_then(|value| value.parse().ok())
}

pub(crate) async fn handle(
    pool: &PgPool,
    inbox: &Inbox,
    consumer: &str,
    received: &Received,
    handler: &impl Handler,
    max_deliveries: u64,
) -> Verdict {
    let id = &received.id;
    // The consumer's work joins the producer's: same correlation id, caused by the event.
    let span = tracing::info_span!(
        "inbox_message",
        consumer,
        message_id = %id,
        topic = %received.topic,
        delivery = received.deliveries,
        correlation_id = uuid_header(received, header::CORRELATION_ID).map(tracing::field::display),
        causation_id = uuid_header(received, header::EVENT_ID).map(tracing::field::display),
    );
    #[cfg(feature = "otel")]
    if let Some(traceparent) = received.header(header::TRACEPARENT) {
        es_core::otel::continue_trace(&span, traceparent);
    }
    match apply(pool, inbox, consumer, received, handler)
        .instrument(span)
        .await
    {
        Ok(()) => {
            if received.deliveries > 1
                && let Err(error) = inbox.clear_failures(pool, consumer, &inbox_key(id)).await
            {
                tracing::warn!(consumer, %id, %error, "forgetting the message's failures failed");
            }
            Verdict::Ack
        }
        Err(Failure::Retry(error)) => {
            tracing::warn!(consumer, %id, %error, "the database failed; the message comes again");
            Verdict::RetrySoon { error }
        }
        Err(Failure::Handler(error)) => {
            match count_failure(pool, inbox, consumer, received, &error, max_deliveries).await {
                Ok((failures, true)) => {
                    tracing::error!(consumer, %id, %error, failures, "dead-lettering the message");
                    Verdict::DeadLettered
                }
                Ok((failures, false)) => {
                    tracing::warn!(consumer, %id, %error, failures, "handling failed; the message comes again");
                    Verdict::Retry { failures, error }
                }
                Err(count_error) => {
                    tracing::warn!(consumer, %id, %error, %count_error, "recording the failure failed; the message comes again");
                    Verdict::RetrySoon { error }
                }
            }
        }
    }
}

/// After a handler failure: counts it and, once `max_deliveries` failures are reached,
/// records the dead letter. `Ok(true)` when the message is now a dead letter.
pub(crate) async fn count_failure(
    pool: &PgPool,
    inbox: &Inbox,
    consumer: &str,
    received: &Received,
    error: &str,
    max_deliveries: u64,
) -> Result<(u64, bool), RelayError> {
    let key = inbox_key(&received.id);
    let failures = inbox.count_failure(pool, consumer, &key).await?;
    if failures < max_deliveries {
        return Ok((failures, false));
    }
    let mut letter = dead_letter(consumer, received, error);
    letter.deliveries = i64::try_from(failures).unwrap_or(i64::MAX);
    inbox.dead_letter(pool, &letter).await?;
    inbox.clear_failures(pool, consumer, &key).await?;
    Ok((failures, true))
}

/// Runs a dead letter through `handler` again, with the inbox. Taken in the handler's
/// transaction, so a replay that fails leaves it where it was (with the new error).
pub(crate) async fn replay_dead_letter(
    pool: &PgPool,
    inbox: &Inbox,
    consumer: &str,
    message_id: &str,
    handler: &impl Handler,
) -> Result<Replay, RelayError> {
    let key = inbox_key(message_id);
    let mut tx = pool.begin().await?;
    let Some(letter) = inbox.take_dead_letter(&mut tx, consumer, &key).await? else {
        return Ok(Replay::NotFound);
    };
    let headers: Vec<(String, String)> =
        serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&letter.headers)
            .map(|map| {
                map.into_iter()
                    .map(|(n, v)| (n, v.as_str().unwrap_or_default().to_owned()))
                    .collect()
            })
            .unwrap_or_default();
    let mut received = Received::new(message_id, letter.topic, headers, letter.payload);
    received.deliveries = u64::try_from(letter.deliveries).unwrap_or(0) + 1;
    let first = inbox.receive(&mut tx, consumer, &key).await?;
    let handled = if first {
        use futures_util::FutureExt;
        match std::panic::AssertUnwindSafe(handler.handle(&mut tx, &received))
            .catch_unwind()
            .await
        {
            Ok(result) => result.map_err(|e| e.to_string()),
            Err(panic) => Err(format!(
                "the handler panicked: {}",
                panic_text(panic.as_ref())
            )),
        }
    } else {
        Ok(())
    };
    if let Err(error) = handled {
        tx.rollback().await?;
        inbox
            .dead_letter(pool, &dead_letter(consumer, &received, &error))
            .await?;
        return Ok(Replay::FailedAgain(error));
    }
    tx.commit().await?;
    Ok(Replay::Applied)
}

/// The dead-letter record of a message; NUL, which PostgreSQL text and jsonb cannot hold, is
/// written as `\0`.
pub(crate) fn dead_letter(consumer: &str, received: &Received, error: &str) -> InboxDeadLetter {
    let clean = |text: &str| text.replace('\0', "\\0");
    let headers: serde_json::Map<String, serde_json::Value> = received
        .headers
        .iter()
        .map(|(n, v)| (clean(n), serde_json::Value::String(clean(v))))
        .collect();
    InboxDeadLetter {
        consumer: consumer.to_owned(),
        message_id: inbox_key(&received.id),
        topic: clean(&received.topic),
        headers: serde_json::Value::Object(headers).to_string(),
        payload: received.payload.clone(),
        error: clean(error),
        deliveries: i64::try_from(received.deliveries).unwrap_or(i64::MAX),
    }
}

/// What a panic said.
fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_letters_hold_any_header_text_as_valid_json_without_nul() {
        let received = Received::new(
            "id\0x",
            "topic\0",
            vec![
                ("Es-Stream".to_owned(), "a\0b".to_owned()),
                ("Odd".to_owned(), "literal \\u0000 text".to_owned()),
                ("N\0ame".to_owned(), "v".to_owned()),
            ],
            b"{}".to_vec(),
        );
        let letter = dead_letter("c", &received, "boom\0");
        for text in [
            &letter.topic,
            &letter.headers,
            &letter.error,
            &letter.message_id,
        ] {
            assert!(!text.contains('\0'), "{text:?}");
        }
        assert!(!letter.headers.contains("\\u0000\""), "{}", letter.headers);
        let parsed: serde_json::Value = serde_json::from_str(&letter.headers).unwrap();
        assert_eq!(parsed["Es-Stream"], "a\\0b");
        assert_eq!(parsed["Odd"], "literal \\u0000 text");
        assert!(letter.message_id.starts_with("uuid5:"));
    }
}
