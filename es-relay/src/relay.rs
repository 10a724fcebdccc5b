//! The relay: a projection whose "read model" is a broker. The projection runner gives it
//! catch-up, live follow, the one-active-instance lock, parts and supervision; the relay turns
//! each batch into messages and hands them to a [`Publisher`] before the checkpoint moves.

use std::collections::HashSet;
use std::marker::PhantomData;
use std::sync::Arc;

use async_trait::async_trait;
use es_core::{
    BoxError, DomainEvent, Envelope, EventStore, RecordedEvent, Upcasters, current_version,
};
use es_postgres::PgEventStore;
use es_postgres::sqlx::PgConnection;
use serde_json::value::RawValue;

use crate::message::topic_segment;
use crate::{Message, Publisher, RelayError};

/// Which payload a relay publishes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PayloadForm {
    /// Upcast to the current schema version (the default): consumers see one version per type.
    #[default]
    Current,
    /// Exactly as stored, with the type and schema version it was stored with.
    AsStored,
}

/// What a mapping hook publishes instead of an internal event: a public integration event.
#[derive(Clone, Debug)]
pub struct Outgoing {
    /// The published type name.
    pub event_type: String,
    /// The published schema version.
    pub schema_version: u32,
    /// The payload.
    pub payload: Box<RawValue>,
    /// The topic; `None` for the relay's topic of the category and the published type.
    pub topic: Option<String>,
}

impl Outgoing {
    /// An integration event of `event_type`, version 1, with `payload` serialized as JSON.
    pub fn new(
        event_type: impl Into<String>,
        payload: &impl serde::Serialize,
    ) -> Result<Self, serde_json::Error> {
        Ok(Self {
            event_type: event_type.into(),
            schema_version: 1,
            payload: serde_json::value::to_raw_value(payload)?,
            topic: None,
        })
    }
}

type TopicFn = dyn Fn(&str, &str) -> String + Send + Sync;
type MapFn<E> = dyn Fn(&Envelope<E>) -> Result<Option<Outgoing>, BoxError> + Send + Sync;

/// Relays events of `E`'s types from the global log to a broker.
///
/// Run it with a [`ProjectionRunner`](es_postgres::ProjectionRunner) like any projection:
/// several processes may run it, one publishes at a time, and it rides out database and
/// broker outages. Each batch is published, and acknowledged by the broker, before the batch's
/// checkpoint commits; after a crash between the two, the publisher recognises what the broker
/// already holds and does not publish it again.
///
/// ```no_run
/// # #[cfg(feature = "nats")]
/// # async fn run<AccountEvent: es_core::DomainEvent>(
/// #     store: es_postgres::PgEventStore,
/// # ) -> Result<(), Box<dyn std::error::Error>> {
/// use es_postgres::ProjectionRunner;
/// use es_relay::{JetStreamPublisher, Relay};
///
/// let nats = async_nats::connect("127.0.0.1:4222").await?;
/// // Messages go to subjects `bank.{category}.{type}` of the JetStream stream `BANK`.
/// let publisher = JetStreamPublisher::new(nats, "BANK", "bank").await?;
/// let relay = Relay::<AccountEvent>::new(&store, "bank-to-nats", publisher)
///     .categories(["account"]);
/// ProjectionRunner::new(store, relay)
///     .run(std::future::pending())
///     .await?;
/// # Ok(())
/// # }
/// ```
pub struct Relay<E> {
    name: String,
    publisher: Arc<dyn Publisher>,
    upcasters: Arc<Upcasters>,
    form: PayloadForm,
    categories: Option<HashSet<String>>,
    types: Option<HashSet<String>>,
    topic: Arc<TopicFn>,
    map: Option<Arc<MapFn<E>>>,
    _events: PhantomData<fn() -> E>,
}

