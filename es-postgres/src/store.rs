//! The PostgreSQL event store.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use es_core::{
    AppendResult, ConflictError, EventStore, ExpectedVersion, NewEvent, Position, RecordedEvent,
    StoreError, StreamId, Upcasters, judge_repeat, validate_append,
};
use futures_core::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use sqlx::postgres::PgRow;
use sqlx::{AssertSqlSafe, Connection, PgConnection, PgExecutor, PgPool, Row};
use tracing::Instrument;
use uuid::Uuid;

use crate::convert::{position_from_columns, position_to_columns, to_i64};
use crate::error::{UNIQUE_VIOLATION, db_code, store_error};
use crate::row::{EVENT_COLUMNS, decode_event};
use crate::schema::{self, SchemaName};
use crate::wakeup::Wakeup;
use crate::{LogFollower, PgError, PgKeyStore};

/// How often at most a store wakes followers while appends happen.
const DEFAULT_WAKEUP_INTERVAL: Duration = Duration::from_millis(10);

/// The event store on PostgreSQL. Cheap to clone: clones share one pool and statement set.
///
/// Appends are one statement each (no explicit transaction, one round trip): a common table
/// expression moves the stream's version in `streams`, which locks that stream's row only, and
/// feeds one multi-row insert of all the append's events. The global log is read in
/// `(transaction_id, position)` order, only up to the oldest transaction still running, so a
/// reader never skips an event that commits late (see `ARCHITECTURE.md`).
#[derive(Clone)]
pub struct PgEventStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    schema: SchemaName,
    sql: Statements,
    wakeup: Arc<Wakeup>,
    upcasters: Arc<Upcasters>,
    keys: PgKeyStore,
    /// The tenant of a row-tenancy store ([`crate::RowTenancy`]): its pool's sessions name it.
    tenant: Option<Arc<str>>,
    /// What names the store apart from every other in metrics: the schema, and
    /// `schema/tenant` for a row tenant (neither may hold a `/`).
    scope: Arc<str>,
    /// Whether its sessions were found fit for the schema's tenancy (see
    /// `tenancy::check_session`).
    tenancy_checked: std::sync::atomic::AtomicBool,
}

/// Every statement of the store, built once with the schema name in it. The schema name is
/// the only non-parameter in any of them, and [`SchemaName`] admits plain identifiers only.
pub(crate) struct Statements {
    append_exact: Arc<str>,
    append_exists: Arc<str>,
    append_new: Arc<str>,
    append_any: Arc<str>,
    /// The same four for a single event, with scalar parameters: no arrays to encode and
    /// unnest, what most commands append.
    one_exact: Arc<str>,
    one_exists: Arc<str>,
    one_new: Arc<str>,
    one_any: Arc<str>,
    read_stream_range: Arc<str>,
    read_all: Arc<str>,
    events_by_id: Arc<str>,
    events_by_correlation: Arc<str>,
    stream_status: Arc<str>,
    head: Arc<str>,
    horizon: Arc<str>,
    /// Deleting, recreating, truncating and archive reads (see `lifecycle.rs`).
    pub(crate) lifecycle: crate::lifecycle::Statements,
}

