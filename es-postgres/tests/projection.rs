//! Projection runners against PostgreSQL: exactly-once effects across crashes, live following
//! of concurrent writers, one active instance with takeover, parked poison events.

// Helpers below are test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use es_core::testing::evolution::LedgerEvent;
use es_core::{DomainEvent, EventStore, ExpectedVersion, StreamId};
use es_postgres::testing::TestDatabase;
use es_postgres::{ErrorPolicy, ProjectionError, ProjectionRunner, ReplayReport, SchemaName};
use rand::Rng;
use sqlx::AssertSqlSafe;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebuild_killed_at_random_points_ends_equal_to_a_clean_replay() {
    let db = TestDatabase::with_pool_size(12).await;
    seed(&db.store, 100, 500, 100).await;
    let expected = expected_totals(&db).await;
    assert_eq!(expected.iter().map(|t| t.1).sum::<i64>(), 50_000);

    // Start a rebuild, then kill the runner at random points and restart it, resuming from
    // its checkpoint, until it completes. Each run is a process of its own, whose connections
    // die with it.
    let process = db.another_process(6).await;
    let first = {
        let runner = runner_on(&process, &db, "totals").batch_size(700);
        tokio::spawn(async move { runner.rebuild(ErrorPolicy::STOP, |_| {}).await })
    };
    tokio::time::sleep(Duration::from_millis(rand::rng().random_range(50..250))).await;
    first.abort();
    let _ = first.await;
    process.pool().close().await;
    let mut kills = 1;
    loop {
        let process = db.another_process(6).await;
        let task = {
            let runner = runner_on(&process, &db, "totals").batch_size(700);
            tokio::spawn(async move { runner.catch_up().await })
        };
        // Random points, in a window that widens with each kill: a loaded machine (or a slow
        // disk) can take longer than the first windows to reach its first commit, and the test
        // is about where the kills land, not about how fast a batch commits.
        let window = 200 + 25 * kills;
        tokio::time::sleep(Duration::from_millis(rand::rng().random_range(20..window))).await;
        if task.is_finished() {
            task.await.unwrap().unwrap();
            break;
        }
        task.abort();
        let _ = task.await;
        process.pool().close().await;
        kills += 1;
        assert!(kills < 200, "the rebuild never completes");
    }
    let runner = runner(&db, "totals");
    assert!(kills >= 2, "the runner was killed mid-rebuild");
    runner.catch_up().await.unwrap();
    assert_eq!(totals(&db, "totals").await, expected, "after {kills} kills");

    // A clean rebuild of another copy gives the same read model.
    let clean = runner_for_clean(&db);
    assert_eq!(
        clean.rebuild(ErrorPolicy::STOP, |_| {}).await.unwrap(),
        50_000
    );
    assert_eq!(totals(&db, "clean").await, expected);
    let status = runner.status().await.unwrap();
    assert_eq!((status.lag_events, status.parked), (0, 0));
    assert_eq!(status.checkpoint, status.head);
    db.drop().await;
}

