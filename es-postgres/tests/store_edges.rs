//! The store at its edges: the time events are stamped with, schema versions no store keeps,
//! an import refused on a pool of one connection, the horizon as any role sees it, a
//! follower beside a busy pool, bounded loads.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use es_core::testing::conformance::{test_event, unique_stream};
use es_core::testing::evolution::{Ledger, LedgerCommand, LedgerEvent};
use es_core::{
    AppendResult, CommandHandler, EventStore, ExpectedVersion, MAX_SCHEMA_VERSION, NewEvent,
    Position, RecordedEvent, Repository, StoreError, StreamId,
};
use es_postgres::PgEventStore;
use es_postgres::testing::TestDatabase;
use futures_core::stream::BoxStream;
use sqlx::AssertSqlSafe;
use sqlx::postgres::PgPoolOptions;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_at_is_read_from_the_clock_when_the_append_runs() {
    let db = TestDatabase::new().await;
    let stream = unique_stream("time");
    let mut tx = db.pool.begin().await.unwrap();
    let began: DateTime<Utc> = sqlx::query_scalar("SELECT now()")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before_append: DateTime<Utc> = sqlx::query_scalar("SELECT clock_timestamp()")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    db.store
        .append_in(
            &mut tx,
            &stream,
            ExpectedVersion::NoStream,
            vec![test_event(1)],
        )
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let event = &db.store.read_stream_to_vec(&stream, 1).await.unwrap()[0];
    assert!(
        event.recorded_at >= before_append,
        "stamped {} though appended after {before_append} (its transaction began at {began})",
        event.recorded_at
    );
    db.drop().await;
}

#[tokio::test]
async fn a_schema_version_no_store_keeps_is_refused_by_imports_too() {
    let db = TestDatabase::new().await;
    let mut huge = test_event(1);
    huge.schema_version = MAX_SCHEMA_VERSION + 1;
    let error = db
        .store
        .import(&[(unique_stream("imp"), vec![huge])])
        .await
        .unwrap_err();
    assert!(
        matches!(&error, StoreError::InvalidEvent { reason, .. } if reason.contains("schema version")),
        "{error:?}"
    );
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_import_answers_at_once_on_a_pool_of_one() {
    let db = TestDatabase::with_pool_size(1).await;
    let stored = test_event(1);
    let mut again = test_event(2);
    again.event_id = stored.event_id;
    db.store
        .append(
            &unique_stream("one"),
            ExpectedVersion::NoStream,
            vec![stored],
        )
        .await
        .unwrap();
    let started = Instant::now();
    let error = db
        .store
        .import(&[(unique_stream("two"), vec![again])])
        .await
        .unwrap_err();
    assert!(
        matches!(error, StoreError::EventIdReused { .. }),
        "{error:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the refusal took {:?}: it waited for a second connection",
        started.elapsed()
    );
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_horizon_says_how_long_readers_wait_to_a_role_without_privileges() {
    let db = TestDatabase::new().await;
    let role = format!("{}_reader", db.schema);
    let schema = format!("\"{}\"", db.schema);
    for statement in [
        format!("CREATE ROLE {role} LOGIN"),
        format!("GRANT USAGE ON SCHEMA {schema} TO {role}"),
        format!("GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {role}"),
    ] {
        sqlx::query(AssertSqlSafe(statement))
            .execute(&db.pool)
            .await
            .unwrap();
    }
    let outcome = async {
        // A writer holds the horizon while another's event waits behind it.
        let mut holder = db.pool.begin().await.unwrap();
        sqlx::query("SELECT pg_current_xact_id()")
            .execute(&mut *holder)
            .await
            .unwrap();
        db.store
            .append(
                &unique_stream("held"),
                ExpectedVersion::NoStream,
                vec![test_event(1)],
            )
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;

        let options = db.pool.connect_options().as_ref().clone().username(&role);
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .unwrap();
        let reader = PgEventStore::in_schema(pool.clone(), db.schema.clone());
        let horizon = reader.horizon().await.unwrap();
        pool.close().await;
        holder.rollback().await.unwrap();
        horizon
    }
    .await;
    for statement in [
        format!("REVOKE ALL ON ALL TABLES IN SCHEMA {schema} FROM {role}"),
        format!("REVOKE ALL ON SCHEMA {schema} FROM {role}"),
        format!("DROP ROLE {role}"),
    ] {
        sqlx::query(AssertSqlSafe(statement))
            .execute(&db.pool)
            .await
            .unwrap();
    }
    assert!(outcome.held_back_events >= 1, "{outcome:?}");
    assert!(
        outcome
            .held_back_for
            .is_some_and(|d| d >= Duration::from_millis(150)),
        "{outcome:?}"
    );
    assert!(outcome.oldest_writer_pid.is_some(), "{outcome:?}");
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_listens_without_waiting_for_a_busy_pool() {
    let db = TestDatabase::with_pool_size(2).await;
    db.store
        .append(
            &unique_stream("busy"),
            ExpectedVersion::NoStream,
            vec![test_event(1)],
        )
        .await
        .unwrap();
    // One of the pool's two connections is busy elsewhere.
    let held = db.pool.acquire().await.unwrap();
    let mut follower = db.store.follow(Position::START);
    let started = Instant::now();
    let mut read = 0;
    while read == 0 {
        read = match tokio::time::timeout(Duration::from_secs(10), follower.try_next_batch()).await
        {
            Ok(batch) => batch.unwrap().map_or(0, |b| b.len()),
            Err(_) => panic!("the follower waited for the pool to listen"),
        };
        if read == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    drop(held);
    db.drop().await;
}

/// The PostgreSQL store, counting the events its stream reads yield.
struct Counting {
    inner: PgEventStore,
    yielded: Arc<AtomicU64>,
}

#[async_trait]
impl EventStore for Counting {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        self.inner.append(stream, expected, events).await
    }
    fn read_stream<'a>(
        &'a self,
        stream: &'a StreamId,
        from: u64,
    ) -> BoxStream<'a, Result<RecordedEvent, StoreError>> {
        self.count(self.inner.read_stream(stream, from))
    }
    fn read_stream_range<'a>(
        &'a self,
        stream: &'a StreamId,
        from: u64,
        to: u64,
    ) -> BoxStream<'a, Result<RecordedEvent, StoreError>> {
        self.count(self.inner.read_stream_range(stream, from, to))
    }
    async fn read_all(
        &self,
        after: Position,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.inner.read_all(after, limit).await
    }
    async fn read_event(&self, id: Uuid) -> Result<Option<RecordedEvent>, StoreError> {
        self.inner.read_event(id).await
    }
    async fn read_correlated(
        &self,
        id: Uuid,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.inner.read_correlated(id, limit).await
    }
    async fn stream_version(&self, stream: &StreamId) -> Result<Option<u64>, StoreError> {
        self.inner.stream_version(stream).await
    }
    async fn head(&self) -> Result<Position, StoreError> {
        self.inner.head().await
    }
}