impl Statements {
    fn new(schema: &SchemaName) -> Self {
        let s = schema.quoted();
        // The stream-moving statement (a CTE) returns the stream's new version and the
        // transaction id its events are ordered under: this transaction's own, or the one of
        // the stream's newest event when that is newer. A transaction that took its id early
        // (it wrote something first) and appends after a newer transaction committed to the
        // same stream would otherwise put its events before that one's in the global log.
        // Ordering them under the newer, committed id keeps the global order equal to the
        // version order within every stream, and stays gap-safe: a reader passes that id only
        // once the horizon is past it, when every older transaction, this one included, has
        // ended. The value is computed on the stream's row as locked, after any concurrent
        // append to it committed, so it holds under every interleaving.
        let append = |stream_cte: &str| -> Arc<str> {
            format!(
                "WITH s AS ({stream_cte}) \
                 INSERT INTO {s}.events (transaction_id, event_id, stream_id, stream_version, \
                     event_type, schema_version, correlation_id, causation_id, metadata, payload) \
                 SELECT s.transaction_id, e.event_id, $1, s.version - $2 + e.ord, e.event_type, \
                     e.schema_version, e.correlation_id, e.causation_id, e.metadata::json, \
                     e.payload::json \
                 FROM s, UNNEST($3::uuid[], $4::text[], $5::int4[], $6::uuid[], $7::uuid[], \
                     $8::text[], $9::text[]) WITH ORDINALITY \
                     AS e(event_id, event_type, schema_version, correlation_id, causation_id, \
                          metadata, payload, ord) \
                 RETURNING transaction_id, position, stream_version"
            )
            .into()
        };
        let one = |stream_cte: &str| -> Arc<str> {
            format!(
                "WITH s AS ({stream_cte}) \
                 INSERT INTO {s}.events (transaction_id, event_id, stream_id, stream_version, \
                     event_type, schema_version, correlation_id, causation_id, metadata, payload) \
                 SELECT s.transaction_id, $3, $1, s.version, $4, $5, $6, $7, $8::json, $9::json \
                 FROM s RETURNING transaction_id, position, stream_version"
            )
            .into()
        };
        let horizon = "pg_snapshot_xmin(pg_current_snapshot())::text::bigint";
        let xid = "pg_current_xact_id()::text::bigint";
        // Deleted and archived streams take no append: their rows match no update, and the
        // refusal is then told apart from a conflict (see `resolve_refusal`).
        let live = crate::lifecycle::LIVE;
        let exact = format!(
            "UPDATE {s}.streams SET version = version + $2, \
                 transaction_id = GREATEST(transaction_id, {xid}) \
             WHERE stream_id = $1 AND version = $10 AND {live} RETURNING version, transaction_id"
        );
        let exists = format!(
            "UPDATE {s}.streams SET version = version + $2, \
                 transaction_id = GREATEST(transaction_id, {xid}) \
             WHERE stream_id = $1 AND {live} RETURNING version, transaction_id"
        );
        let new = format!(
            "INSERT INTO {s}.streams (stream_id, version, transaction_id) \
             VALUES ($1, $2, {xid}) RETURNING version, transaction_id"
        );
        let any = format!(
            "INSERT INTO {s}.streams AS t (stream_id, version, transaction_id) \
             VALUES ($1, $2, {xid}) \
             ON CONFLICT ON CONSTRAINT streams_pkey DO UPDATE SET version = t.version + EXCLUDED.version, \
                 transaction_id = GREATEST(t.transaction_id, EXCLUDED.transaction_id) \
             WHERE t.deleted_at IS NULL AND t.archived_at IS NULL \
             RETURNING version, transaction_id"
        );
        // A deleted (or absent) stream takes a recreation; reads of it start at its tombstone,
        // the stream's last version before the recreation.
        let recreate = format!(
            "INSERT INTO {s}.streams AS t (stream_id, version, transaction_id) \
             VALUES ($1, $2, {xid}) \
             ON CONFLICT ON CONSTRAINT streams_pkey DO UPDATE SET version = t.version + EXCLUDED.version, \
                 transaction_id = GREATEST(t.transaction_id, EXCLUDED.transaction_id), \
                 deleted_at = NULL, truncated_before = t.version \
             WHERE t.deleted_at IS NOT NULL AND t.archived_at IS NULL \
             RETURNING version, transaction_id"
        );
        Self {
            lifecycle: crate::lifecycle::Statements::new(schema, append(&recreate), one(&recreate)),
            one_exact: one(&exact),
            one_exists: one(&exists),
            one_new: one(&new),
            one_any: one(&any),
            append_exact: append(&exact),
            append_exists: append(&exists),
            append_new: append(&new),
            append_any: append(&any),
            // One page of a stream, from its truncation point on, nothing of a deleted or
            // archived stream; every row (and a row of nulls when there is no event) carries
            // the stream's row, so an empty page needs no second round trip to say why.
            read_stream_range: format!(
                "SELECT e.*, st.version, st.deleted_at IS NOT NULL, st.archived_at IS NOT NULL, \
                     st.truncated_before \
                 FROM (SELECT $1::text AS sid) p \
                 LEFT JOIN {s}.streams st ON st.stream_id = p.sid \
                 LEFT JOIN LATERAL (SELECT {EVENT_COLUMNS} FROM {s}.events \
                     WHERE stream_id = p.sid AND stream_version BETWEEN $2 AND $3 \
                       AND st.deleted_at IS NULL AND st.archived_at IS NULL \
                       AND stream_version >= COALESCE(st.truncated_before, 1) \
                     ORDER BY stream_version) e ON true \
                 ORDER BY e.stream_version"
            )
            .into(),
            // The horizon is taken once per statement (an init plan), not per row.
            read_all: format!(
                "SELECT {EVENT_COLUMNS} FROM {s}.events \
                 WHERE (transaction_id, position) > ($1, $2) \
                   AND transaction_id < (SELECT {horizon}) \
                 ORDER BY transaction_id, position LIMIT $3"
            )
            .into(),
            events_by_id: format!(
                "SELECT {EVENT_COLUMNS} FROM {s}.events WHERE event_id = ANY($1)"
            )
            .into(),
            events_by_correlation: format!(
                "SELECT {EVENT_COLUMNS} FROM {s}.events WHERE correlation_id = $1 \
                 ORDER BY transaction_id, position LIMIT $2"
            )
            .into(),
            stream_status: format!(
                "SELECT version, deleted_at IS NOT NULL, archived_at IS NOT NULL, \
                     truncated_before FROM {s}.streams WHERE stream_id = $1"
            )
            .into(),
            head: format!(
                "SELECT transaction_id, position FROM {s}.events \
                 WHERE transaction_id < (SELECT {horizon}) \
                 ORDER BY transaction_id DESC, position DESC LIMIT 1"
            )
            .into(),
            // Writers are transactions holding an id: running ones (their start time is
            // visible to superusers and members of pg_read_all_stats only) and prepared ones.
            horizon: format!(
                "SELECT h.xmin, \
                   (SELECT extract(epoch FROM clock_timestamp() - min(w.t))::float8 FROM ( \
                      SELECT xact_start AS t FROM pg_stat_activity \
                      WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid() \
                      UNION ALL SELECT prepared FROM pg_prepared_xacts) w), \
                   (SELECT count(*) FROM {s}.events WHERE transaction_id >= h.xmin), \
                   (SELECT extract(epoch FROM clock_timestamp() - min(recorded_at))::float8 \
                      FROM {s}.events WHERE transaction_id >= h.xmin), \
                   (SELECT pid FROM pg_stat_activity \
                      WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid() \
                      ORDER BY age(backend_xid) DESC LIMIT 1), \
                   (SELECT count(*) FROM pg_prepared_xacts) \
                 FROM (SELECT {horizon} AS xmin) h"
            )
            .into(),
        }
    }
}