impl<E: DomainEvent> Relay<E> {
    /// A relay named `name` (the key of its checkpoint and lock) publishing through
    /// `publisher` every event of `E`'s types, upcast with `store`'s upcasters, on topic
    /// `{category}.{type}`.
    pub fn new(store: &PgEventStore, name: impl Into<String>, publisher: impl Publisher) -> Self {
        Self {
            name: name.into(),
            publisher: Arc::new(publisher),
            upcasters: store.upcasters(),
            form: PayloadForm::Current,
            categories: None,
            types: None,
            topic: Arc::new(|category, event_type| {
                format!("{}.{}", topic_segment(category), topic_segment(event_type))
            }),
            map: None,
            _events: PhantomData,
        }
    }

    /// Publishes only events of these stream categories.
    pub fn categories<S: Into<String>>(mut self, categories: impl IntoIterator<Item = S>) -> Self {
        self.categories = Some(categories.into_iter().map(Into::into).collect());
        self
    }

    /// Publishes only events of these types (as published: after upcasting, before mapping).
    pub fn types<S: Into<String>>(mut self, types: impl IntoIterator<Item = S>) -> Self {
        self.types = Some(types.into_iter().map(Into::into).collect());
        self
    }

    /// Which payload to publish: upcast to the current version (default) or as stored.
    pub fn payload(mut self, form: PayloadForm) -> Self {
        self.form = form;
        self
    }

    /// The topic (subject or routing key) of an event of a category and a type. Both come from
    /// stored data: pass them through [`topic_segment`] unless you trust them.
    pub fn topic(mut self, topic: impl Fn(&str, &str) -> String + Send + Sync + 'static) -> Self {
        self.topic = Arc::new(topic);
        self
    }

    /// Publishes what `map` makes of each event instead of the event: a public integration
    /// event, or nothing (`Ok(None)`). It must decide the same way each time it sees an event,
    /// since a batch may be handed to it again. An error stops the relay naming the event.
    pub fn map(
        mut self,
        map: impl Fn(&Envelope<E>) -> Result<Option<Outgoing>, BoxError> + Send + Sync + 'static,
    ) -> Self {
        self.map = Some(Arc::new(map));
        self
    }

    /// The messages for a batch, in order, as the relay (unsplit) publishes them.
    pub fn messages(&self, events: &[&RecordedEvent]) -> Result<Vec<Message>, RelayError> {
        self.messages_for(&self.name, events)
    }

    /// The messages for a batch, for the runner `key` (the relay's name, with
    /// `#{index}/{parts}` for a part).
    fn messages_for(
        &self,
        key: &str,
        events: &[&RecordedEvent],
    ) -> Result<Vec<Message>, RelayError> {
        let mut messages = Vec::with_capacity(events.len());
        let mut decoded = Vec::new();
        for event in events {
            let category = category(event.stream_id.as_str());
            // Stored at its current version with nothing to lift: the stored text is the
            // payload either form publishes, without decoding it.
            let current = self.map.is_none()
                && current_version::<E>(&event.event_type) == Some(event.schema_version)
                && !self
                    .upcasters
                    .lifts_from(&event.event_type, event.schema_version);
            if current || (self.form == PayloadForm::AsStored && self.map.is_none()) {
                if self.publishes(&event.event_type) {
                    messages.push(Message::new(
                        key,
                        (self.topic)(category, &event.event_type),
                        event,
                        0,
                        &event.event_type,
                        event.schema_version,
                        event.payload.get().to_owned(),
                    ));
                }
                continue;
            }
            decoded.clear();
            self.upcasters
                .select_ref_into::<E>(event, &mut decoded)
                .map_err(|error| RelayError::Encode {
                    event: Box::new(event.event_ref()),
                    source: Box::new(error),
                })?;
            for envelope in &decoded {
                if !self.publishes(&envelope.event_type) {
                    continue;
                }
                if let Some(map) = &self.map {
                    let mapped = map(envelope).map_err(|source| RelayError::Map {
                        event: Box::new(event.event_ref()),
                        source,
                    })?;
                    if let Some(out) = mapped {
                        let topic = out
                            .topic
                            .unwrap_or_else(|| (self.topic)(category, &out.event_type));
                        messages.push(Message::new(
                            key,
                            topic,
                            event,
                            envelope.split_index,
                            &out.event_type,
                            out.schema_version,
                            out.payload.get().to_owned(),
                        ));
                    }
                    continue;
                }
                let (event_type, version, payload) = match self.form {
                    PayloadForm::AsStored => (
                        event.event_type.as_str(),
                        event.schema_version,
                        event.payload.get().to_owned(),
                    ),
                    PayloadForm::Current => {
                        let payload =
                            envelope
                                .payload
                                .encode()
                                .map_err(|error| RelayError::Encode {
                                    event: Box::new(event.event_ref()),
                                    source: Box::new(error),
                                })?;
                        (
                            envelope.event_type.as_str(),
                            envelope.schema_version,
                            payload.get().to_owned(),
                        )
                    }
                };
                messages.push(Message::new(
                    key,
                    (self.topic)(category, event_type),
                    event,
                    envelope.split_index,
                    event_type,
                    version,
                    payload,
                ));
            }
        }
        Ok(messages)
    }

