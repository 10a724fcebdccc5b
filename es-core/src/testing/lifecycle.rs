//! The stream lifecycle conformance checks: the rules of [`StreamLifecycle`] as async checks
//! that run against any store implementing it, most easily through
//! [`stream_lifecycle_conformance_tests!`](crate::stream_lifecycle_conformance_tests).
//!
//! Like the event store checks, each writes only to fresh streams, and panics with a message
//! naming the broken rule.

use std::sync::Arc;

use chrono::Utc;
use uuid::Uuid;

use super::conformance::{read_all_until, test_event, unique_stream};
use super::evolution::{Ledger, LedgerEvent};
use crate::{
    Aggregate, CommandError, EventStore, ExpectedVersion, NewEvent, Position, RecordedEvent,
    Repository, STREAM_DELETED, Snapshot, SnapshotStore, StoreError, StreamId, StreamLifecycle,
    TruncationRefusal,
};

fn deleted(result: Result<impl std::fmt::Debug, StoreError>, stream: &StreamId, what: &str) {
    match result {
        Err(StoreError::StreamDeleted { stream: named }) => {
            assert_eq!(&named, stream, "{what}: the error names the stream");
        }
        other => panic!("{what}: expected StreamDeleted, got {other:?}"),
    }
}

fn conflict(result: Result<impl std::fmt::Debug, StoreError>, actual: Option<u64>, what: &str) {
    match result {
        Err(StoreError::Conflict(c)) => assert_eq!(c.actual, actual, "{what}: actual version"),
        other => panic!("{what}: expected a conflict, got {other:?}"),
    }
}

async fn read(store: &dyn EventStore, stream: &StreamId) -> Result<Vec<RecordedEvent>, StoreError> {
    store.read_stream_to_vec(stream, 1).await
}

fn credit(cents: u64) -> NewEvent {
    NewEvent::from_event(&LedgerEvent::Credited {
        cents,
        memo: String::new(),
    })
    .expect("a ledger event encodes")
}

/// A deleted stream: the delete checks the expected version and appends a tombstone at the
/// next version; reads, `stream_version` and appends of every expected version are refused
/// with `StreamDeleted` naming the stream; deleting again is refused the same way; the global
/// log still holds every event, the tombstone last; a stream that does not exist cannot be
/// deleted.
pub async fn deleted_streams_refuse_reads_and_appends(store: Arc<dyn StreamLifecycle>) {
    let stream = unique_stream("del");
    let start = store.head().await.expect("head");
    let written = store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            (1..=3).map(test_event).collect(),
        )
        .await
        .expect("seed");

    conflict(
        store
            .delete_stream(&stream, ExpectedVersion::Exact(2))
            .await,
        Some(3),
        "a delete expecting another version",
    );
    conflict(
        store
            .delete_stream(&stream, ExpectedVersion::NoStream)
            .await,
        Some(3),
        "a delete expecting no stream",
    );
    let tombstone = store
        .delete_stream(&stream, ExpectedVersion::Exact(3))
        .await
        .expect("delete at the current version");
    assert_eq!(
        (tombstone.first_version, tombstone.last_version),
        (4, 4),
        "the tombstone takes the next version"
    );
    assert_eq!(tombstone.positions.len(), 1);

    deleted(read(store.as_ref(), &stream).await, &stream, "read_stream");
    deleted(
        store.read_stream_to_vec(&stream, 3).await,
        &stream,
        "read_stream from a version",
    );
    deleted(
        futures_util::TryStreamExt::try_collect::<Vec<_>>(store.read_stream_range(&stream, 1, 2))
            .await,
        &stream,
        "read_stream_range",
    );
    deleted(
        store.stream_version(&stream).await,
        &stream,
        "stream_version",
    );
    for expected in [
        ExpectedVersion::Any,
        ExpectedVersion::NoStream,
        ExpectedVersion::StreamExists,
        ExpectedVersion::Exact(4),
        ExpectedVersion::Exact(3),
    ] {
        deleted(
            store.append(&stream, expected, vec![test_event(9)]).await,
            &stream,
            &format!("append expecting {expected}"),
        );
    }
    deleted(
        store.append(&stream, ExpectedVersion::Any, vec![]).await,
        &stream,
        "an empty append",
    );
    deleted(
        store.delete_stream(&stream, ExpectedVersion::Any).await,
        &stream,
        "a second delete",
    );
    deleted(
        store.truncate_before(&stream, 2).await,
        &stream,
        "a truncation",
    );

    // The global log keeps everything, the tombstone after the stream's events.
    let mut mine = Vec::new();
    let mut after = start;
    while mine.len() < 4 {
        let page = read_all_until(store.as_ref(), after, 1).await;
        after = page[page.len() - 1].position;
        mine.extend(page.into_iter().filter(|e| e.stream_id == stream));
    }
    assert_eq!(
        mine.iter().map(|e| e.stream_version).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    assert_eq!(mine[3].event_type, STREAM_DELETED);
    assert_eq!(mine[3].position, tombstone.positions[0]);
    assert_eq!(mine[0].position, written.positions[0]);
    let by_id = store
        .read_event(mine[3].event_id)
        .await
        .expect("read_event")
        .expect("the tombstone reads by id");
    assert_eq!(by_id.stream_id, stream);

    let absent = unique_stream("del");
    conflict(
        store.delete_stream(&absent, ExpectedVersion::Any).await,
        None,
        "deleting a stream that does not exist",
    );
    assert_eq!(store.stream_version(&absent).await.expect("version"), None);
}