/// How far readers of the global log are held back, for monitoring.
///
/// Readers only see events of transactions older than every transaction still running in the
/// cluster, so one long-running writing transaction anywhere delays every reader. Alert when
/// `held_back_for` (or `oldest_writer_age`) grows past what your projections can tolerate.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct Horizon {
    /// The oldest transaction id still running: readers see events of older transactions only.
    pub xmin: u64,
    /// How long the oldest transaction that holds a transaction id (running, or prepared for
    /// two-phase commit) has been running. `None` when no other transaction holds one, or when
    /// this role may not see other sessions' start times (grant it `pg_read_all_stats`).
    pub oldest_writer_age: Option<Duration>,
    /// The server process of the oldest running transaction that holds an id, when one does:
    /// `pg_stat_activity` tells what it is, `pg_terminate_backend` ends it.
    pub oldest_writer_pid: Option<i32>,
    /// Transactions prepared for two-phase commit and not yet committed or rolled back: each
    /// holds the horizon until it is resolved, surviving restarts.
    pub prepared_transactions: u64,
    /// Committed events readers cannot see yet, because an older transaction is still running.
    pub held_back_events: u64,
    /// How long ago the oldest of those was recorded: how long readers have been held back.
    /// Visible to every role.
    pub held_back_for: Option<Duration>,
}

impl PgEventStore {
    /// A store in the default schema `es` of `pool`'s database. Call [`migrate`](Self::migrate)
    /// once before use.
    pub fn new(pool: PgPool) -> Self {
        Self::in_schema(pool, SchemaName::default())
    }

    /// A store in the schema `schema`, which must be a plain identifier (see [`SchemaName`]).
    pub fn with_schema(pool: PgPool, schema: &str) -> Result<Self, PgError> {
        Ok(Self::in_schema(pool, SchemaName::new(schema)?))
    }

    /// A store in the validated schema `schema`.
    pub fn in_schema(pool: PgPool, schema: SchemaName) -> Self {
        Self::build(
            pool,
            schema,
            None,
            DEFAULT_WAKEUP_INTERVAL,
            Arc::new(Upcasters::new()),
        )
    }

    /// The store of `tenant` in a row-tenancy schema, over a pool whose sessions name it.
    pub(crate) fn of_tenant(pool: PgPool, schema: SchemaName, tenant: &str) -> Self {
        Self::build(
            pool,
            schema,
            Some(tenant.into()),
            DEFAULT_WAKEUP_INTERVAL,
            Arc::new(Upcasters::new()),
        )
    }

