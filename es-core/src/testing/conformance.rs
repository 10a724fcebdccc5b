//! The conformance suite: the guarantees of [`EventStore`], as async checks that run against any
//! store. The in-memory store and the PostgreSQL store both run every check here; a new store
//! should too, most easily through [`event_store_conformance_tests!`](crate::event_store_conformance_tests).
//!
//! Each check writes only to streams with fresh random names, so checks may share one store and
//! run concurrently. Checks panic with a message naming the broken guarantee.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde_json::json;
use uuid::Uuid;

use crate::{
    EventStore, ExpectedVersion, Metadata, NewEvent, Position, RecordedEvent, StoreError, StreamId,
};

/// A fresh stream id with a recognisable prefix.
pub fn unique_stream(prefix: &str) -> StreamId {
    StreamId::new(format!("{prefix}-{}", Uuid::now_v7().simple())).expect("a valid stream id")
}

/// A small test event whose payload carries `n`.
pub fn test_event(n: u64) -> NewEvent {
    let payload = serde_json::value::to_raw_value(&json!({ "n": n, "text": "conformance" }))
        .expect("a JSON value serializes");
    NewEvent::new("TestEvent", 1, payload)
}

fn n_of(event: &RecordedEvent) -> u64 {
    serde_json::from_str::<serde_json::Value>(event.payload.get()).expect("stored payload is JSON")
        ["n"]
        .as_u64()
        .expect("payload has n")
}

async fn read(store: &dyn EventStore, stream: &StreamId) -> Vec<RecordedEvent> {
    store
        .read_stream_to_vec(stream, 1)
        .await
        .expect("reading a stream succeeds")
}

/// Appended events read back with every envelope field intact, at versions 1.., in order.
pub async fn appends_and_reads_back(store: Arc<dyn EventStore>) {
    let stream = unique_stream("conf");
    let correlation = Uuid::now_v7();
    let cause = Uuid::now_v7();
    let mut metadata = Metadata::new();
    metadata.insert("user", json!("ann"));
    let events: Vec<_> = (1..=3)
        .map(|n| {
            test_event(n)
                .correlated_with(correlation)
                .caused_by(cause)
                .with_metadata(metadata.clone())
        })
        .collect();
    let ids: Vec<_> = events.iter().map(|e| e.event_id).collect();
    let before = chrono::Utc::now() - chrono::Duration::seconds(60);

    let result = store
        .append(&stream, ExpectedVersion::NoStream, events)
        .await
        .expect("first append to a new stream succeeds");
    assert_eq!((result.first_version, result.last_version), (1, 3));
    assert_eq!(result.positions.len(), 3);
    assert!(!result.deduplicated);
    assert!(
        result.positions.windows(2).all(|w| w[0] < w[1]),
        "positions grow within an append"
    );

    let read = read(store.as_ref(), &stream).await;
    assert_eq!(read.len(), 3);
    for (i, event) in read.iter().enumerate() {
        assert_eq!(event.event_id, ids[i]);
        assert_eq!(event.stream_id, stream);
        assert_eq!(event.stream_version, i as u64 + 1);
        assert_eq!(event.position, result.positions[i]);
        assert_eq!(event.event_type, "TestEvent");
        assert_eq!(event.schema_version, 1);
        assert_eq!(event.correlation_id, correlation);
        assert_eq!(event.causation_id, Some(cause));
        assert_eq!(event.metadata, metadata);
        assert_eq!(n_of(event), i as u64 + 1);
        assert!(event.recorded_at > before, "recorded_at is the append time");
    }
    assert_eq!(
        store.stream_version(&stream).await.expect("version"),
        Some(3)
    );
    assert_eq!(
        store
            .stream_version(&unique_stream("absent"))
            .await
            .expect("version"),
        None
    );

    let tail = store
        .read_stream_to_vec(&stream, 2)
        .await
        .expect("reading from a version");
    assert_eq!(
        tail.iter().map(|e| e.stream_version).collect::<Vec<_>>(),
        [2, 3]
    );
    assert!(
        store
            .read_stream_to_vec(&stream, 4)
            .await
            .expect("reading past the end")
            .is_empty()
    );
}

