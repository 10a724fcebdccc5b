//! Optimistic concurrency: what a writer expects a stream's version to be.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::StreamId;

/// The stream version an append expects to find. Versions are 1-based: a stream holding three
/// events is at version 3, and a stream that does not exist is at version 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ExpectedVersion {
    /// Append whatever the stream's version is.
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream must exist, at any version.
    StreamExists,
    /// The stream must be exactly at this version; `Exact(0)` is the same as `NoStream`.
    Exact(u64),
}

impl ExpectedVersion {
    /// Whether a stream at `actual` (`None`: no stream) satisfies this expectation.
    pub fn accepts(self, actual: Option<u64>) -> bool {
        let current = actual.unwrap_or(0);
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => current == 0,
            ExpectedVersion::StreamExists => current > 0,
            ExpectedVersion::Exact(n) => current == n,
        }
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any version"),
            ExpectedVersion::NoStream => f.write_str("no stream"),
            ExpectedVersion::StreamExists => f.write_str("an existing stream"),
            ExpectedVersion::Exact(n) => write!(f, "version {n}"),
        }
    }
}

/// An append found the stream at another version than it expected; nothing was written.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("version conflict on stream {stream}: expected {expected}, found {}", display_actual(*.actual))]
pub struct ConflictError {
    /// The stream appended to.
    pub stream: StreamId,
    /// What the append expected.
    pub expected: ExpectedVersion,
    /// The stream's version when the append was refused; `None` when the stream does not exist.
    pub actual: Option<u64>,
}

fn display_actual(actual: Option<u64>) -> String {
    match actual {
        None => "no stream".to_owned(),
        Some(n) => format!("version {n}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expectations_against_versions() {
        use ExpectedVersion::*;
        assert!(Any.accepts(None) && Any.accepts(Some(3)));
        assert!(NoStream.accepts(None) && !NoStream.accepts(Some(1)));
        assert!(!StreamExists.accepts(None) && StreamExists.accepts(Some(1)));
        assert!(Exact(0).accepts(None) && Exact(2).accepts(Some(2)) && !Exact(2).accepts(Some(3)));
    }

    #[test]
    fn conflict_message_names_stream_and_versions() {
        let err = ConflictError {
            stream: StreamId::new("order-1").unwrap(),
            expected: ExpectedVersion::Exact(2),
            actual: Some(5),
        };
        assert_eq!(
            err.to_string(),
            "version conflict on stream order-1: expected version 2, found version 5"
        );
    }
}
