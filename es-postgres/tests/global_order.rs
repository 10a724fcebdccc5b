//! The global log is gap-safe: a reader never skips an event whose transaction commits after a
//! later-positioned one, and every reader sees one order.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use es_core::testing::conformance::{read_all_until, test_event, unique_stream};
use es_core::{EventStore, ExpectedVersion, Position};
use es_postgres::testing::TestDatabase;
use rand::Rng;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_commit_of_an_earlier_position_is_not_skipped() {
    let db = TestDatabase::new().await;
    let store = &db.store;

    // A takes its position first and stays open; B takes a later one and commits first.
    let mut a = db.pool.begin().await.unwrap();
    let appended_a = store
        .append_in(
            &mut a,
            &unique_stream("a"),
            ExpectedVersion::NoStream,
            vec![test_event(1)],
        )
        .await
        .unwrap();
    let mut b = db.pool.begin().await.unwrap();
    let appended_b = store
        .append_in(
            &mut b,
            &unique_stream("b"),
            ExpectedVersion::NoStream,
            vec![test_event(2)],
        )
        .await
        .unwrap();
    assert!(appended_a.positions[0].sequence < appended_b.positions[0].sequence);
    b.commit().await.unwrap();

    // B is committed, but a reader must not move past A's position while A may still commit.
    let seen = store.read_all(Position::START, 100).await.unwrap();
    assert!(seen.is_empty(), "B is held back while A runs: {seen:?}");
    assert_eq!(store.head().await.unwrap(), Position::START);
    let horizon = store.horizon().await.unwrap();
    assert!(horizon.held_back_events >= 1);
    assert!(horizon.oldest_writer_age.is_some());

    a.commit().await.unwrap();
    let seen = read_all_until(store, Position::START, 2).await;
    let positions: Vec<_> = seen.iter().map(|e| e.position).collect();
    assert_eq!(
        positions,
        [appended_a.positions[0], appended_b.positions[0]]
    );
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_append_leaves_no_hole_readers_wait_on() {
    let db = TestDatabase::new().await;
    let store = &db.store;
    let mut a = db.pool.begin().await.unwrap();
    store
        .append_in(
            &mut a,
            &unique_stream("a"),
            ExpectedVersion::Any,
            vec![test_event(1)],
        )
        .await
        .unwrap();
    store
        .append(
            &unique_stream("b"),
            ExpectedVersion::Any,
            vec![test_event(2)],
        )
        .await
        .unwrap();
    a.rollback().await.unwrap();
    let seen = read_all_until(store, Position::START, 1).await;
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].stream_id.category(),
        "b",
        "the rolled-back event never appears"
    );
    assert!(
        store
            .read_all(seen[0].position, 10)
            .await
            .unwrap()
            .is_empty()
    );
    db.drop().await;
}

