//! Domain events: the trait that names and encodes them, and the record of a new event to append.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::Metadata;

/// The name of an event type and its current schema version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EventType {
    /// The type name stored with every event, e.g. `"FundsDeposited"`.
    pub name: &'static str,
    /// The schema version new events of this type are written with; it starts at 1 and grows by
    /// one with each change that needs an upcaster.
    pub version: u32,
}

/// A fact that happened in the domain, named in the past tense.
///
/// Events are what aggregates emit and projections consume. A type implementing `DomainEvent`
/// (usually an enum with one variant per event type, derived with `es-macros`) tells the store
/// which type name and schema version to record, and how to turn itself into a JSON payload and
/// back. The payload holds the event's data only; its type travels beside it in the envelope.
pub trait DomainEvent: Sized + Send + Sync + 'static {
    /// Every event type this Rust type can hold, with its current schema version.
    const TYPES: &'static [EventType];

    /// The type name of this event.
    fn event_type(&self) -> &'static str;

    /// The schema version this event is written with.
    fn schema_version(&self) -> u32 {
        current_version::<Self>(self.event_type()).unwrap_or(1)
    }

    /// The event's data as JSON, without its type name.
    fn encode(&self) -> Result<Box<RawValue>, serde_json::Error>;

    /// Rebuilds an event from its type name and a payload (JSON text) at the current schema
    /// version.
    fn decode(event_type: &str, payload: &str) -> Result<Self, DecodeError>;

    /// This event's personal fields and their data subject: what `#[event(personal)]` and
    /// `#[event(subject)]` declare (see [`crate::personal`]). `None`: nothing personal.
    fn personal_data(&self) -> Option<crate::PersonalData> {
        None
    }
}

/// The current schema version of `event_type` in `E`, or `None` when `E` has no such type.
pub fn current_version<E: DomainEvent>(event_type: &str) -> Option<u32> {
    E::TYPES
        .iter()
        .find(|t| t.name == event_type)
        .map(|t| t.version)
}

/// Why a payload could not become a typed event.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The event type is not one the target type knows.
    #[error("unknown event type {0:?}")]
    UnknownType(String),
    /// The payload did not match the event's shape.
    #[error("payload does not match the event type: {0}")]
    Payload(#[from] serde_json::Error),
    /// A stored event is at a newer schema version than this code knows: it was written by a
    /// newer release, and reading it with older code would misread it.
    #[error("schema version {stored} is newer than the current version {current}")]
    FutureVersion {
        /// The version stored with the event.
        stored: u32,
        /// The newest version this code knows.
        current: u32,
    },
    /// An upcaster failed to lift the payload to the next version.
    #[error("upcasting from schema version {from} failed: {reason}")]
    Upcast {
        /// The version the failing upcaster started from.
        from: u32,
        /// What the upcaster reported.
        reason: String,
    },
}

/// Encodes one variant of a serde externally tagged enum (serde's default enum representation)
/// as its payload alone: `Deposited { amount: 5 }` becomes `{"amount":5}`.
///
/// Hand-written [`DomainEvent`] impls can use this with [`decode_tagged`] when the serde variant
/// names are the event type names; the derive in `es-macros` generates direct code instead.
pub fn encode_tagged<T: Serialize>(event: &T) -> Result<Box<RawValue>, serde_json::Error> {
    use serde::ser::Error as _;
    match serde_json::to_value(event)? {
        serde_json::Value::Object(map) if map.len() == 1 => {
            let (_, payload) = map.into_iter().next().ok_or_else(|| {
                serde_json::Error::custom("an externally tagged variant has one entry")
            })?;
            serde_json::value::to_raw_value(&payload)
        }
        // Unit variants serialize as their bare name and carry no data.
        serde_json::Value::String(_) => serde_json::value::to_raw_value(&serde_json::Value::Null),
        _ => Err(serde_json::Error::custom(
            "encode_tagged expects an enum in serde's externally tagged representation",
        )),
    }
}

/// Decodes a payload written by [`encode_tagged`] back into the variant named `variant`, in one
/// pass over the text: the variant name is handed to `T`'s own `Deserialize` (so every serde
/// attribute holds) without wrapping the payload in a tagged object first.
pub fn decode_tagged<T: DeserializeOwned>(
    variant: &str,
    payload: &str,
) -> Result<T, serde_json::Error> {
    let mut json = serde_json::Deserializer::from_str(payload);
    let value = T::deserialize(Tagged {
        variant,
        payload: &mut json,
    })?;
    json.end()?;
    Ok(value)
}

/// An externally tagged enum value whose tag is known and whose content is JSON text.
struct Tagged<'a, 'de> {
    variant: &'a str,
    payload: &'a mut serde_json::Deserializer<serde_json::de::StrRead<'de>>,
}

impl<'de> serde::Deserializer<'de> for Tagged<'_, 'de> {
    type Error = serde_json::Error;

