//! The free-form context stored beside an event's payload.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

/// Free-form context stored beside an event's payload (who asked, from where, for which
/// tenant...): a JSON object.
///
/// It is kept as the object's JSON text: stores write it and read it back without parsing it,
/// which matters on every read of every event, since most readers never look at it. It is
/// parsed when asked for ([`get`](Self::get), [`to_map`](Self::to_map)); build it with
/// [`with`](Self::with), [`insert`](Self::insert) or from a map.
///
/// ```
/// use es_core::Metadata;
/// use serde_json::json;
///
/// let metadata = Metadata::new().with("user", "ann").with("tenant", 42);
/// assert_eq!(metadata.get("user"), Some(json!("ann")));
/// assert_eq!(metadata.as_json(), r#"{"tenant":42,"user":"ann"}"#);
/// assert!(Metadata::from_json("[1]").is_err());
/// ```
#[derive(Clone)]
pub struct Metadata(Box<str>);

/// Text that is not a JSON object, offered as metadata.
#[derive(Debug, thiserror::Error)]
#[error("metadata must be a JSON object: {0}")]
pub struct InvalidMetadata(String);

impl Metadata {
    /// No entries: `{}`.
    pub fn new() -> Self {
        Self("{}".into())
    }

    /// Metadata holding `map`'s entries.
    pub fn from_map(map: &Map<String, Value>) -> Self {
        // A map of JSON values always serializes.
        Self(
            serde_json::to_string(map)
                .unwrap_or_else(|_| "{}".to_owned())
                .into(),
        )
    }

    /// Metadata from the text of a JSON object, checked.
    pub fn from_json(text: impl Into<String>) -> Result<Self, InvalidMetadata> {
        let text = text.into();
        match serde_json::from_str::<Value>(&text) {
            Ok(Value::Object(_)) => Ok(Self(text.into())),
            Ok(other) => Err(InvalidMetadata(format!("found {other}"))),
            Err(e) => Err(InvalidMetadata(e.to_string())),
        }
    }

    /// Metadata from text a store read back from a column that only holds valid JSON (such as
    /// PostgreSQL's `json`): only checks that it is an object, without parsing it again.
    pub fn from_stored_json(text: impl Into<String>) -> Result<Self, InvalidMetadata> {
        let text = text.into();
        if text.trim_start().starts_with('{') {
            Ok(Self(text.into()))
        } else {
            Err(InvalidMetadata(format!("found {text}")))
        }
    }

    /// The JSON text, as stored.
    pub fn as_json(&self) -> &str {
        &self.0
    }

    /// The entries, parsed.
    pub fn to_map(&self) -> Map<String, Value> {
        serde_json::from_str(&self.0).unwrap_or_default()
    }

    /// Whether it holds no entry.
    pub fn is_empty(&self) -> bool {
        self.0.as_ref() == "{}" || self.to_map().is_empty()
    }

    /// The value of entry `key`, parsed.
    pub fn get(&self, key: &str) -> Option<Value> {
        self.to_map().remove(key)
    }

    /// Sets entry `key` to `value`.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<Value>) {
        let mut map = self.to_map();
        map.insert(key.into(), value.into());
        *self = Self::from_map(&map);
    }

    /// With entry `key` set to `value`.
    pub fn with(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.insert(key, value);
        self
    }
}

impl Default for Metadata {
    fn default() -> Self {
        Self::new()
    }
}

impl From<Map<String, Value>> for Metadata {
    fn from(map: Map<String, Value>) -> Self {
        Self::from_map(&map)
    }
}

/// Equal when they hold the same entries, however the text is laid out.
impl PartialEq for Metadata {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0 || self.to_map() == other.to_map()
    }
}

impl Eq for Metadata {}

impl fmt::Debug for Metadata {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Metadata({})", self.0)
    }
}

impl fmt::Display for Metadata {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Metadata {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_map().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Metadata {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Map::deserialize(deserializer).map(|map| Self::from_map(&map))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn entries_are_parsed_only_when_asked_for() {
        let stored = Metadata::from_stored_json(r#"{ "b": 1, "a": "x" }"#).unwrap();
        assert_eq!(stored.get("a"), Some(json!("x")));
        assert_eq!(stored.get("missing"), None);
        assert_eq!(stored, Metadata::new().with("a", "x").with("b", 1));
        assert!(Metadata::new().is_empty());
        assert!(Metadata::from_stored_json(" {}").unwrap().is_empty());
        assert!(Metadata::from_stored_json("[1]").is_err());
        assert!(Metadata::from_json("{").is_err());
        assert!(Metadata::from_json("1").is_err());
        let round: Metadata =
            serde_json::from_str(&serde_json::to_string(&stored).unwrap()).unwrap();
        assert_eq!(round, stored);
    }
}