/// Each expected-version mode accepts exactly the versions it names; a refused append is a
/// typed conflict naming stream, expected and actual version, and writes nothing.
pub async fn expected_versions_are_enforced(store: Arc<dyn EventStore>) {
    use ExpectedVersion::*;
    let stream = unique_stream("conf");

    let conflict = |result: Result<_, StoreError>, expected, actual| match result {
        Err(StoreError::Conflict(c)) => {
            assert_eq!(c.stream, stream);
            assert_eq!(c.expected, expected);
            assert_eq!(c.actual, actual);
        }
        other => panic!("expected a conflict ({expected} vs {actual:?}), got {other:?}"),
    };

    conflict(
        store
            .append(&stream, StreamExists, vec![test_event(1)])
            .await,
        StreamExists,
        None,
    );
    conflict(
        store.append(&stream, Exact(1), vec![test_event(1)]).await,
        Exact(1),
        None,
    );
    store
        .append(&stream, NoStream, vec![test_event(1)])
        .await
        .expect("NoStream on a new stream");
    conflict(
        store.append(&stream, NoStream, vec![test_event(2)]).await,
        NoStream,
        Some(1),
    );
    conflict(
        store.append(&stream, Exact(0), vec![test_event(2)]).await,
        Exact(0),
        Some(1),
    );
    conflict(
        store.append(&stream, Exact(2), vec![test_event(2)]).await,
        Exact(2),
        Some(1),
    );
    let r = store
        .append(&stream, Exact(1), vec![test_event(2), test_event(3)])
        .await
        .expect("Exact(current)");
    assert_eq!((r.first_version, r.last_version), (2, 3));
    let r = store
        .append(&stream, StreamExists, vec![test_event(4)])
        .await
        .expect("StreamExists");
    assert_eq!(r.last_version, 4);
    let r = store
        .append(&stream, Any, vec![test_event(5)])
        .await
        .expect("Any");
    assert_eq!(r.last_version, 5);
    let fresh = unique_stream("conf");
    let r = store
        .append(&fresh, Any, vec![test_event(1)])
        .await
        .expect("Any on a new stream");
    assert_eq!(r.last_version, 1);
    let r = store
        .append(&unique_stream("conf"), Exact(0), vec![test_event(1)])
        .await
        .expect("Exact(0) on a new stream");
    assert_eq!(r.last_version, 1);

    let events = read(store.as_ref(), &stream).await;
    assert_eq!(
        events.iter().map(n_of).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5],
        "refused appends wrote nothing"
    );
}

/// An empty append writes nothing but still checks the expected version.
pub async fn empty_appends_check_the_version(store: Arc<dyn EventStore>) {
    let stream = unique_stream("conf");
    let r = store
        .append(&stream, ExpectedVersion::NoStream, vec![])
        .await
        .expect("empty append on a new stream");
    assert_eq!(r.last_version, 0);
    assert!(r.positions.is_empty());
    assert!(
        store
            .append(&stream, ExpectedVersion::StreamExists, vec![])
            .await
            .is_err_and(|e| e.as_conflict().is_some())
    );
    assert_eq!(store.stream_version(&stream).await.expect("version"), None);
}

/// Re-sending an append's events (same ids, same content) after an unknown outcome writes
/// nothing and returns the original result, whatever the expected version says now.
pub async fn repeated_appends_are_idempotent(store: Arc<dyn EventStore>) {
    let stream = unique_stream("conf");
    store
        .append(&stream, ExpectedVersion::NoStream, vec![test_event(0)])
        .await
        .expect("seed");
    let batch = vec![test_event(1), test_event(2)];
    let original = store
        .append(&stream, ExpectedVersion::Exact(1), batch.clone())
        .await
        .expect("first send");

    for expected in [
        ExpectedVersion::Exact(1),
        ExpectedVersion::Any,
        ExpectedVersion::NoStream,
        ExpectedVersion::StreamExists,
    ] {
        let again = store
            .append(&stream, expected, batch.clone())
            .await
            .unwrap_or_else(|e| panic!("re-send with {expected} must succeed, got {e}"));
        assert!(again.deduplicated, "a re-send is reported as deduplicated");
        assert_eq!(again.positions, original.positions);
        assert_eq!(
            (again.first_version, again.last_version),
            (original.first_version, original.last_version)
        );
    }
    let single = store
        .append(&stream, ExpectedVersion::Any, vec![batch[1].clone()])
        .await
        .expect("re-send of the last event alone");
    assert!(single.deduplicated);
    assert_eq!(single.positions, original.positions[1..]);
    assert_eq!(
        read(store.as_ref(), &stream).await.len(),
        3,
        "nothing duplicated"
    );
}