    fn deserialize_any<V: serde::de::Visitor<'de>>(
        self,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_enum(self)
    }

    fn deserialize_enum<V: serde::de::Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_enum(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map struct identifier
        ignored_any
    }
}

impl<'de> serde::de::EnumAccess<'de> for Tagged<'_, 'de> {
    type Error = serde_json::Error;
    type Variant = Self;

    fn variant_seed<V: serde::de::DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, Self), Self::Error> {
        use serde::de::IntoDeserializer;
        let variant = seed.deserialize(
            IntoDeserializer::<serde_json::Error>::into_deserializer(self.variant),
        )?;
        Ok((variant, self))
    }
}

impl<'de> serde::de::VariantAccess<'de> for Tagged<'_, 'de> {
    type Error = serde_json::Error;

    fn unit_variant(self) -> Result<(), Self::Error> {
        // `encode_tagged` writes a unit variant's payload as `null`.
        serde::Deserialize::deserialize(&mut *self.payload)
    }

    fn newtype_variant_seed<T: serde::de::DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<T::Value, Self::Error> {
        seed.deserialize(&mut *self.payload)
    }

    fn tuple_variant<V: serde::de::Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        serde::Deserializer::deserialize_tuple(&mut *self.payload, len, visitor)
    }

    fn struct_variant<V: serde::de::Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        serde::Deserializer::deserialize_struct(&mut *self.payload, "", fields, visitor)
    }
}

/// An event about to be appended: its identity, type, payload and tracing context.
///
/// The event id is the idempotency key: appending an event whose id is already stored, with the
/// same content, writes nothing and reports the original append.
#[derive(Clone, Debug)]
pub struct NewEvent {
    /// Unique id of the event (UUID v7 by default).
    pub event_id: Uuid,
    /// The event type name.
    pub event_type: String,
    /// The schema version of `payload`.
    pub schema_version: u32,
    /// The event's data.
    pub payload: Box<RawValue>,
    /// The id shared by every message of one piece of work.
    pub correlation_id: Uuid,
    /// The id of the command or event that caused this one.
    pub causation_id: Option<Uuid>,
    /// Free-form data beside the payload (user, tenant, trace ids...).
    pub metadata: Metadata,
    /// The payload's personal fields and their data subject, sealed by the store before it
    /// writes them (see [`crate::personal`]); set by [`NewEvent::from_event`].
    pub personal: Option<crate::PersonalData>,
}

impl NewEvent {
    /// A new event with a fresh v7 id that is its own correlation id and has no cause.
    pub fn new(event_type: impl Into<String>, schema_version: u32, payload: Box<RawValue>) -> Self {
        let event_id = Uuid::now_v7();
        Self {
            event_id,
            event_type: event_type.into(),
            schema_version,
            payload,
            correlation_id: event_id,
            causation_id: None,
            metadata: Metadata::new(),
            personal: None,
        }
    }

    /// Encodes a domain event at its current schema version.
    pub fn from_event<E: DomainEvent>(event: &E) -> Result<Self, serde_json::Error> {
        let mut new = Self::new(event.event_type(), event.schema_version(), event.encode()?);
        new.personal = event.personal_data();
        Ok(new)
    }

    /// Replaces the event id, e.g. with one derived from a command id.
    pub fn with_id(mut self, event_id: Uuid) -> Self {
        if self.correlation_id == self.event_id {
            self.correlation_id = event_id;
        }
        self.event_id = event_id;
        self
    }

    /// Sets the correlation id.
    pub fn correlated_with(mut self, correlation_id: Uuid) -> Self {
        self.correlation_id = correlation_id;
        self
    }

    /// Sets the causation id.
    pub fn caused_by(mut self, causation_id: Uuid) -> Self {
        self.causation_id = Some(causation_id);
        self
    }

    /// Replaces the metadata.
    pub fn with_metadata(mut self, metadata: Metadata) -> Self {
        self.metadata = metadata;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Sample {
        Opened { owner: String },
        Renamed(String),
        Closed,
    }

    #[test]
    fn tagged_helpers_round_trip_every_variant_shape() {
        for (event, name, payload) in [
            (
                Sample::Opened {
                    owner: "ann".into(),
                },
                "Opened",
                r#"{"owner":"ann"}"#,
            ),
            (Sample::Renamed("b".into()), "Renamed", r#""b""#),
            (Sample::Closed, "Closed", "null"),
        ] {
            let raw = encode_tagged(&event).unwrap();
            assert_eq!(raw.get(), payload);
            let back: Sample = decode_tagged(name, raw.get()).unwrap();
            assert_eq!(back, event);
        }
    }

    #[test]
    fn decode_of_wrong_shape_is_an_error_not_a_panic() {
        let raw = RawValue::from_string(r#"{"owner":5}"#.into()).unwrap();
        assert!(decode_tagged::<Sample>("Opened", raw.get()).is_err());
        assert!(decode_tagged::<Sample>("Nope", raw.get()).is_err());
    }
}