    fn build(
        pool: PgPool,
        schema: SchemaName,
        tenant: Option<Arc<str>>,
        wakeup_interval: Duration,
        upcasters: Arc<Upcasters>,
    ) -> Self {
        let sql = Statements::new(&schema);
        let wakeup = Arc::new(Wakeup::new(schema.channel(), wakeup_interval));
        let keys = PgKeyStore::new(pool.clone(), &schema);
        let scope = match &tenant {
            Some(tenant) => format!("{schema}/{tenant}").into(),
            None => schema.as_str().into(),
        };
        Self {
            inner: Arc::new(Inner {
                pool,
                schema,
                sql,
                wakeup,
                upcasters,
                keys,
                tenant,
                scope,
                tenancy_checked: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    /// The same store (schema, tenant, upcasters) read through `pool`, a pool on another server
    /// of the same database (a hot standby): a row tenant's sessions there name the tenant too.
    pub(crate) fn on_pool(&self, pool: PgPool) -> Self {
        let pool = match &self.inner.tenant {
            Some(tenant) => crate::tenancy::tenant_pool(&pool, tenant),
            None => pool,
        };
        Self::build(
            pool,
            self.inner.schema.clone(),
            self.inner.tenant.clone(),
            self.inner.wakeup.interval(),
            Arc::clone(&self.inner.upcasters),
        )
    }

    /// Wakes followers at most once per `interval` while appends happen (default 10 ms): the
    /// bound on how long a live follower in another process may wait for a new event, when
    /// the notification arrives. Shorter costs more tiny transactions; appends never wait.
    pub fn with_wakeup_interval(self, interval: Duration) -> Self {
        Self::build(
            self.inner.pool.clone(),
            self.inner.schema.clone(),
            self.inner.tenant.clone(),
            interval,
            Arc::clone(&self.inner.upcasters),
        )
    }

    /// Registers the application's upcasters in one place: repositories, projection runners
    /// and saga runners made over this store lift old events through them (see
    /// [`EventStore::upcasters`]). Validate the registry at start-up with
    /// [`Upcasters::validate`].
    pub fn with_upcasters(self, upcasters: Arc<Upcasters>) -> Self {
        Self::build(
            self.inner.pool.clone(),
            self.inner.schema.clone(),
            self.inner.tenant.clone(),
            self.inner.wakeup.interval(),
            upcasters,
        )
    }

    /// Tells followers (in this process and others) that new events may be readable. Appends
    /// do it by themselves; call it after committing a transaction in which
    /// [`append_in`](Self::append_in) appended, so followers need not wait for their poll
    /// interval to see those events.
    pub fn wake_followers(&self) {
        self.inner.wakeup.signal(&self.inner.pool);
    }

    /// Connects a pool of up to 10 connections to `url`, and migrates the default schema.
    /// A server that is not there, a missing database or a refused login fails at once, with
    /// the reason ([`PgError::Connect`]).
    pub async fn connect(url: &str) -> Result<Self, PgError> {
        let store = Self::new(crate::connect_pool(url, 10).await?);
        store.migrate().await?;
        Ok(store)
    }

    /// Where the store's schema stands against this release's migrations, changing nothing:
    /// what read-only tools check instead of migrating, so that they never create a schema.
    pub async fn migration_state(&self) -> Result<crate::MigrationState, PgError> {
        schema::migration_state(&self.inner.pool, &self.inner.schema).await
    }

    /// Whether the store's schema exists (has been migrated at least once).
    pub async fn exists(&self) -> Result<bool, PgError> {
        Ok(self.migration_state().await? != crate::MigrationState::Missing)
    }

    /// Creates the schema and applies pending migrations. Idempotent; safe to run from several
    /// processes at once.
    pub async fn migrate(&self) -> Result<(), PgError> {
        schema::migrate(&self.inner.pool, &self.inner.schema).await
    }

    /// The connection pool.
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// The schema the store lives in.
    pub fn schema(&self) -> &SchemaName {
        &self.inner.schema
    }

    /// The tenant whose rows this store reads and writes, for a store opened by
    /// [`RowTenancy::open`](crate::RowTenancy::open); `None` for a store of its own schema.
    pub fn tenant(&self) -> Option<&str> {
        self.inner.tenant.as_deref()
    }

    /// The schema, and `schema/tenant` for a row tenant: the `schema` label of the store's
    /// metrics, which keeps two tenants' series apart.
    pub fn scope(&self) -> &str {
        &self.inner.scope
    }

    /// Refuses a session that would mix the tenants of a row-tenancy schema (see
    /// `tenancy::check_session`); checked once per store.
    pub(crate) async fn check_tenancy(&self, conn: &mut sqlx::PgConnection) -> Result<(), PgError> {
        crate::tenancy::check_session(self, conn, &self.inner.tenancy_checked).await
    }

    /// The store's statements.
    pub(crate) fn statements(&self) -> &Statements {
        &self.inner.sql
    }

    /// A follower of the global log from `after`: it catches up, then waits for new events,
    /// woken by notifications and polling as a fallback.
    pub fn follow(&self, after: Position) -> LogFollower {
        LogFollower::new(self.clone(), after)
    }

    pub(crate) fn keys(&self) -> &PgKeyStore {
        &self.inner.keys
    }

    /// Appends within the caller's transaction (or on a plain connection), so events can commit
    /// atomically with other writes: a saga's state, an outbox row, a read model.
    ///
    /// The append runs in a savepoint: when it is refused, the caller's transaction stays
    /// usable. Same guarantees and errors as [`EventStore::append`]; the events become visible
    /// when the caller commits.
    pub async fn append_in(
        &self,
        conn: &mut PgConnection,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        let span = append_span(stream, &events);
        let (started, count) = (Instant::now(), events.len());
        let result = self
            .append_in_untimed(conn, stream, expected, events)
            .instrument(span)
            .await;
        crate::telemetry::append_done(self.scope(), &result, count, started.elapsed());
        result
    }

    async fn append_in_untimed(
        &self,
        conn: &mut PgConnection,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        validate_append(stream, &events)?;
        if events.is_empty() {
            return self.check_only(&mut *conn, stream, expected).await;
        }
        let sealed = self.sealed(Some(&mut *conn), stream, &events).await?;
        let writing = sealed.as_deref().unwrap_or(&events);
        let mut savepoint = conn.begin().await.map_err(store_error)?;
        match self
            .try_append(&mut *savepoint, stream, expected, writing)
            .await
        {
            Ok(Some(result)) => {
                savepoint.commit().await.map_err(store_error)?;
                // Early, as the caller has not committed yet: a follower woken before the
                // commit re-reads with a short backoff; `wake_followers` after the commit is
                // the prompt way.
                self.wake_followers();
                Ok(result)
            }
            Ok(None) => {
                savepoint.rollback().await.map_err(store_error)?;
                self.resolve_refusal(&mut *conn, stream, expected, &events)
                    .await
            }
            Err(err) => {
                let _ = savepoint.rollback().await;
                Err(err)
            }
        }
    }

    /// How far readers of the global log are held back; see [`Horizon`].
    pub async fn horizon(&self) -> Result<Horizon, StoreError> {
        let row = sqlx::query(AssertSqlSafe(self.inner.sql.horizon.clone()))
            .fetch_one(&self.inner.pool)
            .await
            .map_err(store_error)?;
        use crate::convert::seconds;
        let xmin: i64 = row.try_get(0).map_err(store_error)?;
        let age: Option<f64> = row.try_get(1).map_err(store_error)?;
        let held_back: i64 = row.try_get(2).map_err(store_error)?;
        let held_back_for: Option<f64> = row.try_get(3).map_err(store_error)?;
        let pid: Option<i32> = row.try_get(4).map_err(store_error)?;
        let prepared: i64 = row.try_get(5).map_err(store_error)?;
        Ok(Horizon {
            xmin: xmin.max(0) as u64,
            oldest_writer_age: seconds(age),
            oldest_writer_pid: pid,
            prepared_transactions: prepared.max(0) as u64,
            held_back_events: held_back.max(0) as u64,
            held_back_for: seconds(held_back_for),
        })
    }

    /// Sets the store's gauges: the head of the global log and the transaction horizon
    /// (events held back, how long, the oldest open transaction's age); see
    /// [`es_core::telemetry`]. A scrape handler or a timer calls it.
    pub async fn observe(&self) -> Result<Horizon, StoreError> {
        use crate::telemetry::{gauge, seconds};
        use es_core::telemetry as names;
        let head = self.head().await?;
        let horizon = self.horizon().await?;
        let labels = [metrics::Label::new("schema", self.scope().to_owned())];
        gauge(names::LOG_HEAD, &labels, head.sequence as f64);
        gauge(
            names::HORIZON_HELD_BACK_EVENTS,
            &labels,
            horizon.held_back_events as f64,
        );
        gauge(
            names::HORIZON_HELD_BACK_SECONDS,
            &labels,
            seconds(horizon.held_back_for),
        );
        gauge(
            names::HORIZON_OLDEST_TRANSACTION_SECONDS,
            &labels,
            seconds(horizon.oldest_writer_age),
        );
        Ok(horizon)
    }

    /// Runs the append statement. `Ok(None)`: refused by the expected version or by an event id
    /// already stored; nothing written, and the caller finds out which.
    async fn try_append<'c>(
        &self,
        executor: impl PgExecutor<'c>,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> Result<Option<AppendResult>, StoreError> {
        let sql = &self.inner.sql;
        let single = events.len() == 1;
        let (statement, exact) = match (expected, single) {
            (ExpectedVersion::Exact(0) | ExpectedVersion::NoStream, false) => {
                (&sql.append_new, None)
            }
            (ExpectedVersion::Exact(0) | ExpectedVersion::NoStream, true) => (&sql.one_new, None),
            (ExpectedVersion::Exact(n), false) => (&sql.append_exact, Some(n)),
            (ExpectedVersion::Exact(n), true) => (&sql.one_exact, Some(n)),
            (ExpectedVersion::StreamExists, false) => (&sql.append_exists, None),
            (ExpectedVersion::StreamExists, true) => (&sql.one_exists, None),
            (ExpectedVersion::Any, false) => (&sql.append_any, None),
            (ExpectedVersion::Any, true) => (&sql.one_any, None),
        };
        self.try_write(executor, stream, statement, exact, events)
            .await
    }

    /// Runs `statement`, one of the append statements (parameters: stream, count, the events'
    /// columns, and `exact` when given). `Ok(None)`: refused, nothing written.
    pub(crate) async fn try_write<'c>(
        &self,
        executor: impl PgExecutor<'c>,
        stream: &StreamId,
        statement: &Arc<str>,
        exact: Option<u64>,
        events: &[NewEvent],
    ) -> Result<Option<AppendResult>, StoreError> {
        let columns;
        let mut query = sqlx::query(AssertSqlSafe(statement.clone()))
            .bind(stream.as_str())
            .bind(events.len() as i64);
        if let [event] = events {
            query = query
                .bind(event.event_id)
                .bind(event.event_type.as_str())
                .bind(schema_version(event))
                .bind(event.correlation_id)
                .bind(event.causation_id)
                .bind(event.metadata.as_json())
                .bind(event.payload.get());
        } else {
            columns = Columns::of(events);
            query = query
                .bind(&columns.event_ids)
                .bind(&columns.event_types)
                .bind(&columns.schema_versions)
                .bind(&columns.correlation_ids)
                .bind(&columns.causation_ids)
                .bind(&columns.metadata)
                .bind(&columns.payloads);
        }
        if let Some(n) = exact {
            query = query.bind(to_i64(n));
        }
        match query.fetch_all(executor).await {
            Ok(rows) if rows.is_empty() => Ok(None),
            Ok(rows) => appended(&rows).map(Some),
            Err(err) => match db_code(&err) {
                Some((code, Some(constraint)))
                    if code == UNIQUE_VIOLATION
                        && matches!(
                            constraint.as_str(),
                            "streams_pkey" | "events_event_id_key" | "events_stream_version_key"
                        ) =>
                {
                    Ok(None)
                }
                _ => Err(store_error(err)),
            },
        }
    }

    /// [`EventStore::append`] without its span and metrics.
    async fn append_pooled(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        validate_append(stream, &events)?;
        if events.is_empty() {
            return self.check_only(&self.inner.pool, stream, expected).await;
        }
        let sealed = self.sealed(None, stream, &events).await?;
        let writing = sealed.as_deref().unwrap_or(&events);
        // A refusal is rare; only then is a second round trip spent finding out why. An `Any`
        // append refused by an id whose writer then rolled back is simply tried again.
        for _ in 0..3 {
            if let Some(result) = self
                .try_append(&self.inner.pool, stream, expected, writing)
                .await?
            {
                self.wake_followers();
                return Ok(result);
            }
            let mut conn = self.inner.pool.acquire().await.map_err(store_error)?;
            match self
                .resolve_refusal(&mut conn, stream, expected, &events)
                .await
            {
                Err(StoreError::Conflict(_)) if expected == ExpectedVersion::Any => continue,
                other => return other,
            }
        }
        Err(StoreError::Backend {
            source: format!("append to {stream} was refused three times without a cause").into(),
            transient: true,
        })
    }

    /// A stream's events from `from` to `to`, read a page at a time on one connection held for
    /// the stream's life, each page's sealed fields opened on that same connection (no second
    /// one from the pool: many loads at once cannot starve each other). A row that does not
    /// decode ends the stream with its error, after the events before it.
    fn read_pages<'a>(
        &'a self,
        stream: &'a StreamId,
        from: u64,
        to: u64,
    ) -> BoxStream<'a, Result<RecordedEvent, StoreError>> {
        const PAGE: u64 = 1024;
        struct Pages {
            next: u64,
            done: bool,
            /// Whether no row was read yet: an empty first page asks the stream's row why.
            first: bool,
            conn: Option<sqlx::pool::PoolConnection<sqlx::Postgres>>,
        }
        let start = Pages {
            next: from.max(1),
            done: false,
            first: true,
            conn: None,
        };
        futures_util::stream::try_unfold(start, move |mut pages| async move {
            if pages.done || pages.next > to {
                return Ok::<_, StoreError>(None);
            }
            let conn = match pages.conn.as_mut() {
                Some(conn) => conn,
                None => pages
                    .conn
                    .insert(self.inner.pool.acquire().await.map_err(store_error)?),
            };
            let last = to.min(pages.next.saturating_add(PAGE - 1));
            let mut rows = sqlx::query(AssertSqlSafe(self.inner.sql.read_stream_range.clone()))
                .bind(stream.as_str())
                .bind(to_i64(pages.next))
                .bind(to_i64(last))
                .fetch_all(&mut **conn)
                .await
                .map_err(store_error)?;
            // A page without events is one row of nulls beside the stream's row.
            let status = match rows.first() {
                Some(row) => page_status(row, stream)?,
                None => None,
            };
            if rows.len() == 1
                && rows[0]
                    .try_get::<Option<i64>, _>(1)
                    .map_err(store_error)?
                    .is_none()
            {
                rows.clear();
            }
            if rows.is_empty() && pages.first {
                // The statement reads nothing of a deleted or archived stream, nor before its
                // truncation point: say which, or go on from the truncation point.
                pages.first = false;
                let Some(status) = status else {
                    return Ok(None);
                };
                status.live(stream)?;
                let before = status.truncated_before;
                if pages.next < before && before <= to {
                    pages.next = before;
                    return Ok(Some((Vec::new(), pages)));
                }
                if pages.next <= to && to < before {
                    return Err(StoreError::StreamTruncated {
                        stream: stream.clone(),
                        before,
                    });
                }
                return Ok(None);
            }
            pages.first = false;
            // Versions are gap-free from the truncation point on: the page is full when it
            // reaches its last version.
            let full = rows.len() as u64 == last - pages.next + 1
                || rows
                    .last()
                    .and_then(|row| row.try_get::<i64, _>(4).ok())
                    .is_some_and(|version| version == to_i64(last));
            let mut events = Vec::with_capacity(rows.len());
            let mut failed = None;
            for row in &rows {
                match decode_event(row) {
                    Ok(event) => events.push(event),
                    Err(error) => {
                        failed = Some(error);
                        break;
                    }
                }
            }
            if let Err(error) = self.reveal_on(conn, &mut events).await {
                failed = Some(error);
                events.clear();
            }
            pages.next = last.saturating_add(1);
            pages.done = !full || failed.is_some() || last == u64::MAX;
            let page: Vec<Result<RecordedEvent, StoreError>> =
                events.into_iter().map(Ok).chain(failed.map(Err)).collect();
            Ok(Some((page, pages)))
        })
        .map_ok(futures_util::stream::iter)
        .try_flatten()
        .boxed()
    }

