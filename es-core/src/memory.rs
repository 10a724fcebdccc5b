//! An in-memory event store for unit tests, examples and the quickstart.

use std::collections::HashMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use async_trait::async_trait;
use chrono::Utc;
use futures_core::stream::BoxStream;

use crate::store::{judge_repeat, validate_append};
use crate::{
    AppendResult, ConflictError, EventStore, ExpectedVersion, NewEvent, Position, RecordedEvent,
    StoreError, StreamId, Upcasters,
};

/// An event store held in process memory, with the same guarantees as the PostgreSQL store
/// (it passes the same conformance suite) and none of its durability.
///
/// Appends are serialised by one lock, so each append is one "transaction": its events share a
/// transaction number in their [`Position`], and positions grow in commit order.
#[derive(Debug, Default)]
pub struct InMemoryEventStore {
    inner: RwLock<Inner>,
    upcasters: Option<Arc<Upcasters>>,
}

#[derive(Debug, Default)]
struct Inner {
    log: Vec<RecordedEvent>,
    streams: HashMap<StreamId, Vec<usize>>,
    ids: HashMap<uuid::Uuid, usize>,
    transactions: u64,
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

        let stored: Vec<RecordedEvent> = events
            .iter()
            .filter_map(|e| inner.ids.get(&e.event_id).map(|&i| inner.log[i].clone()))
            .collect();
        if let Some(repeat) = judge_repeat(stream, &events, &stored)? {
            return Ok(repeat);
        }

        let current = inner.streams.get(stream).map(|s| s.len() as u64);
        if !expected.accepts(current) {
            return Err(ConflictError {
                stream: stream.clone(),
                expected,
                actual: current,
            }
            .into());
        }
        let current = current.unwrap_or(0);
        if events.is_empty() {
            return Ok(AppendResult {
                first_version: current + 1,
                last_version: current,
                positions: Vec::new(),
                deduplicated: false,
            });
        }

        inner.transactions += 1;
        let transaction = inner.transactions;
        let recorded_at = Utc::now();
        let mut positions = Vec::with_capacity(events.len());
        let count = events.len() as u64;
        for (offset, event) in events.into_iter().enumerate() {
            let index = inner.log.len();
            let position = Position::new(transaction, index as u64 + 1);
            positions.push(position);
            inner.ids.insert(event.event_id, index);
            inner.streams.entry(stream.clone()).or_default().push(index);
            inner.log.push(RecordedEvent {
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
        Ok(AppendResult {
            first_version: current + 1,
            last_version: current + count,
            positions,
            deduplicated: false,
        })
    }

    fn read_stream<'a>(
        &'a self,
        stream: &'a StreamId,
        from_version: u64,
    ) -> BoxStream<'a, Result<RecordedEvent, StoreError>> {
        let inner = self.read();
        let skip = from_version.saturating_sub(1) as usize;
        let events: Vec<_> = inner
            .streams
            .get(stream)
            .map(|indexes| {
                indexes
                    .iter()
                    .skip(skip)
                    .map(|&i| Ok(inner.log[i].clone()))
                    .collect()
            })
            .unwrap_or_default();
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
        Ok(self.read().streams.get(stream).map(|s| s.len() as u64))
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
