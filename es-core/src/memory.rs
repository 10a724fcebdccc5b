//! An in-memory event store for unit tests, examples and the quickstart.

use std::collections::HashMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use async_trait::async_trait;
use chrono::Utc;
use futures_core::stream::BoxStream;

use crate::store::{judge_repeat, validate_append};
use crate::{
    AppendResult, ConflictError, EventStore, ExpectedVersion, NewEvent, Position, RecordedEvent,
    SnapshotStore, StoreError, StreamId, StreamLifecycle, TruncationRefusal, Upcasters, tombstone,
};

/// An event store held in process memory, with the same guarantees as the PostgreSQL store
/// (it passes the same conformance suite) and none of its durability.
///
/// Appends are serialised by one lock, so each append is one "transaction": its events share a
/// transaction number in their [`Position`], and positions grow in commit order.
///
/// It implements [`StreamLifecycle`]; truncation consults the snapshot store given with
/// [`with_snapshot_store`](Self::with_snapshot_store) (without one, every truncation is refused
/// for want of a covering snapshot).
#[derive(Default)]
pub struct InMemoryEventStore {
    inner: RwLock<Inner>,
    upcasters: Option<Arc<Upcasters>>,
    snapshots: Option<Arc<dyn SnapshotStore>>,
}

impl std::fmt::Debug for InMemoryEventStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InMemoryEventStore")
            .field("inner", &self.inner)
            .field("upcasters", &self.upcasters)
            .field("snapshots", &self.snapshots.is_some())
            .finish()
    }
}

#[derive(Debug, Default)]
struct Inner {
    log: Vec<RecordedEvent>,
    streams: HashMap<StreamId, Vec<usize>>,
    ids: HashMap<uuid::Uuid, usize>,
    transactions: u64,
    /// Deleted and truncated streams.
    lives: HashMap<StreamId, Life>,
}

/// A stream's lifecycle state, kept only for streams deleted or truncated once.
#[derive(Clone, Copy, Debug, Default)]
struct Life {
    deleted: bool,
    /// The first version reads return (1: nothing hidden).
    truncated_before: u64,
}

impl Inner {
    fn life(&self, stream: &StreamId) -> Life {
        self.lives.get(stream).copied().unwrap_or(Life {
            deleted: false,
            truncated_before: 1,
        })
    }

    fn refuse_deleted(&self, stream: &StreamId) -> Result<Life, StoreError> {
        let life = self.life(stream);
        if life.deleted {
            return Err(StoreError::StreamDeleted {
                stream: stream.clone(),
            });
        }
        Ok(life)
    }

    fn version(&self, stream: &StreamId) -> Option<u64> {
        self.streams.get(stream).map(|s| s.len() as u64)
    }

    fn stored(&self, events: &[NewEvent]) -> Vec<RecordedEvent> {
        events
            .iter()
            .filter_map(|e| self.ids.get(&e.event_id).map(|&i| self.log[i].clone()))
            .collect()
    }

    /// Writes `events` after version `current` of `stream`, as one transaction.
    fn push(&mut self, stream: &StreamId, current: u64, events: Vec<NewEvent>) -> AppendResult {
        if events.is_empty() {
            return AppendResult {
                first_version: current + 1,
                last_version: current,
                positions: Vec::new(),
                deduplicated: false,
            };
        }
        self.transactions += 1;
        let transaction = self.transactions;
        let recorded_at = Utc::now();
        let mut positions = Vec::with_capacity(events.len());
        let count = events.len() as u64;
        for (offset, event) in events.into_iter().enumerate() {
            let index = self.log.len();
            let position = Position::new(transaction, index as u64 + 1);
            positions.push(position);
            self.ids.insert(event.event_id, index);
            self.streams.entry(stream.clone()).or_default().push(index);
            self.log.push(RecordedEvent {
                event_id: event.event_id,
                stream_id: stream.clone(),
                stream_version: current + 1 + offset as u64,
                position,
                event_type: event.event_type,
                schema_version: event.schema_version,
                recorded_at,
                correlation_id: event.correlation_id,
                causation_id: event.causation_id,
                metadata: event.metadata,
                split_index: 0,
                payload: event.payload.into(),
            });
        }
        AppendResult {
            first_version: current + 1,
            last_version: current + count,
            positions,
            deduplicated: false,
        }
    }