    fn publishes(&self, event_type: &str) -> bool {
        self.types.as_ref().is_none_or(|t| t.contains(event_type))
    }
}

fn category(stream: &str) -> &str {
    stream.split_once('-').map_or(stream, |(c, _)| c)
}

#[async_trait]
impl<E: DomainEvent> es_postgres::PgProjection for Relay<E> {
    type Event = E;

    fn name(&self) -> &str {
        &self.name
    }

    fn wants_category(&self, category: &str) -> bool {
        self.categories
            .as_ref()
            .is_none_or(|c| c.contains(category))
    }

    fn ignores(&self, event_type: &str) -> bool {
        !self.publishes(event_type)
    }

    fn delivers(&self) -> bool {
        true
    }

    fn applies(&self) -> bool {
        false
    }

    async fn before_commit(&self, key: &str, events: &[&RecordedEvent]) -> Result<(), BoxError> {
        let messages = self
            .messages_for(key, events)
            .map_err(RelayError::into_box)?;
        if messages.is_empty() {
            return Ok(());
        }
        let started = std::time::Instant::now();
        self.publisher
            .publish(key, &messages)
            .await
            .map_err(RelayError::into_box)?;
        record_published(key, messages.len(), started.elapsed(), events);
        Ok(())
    }

    async fn setup(&self, _conn: &mut PgConnection) -> Result<(), BoxError> {
        Ok(())
    }

    async fn reset(&self, _conn: &mut PgConnection) -> Result<(), BoxError> {
        Ok(())
    }

    async fn apply(&self, _conn: &mut PgConnection, _event: &Envelope<E>) -> Result<(), BoxError> {
        Ok(())
    }
}

/// The relay's counters, the delay from append to broker of the batch's last event (by the
/// database's clock, read against this host's: a skew shows up here), and when that event was
/// recorded.
fn record_published(
    key: &str,
    messages: usize,
    took: std::time::Duration,
    events: &[&RecordedEvent],
) {
    use es_core::telemetry as names;
    let relay = key.to_owned();
    metrics::counter!(names::RELAY_MESSAGES, "relay" => relay.clone()).increment(messages as u64);
    metrics::histogram!(names::RELAY_PUBLISH_DURATION, "relay" => relay.clone())
        .record(took.as_secs_f64());
    if let Some(last) = events.last() {
        let delivery = (chrono::Utc::now() - last.recorded_at)
            .to_std()
            .unwrap_or_default();
        metrics::histogram!(names::RELAY_DELIVERY, "relay" => relay.clone())
            .record(delivery.as_secs_f64());
        let recorded = last.recorded_at.timestamp_micros() as f64 / 1e6;
        metrics::gauge!(names::RELAY_LAST_PUBLISHED, "relay" => relay).set(recorded);
    }
}
