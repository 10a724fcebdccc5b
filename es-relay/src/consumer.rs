//! What a consumer helper hands a handler, and the handler trait: broker-neutral.

use async_trait::async_trait;
use es_core::{BoxError, DomainEvent, Position};
use es_postgres::sqlx::PgConnection;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::message::{header, parse_position};

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