/// An id that is stored already may not be reused for other content, another stream, or
/// beside new ids; the append is refused whole with a typed error naming the id.
pub async fn reused_event_ids_are_refused(store: Arc<dyn EventStore>) {
    let stream = unique_stream("conf");
    let first = test_event(1);
    store
        .append(&stream, ExpectedVersion::NoStream, vec![first.clone()])
        .await
        .expect("seed");

    let mut other_payload = test_event(99);
    other_payload.event_id = first.event_id;
    let mut other_type = first.clone();
    other_type.event_type = "OtherEvent".into();
    let other_stream = unique_stream("conf");

    let cases: Vec<(&str, &StreamId, Vec<NewEvent>)> = vec![
        ("another payload", &stream, vec![other_payload]),
        ("another type", &stream, vec![other_type]),
        ("another stream", &other_stream, vec![first.clone()]),
        (
            "beside a new id",
            &stream,
            vec![first.clone(), test_event(2)],
        ),
        (
            "after a new id",
            &stream,
            vec![test_event(3), first.clone()],
        ),
    ];
    for (case, target, events) in cases {
        match store.append(target, ExpectedVersion::Any, events).await {
            Err(StoreError::EventIdReused { event_id, .. }) => {
                assert_eq!(event_id, first.event_id, "{case}: the error names the id");
            }
            other => panic!("{case}: expected EventIdReused, got {other:?}"),
        }
    }
    assert_eq!(read(store.as_ref(), &stream).await.len(), 1);
    assert_eq!(
        store.stream_version(&other_stream).await.expect("version"),
        None
    );
}

/// Events no store can hold are refused before anything is written.
pub async fn invalid_events_are_refused(store: Arc<dyn EventStore>) {
    let stream = unique_stream("conf");
    let mut zero = test_event(1);
    zero.schema_version = 0;
    let mut untyped = test_event(1);
    untyped.event_type = String::new();
    let twice = test_event(1);
    let mut huge = test_event(1);
    huge.schema_version = crate::MAX_SCHEMA_VERSION + 1;
    for (case, events) in [
        ("schema version 0", vec![test_event(0), zero]),
        ("a schema version no store keeps", vec![huge]),
        ("empty type", vec![untyped]),
        ("an id twice", vec![twice.clone(), twice]),
    ] {
        assert!(
            matches!(
                store.append(&stream, ExpectedVersion::Any, events).await,
                Err(StoreError::InvalidEvent { .. })
            ),
            "{case} is an InvalidEvent"
        );
    }
    assert_eq!(store.stream_version(&stream).await.expect("version"), None);
}

/// Many tasks append one event at a time to one stream, each expecting the version it read and
/// retrying on conflict: every version from 1 to `tasks * appends` is won by exactly one
/// append, and every event is stored exactly once.
pub async fn concurrent_writers_never_lose_a_version(
    store: Arc<dyn EventStore>,
    tasks: usize,
    appends_per_task: usize,
) {
    let stream = unique_stream("race");
    let mut handles = Vec::new();
    for task in 0..tasks {
        let store = Arc::clone(&store);
        let stream = stream.clone();
        handles.push(tokio::spawn(async move {
            let mut written = Vec::new();
            let mut conflicts = 0u64;
            for i in 0..appends_per_task {
                let event = test_event((task * appends_per_task + i) as u64);
                loop {
                    let current = store.stream_version(&stream).await.expect("version");
                    let expected = ExpectedVersion::Exact(current.unwrap_or(0));
                    match store.append(&stream, expected, vec![event.clone()]).await {
                        Ok(r) => {
                            assert_eq!(r.first_version, current.unwrap_or(0) + 1);
                            written.push((event.event_id, r.first_version));
                            break;
                        }
                        Err(StoreError::Conflict(_)) => conflicts += 1,
                        Err(e) => panic!("append failed: {e}"),
                    }
                }
            }
            (written, conflicts)
        }));
    }
    let mut won: HashMap<u64, Uuid> = HashMap::new();
    for handle in handles {
        let (written, _conflicts) = handle.await.expect("writer task");
        for (id, version) in written {
            assert!(
                won.insert(version, id).is_none(),
                "version {version} reported as won twice"
            );
        }
    }
    let total = (tasks * appends_per_task) as u64;
    let events = read(store.as_ref(), &stream).await;
    assert_eq!(events.len() as u64, total, "no event lost or duplicated");
    for (i, event) in events.iter().enumerate() {
        assert_eq!(event.stream_version, i as u64 + 1, "versions are gap-free");
        assert_eq!(
            won.get(&event.stream_version),
            Some(&event.event_id),
            "the stored event at each version is the one whose append won it"
        );
    }
    let distinct: HashSet<_> = events.iter().map(|e| e.event_id).collect();
    assert_eq!(distinct.len() as u64, total);
    assert_eq!(
        store.stream_version(&stream).await.expect("version"),
        Some(total)
    );
}

