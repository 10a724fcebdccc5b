//! Loading aggregates: the newest usable snapshot, then the events after it, upcast on read.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;

use crate::{
    Aggregate, CommandError, EventStore, Snapshot, SnapshotDue, SnapshotPolicy, SnapshotStore,
    StoreError, StreamId, Upcasters, is_tombstone,
};

/// An aggregate's state and the stream version it reflects.
#[derive(Clone, Debug)]
pub struct Loaded<A> {
    /// The state.
    pub state: A,
    /// The version of the last applied event; 0 for a new aggregate.
    pub version: u64,
    /// The stream version of the snapshot the load started from; 0 when it replayed from the
    /// first event. (The snapshot's format version is `Aggregate::SNAPSHOT_VERSION`.)
    pub snapshot_at: u64,
}

/// How a repository reads and writes snapshots of `A` (only built where `A` is serializable).
struct Snapshots<A> {
    store: Arc<dyn SnapshotStore>,
    policy: SnapshotPolicy,
    encode: fn(&A) -> Result<Box<RawValue>, serde_json::Error>,
    decode: fn(&str) -> Result<A, serde_json::Error>,
}

impl<A> Clone for Snapshots<A> {
    fn clone(&self) -> Self {
        Self {
            store: Arc::clone(&self.store),
            policy: self.policy.clone(),
            encode: self.encode,
            decode: self.decode,
        }
    }
}

/// Loads aggregates of type `A` from an event store, lifting old events through upcasters and
/// starting from a snapshot when one is usable.
pub struct Repository<A> {
    store: Arc<dyn EventStore>,
    upcasters: Arc<Upcasters>,
    snapshots: Option<Snapshots<A>>,
}

impl<A> Clone for Repository<A> {
    fn clone(&self) -> Self {
        Self {
            store: Arc::clone(&self.store),
            upcasters: Arc::clone(&self.upcasters),
            snapshots: self.snapshots.clone(),
        }
    }
}

/// Where a load stops: the whole stream, a version, or a point in time.
#[derive(Clone, Copy)]
enum Until {
    End,
    Version(u64),
    Time(DateTime<Utc>),
}

impl<A: Aggregate> Repository<A> {
    /// A repository over `store`, lifting old events through the store's upcasters
    /// ([`EventStore::upcasters`]), with no snapshots.
    pub fn new(store: Arc<dyn EventStore>) -> Self {
        Self {
            upcasters: store.upcasters(),
            store,
            snapshots: None,
        }
    }

    /// Lifts stored events through `upcasters` on every load instead of the store's. Validate
    /// the registry first with [`Upcasters::validate`].
    pub fn with_upcasters(mut self, upcasters: Arc<Upcasters>) -> Self {
        self.upcasters = upcasters;
        self
    }

    /// Loads from the newest usable snapshot in `store`, and lets a command handler take new
    /// ones as `policy` says.
    pub fn with_snapshots(mut self, store: Arc<dyn SnapshotStore>, policy: SnapshotPolicy) -> Self
    where
        A: Serialize + DeserializeOwned,
    {
        self.snapshots = Some(Snapshots {
            store,
            policy,
            encode: |state| serde_json::value::to_raw_value(state),
            decode: |text| serde_json::from_str(text),
        });
        self
    }

    /// Loads from snapshots in `store`, taking new ones as the aggregate's own
    /// [`Aggregate::snapshot_policy`] says.
    pub fn with_snapshot_store(self, store: Arc<dyn SnapshotStore>) -> Self
    where
        A: Serialize + DeserializeOwned,
    {
        self.with_snapshots(store, A::snapshot_policy())
    }

    /// The event store underneath.
    pub fn store(&self) -> &Arc<dyn EventStore> {
        &self.store
    }

    /// The stream of the aggregate `id`.
    pub fn stream_id(id: &str) -> Result<StreamId, CommandError<A::Error>> {
        Ok(StreamId::for_aggregate(A::CATEGORY, id)?)
    }

    /// Rebuilds the aggregate's current state.
    pub async fn load(&self, stream: &StreamId) -> Result<Loaded<A>, CommandError<A::Error>> {
        self.load_until(stream, Until::End).await
    }

    /// The aggregate's state as of stream version `version`: its first `version` events.
    pub async fn load_at_version(
        &self,
        stream: &StreamId,
        version: u64,
    ) -> Result<Loaded<A>, CommandError<A::Error>> {
        self.load_until(stream, Until::Version(version)).await
    }