impl Counting {
    fn count<'a>(
        &'a self,
        events: BoxStream<'a, Result<RecordedEvent, StoreError>>,
    ) -> BoxStream<'a, Result<RecordedEvent, StoreError>> {
        use futures_util::StreamExt;
        let yielded = Arc::clone(&self.yielded);
        events
            .inspect(move |_| {
                yielded.fetch_add(1, Ordering::SeqCst);
            })
            .boxed()
    }
}

#[tokio::test]
async fn loading_at_a_version_reads_only_up_to_it() {
    let db = TestDatabase::new().await;
    let handler = CommandHandler::<Ledger>::new(Arc::new(db.store.clone()));
    for i in 0..50 {
        handler
            .execute("l-1", LedgerCommand::Credit(i + 1))
            .await
            .unwrap();
    }
    let yielded = Arc::new(AtomicU64::new(0));
    let counting = Counting {
        inner: db.store.clone(),
        yielded: Arc::clone(&yielded),
    };
    let repository = Repository::<Ledger>::new(Arc::new(counting));
    let stream = Repository::<Ledger>::stream_id("l-1").unwrap();
    let loaded = repository.load_at_version(&stream, 5).await.unwrap();
    assert_eq!(loaded.version, 5);
    assert_eq!(
        yielded.load(Ordering::SeqCst),
        5,
        "read 5 events, not the stream"
    );
    let _ = LedgerEvent::Debited { cents: 0 };
    db.drop().await;
}

#[tokio::test]
async fn a_stored_time_no_date_can_hold_is_a_typed_error_not_a_panic() {
    let db = TestDatabase::new().await;
    let schema = format!("\"{}\"", db.schema);
    sqlx::query(AssertSqlSafe(format!(
        "ALTER TABLE {schema}.events DROP CONSTRAINT events_row_is_valid"
    )))
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {schema}.events (event_id, stream_id, stream_version, event_type, \
         schema_version, correlation_id, recorded_at, payload) \
         VALUES (gen_random_uuid(), 'far-1', 1, 'T', 1, gen_random_uuid(), 'infinity', '{{}}')"
    )))
    .execute(&db.pool)
    .await
    .unwrap();
    let error = db
        .store
        .read_stream_to_vec(&StreamId::new("far-1").unwrap(), 1)
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            StoreError::Malformed {
                field: "recorded_at",
                ..
            }
        ),
        "{error:?}"
    );
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writers_never_wait_on_a_follower_that_does_not_read_its_notifications() {
    let db = TestDatabase::with_pool_size(12).await;
    // A follower that listens, then stops reading its listener (as during a long catch-up).
    let mut stalled = db.store.follow(Position::START);
    assert!(stalled.try_next_batch().await.unwrap().is_none());
    let mut writers = Vec::new();
    for w in 0..8 {
        let store = db.store.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..500u64 {
                store
                    .append(
                        &unique_stream(&format!("q{w}")),
                        ExpectedVersion::NoStream,
                        vec![test_event(i)],
                    )
                    .await
                    .expect("an append never fails on the notification queue");
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    // Notifications were coalesced: the server's queue holds next to nothing.
    let usage: f64 = sqlx::query_scalar("SELECT pg_notification_queue_usage()")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(
        usage < 0.001,
        "notification queue {:.4}% full",
        usage * 100.0
    );
    // The stalled follower still reads everything once it goes on.
    let mut read = 0;
    while read < 4000 {
        let batch = tokio::time::timeout(Duration::from_secs(30), stalled.next_batch())
            .await
            .expect("the follower goes on")
            .unwrap();
        read += batch.len();
    }
    assert_eq!(read, 4000);
    db.drop().await;
}