    /// The events of `stream` from version `from` (the caller passes at least the truncation
    /// point) up to version `to`.
    fn events_from(&self, stream: &StreamId, from: u64, to: u64) -> Vec<RecordedEvent> {
        let skip = from.saturating_sub(1) as usize;
        self.streams
            .get(stream)
            .map(|indexes| {
                indexes
                    .iter()
                    .skip(skip)
                    .map(|&i| self.log[i].clone())
                    .take_while(|e| e.stream_version <= to)
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl InMemoryEventStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers the upcasters readers of this store lift old events through (see
    /// [`EventStore::upcasters`]).
    pub fn with_upcasters(mut self, upcasters: Arc<Upcasters>) -> Self {
        self.upcasters = Some(upcasters);
        self
    }

    /// Checks truncations against the snapshots kept in `snapshots` (see
    /// [`StreamLifecycle::truncate_before`]): give it the snapshot store the application's
    /// repositories use.
    pub fn with_snapshot_store(mut self, snapshots: Arc<dyn SnapshotStore>) -> Self {
        self.snapshots = Some(snapshots);
        self
    }

    /// How many events the store holds.
    pub fn len(&self) -> usize {
        self.read().log.len()
    }

    /// Whether the store holds no event.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    // A panic while holding the lock cannot leave half an append behind (appends only push
    // after all checks pass), so a poisoned lock is safe to keep using.
    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl EventStore for InMemoryEventStore {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        validate_append(stream, &events)?;
        let mut inner = self.write();

        let stored = inner.stored(&events);
        if let Some(repeat) = judge_repeat(stream, &events, &stored)? {
            return Ok(repeat);
        }
        inner.refuse_deleted(stream)?;

        let current = inner.version(stream);
        if !expected.accepts(current) {
            return Err(ConflictError {
                stream: stream.clone(),
                expected,
                actual: current,
            }
            .into());
        }
        Ok(inner.push(stream, current.unwrap_or(0), events))
    }

    fn read_stream<'a>(
        &'a self,
        stream: &'a StreamId,
        from_version: u64,
    ) -> BoxStream<'a, Result<RecordedEvent, StoreError>> {
        let inner = self.read();
        let events = match inner.refuse_deleted(stream) {
            Ok(life) => inner
                .events_from(stream, from_version.max(life.truncated_before), u64::MAX)
                .into_iter()
                .map(Ok)
                .collect(),
            Err(error) => vec![Err(error)],
        };
        Box::pin(futures_util::stream::iter(events))
    }

    fn read_stream_range<'a>(
        &'a self,
        stream: &'a StreamId,
        from_version: u64,
        to_version: u64,
    ) -> BoxStream<'a, Result<RecordedEvent, StoreError>> {
        let inner = self.read();
        let events = match inner.refuse_deleted(stream) {
            Ok(life) if from_version <= to_version && to_version < life.truncated_before => {
                vec![Err(StoreError::StreamTruncated {
                    stream: stream.clone(),
                    before: life.truncated_before,
                })]
            }
            Ok(life) => inner
                .events_from(stream, from_version.max(life.truncated_before), to_version)
                .into_iter()
                .map(Ok)
                .collect(),
            Err(error) => vec![Err(error)],
        };
        Box::pin(futures_util::stream::iter(events))
    }

    async fn read_all(
        &self,
        after: Position,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let inner = self.read();
        let start = inner.log.partition_point(|e| e.position <= after);
        Ok(inner.log[start..].iter().take(limit).cloned().collect())
    }

