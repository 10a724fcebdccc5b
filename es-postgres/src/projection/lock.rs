//! Being the one active instance: advisory locks held on a session of the runner's own, on
//! which it also applies every batch, so an instance whose session ended applies nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sqlx::{AssertSqlSafe, Connection, PgConnection, Postgres, Row, Transaction};

use super::runner::{ProjectionRunner, RunnerState};
use super::{PgProjection, ProjectionError};

/// How long a check of the lock session may take before the session counts as lost.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// The advisory locks that make a runner the active instance, and the session holding them.
/// Dropped without [`ProjectionRunner::release`] (a run future cancelled), the session still
/// ends and the runner still stops reporting itself active.
pub(super) struct ActiveLock {
    conn: Option<PgConnection>,
    active: Arc<AtomicBool>,
    last_ok: Instant,
    /// Shared with the runner: when the session last answered, for `is_active`.
    contact: Arc<Contact>,
    /// Whether batches commit without waiting for their WAL flush (rebuilds).
    relaxed: bool,
}

/// When a runner's lock session last answered (or was last put to use), in milliseconds since
/// the runner was created: a batch hung on a dead network stops counting as active once it
/// has been silent longer than the server takes to drop such a session.
#[derive(Debug)]
pub(super) struct Contact {
    origin: Instant,
    millis: std::sync::atomic::AtomicU64,
}

impl Contact {
    pub(super) fn new() -> Self {
        Self {
            origin: Instant::now(),
            millis: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let now = self.origin.elapsed().as_millis() as u64;
        self.millis.store(now, Ordering::SeqCst);
    }

    /// Whether the session answered within `bound`.
    pub(super) fn within(&self, bound: Duration) -> bool {
        let now = self.origin.elapsed().as_millis() as u64;
        now.saturating_sub(self.millis.load(Ordering::SeqCst)) <= bound.as_millis() as u64
    }
}

impl Drop for ActiveLock {
    fn drop(&mut self) {
        self.active.store(false, Ordering::SeqCst);
    }
}

impl ActiveLock {
    /// The lock session, or [`ProjectionError::LockLost`] once it is known to be gone.
    pub(super) fn conn<P: PgProjection>(
        &mut self,
        runner: &ProjectionRunner<P>,
    ) -> Result<&mut PgConnection, ProjectionError> {
        self.last_ok = Instant::now();
        self.conn
            .as_mut()
            .ok_or_else(|| runner.lock_lost("it was lost earlier"))
    }

    /// A transaction on the lock session.
    pub(super) async fn begin<P: PgProjection>(
        &mut self,
        runner: &ProjectionRunner<P>,
    ) -> Result<Transaction<'_, Postgres>, ProjectionError> {
        let conn = self
            .conn
            .as_mut()
            .ok_or_else(|| runner.lock_lost("it was lost earlier"))?;
        self.last_ok = Instant::now();
        self.contact.touch();
        let begun = if self.relaxed {
            conn.begin_with("BEGIN; SET LOCAL synchronous_commit = off")
                .await
        } else {
            conn.begin().await
        };
        begun.map_err(|e| runner.store_error(e))
    }

    /// Lets batches commit without waiting for their WAL to reach disk, for rebuilds: a crash
    /// may lose the last fraction of a second of batches, but each batch's read-model writes
    /// and checkpoint commit or vanish together, so the rebuild resumes from an earlier
    /// checkpoint and applies them again. Turned off before the rebuild's last commit, whose
    /// flush makes every earlier batch durable (WAL is flushed in order).
    pub(super) fn relax_commits(&mut self, relaxed: bool) {
        self.relaxed = relaxed;
    }

    /// When the session has not been used for `interval`, checks it is still alive; a dead
    /// session means the locks are gone: the runner stops reporting itself active.
    pub(super) async fn check<P: PgProjection>(
        &mut self,
        runner: &ProjectionRunner<P>,
        interval: Duration,
    ) -> Result<(), ProjectionError> {
        if self.last_ok.elapsed() < interval {
            return Ok(());
        }
        if self.alive().await {
            return Ok(());
        }
        Err(self.lost(runner, "its session no longer answers"))
    }