    /// After a refused append: a repeat of an earlier append, a reused id, or a conflict.
    async fn resolve_refusal(
        &self,
        conn: &mut PgConnection,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> Result<AppendResult, StoreError> {
        if let Some(repeat) = self.repeat_of(&mut *conn, stream, events).await? {
            return Ok(repeat);
        }
        let actual = self.version_on(&mut *conn, stream).await?;
        Err(ConflictError {
            stream: stream.clone(),
            expected,
            actual,
        }
        .into())
    }

    /// Whether a refused write of `events` repeats an earlier one: its result when it does,
    /// `None` when none of the ids is stored, [`StoreError::EventIdReused`] for another reuse.
    pub(crate) async fn repeat_of(
        &self,
        conn: &mut PgConnection,
        stream: &StreamId,
        events: &[NewEvent],
    ) -> Result<Option<AppendResult>, StoreError> {
        let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
        let stored = sqlx::query(AssertSqlSafe(self.inner.sql.events_by_id.clone()))
            .bind(&ids)
            .fetch_all(&mut *conn)
            .await
            .map_err(store_error)?
            .iter()
            .map(decode_event)
            .collect::<Result<Vec<_>, _>>()?;
        // Sealed fields differ at every sealing (fresh nonces): a repeat is judged on what
        // they hold.
        let mut stored = stored;
        self.reveal_on(&mut *conn, &mut stored).await?;
        // A subject forgotten since the first append: its fields read redacted now, and the
        // repeat is judged on the others.
        let compared: Vec<NewEvent> = events
            .iter()
            .map(|event| {
                stored
                    .iter()
                    .find(|s| s.event_id == event.event_id)
                    .and_then(|s| es_core::personal::redacted_like(event, s))
                    .unwrap_or_else(|| event.clone())
            })
            .collect();
        judge_repeat(stream, &compared, &stored)
    }

    async fn check_only<'c>(
        &self,
        executor: impl PgExecutor<'c>,
        stream: &StreamId,
        expected: ExpectedVersion,
    ) -> Result<AppendResult, StoreError> {
        let actual = self.version_on(executor, stream).await?;
        if !expected.accepts(actual) {
            return Err(ConflictError {
                stream: stream.clone(),
                expected,
                actual,
            }
            .into());
        }
        let current = actual.unwrap_or(0);
        Ok(AppendResult {
            first_version: current + 1,
            last_version: current,
            positions: Vec::new(),
            deduplicated: false,
        })
    }