/// A deleted stream comes back only through `recreate_stream`: versions go on after the
/// tombstone, reads start at the tombstone, the repository starts the new life from the
/// default state (old snapshots included), a second recreation of the live stream is a
/// conflict, a repeated recreation returns the original result, and appends work again.
pub async fn recreated_streams_start_a_new_life(
    store: Arc<dyn StreamLifecycle>,
    snapshots: Arc<dyn SnapshotStore>,
) {
    let stream = StreamId::for_aggregate(Ledger::CATEGORY, &Uuid::now_v7().simple().to_string())
        .expect("stream id");
    store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![credit(100), credit(20)],
        )
        .await
        .expect("seed");
    snapshots
        .save(Snapshot {
            stream_id: stream.clone(),
            stream_version: 2,
            snapshot_version: Ledger::SNAPSHOT_VERSION,
            state: serde_json::value::to_raw_value(&Ledger {
                balance: 120,
                notes: Vec::new(),
            })
            .expect("state"),
            taken_at: Utc::now(),
        })
        .await
        .expect("snapshot");
    store
        .delete_stream(&stream, ExpectedVersion::Any)
        .await
        .expect("delete");

    let empty = store
        .recreate_stream(&stream, vec![])
        .await
        .expect("an empty recreation only checks");
    assert!(empty.positions.is_empty());
    deleted(
        store.stream_version(&stream).await,
        &stream,
        "after an empty recreation",
    );

    let events = vec![credit(5)];
    let recreated = store
        .recreate_stream(&stream, events.clone())
        .await
        .expect("recreate");
    assert_eq!((recreated.first_version, recreated.last_version), (4, 4));
    let again = store
        .recreate_stream(&stream, events)
        .await
        .expect("a repeated recreation");
    assert!(again.deduplicated);
    assert_eq!(again.positions, recreated.positions);
    conflict(
        store.recreate_stream(&stream, vec![credit(1)]).await,
        Some(4),
        "recreating a live stream",
    );
    assert_eq!(
        store.stream_version(&stream).await.expect("version"),
        Some(4)
    );

    let visible = read(store.as_ref(), &stream).await.expect("read");
    assert_eq!(
        visible
            .iter()
            .map(|e| (e.stream_version, e.event_type.as_str()))
            .collect::<Vec<_>>(),
        [(3, STREAM_DELETED), (4, "Credited")],
        "reads start at the tombstone"
    );

    for repository in [
        Repository::<Ledger>::new(Arc::clone(&store) as Arc<dyn EventStore>),
        Repository::<Ledger>::new(Arc::clone(&store) as Arc<dyn EventStore>)
            .with_snapshot_store(Arc::clone(&snapshots)),
    ] {
        let loaded = repository.load(&stream).await.expect("load");
        assert_eq!(
            (loaded.state.balance, loaded.version),
            (5, 4),
            "the new life only, from the default state"
        );
    }

    store
        .append(&stream, ExpectedVersion::Exact(4), vec![credit(7)])
        .await
        .expect("appends work again");
    let fresh = unique_stream("del");
    let created = store
        .recreate_stream(&fresh, vec![test_event(1)])
        .await
        .expect("recreating a stream that does not exist creates it");
    assert_eq!(created.first_version, 1);
}

