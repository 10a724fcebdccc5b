//! A PostgreSQL schema of its own for each test, so tests run in parallel on one server.
//!
//! The server comes from `DATABASE_URL`, or the local default
//! `postgres://postgres@127.0.0.1:5432/postgres`. When no server answers, [`TestDatabase::new`]
//! panics with what to set: a test that needs PostgreSQL never passes silently without it.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
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
    /// Whether the schema was dropped already (by [`drop`](Self::drop)).
    dropped: bool,
}

/// Set to keep the schemas of failed tests for inspection (they are dropped otherwise).
pub const KEEP_SCHEMAS_VAR: &str = "ES_KEEP_TEST_SCHEMAS";

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
        if let Err(error) = store.migrate().await {
            // A half-migrated schema is left behind by no one.
            let _ = sqlx::query(AssertSqlSafe(format!(
                "DROP SCHEMA IF EXISTS {} CASCADE",
                schema.quoted()
            )))
            .execute(&pool)
            .await;
            panic!("migrating the test schema: {error:?}");
        }
        Self {
            pool,
            schema,
            store,
            dropped: false,
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

    /// Waits until readers can see every event committed in this schema so far: the
    /// transaction horizon (any older transaction open anywhere in the cluster, such as other
    /// tests') can hold back what was just appended. Checks that read "as of the horizon"
    /// (`stored_types`, `head`) see everything after this.
    ///
    /// # Panics
    /// When the horizon has not passed them within 60 s.
    pub async fn settle(&self) {
        use es_core::EventStore as _;
        let latest: Option<(i64, i64)> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT transaction_id, position FROM {}.events \
             ORDER BY transaction_id DESC, position DESC LIMIT 1",
            self.schema.quoted()
        )))
        .fetch_optional(&self.pool)
        .await
        .expect("reading the newest event");
        let Some((transaction, position)) = latest else {
            return;
        };
        let latest = crate::convert::position_from_columns(transaction, position);
        let started = std::time::Instant::now();
        while self.store.head().await.expect("reading the head") < latest {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(60),
                "the transaction horizon did not pass {latest} within 60 s"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// Drops the test's schema. A test that ends without calling this (it failed, or forgot)
    /// still has its schema dropped, when the `TestDatabase` is dropped, unless
    /// `ES_KEEP_TEST_SCHEMAS` is set, to keep a failed test's data for inspection.
    pub async fn drop(mut self) {
        self.dropped = true;
        let _ = sqlx::query(AssertSqlSafe(drop_schema(&self.schema)))
            .execute(&self.pool)
            .await;
        // Not `pool.close()`: it waits for every connection, including ones a still-living
        // follower's listener holds. The pool closes when its last clone is dropped.
    }
}

fn drop_schema(schema: &SchemaName) -> String {
    format!("DROP SCHEMA IF EXISTS {} CASCADE", schema.quoted())
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if self.dropped {
            return;
        }
        if std::env::var_os(KEEP_SCHEMAS_VAR).is_some() {
            eprintln!(
                "keeping test schema {} ({KEEP_SCHEMAS_VAR} is set)",
                self.schema
            );
            return;
        }
        run_detached(
            self.pool.connect_options().as_ref().clone(),
            drop_schema(&self.schema),
        );
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

/// A fresh row-tenancy store ([`crate::RowTenancy`]) for one test: its own schema with row
/// tenancy installed and tenants created, and a login role of the test's own (no superuser, no
/// `BYPASSRLS`) granted it, as which [`open`](Self::open) connects, as a tenant's service
/// would. Drops the schema and the role when dropped, pass or fail.
pub struct TestTenancy {
    /// The test's schema; its `store` has no tenant (the owner's view: every tenant's rows,
    /// as a superuser).
    pub db: TestDatabase,
    /// The owner's handle on the tenancy.
    pub tenancy: crate::RowTenancy,
    /// The service role's name.
    pub role: String,
    /// A pool connected as that role, naming no tenant.
    pub service: PgPool,
}

impl TestTenancy {
    /// A row-tenancy store with `tenants` created, and the service role.
    ///
    /// # Panics
    /// When no server answers, or setting up fails.
    pub async fn new(tenants: &[&str]) -> Self {
        let db = TestDatabase::new().await;
        let role = format!("{}_app", db.schema);
        let tenancy = crate::RowTenancy::new(db.pool.clone(), db.schema.as_str())
            .expect("test schema names are valid");
        tenancy.install().await.expect("installing row tenancy");
        for tenant in tenants {
            tenancy.create(tenant).await.expect("creating a tenant");
        }
        sqlx::raw_sql(AssertSqlSafe(format!(
            "CREATE ROLE \"{role}\" LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE"
        )))
        .execute(&db.pool)
        .await
        .expect("creating the service role");
        // From here on, dropping the fixture (a failed step panics) removes the role too.
        let mut fixture = Self {
            db,
            tenancy,
            role,
            service: PgPoolOptions::new().connect_lazy_with(PgConnectOptions::new()),
        };
        fixture
            .tenancy
            .grant(&fixture.role)
            .await
            .expect("granting");
        let options = fixture
            .db
            .pool
            .connect_options()
            .as_ref()
            .clone()
            .username(&fixture.role);
        fixture.service = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options)
            .await
            .expect("connecting as the service role");
        fixture
    }

    /// `tenant`'s store, connected as the service role.
    ///
    /// # Panics
    /// When it cannot be opened.
    pub async fn open(&self, tenant: &str) -> PgEventStore {
        crate::RowTenancy::new(self.service.clone(), self.db.schema.as_str())
            .expect("test schema names are valid")
            .open(tenant)
            .await
            .expect("opening a tenant's store")
    }
}