    /// The stream's version, refusing a deleted or archived stream.
    async fn version_on<'c>(
        &self,
        executor: impl PgExecutor<'c>,
        stream: &StreamId,
    ) -> Result<Option<u64>, StoreError> {
        let status = self.status_on(executor, stream).await?;
        status.map(|s| s.live(stream)).transpose()
    }

    /// The stream's row: version and lifecycle; `None` when the stream does not exist.
    pub(crate) async fn status_on<'c>(
        &self,
        executor: impl PgExecutor<'c>,
        stream: &StreamId,
    ) -> Result<Option<StreamStatus>, StoreError> {
        let row: Option<(i64, bool, bool, i64)> =
            sqlx::query_as(AssertSqlSafe(self.inner.sql.stream_status.clone()))
                .bind(stream.as_str())
                .fetch_optional(executor)
                .await
                .map_err(store_error)?;
        row.map(|(version, deleted, archived, truncated_before)| {
            StreamStatus::from_row(stream, version, deleted, archived, truncated_before)
        })
        .transpose()
    }
}

/// The stream's row as a page of `read_stream_range` carries it (after the event columns);
/// `None` when the stream has no row.
fn page_status(row: &PgRow, stream: &StreamId) -> Result<Option<StreamStatus>, StoreError> {
    const AT: usize = 12;
    let version: Option<i64> = row.try_get(AT).map_err(store_error)?;
    let Some(version) = version else {
        return Ok(None);
    };
    let deleted: bool = row.try_get(AT + 1).map_err(store_error)?;
    let archived: bool = row.try_get(AT + 2).map_err(store_error)?;
    let truncated_before: i64 = row.try_get(AT + 3).map_err(store_error)?;
    StreamStatus::from_row(stream, version, deleted, archived, truncated_before).map(Some)
}