fn runner_for_clean(db: &TestDatabase) -> ProjectionRunner<Totals> {
    runner(db, "clean").batch_size(5000)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_live_projection_follows_concurrent_writers_without_skipping() {
    let db = TestDatabase::with_pool_size(16).await;
    let runner = Arc::new(runner(&db, "live").batch_size(50));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let live = {
        let runner = Arc::clone(&runner);
        tokio::spawn(async move {
            runner
                .run(async {
                    let _ = stopped.await;
                })
                .await
        })
    };
    let mut writers = Vec::new();
    for w in 0..6 {
        let store = db.store.clone();
        let pool = db.pool.clone();
        writers.push(tokio::spawn(async move {
            let stream = StreamId::new(format!("ledger-w{w}")).unwrap();
            for i in 0..150u64 {
                // Transactions held open for random delays commit out of position order.
                let mut tx = pool.begin().await.unwrap();
                store
                    .append_in(
                        &mut tx,
                        &stream,
                        ExpectedVersion::Any,
                        vec![credit(i % 5 + 1, "")],
                    )
                    .await
                    .unwrap();
                let delay = rand::rng().random_range(0..2000u64);
                tokio::time::sleep(Duration::from_micros(delay)).await;
                tx.commit().await.unwrap();
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let expected = expected_totals(&db).await;
    wait_until("the live projection caught up", async || {
        totals(&db, "live").await == expected
    })
    .await;
    let status = runner.status().await.unwrap();
    assert_eq!(status.lag_events, 0);
    assert!(runner.is_active());
    stop.send(()).unwrap();
    live.await.unwrap().unwrap();
    assert!(!runner.is_active());
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_one_runner_is_active_and_another_takes_over_when_it_stops() {
    let db = TestDatabase::with_pool_size(12).await;
    let first = Arc::new(runner(&db, "shared"));
    let second = Arc::new(runner(&db, "shared"));
    let mut stops = Vec::new();
    let mut tasks = Vec::new();
    for runner in [&first, &second] {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        stops.push(Some(stop));
        let runner = Arc::clone(runner);
        tasks.push(Some(tokio::spawn(async move {
            runner
                .run(async {
                    let _ = stopped.await;
                })
                .await
        })));
    }
    wait_until("one runner is active", async || {
        first.is_active() || second.is_active()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        first.is_active() != second.is_active(),
        "exactly one instance is active"
    );
    let (active, waiting) = if first.is_active() { (0, 1) } else { (1, 0) };
    let runners = [&first, &second];

    db.store
        .append(
            &StreamId::new("ledger-a").unwrap(),
            ExpectedVersion::Any,
            vec![credit(5, "")],
        )
        .await
        .unwrap();
    wait_until("the active runner applied the event", async || {
        totals(&db, "shared").await == vec![("ledger-a".to_owned(), 1, 5)]
    })
    .await;

    stops[active].take().unwrap().send(()).unwrap();
    tasks[active].take().unwrap().await.unwrap().unwrap();
    wait_until("the waiting runner took over", async || {
        runners[waiting].is_active()
    })
    .await;
    db.store
        .append(
            &StreamId::new("ledger-a").unwrap(),
            ExpectedVersion::Any,
            vec![credit(7, "")],
        )
        .await
        .unwrap();
    wait_until("the new active runner applied the next event", async || {
        totals(&db, "shared").await == vec![("ledger-a".to_owned(), 2, 12)]
    })
    .await;
    stops[waiting].take().unwrap().send(()).unwrap();
    tasks[waiting].take().unwrap().await.unwrap().unwrap();
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_event_is_parked_then_replayed_once_fixed() {
    let db = TestDatabase::new().await;
    let stream = StreamId::new("ledger-p").unwrap();
    db.store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![credit(1, ""), credit(10, "poison"), credit(100, "")],
        )
        .await
        .unwrap();
    let runner = runner(&db, "parking")
        .error_policy(ErrorPolicy::retry_then_park(2, Duration::from_millis(5)));
    // Other tests' open transactions may hold the cluster-wide horizon back for a moment.
    wait_until("the three events are readable", async || {
        runner.status().await.unwrap().lag_events == 3
    })
    .await;
    runner.catch_up().await.unwrap();
    assert_eq!(
        totals(&db, "parking").await,
        vec![("ledger-p".into(), 2, 101)]
    );

    let parked = runner.parked().await.unwrap();
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].stream_id, "ledger-p");
    assert_eq!(parked[0].attempts, 3, "one try and two retries");
    assert!(parked[0].error.contains("poisoned"), "{}", parked[0].error);
    let status = runner.status().await.unwrap();
    assert_eq!(
        (status.lag_events, status.parked),
        (0, 1),
        "parked events do not hold it back"
    );

    // Still broken: it stays parked.
    let report = runner.replay_parked().await.unwrap();
    assert_eq!((report.replayed, report.still_failing), (0, 1));
    runner
        .projection()
        .poison_fails
        .store(false, Ordering::SeqCst);
    let report = runner.replay_parked().await.unwrap();
    assert_eq!((report.replayed, report.still_failing), (1, 0));
    assert!(runner.parked().await.unwrap().is_empty());
    assert_eq!(
        totals(&db, "parking").await,
        vec![("ledger-p".into(), 3, 111)]
    );
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_skipped_parked_event_is_never_applied() {
    let db = TestDatabase::new().await;
    let stream = StreamId::new("ledger-k").unwrap();
    db.store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![credit(1, ""), credit(10, "poison"), credit(100, "")],
        )
        .await
        .unwrap();
    let runner = runner(&db, "skipping")
        .error_policy(ErrorPolicy::retry_then_park(0, Duration::from_millis(1)));
    wait_until("the three events are readable", async || {
        runner.status().await.unwrap().lag_events == 3
    })
    .await;
    runner.catch_up().await.unwrap();
    let parked = runner.parked().await.unwrap();
    assert_eq!(parked.len(), 1);
    assert!(runner.skip_parked(parked[0].event_id).await.unwrap());
    assert!(
        !runner.skip_parked(parked[0].event_id).await.unwrap(),
        "skipped once: nothing left to skip"
    );
    assert!(runner.parked().await.unwrap().is_empty());
    assert_eq!(runner.status().await.unwrap().parked, 0);
    // Even once fixed, a replay finds nothing: the event stays unapplied.
    runner
        .projection()
        .poison_fails
        .store(false, Ordering::SeqCst);
    let report = runner.replay_parked().await.unwrap();
    assert_eq!(report, ReplayReport::default());
    assert_eq!(
        totals(&db, "skipping").await,
        vec![("ledger-k".into(), 2, 101)]
    );
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_stops_at_a_failing_event_and_names_it() {
    let db = TestDatabase::new().await;
    let stream = StreamId::new("ledger-s").unwrap();
    let poison = credit(10, "poison");
    let poison_id = poison.event_id;
    db.store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![credit(1, ""), poison],
        )
        .await
        .unwrap();
    let runner = runner(&db, "stopping");
    match runner.rebuild(ErrorPolicy::STOP, |_| {}).await {
        Err(ProjectionError::Failed { event, .. }) => {
            assert_eq!(event.event_id, poison_id);
            assert_eq!(event.stream_id, stream);
        }
        other => panic!("expected the rebuild to stop, got {other:?}"),
    }
    // Nothing of the failed batch is committed, the checkpoint included.
    assert!(totals(&db, "stopping").await.is_empty());
    assert_eq!(runner.status().await.unwrap().lag_events, 2);
    assert!(LedgerEvent::TYPES.iter().any(|t| t.name == "Credited"));
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_projection_split_in_parts_covers_every_stream_once_in_order() {
    let db = TestDatabase::with_pool_size(12).await;
    seed(&db.store, 30, 40, 20).await;
    let parts: Vec<_> = (0..3)
        .map(|i| Arc::new(runner(&db, "split").part(i, 3)))
        .collect();
    let tasks: Vec<_> = parts
        .iter()
        .map(|part| {
            let part = Arc::clone(part);
            tokio::spawn(async move { part.catch_up().await })
        })
        .collect();
    let mut read = 0;
    for task in tasks {
        read += task.await.unwrap().unwrap();
    }
    assert_eq!(read, 3 * 1200, "each part reads the whole log");
    assert_eq!(totals(&db, "split").await, expected_totals(&db).await);
    for (i, part) in parts.iter().enumerate() {
        let status = part.status().await.unwrap();
        assert_eq!(status.name, format!("split#{i}/3"));
        assert_eq!(status.lag_events, 0);
    }
    // Parts hold locks of their own: all three are active at once.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let live: Vec<_> = parts
        .iter()
        .map(|part| {
            let part = Arc::clone(part);
            let mut stopped = stopped.clone();
            tokio::spawn(async move {
                part.run(async move {
                    let _ = stopped.wait_for(|s| *s).await;
                })
                .await
            })
        })
        .collect();
    wait_until("every part is active", async || {
        parts.iter().all(|p| p.is_active())
    })
    .await;
    stop.send(true).unwrap();
    for task in live {
        task.await.unwrap().unwrap();
    }
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_blue_green_rebuild_swaps_in_the_new_version_while_live_runs() {
    let db = TestDatabase::with_pool_size(16).await;
    seed(&db.store, 20, 100, 25).await;
    let live = Arc::new(runner(&db, "bluegreen").batch_size(100));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let live_task = {
        let live = Arc::clone(&live);
        tokio::spawn(async move {
            live.run(async {
                let _ = stopped.await;
            })
            .await
        })
    };
    let expected = expected_totals(&db).await;
    wait_until("the live version caught up", async || {
        totals(&db, "bluegreen").await.len() == expected.len()
            && totals(&db, "bluegreen").await == expected
    })
    .await;

    // Writers go on appending, and a reader keeps querying the live table, through the build
    // and the swap.
    let writing = Arc::new(AtomicBool::new(true));
    let mut writers = Vec::new();
    for w in 0..3 {
        let store = db.store.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..60u64 {
                let stream = StreamId::new(format!("ledger-bg{w}")).unwrap();
                store
                    .append(&stream, ExpectedVersion::Any, vec![credit(i % 3 + 1, "")])
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        }));
    }
    let reader = {
        let pool = db.pool.clone();
        let table = format!("\"{}\".bluegreen", db.schema);
        let writing = Arc::clone(&writing);
        tokio::spawn(async move {
            let mut reads = 0u32;
            while writing.load(Ordering::SeqCst) {
                let rows: i64 =
                    sqlx::query_scalar(AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
                        .fetch_one(&pool)
                        .await
                        .expect("the live table is always there to read");
                assert!(
                    rows >= 20,
                    "the live table never looks half-built: {rows} rows"
                );
                reads += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            reads
        })
    };

    let next_schema = SchemaName::new(format!("{}_next", db.schema)).unwrap();
    let next = Totals::in_schema(next_schema.clone(), "bluegreen", 2);
    let built = tokio::time::timeout(
        Duration::from_secs(60),
        live.rebuild_blue_green(next, ErrorPolicy::STOP, |_| {}),
    )
    .await
    .expect("the blue/green rebuild finishes")
    .unwrap();
    assert!(built >= 2000, "the build read the whole log: {built}");
    for writer in writers {
        writer.await.unwrap();
    }
    let expected = expected_totals(&db).await;
    wait_until("the live runner follows on the new version", async || {
        totals(&db, "bluegreen").await == expected
    })
    .await;
    writing.store(false, Ordering::SeqCst);
    assert!(reader.await.unwrap() > 0);

    let versions: Vec<i32> = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT DISTINCT version FROM \"{}\".bluegreen",
        db.schema
    )))
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(versions, vec![2], "every row is the new version's");
    let keys: Vec<String> = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT projection FROM \"{}\".projection_checkpoints ORDER BY 1",
        db.schema
    )))
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        keys,
        vec!["bluegreen".to_owned()],
        "the build's checkpoint is gone"
    );
    assert_eq!(live.status().await.unwrap().lag_events, 0);
    assert!(
        live.is_active(),
        "the live runner kept running through the swap"
    );

    // What cannot be swapped is refused before anything is built.
    let same_schema = Totals::in_schema(db.schema.clone(), "bluegreen", 3);
    assert!(matches!(
        live.rebuild_blue_green(same_schema, ErrorPolicy::STOP, |_| {})
            .await,
        Err(ProjectionError::BlueGreen { .. })
    ));

    stop.send(()).unwrap();
    live_task.await.unwrap().unwrap();
    sqlx::query(AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS \"{next_schema}\" CASCADE"
    )))
    .execute(&db.pool)
    .await
    .unwrap();
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_whose_run_is_cancelled_no_longer_reports_itself_active() {
    let db = TestDatabase::new().await;
    let process = db.another_process(4).await;
    let cancelled = Arc::new(runner_on(&process, &db, "cancelled"));
    let task = {
        let cancelled = Arc::clone(&cancelled);
        tokio::spawn(async move { cancelled.run(std::future::pending()).await })
    };
    wait_until("the runner is active", async || cancelled.is_active()).await;
    task.abort();
    let _ = task.await;
    assert!(!cancelled.is_active());
    process.pool().close().await;
    // Its session ended with it: another instance takes the projection over.
    let next = runner(&db, "cancelled");
    next.catch_up().await.unwrap();
    db.drop().await;
}