/// A delete racing appends: writers append with the version they read while one task deletes
/// with the version it read. Every append and the delete is ordered before or after the
/// others: each version is won once, the tombstone is the stream's last event, every append
/// reported written is stored before it, and every append after it is refused as deleted.
pub async fn deletes_racing_appends_serialize(store: Arc<dyn StreamLifecycle>, writers: usize) {
    let stream = unique_stream("delrace");
    store
        .append(&stream, ExpectedVersion::NoStream, vec![test_event(0)])
        .await
        .expect("seed");
    let mut handles = Vec::new();
    for w in 0..writers {
        let store = Arc::clone(&store);
        let stream = stream.clone();
        handles.push(tokio::spawn(async move {
            let mut written = Vec::new();
            for i in 0u64.. {
                tokio::task::yield_now().await;
                let batch = vec![test_event(i), test_event(i)];
                let ids: Vec<_> = batch.iter().map(|e| e.event_id).collect();
                let expected = match store.stream_version(&stream).await {
                    Ok(v) => ExpectedVersion::Exact(v.unwrap_or(0)),
                    Err(StoreError::StreamDeleted { .. }) => break,
                    Err(e) => panic!("writer {w}: stream_version failed: {e}"),
                };
                match store.append(&stream, expected, batch).await {
                    Ok(r) => written.push((ids, r.first_version)),
                    Err(StoreError::Conflict(_)) => {}
                    Err(StoreError::StreamDeleted { .. }) => break,
                    Err(e) => panic!("writer {w}: append failed: {e}"),
                }
            }
            written
        }));
    }
    let deleter = {
        let store = Arc::clone(&store);
        let stream = stream.clone();
        tokio::spawn(async move {
            loop {
                tokio::task::yield_now().await;
                let v = store
                    .stream_version(&stream)
                    .await
                    .expect("version")
                    .unwrap_or(0);
                // Let the writers race for a while first.
                if v < 41 {
                    continue;
                }
                match store
                    .delete_stream(&stream, ExpectedVersion::Exact(v))
                    .await
                {
                    Ok(r) => return r,
                    Err(StoreError::Conflict(_)) => {}
                    Err(e) => panic!("delete failed: {e}"),
                }
            }
        })
    };
    let tombstone = deleter.await.expect("deleter task");
    let mut written = Vec::new();
    for handle in handles {
        written.extend(handle.await.expect("writer task"));
    }

    // Read the stream back through the global log (stream reads are refused now).
    let mut mine: Vec<RecordedEvent> = Vec::new();
    let mut after = Position::START;
    while mine.last().is_none_or(|e| e.event_type != STREAM_DELETED) {
        let page = read_all_until(store.as_ref(), after, 1).await;
        after = page[page.len() - 1].position;
        mine.extend(page.into_iter().filter(|e| e.stream_id == stream));
    }
    for (i, event) in mine.iter().enumerate() {
        assert_eq!(event.stream_version, i as u64 + 1, "versions are gap-free");
    }
    let last = mine.last().expect("the tombstone");
    assert_eq!(last.stream_version, tombstone.first_version);
    assert_eq!(
        mine.iter()
            .filter(|e| e.event_type == STREAM_DELETED)
            .count(),
        1,
        "one tombstone"
    );
    assert_eq!(
        written.len() * 2 + 2,
        mine.len(),
        "every stored batch was reported written, and no other"
    );
    for (ids, first_version) in &written {
        let at = (*first_version - 1) as usize;
        assert_eq!(mine[at].event_id, ids[0], "a written batch is stored whole");
        assert_eq!(
            mine[at + 1].event_id,
            ids[1],
            "a written batch is stored whole"
        );
    }
    deleted(
        store
            .append(
                &stream,
                ExpectedVersion::Exact(last.stream_version),
                vec![test_event(1)],
            )
            .await,
        &stream,
        "an append after the race",
    );
}

