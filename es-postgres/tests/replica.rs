//! A projection runner reading the global log from a hot standby while its read model and
//! checkpoint live on the primary. The test starts a primary and a streaming standby of its
//! own, on free ports (`pg_basebackup`), and tears both down.
//!
//! Writers commit out of order on the primary (transactions that take their ids early and
//! commit late, beside quick ones) while a churn of updates and vacuums makes the standby
//! cancel reads for recovery conflicts (`max_standby_streaming_delay = 0`). The runner must
//! apply every event exactly once, each stream in version order, riding out the cancelled
//! reads; with replay paused its lag is exactly what the standby has not replayed.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use es_core::testing::evolution::LedgerEvent;
use es_core::{BoxError, Envelope, EventStore, ExpectedVersion, NewEvent, StreamId};
use es_postgres::testing::TestCluster;
use es_postgres::{PgEventStore, PgProjection, ProjectionRunner};
use rand::Rng;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};

/// Records every event it is handed, in the order handed: repeats and skips show.
struct Journal;

#[async_trait]
impl PgProjection for Journal {
    type Event = LedgerEvent;

    fn name(&self) -> &str {
        "journal"
    }

    async fn setup(&self, conn: &mut PgConnection) -> Result<(), BoxError> {
        sqlx::raw_sql(
            "CREATE TABLE IF NOT EXISTS journal (seq bigserial PRIMARY KEY, \
             event_id uuid NOT NULL, stream_id text NOT NULL, version bigint NOT NULL)",
        )
        .execute(conn)
        .await?;
        Ok(())
    }

    async fn reset(&self, conn: &mut PgConnection) -> Result<(), BoxError> {
        sqlx::query("DELETE FROM journal").execute(conn).await?;
        Ok(())
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        event: &Envelope<LedgerEvent>,
    ) -> Result<(), BoxError> {
        sqlx::query("INSERT INTO journal (event_id, stream_id, version) VALUES ($1, $2, $3)")
            .bind(event.event_id)
            .bind(event.stream_id.as_str())
            .bind(event.stream_version as i64)
            .execute(conn)
            .await?;
        Ok(())
    }
}

fn credit(cents: u64) -> NewEvent {
    NewEvent::from_event(&LedgerEvent::Credited {
        cents,
        memo: "replica".to_owned(),
    })
    .unwrap()
}

async fn pool(cluster: &TestCluster, size: u32) -> PgPool {
    PgPoolOptions::new()
        .max_connections(size)
        .acquire_timeout(Duration::from_secs(10))
        .connect(&cluster.url())
        .await
        .unwrap()
}

async fn wait_until(what: &str, limit: Duration, mut done: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while !done().await {
        assert!(start.elapsed() < limit, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Appends on the primary until told to stop: quick appends, and transactions that take their
/// id, wait, then append and commit, so commits land out of transaction-id order.
fn writer(
    store: PgEventStore,
    stop: Arc<AtomicBool>,
    slow: bool,
    index: usize,
) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut appended = 0;
        let mut n = 0;
        while !stop.load(Ordering::SeqCst) {
            n += 1;
            let stream = StreamId::new(format!("ledger-{}", (index * 7 + n) % 12)).unwrap();
            if slow {
                let mut conn = store.pool().acquire().await.unwrap();
                let mut tx = conn.begin().await.unwrap();
                sqlx::query("SELECT pg_current_xact_id()")
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                let pause = rand::rng().random_range(5..60);
                tokio::time::sleep(Duration::from_millis(pause)).await;
                store
                    .append_in(
                        &mut tx,
                        &stream,
                        ExpectedVersion::Any,
                        vec![credit(n as u64)],
                    )
                    .await
                    .unwrap();
                tx.commit().await.unwrap();
                store.wake_followers();
            } else {
                store
                    .append(
                        &stream,
                        ExpectedVersion::Any,
                        vec![credit(n as u64), credit(1)],
                    )
                    .await
                    .unwrap();
                appended += 1;
            }
            appended += 1;
        }
        appended
    })
}