    async fn read_event(&self, event_id: uuid::Uuid) -> Result<Option<RecordedEvent>, StoreError> {
        let inner = self.read();
        Ok(inner.ids.get(&event_id).map(|&i| inner.log[i].clone()))
    }

    async fn read_correlated(
        &self,
        correlation_id: uuid::Uuid,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let inner = self.read();
        Ok(inner
            .log
            .iter()
            .filter(|e| e.correlation_id == correlation_id)
            .take(limit)
            .cloned()
            .collect())
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<Option<u64>, StoreError> {
        let inner = self.read();
        inner.refuse_deleted(stream)?;
        Ok(inner.version(stream))
    }

    async fn head(&self) -> Result<Position, StoreError> {
        Ok(self
            .read()
            .log
            .last()
            .map_or(Position::START, |e| e.position))
    }

    fn upcasters(&self) -> Arc<Upcasters> {
        self.upcasters
            .clone()
            .unwrap_or_else(crate::store::no_upcasters)
    }
}

#[async_trait]
impl StreamLifecycle for InMemoryEventStore {
    async fn delete_stream(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
    ) -> Result<AppendResult, StoreError> {
        let mut inner = self.write();
        inner.refuse_deleted(stream)?;
        let current = inner.version(stream);
        let Some(version) = current.filter(|_| expected.accepts(current)) else {
            return Err(ConflictError {
                stream: stream.clone(),
                expected,
                actual: current,
            }
            .into());
        };
        let deleted = inner.push(stream, version, vec![tombstone(version)]);
        let life = inner.life(stream);
        inner.lives.insert(
            stream.clone(),
            Life {
                deleted: true,
                ..life
            },
        );
        Ok(deleted)
    }

    async fn recreate_stream(
        &self,
        stream: &StreamId,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        validate_append(stream, &events)?;
        let mut inner = self.write();
        let stored = inner.stored(&events);
        if let Some(repeat) = judge_repeat(stream, &events, &stored)? {
            return Ok(repeat);
        }
        let life = inner.life(stream);
        let current = inner.version(stream);
        if current.is_some() && !life.deleted {
            return Err(ConflictError {
                stream: stream.clone(),
                expected: ExpectedVersion::NoStream,
                actual: current,
            }
            .into());
        }
        let current = current.unwrap_or(0);
        if events.is_empty() {
            return Ok(inner.push(stream, current, events));
        }
        let recreated = inner.push(stream, current, events);
        if life.deleted {
            // Reads start at the tombstone: where the new life begins.
            inner.lives.insert(
                stream.clone(),
                Life {
                    deleted: false,
                    truncated_before: current,
                },
            );
        }
        Ok(recreated)
    }

    async fn truncate_before(&self, stream: &StreamId, before: u64) -> Result<u64, StoreError> {
        // Snapshots only move forward, so one read before taking the lock stays true under it.
        let newest = match &self.snapshots {
            Some(snapshots) => snapshots.load(stream).await?.map(|s| s.stream_version),
            None => None,
        };
        let mut inner = self.write();
        let life = inner.refuse_deleted(stream)?;
        let refused = |reason| StoreError::TruncationRefused {
            stream: stream.clone(),
            before,
            reason,
        };
        let Some(version) = inner.version(stream) else {
            return Err(refused(TruncationRefusal::NoStream));
        };
        if before <= life.truncated_before {
            return Ok(life.truncated_before);
        }
        if before > version {
            return Err(refused(TruncationRefusal::BeyondEnd { version }));
        }
        if newest.is_none_or(|at| at + 1 < before) {
            return Err(refused(TruncationRefusal::NoCoveringSnapshot { newest }));
        }
        inner.lives.insert(
            stream.clone(),
            Life {
                deleted: false,
                truncated_before: before,
            },
        );
        Ok(before)
    }
}