/// Many tasks append batches with `ExpectedVersion::Any` to one stream: every batch lands
/// whole and contiguous, none is lost.
pub async fn concurrent_any_appends_stay_contiguous(
    store: Arc<dyn EventStore>,
    tasks: usize,
    batches_per_task: usize,
) {
    const BATCH: u64 = 3;
    let stream = unique_stream("any");
    let mut handles = Vec::new();
    for task in 0..tasks {
        let store = Arc::clone(&store);
        let stream = stream.clone();
        handles.push(tokio::spawn(async move {
            for b in 0..batches_per_task {
                let base = ((task * batches_per_task + b) as u64) * BATCH;
                let batch = (0..BATCH).map(|i| test_event(base + i)).collect();
                let r = store
                    .append(&stream, ExpectedVersion::Any, batch)
                    .await
                    .expect("Any never conflicts");
                assert_eq!(r.last_version - r.first_version + 1, BATCH);
            }
        }));
    }
    for handle in handles {
        handle.await.expect("writer task");
    }
    let events = read(store.as_ref(), &stream).await;
    assert_eq!(events.len(), tasks * batches_per_task * BATCH as usize);
    for chunk in events.chunks(BATCH as usize) {
        let first = n_of(&chunk[0]);
        assert_eq!(first % BATCH, 0, "a batch starts at a batch boundary");
        for (i, event) in chunk.iter().enumerate() {
            assert_eq!(
                n_of(event),
                first + i as u64,
                "a batch is stored contiguously"
            );
        }
    }
}

/// Concurrent writers to several streams, then a reader paging through the global log: it sees
/// every event once, positions only grow, each stream's events come in stream order, and
/// resuming from any position it returned continues exactly where it left off.
pub async fn global_log_is_ordered_and_resumable(store: Arc<dyn EventStore>) {
    const STREAMS: usize = 6;
    const EVENTS: usize = 25;
    let start = store.head().await.expect("head");
    let prefix = format!("glob{}", Uuid::now_v7().simple());
    let mut handles = Vec::new();
    for s in 0..STREAMS {
        let store = Arc::clone(&store);
        let stream = StreamId::new(format!("{prefix}-{s}")).expect("stream id");
        handles.push(tokio::spawn(async move {
            for n in 0..EVENTS {
                store
                    .append(&stream, ExpectedVersion::Any, vec![test_event(n as u64)])
                    .await
                    .expect("append");
            }
        }));
    }
    for handle in handles {
        handle.await.expect("writer task");
    }

    let mut seen = Vec::new();
    let mut checkpoint = start;
    let deadline = std::time::Instant::now() + VISIBILITY_TIMEOUT;
    while seen.len() < STREAMS * EVENTS {
        let page = store.read_all(checkpoint, 7).await.expect("read_all");
        if page.is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "only {} of {} committed events became readable",
                seen.len(),
                STREAMS * EVENTS
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            continue;
        }
        assert!(page.len() <= 7, "read_all honours its limit");
        for event in page {
            assert!(
                event.position > checkpoint,
                "positions grow: {} after {checkpoint}",
                event.position
            );
            checkpoint = event.position;
            if event.stream_id.category() == prefix {
                seen.push(event);
            }
        }
    }
    assert_eq!(
        seen.len(),
        STREAMS * EVENTS,
        "every event read exactly once"
    );
    let mut last_version: HashMap<&StreamId, u64> = HashMap::new();
    for event in &seen {
        let last = last_version.entry(&event.stream_id).or_insert(0);
        assert_eq!(
            event.stream_version,
            *last + 1,
            "stream order holds in the global log"
        );
        *last = event.stream_version;
    }
    let ids: HashSet<_> = seen.iter().map(|e| e.event_id).collect();
    assert_eq!(ids.len(), seen.len());

    // Resuming from the middle continues with exactly the events that followed.
    let middle = seen[seen.len() / 2].position;
    let expected: Vec<_> = seen[seen.len() / 2 + 1..]
        .iter()
        .map(|e| e.event_id)
        .collect();
    // Other writers may share the store: read at least as far as this check's last event.
    let mut rest = Vec::new();
    let mut after = middle;
    while rest.len() < expected.len() {
        let page = read_all_until(store.as_ref(), after, 1).await;
        after = page[page.len() - 1].position;
        rest.extend(
            page.into_iter()
                .filter(|e| e.stream_id.category() == prefix)
                .map(|e| e.event_id),
        );
    }
    assert_eq!(rest, expected);
    assert!(store.head().await.expect("head") >= checkpoint);
}

