//! Shared by the projection tests: a ledger read model whose totals show an event applied
//! twice or lost, and helpers to seed, wait and compare.

// Test code: a failed unwrap is a failed test, and not every test file uses every helper.
#![allow(clippy::unwrap_used, dead_code)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use es_core::testing::evolution::LedgerEvent;
use es_core::{BoxError, Envelope, EventStore, ExpectedVersion, NewEvent, StreamId};
use es_postgres::testing::TestDatabase;
use es_postgres::{PgEventStore, PgProjection, ProjectionRunner, ReadModel, SchemaName};
use sqlx::{AssertSqlSafe, PgConnection};

/// Per stream: how many ledger events, and the net of credits and debits. Increments, so an
/// event applied twice or lost shows in the totals.
pub struct Totals {
    pub name: String,
    pub schema: SchemaName,
    pub table: String,
    /// Stamped on every row it creates, to tell a rebuilt version from the one it replaced.
    pub version: i32,
    pub poison_fails: AtomicBool,
}

impl Totals {
    pub fn new(db: &TestDatabase, name: &str) -> Self {
        Self::in_schema(db.schema.clone(), name, 1)
    }

    pub fn in_schema(schema: SchemaName, name: &str, version: i32) -> Self {
        Self {
            name: name.to_owned(),
            table: format!("\"{schema}\".{name}"),
            schema,
            version,
            poison_fails: AtomicBool::new(true),
        }
    }
}

#[async_trait]
impl PgProjection for Totals {
    type Event = LedgerEvent;

    fn name(&self) -> &str {
        &self.name
    }

    fn wants_category(&self, category: &str) -> bool {
        category == "ledger"
    }

    fn read_model(&self) -> Option<ReadModel> {
        Some(ReadModel::new(self.schema.clone(), [self.name.as_str()]).unwrap())
    }

    async fn setup(&self, conn: &mut PgConnection) -> Result<(), BoxError> {
        sqlx::query(AssertSqlSafe(format!(
            "CREATE TABLE IF NOT EXISTS {} (stream_id text PRIMARY KEY, events bigint NOT NULL, \
             net bigint NOT NULL, version int NOT NULL DEFAULT {})",
            self.table, self.version
        )))
        .execute(conn)
        .await?;
        Ok(())
    }

    async fn reset(&self, conn: &mut PgConnection) -> Result<(), BoxError> {
        sqlx::query(AssertSqlSafe(format!("DELETE FROM {}", self.table)))
            .execute(conn)
            .await?;
        Ok(())
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        event: &Envelope<LedgerEvent>,
    ) -> Result<(), BoxError> {
        let net = match &event.payload {
            LedgerEvent::Credited { memo, .. }
                if memo == "poison" && self.poison_fails.load(Ordering::SeqCst) =>
            {
                return Err("cannot apply a poisoned credit".into());
            }
            LedgerEvent::Credited { cents, .. } => *cents as i64,
            LedgerEvent::Debited { cents } => -(*cents as i64),
            LedgerEvent::Annotated { .. } => 0,
        };
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {} AS t (stream_id, events, net) VALUES ($1, 1, $2) \
             ON CONFLICT (stream_id) DO UPDATE SET events = t.events + 1, net = t.net + $2",
            self.table
        )))
        .bind(event.stream_id.as_str())
        .bind(net)
        .execute(conn)
        .await?;
        Ok(())
    }
}

pub fn credit(cents: u64, memo: &str) -> NewEvent {
    NewEvent::from_event(&LedgerEvent::Credited {
        cents,
        memo: memo.to_owned(),
    })
    .unwrap()
}

/// The read model's rows; none while its runner has not created the table yet.
pub async fn totals(db: &TestDatabase, table: &str) -> Vec<(String, i64, i64)> {
    let rows = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT stream_id, events, net FROM \"{}\".{table} ORDER BY stream_id",
        db.schema
    )))
    .fetch_all(&db.pool)
    .await;
    match rows {
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P01") => Vec::new(),
        rows => rows.unwrap(),
    }
}

/// What a correct replay must produce, computed from the events themselves.
pub async fn expected_totals(db: &TestDatabase) -> Vec<(String, i64, i64)> {
    sqlx::query_as(AssertSqlSafe(format!(
        "SELECT stream_id, count(*), sum(CASE event_type WHEN 'Credited' THEN (payload->>'cents')::bigint \
           WHEN 'Debited' THEN -(payload->>'cents')::bigint ELSE 0 END)::bigint \
         FROM \"{}\".events WHERE stream_id LIKE 'ledger-%' GROUP BY stream_id ORDER BY stream_id",
        db.schema
    )))
    .fetch_all(&db.pool)
    .await
    .unwrap()
}

pub fn runner(db: &TestDatabase, name: &str) -> ProjectionRunner<Totals> {
    runner_on(&db.store, db, name)
}

/// A runner working through `store` (the test's, or another process's).
pub fn runner_on(store: &PgEventStore, db: &TestDatabase, name: &str) -> ProjectionRunner<Totals> {
    ProjectionRunner::new(store.clone(), Totals::new(db, name))
        .poll_interval(Duration::from_millis(50))
        .lock_retry_interval(Duration::from_millis(50))
}

pub async fn wait_until(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn seed(store: &PgEventStore, streams: usize, per_stream: usize, batch: usize) {
    for s in 0..streams {
        let stream = StreamId::new(format!("ledger-{s:04}")).unwrap();
        for chunk in 0..per_stream / batch {
            let events = (0..batch)
                .map(|i| credit(((chunk * batch + i) % 7 + 1) as u64, ""))
                .collect();
            store
                .append(&stream, ExpectedVersion::Any, events)
                .await
                .unwrap();
        }
    }
}
