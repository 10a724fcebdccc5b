//! Snapshots: an aggregate's state at a stream version, to shorten replays.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::value::RawValue;

use crate::{StoreError, StreamId};

/// An aggregate's serialized state after the event at `stream_version`.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// The aggregate's stream.
    pub stream_id: StreamId,
    /// The version of the last event the state includes.
    pub stream_version: u64,
    /// The aggregate's `SNAPSHOT_VERSION` when the snapshot was taken; a snapshot taken with
    /// another version is ignored on load.
    pub snapshot_version: u32,
    /// The state as JSON.
    pub state: Box<RawValue>,
    /// When the snapshot was taken.
    pub taken_at: DateTime<Utc>,
}

/// Where snapshots are kept: the newest one per stream.
#[async_trait]
pub trait SnapshotStore: Send + Sync {
    /// The newest snapshot of `stream`, if any.
    async fn load(&self, stream: &StreamId) -> Result<Option<Snapshot>, StoreError>;

    /// Keeps `snapshot` unless a snapshot of a later stream version is already kept.
    async fn save(&self, snapshot: Snapshot) -> Result<(), StoreError>;
}

/// When a command handler takes a snapshot after a command.
#[derive(Clone, Default)]
pub enum SnapshotPolicy {
    /// Never (the default).
    #[default]
    Never,
    /// Whenever the stream version crosses a multiple of `n`: every `n` events.
    EveryNEvents(u64),
    /// Whenever the predicate says so.
    Custom(Arc<dyn Fn(&SnapshotDue) -> bool + Send + Sync>),
}

/// What a [`SnapshotPolicy::Custom`] predicate decides on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotDue {
    /// The stream version before the command.
    pub previous_version: u64,
    /// The stream version after it.
    pub new_version: u64,
    /// The stream version the last usable snapshot was taken at when the aggregate was loaded
    /// (0: none). Not the snapshot's format version (`Aggregate::SNAPSHOT_VERSION`).
    pub snapshot_at: u64,
}

impl SnapshotPolicy {
    /// Whether a snapshot is due.
    pub fn is_due(&self, due: &SnapshotDue) -> bool {
        match self {
            SnapshotPolicy::Never => false,
            SnapshotPolicy::EveryNEvents(0) => false,
            SnapshotPolicy::EveryNEvents(n) => due.new_version / n > due.previous_version / n,
            SnapshotPolicy::Custom(predicate) => predicate(due),
        }
    }
}

impl std::fmt::Debug for SnapshotPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SnapshotPolicy::Never => f.write_str("Never"),
            SnapshotPolicy::EveryNEvents(n) => write!(f, "EveryNEvents({n})"),
            SnapshotPolicy::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

/// Snapshots kept in memory, for tests and the quickstart.
#[derive(Debug, Default)]
pub struct InMemorySnapshotStore {
    snapshots: Mutex<HashMap<StreamId, Snapshot>>,
}

impl InMemorySnapshotStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl SnapshotStore for InMemorySnapshotStore {
    async fn load(&self, stream: &StreamId) -> Result<Option<Snapshot>, StoreError> {
        let snapshots = self.snapshots.lock().unwrap_or_else(|e| e.into_inner());
        Ok(snapshots.get(stream).cloned())
    }

    async fn save(&self, snapshot: Snapshot) -> Result<(), StoreError> {
        let mut snapshots = self.snapshots.lock().unwrap_or_else(|e| e.into_inner());
        let newer_kept = snapshots
            .get(&snapshot.stream_id)
            .is_some_and(|kept| kept.stream_version > snapshot.stream_version);
        if !newer_kept {
            snapshots.insert(snapshot.stream_id.clone(), snapshot);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_n_events_fires_when_a_multiple_is_crossed() {
        let policy = SnapshotPolicy::EveryNEvents(10);
        let due = |previous_version, new_version| SnapshotDue {
            previous_version,
            new_version,
            snapshot_at: 0,
        };
        assert!(!policy.is_due(&due(0, 9)));
        assert!(policy.is_due(&due(9, 10)));
        assert!(
            policy.is_due(&due(8, 12)),
            "a batch that jumps over a multiple"
        );
        assert!(!policy.is_due(&due(10, 19)));
        assert!(!SnapshotPolicy::EveryNEvents(0).is_due(&due(0, 100)));
        assert!(!SnapshotPolicy::Never.is_due(&due(0, 100)));
    }
}