/// Makes the standby cancel reads: the primary takes the events table's ACCESS EXCLUSIVE lock
/// for an instant, over and over, and updates and vacuums a table. The standby replays the
/// lock and the cleanups, and with `max_standby_streaming_delay = 0` cancels at once the
/// queries in their way.
fn churn(pool: PgPool, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        sqlx::raw_sql(
            "CREATE TABLE churn (id int PRIMARY KEY, n bigint NOT NULL); \
             INSERT INTO churn SELECT g, 0 FROM generate_series(1, 200) g",
        )
        .execute(&pool)
        .await
        .unwrap();
        while !stop.load(Ordering::SeqCst) {
            sqlx::raw_sql("BEGIN; LOCK TABLE es.events IN ACCESS EXCLUSIVE MODE; COMMIT")
                .execute(&pool)
                .await
                .unwrap();
            sqlx::query("UPDATE churn SET n = n + 1")
                .execute(&pool)
                .await
                .unwrap();
            sqlx::query("VACUUM churn").execute(&pool).await.unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
}

/// A one-value query on the standby, asked again when the standby cancels it for a recovery
/// conflict (this test provokes them, and the test's own queries meet them too).
async fn on_standby<T>(replica: &PgPool, sql: &'static str) -> T
where
    T: Send + Unpin + for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
{
    loop {
        match sqlx::query_scalar(sql).fetch_one(replica).await {
            Ok(value) => return value,
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("40001") => {}
            Err(e) => panic!("{sql}: {e}"),
        }
    }
}

/// Queries the standby cancelled for recovery conflicts so far.
async fn conflicts(replica: &PgPool) -> i64 {
    on_standby(
        replica,
        "SELECT coalesce(sum(confl_snapshot + confl_lock + confl_bufferpin), 0)::bigint \
         FROM pg_stat_database_conflicts",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_runner_reading_a_standby_applies_every_event_once_in_order_and_lags_by_replay() {
    let primary = TestCluster::start(&[]);
    let primary_pool = pool(&primary, 16).await;
    let store = PgEventStore::new(primary_pool.clone());
    store.migrate().await.unwrap();
    let standby = primary.start_standby(&["max_standby_streaming_delay = 0"]);
    let replica = pool(&standby, 4).await;
    wait_until(
        "the standby has the schema",
        Duration::from_secs(30),
        async || {
            on_standby::<Option<String>>(&replica, "SELECT to_regclass('es.events')::text")
                .await
                .is_some()
        },
    )
    .await;

    let runner = Arc::new(
        ProjectionRunner::new(store.clone(), Journal)
            .read_from(replica.clone())
            .batch_size(200)
            .poll_interval(Duration::from_millis(100))
            .lock_retry_interval(Duration::from_millis(50)),
    );
    let (stop_runner, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = {
        let runner = Arc::clone(&runner);
        tokio::spawn(async move {
            runner
                .run(async {
                    let _ = stopped.await;
                })
                .await
        })
    };

    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for index in 0..4 {
        writers.push(writer(
            store.clone(),
            Arc::clone(&stop),
            index % 2 == 0,
            index,
        ));
    }
    let churning = churn(primary_pool.clone(), Arc::clone(&stop));
    // At least 8 s, and until the standby has cancelled a few of the runner's reads.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(8)
        || (conflicts(&replica).await < 3 && start.elapsed() < Duration::from_secs(60))
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let mut appended = 0;
    for writer in writers {
        appended += writer.await.unwrap();
    }
    churning.await.unwrap();
    assert!(appended > 200, "only {appended} events appended");

    let journaled = async || -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM journal")
            .fetch_one(&primary_pool)
            .await
            .unwrap()
    };
    wait_until(
        "the runner applied every event",
        Duration::from_secs(60),
        async || journaled().await >= appended as i64,
    )
    .await;
    assert!(
        !running.is_finished(),
        "the runner stopped: {:?}",
        running.await
    );

    // Exactly once: as many rows as events stored, no event twice, each stream in order.
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM es.events")
        .fetch_one(&primary_pool)
        .await
        .unwrap();
    assert_eq!(stored, appended as i64);
    let (rows, distinct): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT event_id) FROM journal")
            .fetch_one(&primary_pool)
            .await
            .unwrap();
    assert_eq!(
        (rows, distinct),
        (stored, stored),
        "an event was repeated or skipped"
    );
    let out_of_order: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT version - lag(version) OVER (PARTITION BY stream_id \
         ORDER BY seq) AS step FROM journal) s WHERE step <> 1",
    )
    .fetch_one(&primary_pool)
    .await
    .unwrap();
    assert_eq!(
        out_of_order, 0,
        "a stream's events were applied out of version order"
    );

    // The standby cancelled reads, and the runner rode them out.
    let conflicts = conflicts(&replica).await;
    eprintln!(
        "{appended} events; the standby cancelled {conflicts} queries for recovery conflicts"
    );
    assert!(
        conflicts >= 3,
        "the standby cancelled only {conflicts} queries"
    );

    // Lag equals replay lag: with replay paused, the runner holds at what the standby has,
    // and its lag is exactly the events the standby has not replayed.
    on_standby::<String>(&replica, "SELECT pg_wal_replay_pause()::text").await;
    wait_until("replay paused", Duration::from_secs(10), async || {
        on_standby::<String>(&replica, "SELECT pg_get_wal_replay_pause_state()").await == "paused"
    })
    .await;
    let stream = StreamId::new("ledger-paused").unwrap();
    for n in 0..25 {
        store
            .append(&stream, ExpectedVersion::Any, vec![credit(n)])
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = runner.status().await.unwrap();
    assert_eq!(
        status.lag_events, 25,
        "lag while replay is paused: {status:?}"
    );
    assert_eq!(journaled().await, stored);

    on_standby::<String>(&replica, "SELECT pg_wal_replay_resume()::text").await;
    wait_until(
        "the runner caught up after replay resumed",
        Duration::from_secs(30),
        async || runner.status().await.unwrap().lag_events == 0,
    )
    .await;
    assert_eq!(journaled().await, stored + 25);

    stop_runner.send(()).unwrap();
    running.await.unwrap().unwrap();

    // A pool on another cluster (the shared test server) is refused, not read.
    let elsewhere = PgPoolOptions::new()
        .max_connections(2)
        .connect(&es_postgres::testing::database_url())
        .await
        .unwrap();
    let misdirected = ProjectionRunner::new(store.clone(), Journal).read_from(elsewhere);
    let error = misdirected.catch_up().await.unwrap_err();
    assert!(!error.is_transient(), "{error}");
    assert!(error.to_string().contains("another cluster"), "{error}");
    drop(standby);
}
