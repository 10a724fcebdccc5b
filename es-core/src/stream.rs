//! Stream identifiers.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The longest stream id the stores accept, in bytes.
pub const MAX_STREAM_ID_LEN: usize = 512;

/// The name of one event stream, usually `"{category}-{id}"` for an aggregate instance.
///
/// A stream id is never empty, holds no NUL character (PostgreSQL text cannot store one) and is
/// at most [`MAX_STREAM_ID_LEN`] bytes long; [`StreamId::new`] enforces this so every store can
/// rely on it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct StreamId(String);

/// Why a string is not a valid [`StreamId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidStreamId {
    /// The stream id was empty.
    #[error("stream id is empty")]
    Empty,
    /// The stream id was longer than [`MAX_STREAM_ID_LEN`] bytes.
    #[error("stream id is {len} bytes long, the limit is {MAX_STREAM_ID_LEN}")]
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// The stream id held a NUL character.
    #[error("stream id {0:?} contains a NUL character")]
    Nul(String),
}

impl StreamId {
    /// Checks and wraps a stream name.
    pub fn new(id: impl Into<String>) -> Result<Self, InvalidStreamId> {
        let id = id.into();
        if id.is_empty() {
            return Err(InvalidStreamId::Empty);
        }
        if id.len() > MAX_STREAM_ID_LEN {
            return Err(InvalidStreamId::TooLong { len: id.len() });
        }
        if id.contains('\0') {
            return Err(InvalidStreamId::Nul(id));
        }
        Ok(Self(id))
    }

    /// The stream of one aggregate instance: `"{category}-{id}"`.
    pub fn for_aggregate(category: &str, id: &str) -> Result<Self, InvalidStreamId> {
        Self::new(format!("{category}-{id}"))
    }

    /// The category: everything before the first `-`, or the whole id when it has none.
    pub fn category(&self) -> &str {
        self.0
            .split_once('-')
            .map_or(&self.0, |(category, _)| category)
    }

    /// The aggregate's own id: everything after the first `-`, or the whole id when it has
    /// none (`"order-42"` gives `"42"`).
    pub fn id(&self) -> &str {
        self.0.split_once('-').map_or(&self.0, |(_, id)| id)
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for StreamId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for StreamId {
    type Error = InvalidStreamId;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl TryFrom<&str> for StreamId {
    type Error = InvalidStreamId;
    fn try_from(value: &str) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<StreamId> for String {
    fn from(id: StreamId) -> Self {
        id.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_what_a_store_cannot_hold() {
        assert_eq!(StreamId::new(""), Err(InvalidStreamId::Empty));
        assert!(matches!(
            StreamId::new("a\0b"),
            Err(InvalidStreamId::Nul(_))
        ));
        assert!(matches!(
            StreamId::new("x".repeat(MAX_STREAM_ID_LEN + 1)),
            Err(InvalidStreamId::TooLong { len: 513 })
        ));
    }

    #[test]
    fn category_is_the_part_before_the_first_dash() {
        let id = StreamId::for_aggregate("order", "42-a").unwrap();
        assert_eq!(id.as_str(), "order-42-a");
        assert_eq!(id.category(), "order");
        assert_eq!(StreamId::new("plain").unwrap().category(), "plain");
    }
}