/// A stream's row in `streams`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct StreamStatus {
    pub(crate) version: u64,
    pub(crate) deleted: bool,
    pub(crate) archived: bool,
    pub(crate) truncated_before: u64,
}

impl StreamStatus {
    /// From the columns of a `streams` row; a negative version is a malformed row.
    fn from_row(
        stream: &StreamId,
        version: i64,
        deleted: bool,
        archived: bool,
        truncated_before: i64,
    ) -> Result<Self, StoreError> {
        let version = u64::try_from(version).map_err(|_| StoreError::Malformed {
            event_id: None,
            position: None,
            field: "streams.version",
            reason: format!("stream {stream} is at negative version {version}"),
        })?;
        Ok(Self {
            version,
            deleted,
            archived,
            truncated_before: truncated_before.max(1) as u64,
        })
    }

    /// The version of a live stream; the typed refusal for a deleted or archived one.
    pub(crate) fn live(&self, stream: &StreamId) -> Result<u64, StoreError> {
        if self.archived {
            return Err(StoreError::StreamArchived {
                stream: stream.clone(),
            });
        }
        if self.deleted {
            return Err(StoreError::StreamDeleted {
                stream: stream.clone(),
            });
        }
        Ok(self.version)
    }
}

/// The span of one append: the stream, how many events, and the correlation and causation of
/// the first (a command's events share them).
fn append_span(stream: &StreamId, events: &[NewEvent]) -> tracing::Span {
    let first = events.first();
    tracing::info_span!(
        "append",
        stream = %stream,
        events = events.len(),
        correlation_id = first.map(|e| tracing::field::display(e.correlation_id)),
        causation_id = first.and_then(|e| e.causation_id).map(tracing::field::display),
    )
}