/// Truncation: refused without a snapshot at `before - 1` or later, past the newest event, or
/// on a stream that does not exist; once allowed, `read_stream` starts at the truncation
/// point, ranges before it are `StreamTruncated`, the point never moves back, the repository
/// loads from the snapshot, and a load that cannot use the snapshot is refused as truncated
/// instead of folding part of the stream. The events stay in the global log.
pub async fn truncation_needs_a_covering_snapshot(
    store: Arc<dyn StreamLifecycle>,
    snapshots: Arc<dyn SnapshotStore>,
) {
    let stream = StreamId::for_aggregate(Ledger::CATEGORY, &Uuid::now_v7().simple().to_string())
        .expect("stream id");
    store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            (1..=5).map(|n| credit(n * 10)).collect(),
        )
        .await
        .expect("seed");
    let refused = |result: Result<u64, StoreError>, reason: TruncationRefusal| match result {
        Err(StoreError::TruncationRefused {
            stream: named,
            reason: found,
            ..
        }) => {
            assert_eq!(named, stream);
            assert_eq!(found, reason);
        }
        other => panic!("expected the truncation refused ({reason}), got {other:?}"),
    };

    refused(
        store.truncate_before(&stream, 4).await,
        TruncationRefusal::NoCoveringSnapshot { newest: None },
    );
    let snapshot = |version: u64, balance: i64, snapshot_version: u32| Snapshot {
        stream_id: stream.clone(),
        stream_version: version,
        snapshot_version,
        state: serde_json::value::to_raw_value(&Ledger {
            balance,
            notes: Vec::new(),
        })
        .expect("state"),
        taken_at: Utc::now(),
    };
    snapshots
        .save(snapshot(2, 30, Ledger::SNAPSHOT_VERSION))
        .await
        .expect("snapshot at 2");
    refused(
        store.truncate_before(&stream, 4).await,
        TruncationRefusal::NoCoveringSnapshot { newest: Some(2) },
    );
    snapshots
        .save(snapshot(3, 60, Ledger::SNAPSHOT_VERSION))
        .await
        .expect("snapshot at 3");
    refused(
        store.truncate_before(&stream, 6).await,
        TruncationRefusal::BeyondEnd { version: 5 },
    );
    let absent = unique_stream("trunc");
    match store.truncate_before(&absent, 2).await {
        Err(StoreError::TruncationRefused {
            stream: named,
            reason: TruncationRefusal::NoStream,
            ..
        }) => assert_eq!(named, absent),
        other => panic!("truncating a stream that does not exist: {other:?}"),
    }
    assert_eq!(store.truncate_before(&stream, 4).await.expect("covered"), 4);
    assert_eq!(
        store
            .truncate_before(&stream, 2)
            .await
            .expect("a smaller point changes nothing"),
        4,
        "the truncation point never moves back"
    );

    let visible = read(store.as_ref(), &stream).await.expect("read");
    assert_eq!(
        visible.iter().map(|e| e.stream_version).collect::<Vec<_>>(),
        [4, 5],
        "reads start at the truncation point"
    );
    assert_eq!(
        store
            .read_stream_to_vec(&stream, 5)
            .await
            .expect("read from 5")
            .len(),
        1
    );
    match futures_util::TryStreamExt::try_collect::<Vec<_>>(store.read_stream_range(&stream, 1, 3))
        .await
    {
        Err(StoreError::StreamTruncated {
            stream: named,
            before,
        }) => {
            assert_eq!((named, before), (stream.clone(), 4));
        }
        other => {
            panic!("a range before the truncation point: expected StreamTruncated, got {other:?}")
        }
    }
    let range =
        futures_util::TryStreamExt::try_collect::<Vec<_>>(store.read_stream_range(&stream, 2, 4))
            .await
            .expect("a range reaching past the truncation point");
    assert_eq!(
        range.iter().map(|e| e.stream_version).collect::<Vec<_>>(),
        [4]
    );
    assert_eq!(
        store.stream_version(&stream).await.expect("version"),
        Some(5)
    );

    let repository = Repository::<Ledger>::new(Arc::clone(&store) as Arc<dyn EventStore>)
        .with_snapshot_store(Arc::clone(&snapshots));
    let loaded = repository.load(&stream).await.expect("load");
    assert_eq!(
        (loaded.state.balance, loaded.version, loaded.snapshot_at),
        (150, 5, 3),
        "the repository loads from the snapshot"
    );
    let without = Repository::<Ledger>::new(Arc::clone(&store) as Arc<dyn EventStore>);
    match without.load(&stream).await {
        Err(CommandError::Store(StoreError::StreamTruncated { before, .. })) => {
            assert_eq!(before, 4);
        }
        other => panic!("a load without the snapshot: expected StreamTruncated, got {other:?}"),
    }
    let appended = store
        .append(&stream, ExpectedVersion::Exact(5), vec![credit(1)])
        .await
        .expect("appends go on");
    assert_eq!(appended.first_version, 6);
    let found = store
        .read_event(visible[0].event_id)
        .await
        .expect("read_event");
    assert!(found.is_some(), "hidden events stay in the store");
}

