//! What a consumer helper hands a handler, and the handler trait: broker-neutral.

use async_trait::async_trait;
use es_core::{BoxError, DomainEvent, Position};
use es_postgres::sqlx::{self, PgConnection, PgPool};
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::inbox::InboxDeadLetter;
use crate::message::{header, parse_position};
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
    pub fn event_type(&self) -> Option<&str> {
        self.header(header::EVENT_TYPE)
    }

    /// The relayed event's position in its store's global log.
    pub fn position(&self) -> Option<Position> {
        parse_position(self.header(header::POSITION)?)
    }

    /// The relayed event's stream.
    pub fn stream(&self) -> Option<&str> {
        self.header(header::STREAM)
    }

    /// The relayed event as `E`, from its type header and payload: how a consumer sharing the
    /// producer's event types reads it.
    pub fn decode<E: DomainEvent>(&self) -> Result<E, BoxError> {
        let event_type = self
            .event_type()
            .ok_or_else(|| format!("message {} has no {} header", self.id, header::EVENT_TYPE))?;
        let payload = std::str::from_utf8(&self.payload)?;
        Ok(E::decode(event_type, payload)?)
    }

    /// The payload, deserialized from JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.payload)
    }

    /// The headers as a JSON object of strings (a repeated name keeps its last value).
    pub(crate) fn headers_json(&self) -> String {
        let map: serde_json::Map<String, serde_json::Value> = self
            .headers
            .iter()
            .map(|(n, v)| (n.clone(), serde_json::Value::String(v.clone())))
            .collect();
        serde_json::Value::Object(map).to_string()
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

/// Why handling a message did not commit.
pub(crate) enum Failure {
    /// The database failed (the message comes again if transient).
    Database(RelayError),
    /// The handler failed: counts toward the message's deliveries.
    Handler(String),
}

fn db(error: sqlx::Error) -> Failure {
    Failure::Database(RelayError::Database(error))
}

/// One transaction: the message's id into the inbox and, the first time, the handler's
/// effects. Commits both or neither.
pub(crate) async fn apply(
    pool: &PgPool,
    inbox: &Inbox,
    consumer: &str,
    received: &Received,
    handler: &impl Handler,
) -> Result<(), Failure> {
    let mut tx = pool.begin().await.map_err(db)?;
    if !inbox
        .receive(&mut tx, consumer, &received.id)
        .await
        .map_err(Failure::Database)?
    {
        tracing::debug!(consumer, id = %received.id, "handled before; acknowledging");
        return tx.commit().await.map_err(db);
    }
    if let Err(error) = handler.handle(&mut tx, received).await {
        let _ = tx.rollback().await;
        return Err(Failure::Handler(error.to_string()));
    }
    tx.commit().await.map_err(db)
}

/// Runs a dead letter through `handler` again, with the inbox; `Ok(false)` when there is no
/// such dead letter. Taken in the handler's transaction, so a replay that fails leaves it
/// where it was (with the new error).
pub(crate) async fn replay_dead_letter(
    pool: &PgPool,
    inbox: &Inbox,
    consumer: &str,
    message_id: &str,
    handler: &impl Handler,
) -> Result<bool, RelayError> {
    let mut tx = pool.begin().await?;
    let Some(letter) = inbox
        .take_dead_letter(&mut tx, consumer, message_id)
        .await?
    else {
        return Ok(false);
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
    let first = inbox.receive(&mut tx, consumer, message_id).await?;
    if first && let Err(error) = handler.handle(&mut tx, &received).await {
        tx.rollback().await?;
        inbox
            .dead_letter(pool, &dead_letter(consumer, &received, &error.to_string()))
            .await?;
        return Ok(true);
    }
    tx.commit().await?;
    Ok(true)
}

/// The dead-letter record of a message.
pub(crate) fn dead_letter(consumer: &str, received: &Received, error: &str) -> InboxDeadLetter {
    InboxDeadLetter {
        consumer: consumer.to_owned(),
        message_id: received.id.clone(),
        topic: received.topic.clone(),
        headers: received.headers_json(),
        payload: received.payload.clone(),
        error: error.to_owned(),
        deliveries: i64::try_from(received.deliveries).unwrap_or(i64::MAX),
    }
}