/// Writers hold their transactions open for random delays so commits land out of position
/// order all the time, while two readers poll the log throughout. Each reader must end up with
/// exactly the final log, in the same order: nothing skipped, nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readers_polling_through_out_of_order_commits_never_skip_an_event() {
    const WRITERS: usize = 8;
    const EVENTS: usize = 10_000;
    let db = TestDatabase::with_pool_size(14).await;
    let store = db.store.clone();
    let done = Arc::new(AtomicBool::new(false));

    let mut readers = Vec::new();
    for _ in 0..2 {
        let store = store.clone();
        let done = Arc::clone(&done);
        readers.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut after = Position::START;
            loop {
                let finished = done.load(Ordering::SeqCst);
                let page = store.read_all(after, 300).await.unwrap();
                if let Some(last) = page.last() {
                    after = last.position;
                }
                let empty = page.is_empty();
                seen.extend(page.into_iter().map(|e| (e.position, e.event_id)));
                if finished && empty {
                    return seen;
                }
                if empty {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }));
    }

    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let store = store.clone();
        let pool = db.pool.clone();
        writers.push(tokio::spawn(async move {
            let stream = unique_stream(&format!("w{w}"));
            let mut written = 0;
            let mut n = 0u64;
            while written < EVENTS / WRITERS {
                let (batch, delay) = {
                    let mut rng = rand::rng();
                    (
                        rng.random_range(1..=4).min(EVENTS / WRITERS - written),
                        rng.random_range(0..3000u64),
                    )
                };
                let events = (0..batch)
                    .map(|_| {
                        n += 1;
                        test_event(n)
                    })
                    .collect();
                let mut tx = pool.begin().await.unwrap();
                store
                    .append_in(&mut tx, &stream, ExpectedVersion::Any, events)
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_micros(delay)).await;
                tx.commit().await.unwrap();
                written += batch;
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    done.store(true, Ordering::SeqCst);

    let truth: Vec<_> = read_all_until(&store, Position::START, EVENTS)
        .await
        .into_iter()
        .map(|e| (e.position, e.event_id))
        .collect();
    assert_eq!(truth.len(), EVENTS);
    let distinct: HashSet<_> = truth.iter().map(|(_, id)| id).collect();
    assert_eq!(distinct.len(), EVENTS);
    // Commits really were out of order: some event's sequence is below an earlier-read one's.
    let out_of_order = truth
        .windows(2)
        .filter(|w| w[1].0.sequence < w[0].0.sequence)
        .count();
    assert!(
        out_of_order > 0,
        "the test must provoke out-of-order commits"
    );

    for reader in readers {
        let seen = reader.await.unwrap();
        assert_eq!(
            seen.len(),
            truth.len(),
            "a reader missed or repeated events"
        );
        assert!(
            seen == truth,
            "a reader saw another order than the final log"
        );
    }
    db.drop().await;
}

/// The stream versions of `stream`'s events in the order the global log has them.
fn versions_in_log_order(
    events: &[es_core::RecordedEvent],
    stream: &es_core::StreamId,
) -> Vec<u64> {
    events
        .iter()
        .filter(|e| e.stream_id == *stream)
        .map(|e| e.stream_version)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_keeps_version_order_in_the_global_log_when_an_older_transaction_appends() {
    let db = TestDatabase::new().await;
    let store = &db.store;
    let stream = unique_stream("order");

    // T takes its transaction id first (it writes something else, say an outbox row).
    let mut t = db.pool.begin().await.unwrap();
    let older: i64 = sqlx::query_scalar("SELECT pg_current_xact_id()::text::bigint")
        .fetch_one(&mut *t)
        .await
        .unwrap();
    // Another writer appends version 1 and commits, under a newer transaction id.
    let v1 = store
        .append(&stream, ExpectedVersion::NoStream, vec![test_event(1)])
        .await
        .unwrap();
    assert!(v1.positions[0].transaction > older as u64);
    // T appends version 2 and commits.
    let v2 = store
        .append_in(
            &mut t,
            &stream,
            ExpectedVersion::Exact(1),
            vec![test_event(2)],
        )
        .await
        .unwrap();
    t.commit().await.unwrap();
    assert!(v1.positions[0] < v2.positions[0], "{v1:?} {v2:?}");

    let seen = read_all_until(store, Position::START, 2).await;
    assert_eq!(versions_in_log_order(&seen, &stream), [1, 2]);
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transactions_that_took_their_ids_early_keep_every_stream_in_version_order() {
    let db = TestDatabase::with_pool_size(12).await;
    let streams: Vec<_> = (0..3)
        .map(|i| unique_stream(&format!("shared{i}")))
        .collect();
    let mut writers = Vec::new();
    for w in 0..8u64 {
        let (store, pool, streams) = (db.store.clone(), db.pool.clone(), streams.clone());
        writers.push(tokio::spawn(async move {
            for i in 0..40u64 {
                let mut tx = pool.begin().await.unwrap();
                // Half take their id before appending, as a transaction writing an outbox row
                // first does; the rest take it in the append.
                if i % 2 == 0 {
                    sqlx::query("SELECT pg_current_xact_id()")
                        .execute(&mut *tx)
                        .await
                        .unwrap();
                }
                let delay = rand::rng().random_range(0..1500u64);
                tokio::time::sleep(Duration::from_micros(delay)).await;
                let stream = &streams[((w + i) % 3) as usize];
                store
                    .append_in(
                        &mut tx,
                        stream,
                        ExpectedVersion::Any,
                        vec![test_event(w * 100 + i)],
                    )
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_micros(delay / 2)).await;
                tx.commit().await.unwrap();
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let seen = read_all_until(&db.store, Position::START, 320).await;
    for stream in &streams {
        let versions = versions_in_log_order(&seen, stream);
        let sorted: Vec<u64> = (1..=versions.len() as u64).collect();
        assert_eq!(versions, sorted, "stream {stream} in version order");
    }
    db.drop().await;
}