/// Generates one `#[tokio::test]` per lifecycle check for a store made by `$make`, an
/// expression evaluating to a future of `(Arc<dyn StreamLifecycle>, Arc<dyn SnapshotStore>)`:
/// the store and the snapshot store its truncations consult.
///
/// ```text
/// es_core::stream_lifecycle_conformance_tests!(async {
///     let snapshots = std::sync::Arc::new(es_core::InMemorySnapshotStore::new());
///     let store = es_core::InMemoryEventStore::new().with_snapshot_store(snapshots.clone());
///     (std::sync::Arc::new(store) as _, snapshots as _)
/// });
/// ```
#[macro_export]
macro_rules! stream_lifecycle_conformance_tests {
    ($make:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn deleted_streams_refuse_reads_and_appends() {
            let (store, _snapshots): (
                ::std::sync::Arc<dyn $crate::StreamLifecycle>,
                ::std::sync::Arc<dyn $crate::SnapshotStore>,
            ) = $make.await;
            $crate::testing::lifecycle::deleted_streams_refuse_reads_and_appends(store).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn recreated_streams_start_a_new_life() {
            let (store, snapshots): (
                ::std::sync::Arc<dyn $crate::StreamLifecycle>,
                ::std::sync::Arc<dyn $crate::SnapshotStore>,
            ) = $make.await;
            $crate::testing::lifecycle::recreated_streams_start_a_new_life(store, snapshots).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn deletes_racing_appends_serialize() {
            let (store, _snapshots): (
                ::std::sync::Arc<dyn $crate::StreamLifecycle>,
                ::std::sync::Arc<dyn $crate::SnapshotStore>,
            ) = $make.await;
            $crate::testing::lifecycle::deletes_racing_appends_serialize(store, 4).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn truncation_needs_a_covering_snapshot() {
            let (store, snapshots): (
                ::std::sync::Arc<dyn $crate::StreamLifecycle>,
                ::std::sync::Arc<dyn $crate::SnapshotStore>,
            ) = $make.await;
            $crate::testing::lifecycle::truncation_needs_a_covering_snapshot(store, snapshots)
                .await;
        }
    };
}