impl Drop for TestTenancy {
    fn drop(&mut self) {
        // The role owns what the tests' runners created in the schema: the schema goes first
        // (the TestDatabase, dropped after this), then what else the role owns, then the role.
        let statement = format!(
            "{}; DROP OWNED BY \"{role}\"; DROP ROLE IF EXISTS \"{role}\"",
            drop_schema(&self.db.schema),
            role = self.role
        );
        let options = self.db.pool.connect_options().as_ref().clone();
        run_detached(options, statement);
    }
}

/// Runs `statement` on a connection, thread and runtime of its own: a panicking test is
/// unwinding inside its runtime, whose connections may be gone.
fn run_detached(options: PgConnectOptions, statement: String) {
    let cleanup = std::thread::spawn(move || {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        runtime.block_on(async move {
            use sqlx::Connection;
            if let Ok(mut conn) = sqlx::PgConnection::connect_with(&options).await {
                let _ = sqlx::raw_sql(AssertSqlSafe(statement))
                    .execute(&mut conn)
                    .await;
                let _ = conn.close().await;
            }
        });
    });
    let _ = cleanup.join();
}

/// A PostgreSQL cluster of a test's own, on a free port, for tests that restart, break or
/// restore a server: never the shared server other tests use. Built with the server's own
/// tools (`initdb`, `pg_ctl`, found through `pg_config --bindir` or `PG_BIN`), run as the
/// `postgres` system user when the test runs as root (PostgreSQL refuses to run as root).
/// Stopped and removed when dropped.
pub struct TestCluster {
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    /// Its data directory.
    pub data_dir: std::path::PathBuf,
    bin_dir: std::path::PathBuf,
}

