//! A PostgreSQL schema of its own for each test, so tests run in parallel on one server.
//!
//! The server comes from `DATABASE_URL`, or the local default
//! `postgres://postgres@127.0.0.1:5432/postgres`. When no server answers, [`TestDatabase::new`]
//! panics with what to set: a test that needs PostgreSQL never passes silently without it.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::postgres::PgPoolOptions;
use sqlx::{AssertSqlSafe, PgPool};

use crate::{PgEventStore, SchemaName};

/// The server tests use when `DATABASE_URL` is not set.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Test schemas are named `es_test_{unix seconds}_{pid}_{n}`; ones older than this are left
/// over from earlier runs and dropped.
const STALE_AFTER: Duration = Duration::from_secs(3600);

/// One test's pool and fresh, migrated schema.
pub struct TestDatabase {
    /// A pool to the test server.
    pub pool: PgPool,
    /// The test's own schema.
    pub schema: SchemaName,
    /// A store in that schema, migrated.
    pub store: PgEventStore,
}

/// The test server's URL: `DATABASE_URL`, or [`DEFAULT_DATABASE_URL`].
pub fn database_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_DATABASE_URL.to_owned())
}

impl TestDatabase {
    /// Connects to the test server and creates a migrated schema for this test alone.
    ///
    /// # Panics
    /// When no server answers at the URL, with a message saying what to do.
    pub async fn new() -> Self {
        Self::with_pool_size(8).await
    }

    /// As [`new`](Self::new), with a pool of `connections`.
    pub async fn with_pool_size(connections: u32) -> Self {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let pool = connect(connections).await;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        drop_stale_schemas(&pool, now).await;
        let name = format!(
            "es_test_{now}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let schema = SchemaName::new(name).expect("test schema names are valid identifiers");
        let store = PgEventStore::in_schema(pool.clone(), schema.clone());
        store.migrate().await.expect("migrating the test schema");
        Self {
            pool,
            schema,
            store,
        }
    }

    /// A store on this test's schema through a pool of its own, as another process would
    /// have. Crash tests kill such a "process" by aborting its tasks and then closing this
    /// pool: its connections end and the server rolls back whatever they had open, as when a
    /// process dies. (Aborting tasks alone is not a crash: sqlx 0.9 can return a connection
    /// whose `BEGIN` was cut short to the pool still inside that transaction, and later
    /// statements on it are lost when it rolls back; see transact-rs/sqlx#4393.)
    pub async fn another_process(&self, connections: u32) -> PgEventStore {
        PgEventStore::in_schema(connect(connections).await, self.schema.clone())
    }

    /// Drops the test's schema. Tests that pass call this; a failed test's schema stays for
    /// inspection until a later run removes it as stale.
    pub async fn drop(self) {
        let _ = sqlx::query(AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS {} CASCADE",
            self.schema.quoted()
        )))
        .execute(&self.pool)
        .await;
        // Not `pool.close()`: it waits for every connection, including ones a still-living
        // follower's listener holds. The pool closes when its last clone is dropped.
    }
}

/// A pool of `connections` to the test server, or a panic saying what to do when none answers.
async fn connect(connections: u32) -> PgPool {
    let url = database_url();
    PgPoolOptions::new()
        .max_connections(connections)
        .acquire_timeout(Duration::from_secs(30))
        .connect(&url)
        .await
        .unwrap_or_else(|err| {
            panic!(
                "cannot reach PostgreSQL at {url}: {err}\n\
                     The tests need a PostgreSQL server (13 or newer). Set DATABASE_URL to one, \
                     e.g. DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres, or start the \
                     local server: pg_ctlcluster --skip-systemctl-redirect \
                     $(pg_lsclusters -h | awk '{{print $1; exit}}') main start"
            )
        })
}

async fn drop_stale_schemas(pool: &PgPool, now: u64) {
    let Ok(names) = sqlx::query_scalar::<_, String>(
        "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'es\\_test\\_%'",
    )
    .fetch_all(pool)
    .await
    else {
        return;
    };
    for name in names {
        let created = name
            .split('_')
            .nth(2)
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(now);
        if now.saturating_sub(created) > STALE_AFTER.as_secs()
            && let Ok(schema) = SchemaName::new(name)
        {
            let _ = sqlx::query(AssertSqlSafe(format!(
                "DROP SCHEMA IF EXISTS {} CASCADE",
                schema.quoted()
            )))
            .execute(pool)
            .await;
        }
    }
}
