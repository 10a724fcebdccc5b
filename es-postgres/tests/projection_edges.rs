//! Projection runners at the edges: unreadable stored rows, concurrent replays of parked
//! events, a lost lock session, split projections rebuilt or re-split, interrupted rebuilds.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use es_core::{EventStore, ExpectedVersion, NewEvent, Position, StoreError, StreamId};
use es_postgres::testing::TestDatabase;
use es_postgres::{ErrorPolicy, OnFailure, ProjectionError};
use sqlx::AssertSqlSafe;

fn sql(db: &TestDatabase, template: &str) -> AssertSqlSafe<String> {
    AssertSqlSafe(template.replace("{s}", &format!("\"{}\"", db.schema)))
}

fn policy(then: OnFailure) -> ErrorPolicy {
    ErrorPolicy {
        retries: 0,
        backoff: Duration::ZERO,
        then,
    }
}

/// Appends `credit(cents)` to `stream`, one event per append.
async fn credits(db: &TestDatabase, stream: &str, cents: &[u64]) {
    let stream = StreamId::new(stream).unwrap();
    for c in cents {
        db.store
            .append(&stream, ExpectedVersion::Any, vec![credit(*c, "")])
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn the_database_refuses_rows_its_readers_cannot_read() {
    let db = TestDatabase::new().await;
    let row = |stream: &str, event_type: &str, metadata: &str, transaction: &str| {
        format!(
            "INSERT INTO {{s}}.events (transaction_id, event_id, stream_id, stream_version, \
             event_type, schema_version, correlation_id, metadata, payload) \
             VALUES ({transaction}, gen_random_uuid(), '{stream}', 1, '{event_type}', 1, \
             gen_random_uuid(), '{metadata}', '{{}}')"
        )
    };
    let long = "x".repeat(513);
    let infinite = "INSERT INTO {s}.events (event_id, stream_id, stream_version, event_type, \
         schema_version, correlation_id, recorded_at, payload) VALUES (gen_random_uuid(), 's-1', 1, \
         'T', 1, gen_random_uuid(), 'infinity', '{}')"
        .to_owned();
    for (what, statement) in [
        ("a time no date can hold", infinite),
        (
            "metadata that is not an object",
            row("s-1", "T", "[1]", "DEFAULT"),
        ),
        (
            "metadata that is a string",
            row("s-1", "T", "\"m\"", "DEFAULT"),
        ),
        ("an empty stream id", row("", "T", "{}", "DEFAULT")),
        (
            "a stream id over 512 bytes",
            row(&long, "T", "{}", "DEFAULT"),
        ),
        ("an empty event type", row("s-1", "", "{}", "DEFAULT")),
        ("transaction id 0", row("s-1", "T", "{}", "0")),
    ] {
        let error = sqlx::query(sql(&db, &statement))
            .execute(&db.pool)
            .await
            .expect_err(what);
        let code = error.as_database_error().and_then(|e| e.code()).unwrap();
        assert_eq!(code, "23514", "{what} is refused by a check: {error}");
    }

    // A writer's own search_path cannot swap the functions the check calls.
    let evil = format!("{}_evil", db.schema);
    let mut conn = db.pool.acquire().await.unwrap();
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE SCHEMA {evil}; \
         CREATE FUNCTION {evil}.json_typeof(json) RETURNS text LANGUAGE sql AS $$ SELECT 'object' $$; \
         CREATE FUNCTION {evil}.octet_length(text) RETURNS integer LANGUAGE sql AS $$ SELECT 1 $$; \
         SET search_path = {evil}, pg_catalog"
    )))
    .execute(&mut *conn)
    .await
    .unwrap();
    let error = sqlx::query(sql(&db, &row("s-1", "T", "[1]", "DEFAULT")))
        .execute(&mut *conn)
        .await
        .expect_err("metadata that is not an object, under another search_path");
    let code = error.as_database_error().and_then(|e| e.code()).unwrap();
    assert_eq!(code, "23514", "{error}");
    sqlx::raw_sql(AssertSqlSafe(format!(
        "RESET search_path; DROP SCHEMA {evil} CASCADE"
    )))
    .execute(&mut *conn)
    .await
    .unwrap();
    drop(conn);
    db.drop().await;
}