impl std::fmt::Debug for PgEventStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgEventStore")
            .field("schema", &self.inner.schema)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl EventStore for PgEventStore {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        let span = append_span(stream, &events);
        let (started, count) = (Instant::now(), events.len());
        let result = self
            .append_pooled(stream, expected, events)
            .instrument(span)
            .await;
        crate::telemetry::append_done(self.scope(), &result, count, started.elapsed());
        result
    }

    fn read_stream<'a>(
        &'a self,
        stream: &'a StreamId,
        from_version: u64,
    ) -> BoxStream<'a, Result<RecordedEvent, StoreError>> {
        self.read_pages(stream, from_version, u64::MAX)
    }

    fn read_stream_range<'a>(
        &'a self,
        stream: &'a StreamId,
        from_version: u64,
        to_version: u64,
    ) -> BoxStream<'a, Result<RecordedEvent, StoreError>> {
        self.read_pages(stream, from_version, to_version)
    }

    async fn read_all(
        &self,
        after: Position,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let (transaction, sequence) = position_to_columns(after);
        let mut rows = sqlx::query(AssertSqlSafe(self.inner.sql.read_all.clone()))
            .bind(transaction)
            .bind(sequence)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch(&self.inner.pool);
        // Rows are decoded as they arrive, while the server sends the next ones. A row that
        // does not decode ends the batch: the events before it are returned, and the next
        // read, starting at it, fails naming its position, so a reader can hand that one
        // event to its error policy and resume after it.
        let mut events = Vec::with_capacity(limit.min(1024));
        while let Some(row) = rows.try_next().await.map_err(store_error)? {
            match decode_event(&row) {
                Ok(event) => events.push(event),
                Err(error) if events.is_empty() => return Err(error),
                Err(_) => break,
            }
        }
        // The connection goes back to the pool before keys are looked up on another.
        drop(rows);
        // The same for a sealed field that does not open: the batch ends before its event
        // (events are opened in order, and those before it already are).
        if let Err(error) = self.reveal(&mut events).await {
            let bad = match &error {
                StoreError::Malformed {
                    event_id: Some(id), ..
                } => events.iter().position(|e| e.event_id == *id),
                _ => None,
            };
            match bad {
                Some(index) if index > 0 => events.truncate(index),
                _ => return Err(error),
            }
        }
        Ok(events)
    }

    /// The stored event with id `event_id`, if any.
    async fn read_event(&self, event_id: uuid::Uuid) -> Result<Option<RecordedEvent>, StoreError> {
        let rows = sqlx::query(AssertSqlSafe(self.inner.sql.events_by_id.clone()))
            .bind(vec![event_id])
            .fetch_all(&self.inner.pool)
            .await
            .map_err(store_error)?;
        match rows.first().map(decode_event).transpose()? {
            Some(event) => {
                let mut one = [event];
                self.reveal(&mut one).await?;
                let [event] = one;
                Ok(Some(event))
            }
            None => Ok(None),
        }
    }

    async fn read_correlated(
        &self,
        correlation_id: Uuid,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let mut events = sqlx::query(AssertSqlSafe(self.inner.sql.events_by_correlation.clone()))
            .bind(correlation_id)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.inner.pool)
            .await
            .map_err(store_error)?
            .iter()
            .map(decode_event)
            .collect::<Result<Vec<_>, _>>()?;
        self.reveal(&mut events).await?;
        Ok(events)
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<Option<u64>, StoreError> {
        self.version_on(&self.inner.pool, stream).await
    }

    fn upcasters(&self) -> Arc<Upcasters> {
        Arc::clone(&self.inner.upcasters)
    }

    async fn head(&self) -> Result<Position, StoreError> {
        let row: Option<(i64, i64)> = sqlx::query_as(AssertSqlSafe(self.inner.sql.head.clone()))
            .fetch_optional(&self.inner.pool)
            .await
            .map_err(store_error)?;
        Ok(row.map_or(Position::START, |(t, p)| position_from_columns(t, p)))
    }
}

/// An append's events as one array per column, bound to `UNNEST`.
struct Columns<'a> {
    event_ids: Vec<Uuid>,
    event_types: Vec<&'a str>,
    schema_versions: Vec<i32>,
    correlation_ids: Vec<Uuid>,
    causation_ids: Vec<Option<Uuid>>,
    metadata: Vec<&'a str>,
    payloads: Vec<&'a str>,
}

impl<'a> Columns<'a> {
    fn of(events: &'a [NewEvent]) -> Self {
        Self {
            event_ids: events.iter().map(|e| e.event_id).collect(),
            event_types: events.iter().map(|e| e.event_type.as_str()).collect(),
            schema_versions: events.iter().map(schema_version).collect(),
            correlation_ids: events.iter().map(|e| e.correlation_id).collect(),
            causation_ids: events.iter().map(|e| e.causation_id).collect(),
            metadata: events.iter().map(|e| e.metadata.as_json()).collect(),
            payloads: events.iter().map(|e| e.payload.get()).collect(),
        }
    }
}

/// An event's schema version as PostgreSQL's `integer` (appends refuse larger ones first).
fn schema_version(event: &NewEvent) -> i32 {
    i32::try_from(event.schema_version).unwrap_or(i32::MAX)
}

fn appended(rows: &[PgRow]) -> Result<AppendResult, StoreError> {
    let mut written = rows
        .iter()
        .map(|row| -> Result<(i64, Position), sqlx::Error> {
            let transaction: i64 = row.try_get(0)?;
            let position: i64 = row.try_get(1)?;
            let version: i64 = row.try_get(2)?;
            Ok((version, position_from_columns(transaction, position)))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(store_error)?;
    written.sort_unstable_by_key(|(version, _)| *version);
    Ok(AppendResult {
        first_version: written[0].0 as u64,
        last_version: written[written.len() - 1].0 as u64,
        positions: written.into_iter().map(|(_, p)| p).collect(),
        deduplicated: false,
    })
}