    /// The aggregate's state as of `time`: its events whose `recorded_at` is at or before it.
    ///
    /// `recorded_at` is the store's clock when the append wrote the event (PostgreSQL: the
    /// database's `clock_timestamp()` at insert, not the start of the writing transaction). The
    /// transaction commits a little later, so an event written just before `time` by a
    /// transaction that committed just after it is included: "as of" means "written by", to
    /// the precision of the store's clock, not "visible at".
    pub async fn load_as_of(
        &self,
        stream: &StreamId,
        time: DateTime<Utc>,
    ) -> Result<Loaded<A>, CommandError<A::Error>> {
        self.load_until(stream, Until::Time(time)).await
    }

    async fn load_until(
        &self,
        stream: &StreamId,
        until: Until,
    ) -> Result<Loaded<A>, CommandError<A::Error>> {
        let mut loaded = match until {
            // A snapshot records no time, so loads as of a time always replay.
            Until::Time(_) => None,
            Until::End => self.usable_snapshot(stream, u64::MAX).await,
            Until::Version(v) => self.usable_snapshot(stream, v).await,
        }
        .unwrap_or(Loaded {
            state: A::default(),
            version: 0,
            snapshot_at: 0,
        });

        let mut events = match until {
            Until::Version(v) => self.store.read_stream_range(stream, loaded.version + 1, v),
            _ => self.store.read_stream(stream, loaded.version + 1),
        };
        let mut decoded = Vec::with_capacity(1);
        while let Some(recorded) = events.try_next().await? {
            let done = match until {
                Until::End => false,
                Until::Version(v) => recorded.stream_version > v,
                Until::Time(t) => recorded.recorded_at > t,
            };
            if done {
                break;
            }
            let version = recorded.stream_version;
            if is_tombstone(&recorded.event_type) {
                // A recreated stream reads from its tombstone: its new life starts afresh.
                loaded.state = A::default();
                loaded.version = version;
                loaded.snapshot_at = 0;
                continue;
            }
            if version != loaded.version + 1 {
                // The events before this one are hidden (a truncation) and no usable snapshot
                // covers them: refuse rather than build a state from part of the stream.
                return Err(StoreError::StreamTruncated {
                    stream: stream.clone(),
                    before: version,
                }
                .into());
            }
            self.upcasters.decode_into(recorded, &mut decoded)?;
            for envelope in decoded.drain(..) {
                loaded.state.apply(&envelope.payload);
            }
            loaded.version = version;
        }
        Ok(loaded)
    }

    /// The newest snapshot at or below `max_version` that this code can read. Anything else (no
    /// snapshot, another snapshot version, a state that does not deserialize, a failing store)
    /// means a full replay, reported through tracing, never a failed load.
    async fn usable_snapshot(&self, stream: &StreamId, max_version: u64) -> Option<Loaded<A>> {
        let snapshots = self.snapshots.as_ref()?;
        let snapshot = match snapshots.store.load(stream).await {
            Ok(Some(snapshot)) => snapshot,
            Ok(None) => return None,
            Err(error) => {
                tracing::warn!(%stream, %error, "loading the snapshot failed; replaying all events");
                return None;
            }
        };
        if snapshot.snapshot_version != A::SNAPSHOT_VERSION {
            tracing::info!(
                %stream,
                stored = snapshot.snapshot_version,
                current = A::SNAPSHOT_VERSION,
                "ignoring a snapshot of another snapshot version; replaying all events"
            );
            return None;
        }
        if snapshot.stream_version > max_version {
            return None;
        }
        match (snapshots.decode)(snapshot.state.get()) {
            Ok(state) => Some(Loaded {
                state,
                version: snapshot.stream_version,
                snapshot_at: snapshot.stream_version,
            }),
            Err(error) => {
                tracing::warn!(%stream, %error, "ignoring a snapshot that does not deserialize; replaying all events");
                None
            }
        }
    }

    /// Saves a snapshot of `state` at `new_version` when the policy says so. Never fails: a
    /// snapshot only shortens later loads, so a failure to take one is reported and forgotten.
    pub async fn snapshot_if_due(
        &self,
        stream: &StreamId,
        state: &A,
        previous_version: u64,
        new_version: u64,
        snapshot_at: u64,
    ) {
        let Some(snapshots) = &self.snapshots else {
            return;
        };
        let due = SnapshotDue {
            previous_version,
            new_version,
            snapshot_at,
        };
        if !snapshots.policy.is_due(&due) {
            return;
        }
        let state = match (snapshots.encode)(state) {
            Ok(state) => state,
            Err(error) => {
                tracing::warn!(%stream, %error, "cannot serialize the aggregate for a snapshot");
                return;
            }
        };
        let snapshot = Snapshot {
            stream_id: stream.clone(),
            stream_version: new_version,
            snapshot_version: A::SNAPSHOT_VERSION,
            state,
            taken_at: Utc::now(),
        };
        if let Err(error) = snapshots.store.save(snapshot).await {
            tracing::warn!(%stream, %error, "saving a snapshot failed; the command stands");
        }
    }
}