/// Stores `ledger-m`: credit 1, an unreadable row (metadata `[1]`, stored as if before the
/// checks existed), credit 100; returns the unreadable row's id.
async fn store_a_malformed_row(db: &TestDatabase) -> uuid::Uuid {
    credits(db, "ledger-m", &[1]).await;
    sqlx::query(sql(
        db,
        "ALTER TABLE {s}.events DROP CONSTRAINT events_row_is_valid",
    ))
    .execute(&db.pool)
    .await
    .unwrap();
    let id = uuid::Uuid::now_v7();
    sqlx::query(sql(
        db,
        "INSERT INTO {s}.events (event_id, stream_id, stream_version, event_type, schema_version, \
         correlation_id, metadata, payload) \
         VALUES ($1, 'ledger-m', 2, 'Credited', 1, $1, '[1]', '{\"cents\": 10, \"memo\": \"\"}')",
    ))
    .bind(id)
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query(sql(
        db,
        "UPDATE {s}.streams SET version = 2 WHERE stream_id = 'ledger-m'",
    ))
    .execute(&db.pool)
    .await
    .unwrap();
    credits(db, "ledger-m", &[100]).await;
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_row_goes_to_the_error_policy_and_the_events_around_it_are_applied() {
    let db = TestDatabase::new().await;
    let bad = store_a_malformed_row(&db).await;
    let parking = runner(&db, "parking").error_policy(policy(OnFailure::Park));
    // Other tests' transactions may hold the cluster-wide horizon back for a moment.
    wait_until("the three rows are readable", async || {
        parking.status().await.unwrap().lag_events == 3
    })
    .await;

    // The store returns the events before the row, then an error naming it, then the rest.
    let first = db.store.read_all(Position::START, 10).await.unwrap();
    assert_eq!(first.len(), 1);
    let error = db.store.read_all(first[0].position, 10).await.unwrap_err();
    let StoreError::Malformed {
        event_id,
        position: Some(at),
        field: "metadata",
        ..
    } = error
    else {
        panic!("expected the row's malformed metadata, got {error:?}");
    };
    assert_eq!(event_id, Some(bad));
    let rest = db.store.read_all(at, 10).await.unwrap();
    assert_eq!(rest.len(), 1);

    // Park: the events around it are applied, the row is parked naming it, nothing is behind.
    assert_eq!(parking.catch_up().await.unwrap(), 3);
    assert_eq!(
        totals(&db, "parking").await,
        vec![("ledger-m".into(), 2, 101)]
    );
    let parked = parking.parked().await.unwrap();
    assert_eq!(parked.len(), 1);
    assert_eq!((parked[0].event_id, parked[0].position), (bad, at));
    assert!(parked[0].error.contains("metadata"), "{}", parked[0].error);
    assert_eq!(parking.status().await.unwrap().lag_events, 0);
    // A replay cannot read it either: it stays parked, counted as failing.
    let report = parking.replay_parked().await.unwrap();
    assert_eq!((report.replayed, report.still_failing), (0, 1));

    // Skip: the same, without a parked row.
    let skipping = runner(&db, "skipping").error_policy(policy(OnFailure::Skip));
    skipping.catch_up().await.unwrap();
    assert_eq!(
        totals(&db, "skipping").await,
        vec![("ledger-m".into(), 2, 101)]
    );
    assert!(skipping.parked().await.unwrap().is_empty());

    // Stop: the events before it are applied and the runner stops, naming the row.
    let stopping = runner(&db, "stopping").error_policy(ErrorPolicy::STOP);
    match stopping.catch_up().await {
        Err(error @ ProjectionError::Unreadable { .. }) => {
            assert!(error.to_string().contains(&bad.to_string()), "{error}");
        }
        other => panic!("expected the runner to stop at the row, got {other:?}"),
    }
    assert_eq!(
        totals(&db, "stopping").await,
        vec![("ledger-m".into(), 1, 1)]
    );
    assert_eq!(stopping.status().await.unwrap().lag_events, 2);

    // A projection that does not read the row's category passes over it whatever its policy.
    let others = runner(&db, "others").error_policy(ErrorPolicy::STOP);
    sqlx::query(sql(
        &db,
        "ALTER TABLE {s}.events DISABLE TRIGGER events_are_immutable",
    ))
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query(sql(
        &db,
        "UPDATE {s}.events SET stream_id = 'audit-m' WHERE event_id = $1",
    ))
    .bind(bad)
    .execute(&db.pool)
    .await
    .unwrap();
    others.catch_up().await.unwrap();
    assert_eq!(
        totals(&db, "others").await,
        vec![("ledger-m".into(), 2, 101)]
    );
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_replays_apply_each_parked_event_once() {
    let db = TestDatabase::with_pool_size(16).await;
    let stream = StreamId::new("ledger-r").unwrap();
    let events: Vec<_> = (0..40).map(|i| credit(i + 1, "poison")).collect();
    db.store
        .append(&stream, ExpectedVersion::NoStream, events)
        .await
        .unwrap();
    let parking = runner(&db, "replayed").error_policy(policy(OnFailure::Park));
    wait_until("the events are readable", async || {
        parking.status().await.unwrap().lag_events == 40
    })
    .await;
    parking.catch_up().await.unwrap();
    assert_eq!(parking.parked().await.unwrap().len(), 40);

    // Fixed; two runners (in two "processes") replay at once.
    let replayers: Vec<_> = [db.another_process(4).await, db.another_process(4).await]
        .iter()
        .map(|store| {
            let runner = runner_on(store, &db, "replayed");
            runner
                .projection()
                .poison_fails
                .store(false, Ordering::SeqCst);
            Arc::new(runner)
        })
        .collect();
    let tasks: Vec<_> = replayers
        .iter()
        .map(|r| {
            let r = Arc::clone(r);
            tokio::spawn(async move { r.replay_parked().await })
        })
        .collect();
    let mut replayed = 0;
    for task in tasks {
        let report = task.await.unwrap().unwrap();
        assert_eq!(report.still_failing, 0);
        replayed += report.replayed;
    }
    assert_eq!(replayed, 40, "each event is replayed by exactly one replay");
    let expected: i64 = (1..=40).sum();
    assert_eq!(
        totals(&db, "replayed").await,
        vec![("ledger-r".into(), 40, expected)]
    );
    assert!(parking.parked().await.unwrap().is_empty());

    // Parked again, then replayed beside a rebuild of the same projection.
    sqlx::query(sql(&db, "DELETE FROM {s}.replayed"))
        .execute(&db.pool)
        .await
        .unwrap();
    parking
        .rebuild(policy(OnFailure::Park), |_| {})
        .await
        .unwrap();
    assert_eq!(parking.parked().await.unwrap().len(), 40);
    let rebuilder = Arc::clone(&replayers[0]);
    let rebuild = tokio::spawn(async move { rebuilder.rebuild(ErrorPolicy::STOP, |_| {}).await });
    let report = replayers[1].replay_parked().await.unwrap();
    rebuild.await.unwrap().unwrap();
    assert!(report.replayed + report.taken_elsewhere <= 40);
    assert_eq!(
        totals(&db, "replayed").await,
        vec![("ledger-r".into(), 40, expected)],
        "the rebuild and the replay together applied each event once"
    );
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_runner_that_loses_its_lock_session_stops_applying_and_says_so() {
    let db = TestDatabase::with_pool_size(12).await;
    let runners: Vec<_> = (0..2)
        .map(|_| {
            Arc::new(
                runner(&db, "guarded")
                    .lock_check_interval(Duration::from_millis(100))
                    .lock_retry_interval(Duration::from_millis(50)),
            )
        })
        .collect();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let tasks: Vec<_> = runners
        .iter()
        .map(|r| {
            let r = Arc::clone(r);
            let mut stopped = stopped.clone();
            tokio::spawn(async move {
                r.run(async move {
                    let _ = stopped.wait_for(|s| *s).await;
                })
                .await
            })
        })
        .collect();
    let exactly_one = || runners.iter().filter(|r| r.is_active()).count() == 1;
    wait_until("one runner is active", async || exactly_one()).await;
    credits(&db, "ledger-g", &[1, 2, 3]).await;
    wait_until("the events are applied", async || {
        totals(&db, "guarded").await == vec![("ledger-g".into(), 3, 6)]
    })
    .await;

    for round in 0..3 {
        let active = runners.iter().position(|r| r.is_active()).unwrap();
        let holder = runners[active].holder().await.unwrap().expect("a holder");
        assert!(holder.application_name.contains("guarded"), "{holder:?}");
        let terminated: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
            .bind(holder.pid)
            .fetch_one(&db.pool)
            .await
            .unwrap();
        assert!(terminated);
        // The instance that lost its session says so within its check interval, and one
        // instance holds the projection again; the one that says so holds the lock.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let taken_over = runners[0]
                .holder()
                .await
                .unwrap()
                .is_some_and(|h| h.pid != holder.pid);
            if exactly_one() && taken_over {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: no single active runner"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Stable: the instance that lost its session does not come back to applying.
        for _ in 0..10 {
            assert!(exactly_one(), "round {round}: two instances report active");
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        credits(&db, "ledger-g", &[10]).await;
        let expected = vec![("ledger-g".into(), 4 + round, 16 + 10 * round)];
        wait_until("the event after the takeover is applied once", async || {
            totals(&db, "guarded").await == expected
        })
        .await;
    }
    stop.send(true).unwrap();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert!(runners.iter().all(|r| !r.is_active()));
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_split_projection_is_rebuilt_whole_and_another_part_count_is_refused() {
    let db = TestDatabase::with_pool_size(12).await;
    seed(&db.store, 30, 20, 10).await;
    let expected = expected_totals(&db).await;
    let parts = |n: u32| -> Vec<_> { (0..n).map(|i| runner(&db, "resplit").part(i, n)).collect() };
    for part in parts(3) {
        part.catch_up().await.unwrap();
    }
    assert_eq!(totals(&db, "resplit").await, expected);

    // Rebuilding from the runner of one part rebuilds every part: nothing is wiped.
    let read = parts(3)[1]
        .rebuild(ErrorPolicy::STOP, |_| {})
        .await
        .unwrap();
    assert_eq!(read, 600, "the whole log, read once");
    assert_eq!(totals(&db, "resplit").await, expected);
    for part in parts(3) {
        assert_eq!(part.status().await.unwrap().lag_events, 0);
    }

    // Another number of parts is refused, unsplit included.
    for refused in [runner(&db, "resplit").part(0, 2), runner(&db, "resplit")] {
        match refused.catch_up().await {
            Err(ProjectionError::Layout {
                configured,
                stored: 3,
                ..
            }) => assert_ne!(configured, 3),
            other => panic!("expected a layout refusal, got {other:?}"),
        }
    }
    assert_eq!(totals(&db, "resplit").await, expected);

    // A rebuild with two parts re-splits it; then three are refused.
    parts(2)[0]
        .rebuild(ErrorPolicy::STOP, |_| {})
        .await
        .unwrap();
    assert_eq!(totals(&db, "resplit").await, expected);
    credits(&db, "ledger-0001", &[5]).await;
    for part in parts(2) {
        part.catch_up().await.unwrap();
    }
    assert_eq!(totals(&db, "resplit").await, expected_totals(&db).await);
    assert!(matches!(
        parts(3)[0].catch_up().await,
        Err(ProjectionError::Layout { stored: 2, .. })
    ));
    let keys: Vec<String> = sqlx::query_scalar(sql(
        &db,
        "SELECT projection FROM {s}.projection_checkpoints ORDER BY 1",
    ))
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(keys, vec!["resplit#0/2", "resplit#1/2"]);
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_split_projection_is_rebuilt_blue_green_for_every_part() {
    let db = TestDatabase::with_pool_size(12).await;
    seed(&db.store, 20, 10, 10).await;
    let expected = expected_totals(&db).await;
    for i in 0..2 {
        runner(&db, "bgparts").part(i, 2).catch_up().await.unwrap();
    }
    let next_schema = es_postgres::SchemaName::new(format!("{}_next", db.schema)).unwrap();
    let next = Totals::in_schema(next_schema.clone(), "bgparts", 2);
    runner(&db, "bgparts")
        .part(1, 2)
        .rebuild_blue_green(next, ErrorPolicy::STOP, |_| {})
        .await
        .unwrap();
    assert_eq!(
        totals(&db, "bgparts").await,
        expected,
        "every part's streams"
    );
    credits(&db, "ledger-0002", &[3]).await;
    credits(&db, "ledger-0003", &[4]).await;
    for i in 0..2 {
        runner(&db, "bgparts").part(i, 2).catch_up().await.unwrap();
    }
    assert_eq!(totals(&db, "bgparts").await, expected_totals(&db).await);
    sqlx::query(AssertSqlSafe(format!(
        "DROP SCHEMA \"{next_schema}\" CASCADE"
    )))
    .execute(&db.pool)
    .await
    .unwrap();
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_interrupted_rebuild_resumes_instead_of_starting_over() {
    let db = TestDatabase::with_pool_size(12).await;
    seed(&db.store, 40, 500, 100).await;
    let expected = expected_totals(&db).await;
    let total = 20_000;

    // A rebuild in another process, killed once it has committed some batches.
    let process = db.another_process(4).await;
    let done = Arc::new(AtomicU64::new(0));
    let task = {
        let runner = runner_on(&process, &db, "resumed").batch_size(500);
        let done = Arc::clone(&done);
        tokio::spawn(async move {
            runner
                .rebuild(ErrorPolicy::STOP, move |p| {
                    done.store(p.events, Ordering::SeqCst)
                })
                .await
        })
    };
    wait_until("the rebuild is under way", async || {
        done.load(Ordering::SeqCst) >= 2_000
    })
    .await;
    task.abort();
    let _ = task.await;
    process.pool().close().await;
    let runner = runner(&db, "resumed").batch_size(500);
    assert!(runner.status().await.unwrap().rebuilding);

    // The next rebuild carries on from the last committed batch.
    let read = runner.rebuild(ErrorPolicy::STOP, |_| {}).await.unwrap();
    assert!(read < total, "resumed: read {read} of {total}");
    assert_eq!(totals(&db, "resumed").await, expected);
    assert!(!runner.status().await.unwrap().rebuilding);

    // Finished, a rebuild starts afresh.
    assert_eq!(
        runner.rebuild(ErrorPolicy::STOP, |_| {}).await.unwrap(),
        total
    );
    assert_eq!(totals(&db, "resumed").await, expected);
    db.drop().await;
}

/// Collects what is logged, for a test to read.
#[derive(Clone, Default)]
struct Logs(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_type_renamed_without_an_upcaster_is_passed_over_with_a_warning() {
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let db = TestDatabase::new().await;
    credits(&db, "ledger-n", &[1]).await;
    // A later release renamed `Credited`; this projection's code still knows the old name.
    let renamed = NewEvent::new(
        "FundsCredited",
        1,
        serde_json::value::to_raw_value(&serde_json::json!({"cents": 5, "memo": ""})).unwrap(),
    );
    db.store
        .append(
            &StreamId::new("ledger-n").unwrap(),
            ExpectedVersion::Any,
            vec![renamed],
        )
        .await
        .unwrap();
    let runner = runner(&db, "renamed");
    wait_until("both events are readable", async || {
        runner.status().await.unwrap().lag_events == 2
    })
    .await;
    runner.catch_up().await.unwrap();
    assert_eq!(
        totals(&db, "renamed").await,
        vec![("ledger-n".into(), 1, 1)]
    );
    let logged = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        logged.contains("passing over events") && logged.contains("FundsCredited"),
        "{logged}"
    );
    db.drop().await;
}