impl TestCluster {
    /// Creates and starts a cluster with `settings` added to its `postgresql.conf` (lines
    /// such as `max_prepared_transactions = 4`).
    ///
    /// # Panics
    /// When the PostgreSQL server tools are not installed or the cluster does not start, with
    /// what to install.
    pub fn start(settings: &[&str]) -> Self {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let bin_dir = pg_bin_dir();
        let port = free_port();
        let data_dir = std::env::temp_dir().join(format!(
            "es-cluster-{}-{}-{port}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&data_dir);
        std::fs::create_dir_all(&data_dir).expect("creating the cluster's directory");
        let cluster = Self {
            port,
            data_dir,
            bin_dir,
        };
        cluster.give_to_server_user(&cluster.data_dir);
        cluster.run(
            "initdb",
            &[
                "-D",
                &cluster.data_path(),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "--no-instructions",
            ],
        );
        let mut conf = format!(
            "\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             fsync = off\nfull_page_writes = off\nmax_connections = 100\n\
             shared_buffers = 32MB\n",
            cluster.data_path()
        );
        for setting in settings {
            conf.push_str(setting);
            conf.push('\n');
        }
        let conf_path = cluster.data_dir.join("postgresql.conf");
        let mut existing = std::fs::read_to_string(&conf_path).expect("reading postgresql.conf");
        existing.push_str(&conf);
        std::fs::write(&conf_path, existing).expect("writing postgresql.conf");
        cluster.give_to_server_user(&conf_path);
        cluster.pg_ctl(&["start", "-w", "-t", "60", "-l", &cluster.log_path()]);
        cluster
    }

    /// Starts a hot standby of this cluster on a free port, streaming from it: a base backup
    /// (`pg_basebackup -R`, which writes the connection to the primary), with `settings` added
    /// to its `postgresql.conf` (such as `max_standby_streaming_delay = 0`). Waits until it
    /// accepts read-only connections.
    ///
    /// # Panics
    /// When the backup or the start fails, with the tool's output.
    pub fn start_standby(&self, settings: &[&str]) -> Self {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let port = free_port();
        let data_dir = std::env::temp_dir().join(format!(
            "es-standby-{}-{}-{port}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&data_dir);
        let standby = Self {
            port,
            data_dir,
            bin_dir: self.bin_dir.clone(),
        };
        let primary_port = self.port.to_string();
        standby.run(
            "pg_basebackup",
            &[
                "-D",
                &standby.data_path(),
                "-h",
                "127.0.0.1",
                "-p",
                &primary_port,
                "-U",
                "postgres",
                "-R",
                "-X",
                "stream",
                "--no-sync",
            ],
        );
        // Later lines win: the copied configuration names the primary's port and socket
        // directory.
        let mut conf = format!(
            "\nport = {port}\nunix_socket_directories = '{}'\nhot_standby = on\n",
            standby.data_path()
        );
        for setting in settings {
            conf.push_str(setting);
            conf.push('\n');
        }
        let conf_path = standby.data_dir.join("postgresql.conf");
        let mut existing = std::fs::read_to_string(&conf_path).expect("reading postgresql.conf");
        existing.push_str(&conf);
        std::fs::write(&conf_path, existing).expect("writing postgresql.conf");
        standby.give_to_server_user(&conf_path);
        let _ = std::fs::remove_file(standby.data_dir.join("server.log"));
        standby.pg_ctl(&["start", "-w", "-t", "60", "-l", &standby.log_path()]);
        standby
    }

    /// The URL of database `postgres` on it.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops it (`fast`: disconnect clients and shut down cleanly; `immediate`: as a crash).
    pub fn stop(&self, mode: &str) {
        self.pg_ctl(&["stop", "-w", "-t", "60", "-m", mode]);
    }

    /// Starts it again after [`stop`](Self::stop).
    pub fn start_again(&self) {
        self.pg_ctl(&["start", "-w", "-t", "60", "-l", &self.log_path()]);
    }

    /// Restarts it (`fast` or `immediate`), waiting until it accepts connections again.
    pub fn restart(&self, mode: &str) {
        self.stop(mode);
        self.start_again();
    }

    /// The directory of the server tools it was built with.
    pub fn bin_dir(&self) -> &std::path::Path {
        &self.bin_dir
    }

    /// The server's log so far, for a failing test to show.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn data_path(&self) -> String {
        self.data_dir.display().to_string()
    }

    fn log_path(&self) -> String {
        self.data_dir.join("server.log").display().to_string()
    }

    fn pg_ctl(&self, args: &[&str]) {
        let data = self.data_path();
        let mut all = vec!["-D", data.as_str()];
        all.extend_from_slice(args);
        self.run("pg_ctl", &all);
    }

    /// A command running one of the server tools as the server's user.
    fn command(&self, tool: &str) -> std::process::Command {
        let program = self.bin_dir.join(tool);
        let mut command = if running_as_root() {
            let mut runuser = std::process::Command::new("runuser");
            runuser.args(["-u", "postgres", "--"]).arg(program);
            runuser
        } else {
            std::process::Command::new(program)
        };
        command.current_dir(std::env::temp_dir());
        command
    }

    /// Runs one of the server tools as the server's user, panicking with its output on failure.
    pub fn run(&self, tool: &str, args: &[&str]) -> String {
        let output = self
            .command(tool)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {tool}: {e}"));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            output.status.success(),
            "{tool} {args:?} failed: {text}\n{}",
            self.log()
        );
        text
    }

    fn give_to_server_user(&self, path: &std::path::Path) {
        if running_as_root() {
            let status = std::process::Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(path)
                .status()
                .expect("running chown");
            assert!(status.success(), "chown of {} failed", path.display());
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(&self.data_dir)
            .args(["stop", "-m", "immediate", "-w"])
            .output();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

fn running_as_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// The PostgreSQL server tools: `PG_BIN`, or what `pg_config --bindir` says.
fn pg_bin_dir() -> std::path::PathBuf {
    if let Ok(dir) = std::env::var("PG_BIN") {
        return dir.into();
    }
    let output = std::process::Command::new("pg_config")
        .arg("--bindir")
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run pg_config ({e}): tests that start their own PostgreSQL need the \
                 server tools (Debian: apt-get install postgresql), or PG_BIN set to their directory"
            )
        });
    let dir = std::path::PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    assert!(
        dir.join("initdb").exists(),
        "no initdb in {} (from pg_config --bindir): install the PostgreSQL server, or set PG_BIN",
        dir.display()
    );
    dir
}

/// A TCP port nothing listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding a free port")
}

/// A test database is a store in its own schema: handed to code that owns its store (the
/// conformance suite), it drops the schema when that code is done with it.
#[async_trait::async_trait]
impl es_core::EventStore for TestDatabase {
    async fn append(
        &self,
        stream: &es_core::StreamId,
        expected: es_core::ExpectedVersion,
        events: Vec<es_core::NewEvent>,
    ) -> Result<es_core::AppendResult, es_core::StoreError> {
        self.store.append(stream, expected, events).await
    }