/// How long a check waits for committed events to become readable. A store may hold readers
/// back while older transactions run (the PostgreSQL store does, cluster-wide); it may never
/// skip an event.
pub const VISIBILITY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// Reads the global log after `after` until at least `count` events have been read, waiting for
/// them to become readable for at most [`VISIBILITY_TIMEOUT`]; returns everything it read.
pub async fn read_all_until(
    store: &dyn EventStore,
    mut after: Position,
    count: usize,
) -> Vec<RecordedEvent> {
    let deadline = std::time::Instant::now() + VISIBILITY_TIMEOUT;
    let mut all = Vec::new();
    while all.len() < count {
        let page = store.read_all(after, 1000).await.expect("read_all");
        match page.last() {
            Some(last) => after = last.position,
            None => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "only {} of {count} committed events became readable",
                    all.len()
                );
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        }
        all.extend(page);
    }
    all
}

/// An event reads back by its id; the events of one correlation id read back across streams,
/// in global order, and no others.
pub async fn events_read_by_id_and_correlation(store: Arc<dyn EventStore>) {
    let workflow = Uuid::now_v7();
    let first = unique_stream("corr-a");
    let second = unique_stream("corr-b");
    let cause = test_event(1).correlated_with(workflow);
    let cause_id = cause.event_id;
    store
        .append(&first, ExpectedVersion::NoStream, vec![cause])
        .await
        .expect("append the cause");
    store
        .append(&second, ExpectedVersion::Any, vec![test_event(99)])
        .await
        .expect("append an unrelated event");
    store
        .append(
            &second,
            ExpectedVersion::Any,
            vec![
                test_event(2).correlated_with(workflow).caused_by(cause_id),
                test_event(3).correlated_with(workflow).caused_by(cause_id),
            ],
        )
        .await
        .expect("append the effects");

    let by_id = store
        .read_event(cause_id)
        .await
        .expect("read_event")
        .expect("the cause is found by its id");
    assert_eq!((&by_id.stream_id, n_of(&by_id)), (&first, 1));
    assert!(
        store
            .read_event(Uuid::now_v7())
            .await
            .expect("read_event")
            .is_none(),
        "an unknown id reads as none"
    );

    let chain = store
        .read_correlated(workflow, 100)
        .await
        .expect("read_correlated");
    let seen: Vec<_> = chain
        .iter()
        .map(|e| (e.stream_id.clone(), n_of(e)))
        .collect();
    assert_eq!(
        seen,
        vec![(first, 1), (second.clone(), 2), (second, 3)],
        "the correlated events, in global order, and nothing else"
    );
    assert!(
        chain.windows(2).all(|w| w[0].position < w[1].position),
        "global order"
    );
    assert!(chain[1..].iter().all(|e| e.causation_id == Some(cause_id)));
    let limited = store
        .read_correlated(workflow, 2)
        .await
        .expect("read_correlated");
    assert_eq!(limited.len(), 2, "the limit holds");
}

/// Generates one `#[tokio::test]` per conformance check for a store made by `$make`, an
/// expression evaluating to a future of `Arc<dyn EventStore>` (called once per test).
///
/// ```text
/// es_core::event_store_conformance_tests!(async {
///     std::sync::Arc::new(es_core::InMemoryEventStore::new()) as std::sync::Arc<dyn es_core::EventStore>
/// });
/// ```
#[macro_export]
macro_rules! event_store_conformance_tests {
    ($make:expr) => {
        $crate::event_store_conformance_tests!(@tests $make;
            appends_and_reads_back,
            expected_versions_are_enforced,
            empty_appends_check_the_version,
            repeated_appends_are_idempotent,
            reused_event_ids_are_refused,
            invalid_events_are_refused,
            global_log_is_ordered_and_resumable,
            events_read_by_id_and_correlation,
        );

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn concurrent_writers_never_lose_a_version() {
            let store = $make.await;
            $crate::testing::conformance::concurrent_writers_never_lose_a_version(store, 8, 200)
                .await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn concurrent_any_appends_stay_contiguous() {
            let store = $make.await;
            $crate::testing::conformance::concurrent_any_appends_stay_contiguous(store, 8, 25)
                .await;
        }
    };
    (@tests $make:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let store = $make.await;
                $crate::testing::conformance::$name(store).await;
            }
        )*
    };
}