    /// Turns an error met on the lock session into [`ProjectionError::LockLost`] when the
    /// session died with it (a dropped connection, a terminated backend, a restart).
    pub(super) async fn classify<P: PgProjection>(
        &mut self,
        runner: &ProjectionRunner<P>,
        error: ProjectionError,
    ) -> ProjectionError {
        if !matches!(error, ProjectionError::Store { .. }) || self.alive().await {
            return error;
        }
        self.lost(runner, &error.to_string())
    }

    async fn alive(&mut self) -> bool {
        let Some(conn) = self.conn.as_mut() else {
            return false;
        };
        let answered = tokio::time::timeout(CHECK_TIMEOUT, conn.ping()).await;
        let alive = matches!(answered, Ok(Ok(())));
        if alive {
            self.last_ok = Instant::now();
            self.contact.touch();
        }
        alive
    }

    fn lost<P: PgProjection>(
        &mut self,
        runner: &ProjectionRunner<P>,
        reason: &str,
    ) -> ProjectionError {
        self.active.store(false, Ordering::SeqCst);
        // Dropping the connection closes its socket; the server ends the session (and its
        // locks) if it has not already.
        self.conn = None;
        tracing::warn!(projection = %runner.key, reason, "lost the projection's lock");
        runner.lock_lost(reason)
    }
}

/// The server session holding a projection's lock: which process runs it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LockHolder {
    /// The server process id of the session (`pg_stat_activity.pid`).
    pub pid: i32,
    /// Its application name: `es-projection {key}` for a runner's lock session.
    pub application_name: String,
    /// The client's address; `None` for a Unix socket or when this role may not see it.
    pub client_addr: Option<String>,
    /// When the session started.
    pub backend_start: Option<chrono::DateTime<chrono::Utc>>,
}

/// The advisory lock id of the key `key` (an SQL expression) for this session: a session that
/// names a tenant of a row-tenancy store (`es.tenant`, see `RowTenancy`) takes that tenant's
/// lock, whichever way its store was made, so that two tenants' runners of one projection are
/// each the active instance of its tenant, and a tool connected for a tenant meets that
/// tenant's runners.
fn lock_key(key: &str) -> String {
    format!(
        "hashtextextended({key} || coalesce(' @' || nullif(current_setting('es.tenant', true), ''), ''), 0)"
    )
}