    fn read_stream<'a>(
        &'a self,
        stream: &'a es_core::StreamId,
        from_version: u64,
    ) -> futures_core::stream::BoxStream<'a, Result<es_core::RecordedEvent, es_core::StoreError>>
    {
        self.store.read_stream(stream, from_version)
    }

    fn read_stream_range<'a>(
        &'a self,
        stream: &'a es_core::StreamId,
        from_version: u64,
        to_version: u64,
    ) -> futures_core::stream::BoxStream<'a, Result<es_core::RecordedEvent, es_core::StoreError>>
    {
        self.store
            .read_stream_range(stream, from_version, to_version)
    }

    async fn read_all(
        &self,
        after: es_core::Position,
        limit: usize,
    ) -> Result<Vec<es_core::RecordedEvent>, es_core::StoreError> {
        self.store.read_all(after, limit).await
    }

    async fn read_event(
        &self,
        event_id: uuid::Uuid,
    ) -> Result<Option<es_core::RecordedEvent>, es_core::StoreError> {
        self.store.read_event(event_id).await
    }

    async fn read_correlated(
        &self,
        correlation_id: uuid::Uuid,
        limit: usize,
    ) -> Result<Vec<es_core::RecordedEvent>, es_core::StoreError> {
        self.store.read_correlated(correlation_id, limit).await
    }

    async fn stream_version(
        &self,
        stream: &es_core::StreamId,
    ) -> Result<Option<u64>, es_core::StoreError> {
        self.store.stream_version(stream).await
    }

    async fn head(&self) -> Result<es_core::Position, es_core::StoreError> {
        self.store.head().await
    }
}

/// As for [`EventStore`](es_core::EventStore): the lifecycle conformance checks own their store.
#[async_trait::async_trait]
impl es_core::StreamLifecycle for TestDatabase {
    async fn delete_stream(
        &self,
        stream: &es_core::StreamId,
        expected: es_core::ExpectedVersion,
    ) -> Result<es_core::AppendResult, es_core::StoreError> {
        es_core::StreamLifecycle::delete_stream(&self.store, stream, expected).await
    }

    async fn recreate_stream(
        &self,
        stream: &es_core::StreamId,
        events: Vec<es_core::NewEvent>,
    ) -> Result<es_core::AppendResult, es_core::StoreError> {
        es_core::StreamLifecycle::recreate_stream(&self.store, stream, events).await
    }

    async fn truncate_before(
        &self,
        stream: &es_core::StreamId,
        before: u64,
    ) -> Result<u64, es_core::StoreError> {
        es_core::StreamLifecycle::truncate_before(&self.store, stream, before).await
    }
}