impl<P: PgProjection> ProjectionRunner<P> {
    /// The session that holds this runner's lock now (in this process or another), if any:
    /// what `status` shows operators as the projection's holder.
    pub async fn holder(&self) -> Result<Option<LockHolder>, ProjectionError> {
        let key = format!("es-projection {} {}", self.store.schema(), self.key);
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT l.pid, a.application_name, host(a.client_addr), a.backend_start \
             FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid \
             WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
               AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
               AND ((l.classid::int8 << 32) | l.objid::int8) = {LOCK_KEY} \
             LIMIT 1",
            LOCK_KEY = lock_key("$1")
        )))
        .bind(key)
        .fetch_optional(self.store.pool())
        .await
        .map_err(|e| self.store_error(e))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let holder = (|| -> Result<LockHolder, sqlx::Error> {
            Ok(LockHolder {
                pid: row.try_get(0)?,
                application_name: row.try_get::<Option<String>, _>(1)?.unwrap_or_default(),
                client_addr: row.try_get(2)?,
                backend_start: row.try_get(3)?,
            })
        })();
        holder.map(Some).map_err(|e| self.store_error(e))
    }

    /// Waits until this instance holds the locks of every key it moves, on a connection of its
    /// own that stays open while it runs.
    pub(super) async fn acquire_lock(&self) -> Result<ActiveLock, ProjectionError> {
        self.acquire_locks(self.checkpoint_keys()).await
    }

    /// Waits until this instance holds the locks of `keys`, all on one connection.
    pub(super) async fn acquire_locks(
        &self,
        keys: Vec<String>,
    ) -> Result<ActiveLock, ProjectionError> {
        // Before anything is recorded (the number of parts).
        self.check_delivery_split()?;
        let mut conn = self.lock_connection().await?;
        let lock_keys = self.lock_keys(&keys);
        let mut waited = false;
        loop {
            if self.try_locks(&mut conn, &lock_keys).await? {
                self.active.store(true, Ordering::SeqCst);
                self.set_state(RunnerState::Active);
                tracing::info!(projection = %self.key, "this instance is active");
                return Ok(ActiveLock {
                    conn: Some(conn),
                    active: Arc::clone(&self.active),
                    last_ok: Instant::now(),
                    contact: self.touched_contact(),
                    relaxed: false,
                });
            }
            if !waited {
                waited = true;
                self.set_state(RunnerState::Waiting);
                tracing::info!(projection = %self.key, "another instance holds the projection; waiting");
            }
            tokio::time::sleep(self.lock_retry).await;
        }
    }

    /// Takes the locks of `keys` if they are free now; `None` when another instance holds one.
    pub(super) async fn try_acquire_locks(
        &self,
        keys: Vec<String>,
    ) -> Result<Option<ActiveLock>, ProjectionError> {
        self.check_delivery_split()?;
        let mut conn = self.lock_connection().await?;
        if !self.try_locks(&mut conn, &self.lock_keys(&keys)).await? {
            let _ = tokio::time::timeout(CHECK_TIMEOUT, conn.close()).await;
            return Ok(None);
        }
        self.active.store(true, Ordering::SeqCst);
        Ok(Some(ActiveLock {
            conn: Some(conn),
            active: Arc::clone(&self.active),
            last_ok: Instant::now(),
            contact: self.touched_contact(),
            relaxed: false,
        }))
    }

    fn touched_contact(&self) -> Arc<Contact> {
        self.contact.touch();
        Arc::clone(&self.contact)
    }

    fn lock_keys(&self, keys: &[String]) -> Vec<String> {
        let mut keys: Vec<String> = keys
            .iter()
            .map(|key| format!("es-projection {} {key}", self.store.schema()))
            .collect();
        keys.sort();
        keys.dedup();
        keys
    }

    /// Takes all of `keys` or none: those taken are released again when one is held elsewhere.
    async fn try_locks(
        &self,
        conn: &mut PgConnection,
        keys: &[String],
    ) -> Result<bool, ProjectionError> {
        let taken: Vec<bool> = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT pg_try_advisory_lock({}) FROM UNNEST($1::text[]) AS k",
            lock_key("k")
        )))
        .bind(keys)
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| self.store_error(e))?;
        if taken.iter().all(|t| *t) {
            return Ok(true);
        }
        let held: Vec<&String> = keys
            .iter()
            .zip(&taken)
            .filter_map(|(key, taken)| taken.then_some(key))
            .collect();
        if !held.is_empty() {
            sqlx::query(AssertSqlSafe(format!(
                "SELECT pg_advisory_unlock({}) FROM UNNEST($1::text[]) AS k",
                lock_key("k")
            )))
            .bind(held)
            .execute(&mut *conn)
            .await
            .map_err(|e| self.store_error(e))?;
        }
        Ok(false)
    }

    /// A session of the runner's own, named after it in `pg_stat_activity`, whose server side
    /// probes the client with TCP keepalives: a runner cut off by the network loses its locks
    /// within about 25 s instead of holding them until the kernel gives up on the socket.
    async fn lock_connection(&self) -> Result<PgConnection, ProjectionError> {
        let options = self
            .store
            .pool()
            .connect_options()
            .as_ref()
            .clone()
            .application_name(&format!("es-projection {}", self.key))
            .options([
                ("tcp_keepalives_idle", "10"),
                ("tcp_keepalives_interval", "5"),
                ("tcp_keepalives_count", "3"),
            ]);
        PgConnection::connect_with(&options)
            .await
            .map_err(|e| self.store_error(e))
    }

    pub(super) async fn release(&self, mut lock: ActiveLock) {
        // Closing the session releases its advisory locks.
        if let Some(conn) = lock.conn.take() {
            let _ = tokio::time::timeout(CHECK_TIMEOUT, conn.close()).await;
        }
        self.set_state(RunnerState::Idle);
    }

    pub(super) fn lock_lost(&self, reason: &str) -> ProjectionError {
        ProjectionError::LockLost {
            projection: self.key.clone(),
            reason: reason.to_owned(),
        }
    }
}
