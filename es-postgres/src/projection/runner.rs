//! The projection runner: one active instance per projection, catch up then follow live,
//! checkpoint in the same transaction as the read-model writes.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use es_core::{BoxError, EventStore, Position, RecordedEvent, Upcasters, current_version};
use sqlx::{AssertSqlSafe, Connection, PgConnection, Row};
use tracing::Instrument;
use uuid::Uuid;

use super::sql::Statements;
use super::{ErrorPolicy, OnFailure, PgProjection, ProjectionError};
use crate::PgEventStore;
use crate::convert::{position_from_columns, position_to_columns};

/// A projection's progress, for operators.
#[derive(Clone, Debug, PartialEq)]
pub struct ProjectionStatus {
    /// The projection's name.
    pub name: String,
    /// The position of the last event it has taken into account.
    pub checkpoint: Position,
    /// The position of the last event readers can see.
    pub head: Position,
    /// How many readable events it has not yet taken into account.
    pub lag_events: u64,
    /// How long ago the oldest of those was recorded; `None` when it is caught up.
    pub lag: Option<Duration>,
    /// How many events it parked.
    pub parked: u64,
}

/// An event a projection set aside.
#[derive(Clone, Debug, PartialEq)]
pub struct ParkedEvent {
    /// The event's id.
    pub event_id: Uuid,
    /// Its position.
    pub position: Position,
    /// Its stream.
    pub stream_id: String,
    /// Its type.
    pub event_type: String,
    /// The last error applying it.
    pub error: String,
    /// How many times applying it failed.
    pub attempts: u32,
    /// When it was (last) parked.
    pub parked_at: DateTime<Utc>,
}

/// What replaying parked events did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplayReport {
    /// Applied and removed from the parked events.
    pub replayed: u64,
    /// Still failing; they stay parked.
    pub still_failing: u64,
}

/// How far a rebuild or catch-up got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Events read so far (applied or passed over).
    pub events: u64,
    /// The checkpoint committed last.
    pub position: Position,
    /// The head when the run started, for an ETA.
    pub head: Position,
}

/// The advisory lock that makes a runner the active instance, on a session of its own. Dropped
/// without [`ProjectionRunner::release`] (a run future cancelled), the session still ends and
/// the runner still stops reporting itself active.
pub(super) struct ActiveLock {
    conn: Option<PgConnection>,
    active: Arc<AtomicBool>,
}

impl Drop for ActiveLock {
    fn drop(&mut self) {
        self.active.store(false, Ordering::SeqCst);
    }
}

/// Runs one [`PgProjection`]: waits to be the one active instance, catches up from its
/// checkpoint, then follows the log live, until told to stop.
///
/// Several processes may run the same projection: an advisory lock, held on a connection of
/// the runner's own, lets exactly one apply events; the others wait and take over when the
/// holder stops or dies (its connection closes, releasing the lock).
pub struct ProjectionRunner<P> {
    pub(super) store: PgEventStore,
    pub(super) projection: Arc<P>,
    /// The name its checkpoint, parked events and lock are kept under: the projection's name,
    /// with `#{index}/{parts}` for one part of a split projection.
    pub(super) key: String,
    pub(super) part: Option<(u32, u32)>,
    pub(super) upcasters: Arc<Upcasters>,
    pub(super) policy: ErrorPolicy,
    pub(super) batch_size: usize,
    pub(super) poll_interval: Duration,
    pub(super) lock_retry: Duration,
    pub(super) sql: Arc<Statements>,
    pub(super) active: Arc<AtomicBool>,
}

impl<P: PgProjection> ProjectionRunner<P> {
    /// A runner of `projection` over `store`'s global log, with the default error policy
    /// (retry, then park), batches of 500 events and no upcasters.
    pub fn new(store: PgEventStore, projection: P) -> Self {
        let sql = Arc::new(Statements::new(store.schema()));
        Self {
            store,
            key: projection.name().to_owned(),
            part: None,
            projection: Arc::new(projection),
            upcasters: Arc::new(Upcasters::new()),
            policy: ErrorPolicy::default(),
            batch_size: 500,
            poll_interval: Duration::from_millis(500),
            lock_retry: Duration::from_secs(1),
            sql,
            active: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Makes this runner handle part `index` of `parts` (0-based) of the projection: only
    /// streams whose id hashes to `index`. Each part has its own checkpoint, lock and parked
    /// events, so parts run in parallel, each in its own process if wished; all events of one
    /// stream go to one part, in order. Run one runner per part, with the same `parts`.
    ///
    /// # Panics
    /// When `parts` is 0 or `index >= parts`: a configuration error.
    pub fn part(mut self, index: u32, parts: u32) -> Self {
        assert!(index < parts, "part {index} of {parts} does not exist");
        self.key = format!("{}#{index}/{parts}", self.projection.name());
        self.part = Some((index, parts));
        self
    }

    /// Lifts old events through `upcasters` before the projection sees them.
    pub fn with_upcasters(mut self, upcasters: Arc<Upcasters>) -> Self {
        self.upcasters = upcasters;
        self
    }

    /// Replaces the error policy of live runs and catch-ups (rebuilds take theirs as argument).
    pub fn error_policy(mut self, policy: ErrorPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Applies up to `size` events per transaction (default 500).
    pub fn batch_size(mut self, size: usize) -> Self {
        self.batch_size = size.max(1);
        self
    }

    /// Polls the log at least this often when no notification arrives (default 500 ms).
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// How often a waiting instance tries to become the active one (default 1 s).
    pub fn lock_retry_interval(mut self, interval: Duration) -> Self {
        self.lock_retry = interval;
        self
    }

    /// The projection.
    pub fn projection(&self) -> &P {
        &self.projection
    }

    /// Whether this instance holds the projection now.
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::SeqCst)
    }

    /// Runs until `shutdown` completes: waits to become the active instance, catches up, then
    /// follows the log live. On shutdown it finishes the batch in hand and commits it.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) -> Result<(), ProjectionError> {
        tokio::pin!(shutdown);
        let lock = tokio::select! {
            lock = self.acquire_lock() => lock?,
            () = &mut shutdown => return Ok(()),
        };
        let result = async {
            self.setup().await?;
            let mut follower = self
                .store
                .follow(self.load_checkpoint().await?)
                .batch_size(self.batch_size)
                .poll_interval(self.poll_interval);
            loop {
                let from = follower.position();
                let batch = tokio::select! {
                    batch = follower.next_batch() => batch.map_err(|e| self.store_error(e))?,
                    () = &mut shutdown => return Ok(()),
                };
                if self.process(batch, from, self.policy).await?.is_none() {
                    follower = self
                        .store
                        .follow(self.load_checkpoint().await?)
                        .batch_size(self.batch_size)
                        .poll_interval(self.poll_interval);
                }
            }
        }
        .await;
        self.release(lock).await;
        result
    }

    /// Applies every event readable now, then returns how many events it read. Waits to become
    /// the active instance first.
    pub async fn catch_up(&self) -> Result<u64, ProjectionError> {
        let lock = self.acquire_lock().await?;
        let result = async {
            self.setup().await?;
            self.catch_up_locked(self.policy, &mut |_| {}).await
        }
        .await;
        self.release(lock).await;
        result
    }

    /// Rebuilds the read model in place: empties it, forgets the checkpoint and the parked
    /// events, and replays the whole log with `policy` (usually [`ErrorPolicy::STOP`]),
    /// reporting progress after each batch. Waits to become the active instance first, so a
    /// live runner of the same projection hands over or waits.
    ///
    /// A crash mid-rebuild loses nothing: the reset commits first, then each batch commits with
    /// its checkpoint, and a restarted rebuild (or live run) resumes from the last one.
    pub async fn rebuild(
        &self,
        policy: ErrorPolicy,
        mut progress: impl FnMut(Progress) + Send,
    ) -> Result<u64, ProjectionError> {
        let lock = self.acquire_lock().await?;
        let result = async {
            let mut tx = self.begin().await?;
            self.setup_in(&mut tx).await?;
            self.projection
                .reset(&mut tx)
                .await
                .map_err(|e| self.failed_setup(e))?;
            self.start_over(&mut tx).await?;
            tx.commit().await.map_err(|e| self.store_error(e))?;
            self.catch_up_locked(policy, &mut progress).await
        }
        .await;
        self.release(lock).await;
        result
    }

    /// Where the projection is, how far behind, and how many events it parked.
    pub async fn status(&self) -> Result<ProjectionStatus, ProjectionError> {
        let checkpoint = self.load_checkpoint().await?;
        let head = self.store.head().await.map_err(|e| self.store_error(e))?;
        let (transaction, sequence) = position_to_columns(checkpoint);
        let row = sqlx::query(AssertSqlSafe(self.sql.lag.clone()))
            .bind(&self.key)
            .bind(transaction)
            .bind(sequence)
            .fetch_one(self.store.pool())
            .await
            .map_err(|e| self.store_error(e))?;
        let lag_events: i64 = row.try_get(0).map_err(|e| self.store_error(e))?;
        let oldest: Option<DateTime<Utc>> = row.try_get(1).map_err(|e| self.store_error(e))?;
        let parked: i64 = row.try_get(2).map_err(|e| self.store_error(e))?;
        Ok(ProjectionStatus {
            name: self.key.clone(),
            checkpoint,
            head,
            lag_events: lag_events.max(0) as u64,
            lag: oldest.map(|t| (Utc::now() - t).to_std().unwrap_or_default()),
            parked: parked.max(0) as u64,
        })
    }

    /// The events this projection parked, oldest position first.
    pub async fn parked(&self) -> Result<Vec<ParkedEvent>, ProjectionError> {
        let rows = sqlx::query(AssertSqlSafe(self.sql.list_parked.clone()))
            .bind(&self.key)
            .fetch_all(self.store.pool())
            .await
            .map_err(|e| self.store_error(e))?;
        rows.iter()
            .map(|row| -> Result<ParkedEvent, sqlx::Error> {
                Ok(ParkedEvent {
                    event_id: row.try_get(0)?,
                    position: position_from_columns(row.try_get(1)?, row.try_get(2)?),
                    stream_id: row.try_get(3)?,
                    event_type: row.try_get(4)?,
                    error: row.try_get(5)?,
                    attempts: row.try_get::<i32, _>(6)?.max(0) as u32,
                    parked_at: row.try_get(7)?,
                })
            })
            .collect::<Result<_, _>>()
            .map_err(|e| self.store_error(e))
    }

    /// Applies the parked events again, oldest first, each in its own transaction with its
    /// removal from the parked events. Those that fail again stay parked, their error updated.
    ///
    /// A replayed event is applied after events that followed it in the log: parking trades
    /// order for progress, so a projection that parks must tolerate that.
    pub async fn replay_parked(&self) -> Result<ReplayReport, ProjectionError> {
        let mut report = ReplayReport::default();
        for parked in self.parked().await? {
            let Some(event) = self
                .store
                .read_event(parked.event_id)
                .await
                .map_err(|e| self.store_error(e))?
            else {
                continue;
            };
            let mut tx = self.begin().await?;
            match self.apply_one(&mut tx, &event).await {
                Ok(()) => {
                    sqlx::query(AssertSqlSafe(self.sql.unpark.clone()))
                        .bind(&self.key)
                        .bind(parked.event_id)
                        .execute(&mut *tx)
                        .await
                        .map_err(|e| self.store_error(e))?;
                    tx.commit().await.map_err(|e| self.store_error(e))?;
                    report.replayed += 1;
                }
                Err(error) => {
                    tx.rollback().await.map_err(|e| self.store_error(e))?;
                    let mut conn = self
                        .store
                        .pool()
                        .acquire()
                        .await
                        .map_err(|e| self.store_error(e))?;
                    self.park(&mut conn, &event, &error, 1).await?;
                    report.still_failing += 1;
                }
            }
        }
        Ok(report)
    }

    pub(super) async fn catch_up_locked(
        &self,
        policy: ErrorPolicy,
        progress: &mut (dyn FnMut(Progress) + Send),
    ) -> Result<u64, ProjectionError> {
        let head = self.store.head().await.map_err(|e| self.store_error(e))?;
        let mut follower = self
            .store
            .follow(self.load_checkpoint().await?)
            .batch_size(self.batch_size)
            .without_notifications();
        let mut events = 0;
        loop {
            let from = follower.position();
            let Some(batch) = follower
                .try_next_batch()
                .await
                .map_err(|e| self.store_error(e))?
            else {
                return Ok(events);
            };
            let count = batch.len() as u64;
            match self.process(batch, from, policy).await? {
                Some(position) => {
                    events += count;
                    progress(Progress {
                        events,
                        position,
                        head,
                    });
                }
                None => {
                    follower = self
                        .store
                        .follow(self.load_checkpoint().await?)
                        .batch_size(self.batch_size)
                        .without_notifications();
                }
            }
        }
    }

    /// Applies a batch read after `from` and commits it with the checkpoint past its last event.
    /// Tries the whole batch in one go first; when an event fails, it redoes the batch event by
    /// event, each in a savepoint, so the policy can retry, park or skip just that event.
    ///
    /// `Ok(None)`: the checkpoint is no longer at `from` (a previous holder's late commit, after
    /// it lost the advisory lock); nothing was applied, and the caller resumes from the
    /// checkpoint as it now is.
    async fn process(
        &self,
        batch: Vec<RecordedEvent>,
        from: Position,
        policy: ErrorPolicy,
    ) -> Result<Option<Position>, ProjectionError> {
        let Some(last) = batch.last().map(|e| e.position) else {
            return Ok(Some(from));
        };
        let span = tracing::debug_span!(
            "projection_batch",
            projection = self.projection.name(),
            events = batch.len(),
            last = %last,
        );
        async {
            let mut tx = self.begin().await?;
            if !self.fence(&mut tx, from).await? {
                return Ok(None);
            }
            let failed = self.apply_all(&mut tx, &batch).await.is_err();
            if failed {
                tx.rollback().await.map_err(|e| self.store_error(e))?;
                tx = self.begin().await?;
                if !self.fence(&mut tx, from).await? {
                    return Ok(None);
                }
                for event in &batch {
                    self.apply_with_policy(&mut tx, event, policy).await?;
                }
            }
            self.save_checkpoint(&mut tx, last).await?;
            tx.commit().await.map_err(|e| self.store_error(e))?;
            Ok(Some(last))
        }
        .instrument(span)
        .await
    }

    async fn apply_with_policy(
        &self,
        tx: &mut PgConnection,
        event: &RecordedEvent,
        policy: ErrorPolicy,
    ) -> Result<(), ProjectionError> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let mut savepoint = tx.begin().await.map_err(|e| self.store_error(e))?;
            let error = match self.apply_one(&mut savepoint, event).await {
                Ok(()) => {
                    savepoint.commit().await.map_err(|e| self.store_error(e))?;
                    return Ok(());
                }
                Err(error) => error,
            };
            savepoint
                .rollback()
                .await
                .map_err(|e| self.store_error(e))?;
            if attempts <= policy.retries {
                let wait = policy.backoff.saturating_mul(1 << (attempts - 1).min(16));
                tracing::warn!(event = %event.event_ref(), %error, attempts, "applying failed; retrying");
                tokio::time::sleep(wait).await;
                continue;
            }
            return match policy.then {
                OnFailure::Stop => Err(ProjectionError::Failed {
                    projection: self.projection.name().to_owned(),
                    event: Box::new(event.event_ref()),
                    source: error,
                }),
                OnFailure::Park => {
                    tracing::error!(event = %event.event_ref(), %error, "parking the event");
                    self.park(tx, event, &error, attempts).await
                }
                OnFailure::Skip => {
                    tracing::error!(event = %event.event_ref(), %error, "skipping the event");
                    Ok(())
                }
            };
        }
    }

    /// Decodes the events the projection wants and hands them to it as one batch.
    async fn apply_all(
        &self,
        conn: &mut PgConnection,
        batch: &[RecordedEvent],
    ) -> Result<(), BoxError> {
        let mut envelopes = Vec::with_capacity(batch.len());
        for event in batch.iter().filter(|e| self.wants(e)) {
            self.upcasters.select_ref_into(event, &mut envelopes)?;
        }
        if envelopes.is_empty() {
            return Ok(());
        }
        self.projection.apply_batch(conn, &envelopes).await
    }

    /// Decodes (through the upcasters) and applies one event, if the projection wants it.
    async fn apply_one(
        &self,
        conn: &mut PgConnection,
        event: &RecordedEvent,
    ) -> Result<(), BoxError> {
        if !self.wants(event) {
            return Ok(());
        }
        let span = tracing::debug_span!(
            "apply",
            projection = self.projection.name(),
            event_id = %event.event_id,
            correlation_id = %event.correlation_id,
        );
        async {
            let mut envelopes = Vec::with_capacity(1);
            self.upcasters
                .select_ref_into::<P::Event>(event, &mut envelopes)?;
            for envelope in &envelopes {
                self.projection.apply(conn, envelope).await?;
            }
            Ok(())
        }
        .instrument(span)
        .await
    }

    fn wants(&self, event: &RecordedEvent) -> bool {
        (current_version::<P::Event>(&event.event_type).is_some()
            || self.upcasters.lifts(&event.event_type))
            && self.projection.wants_category(event.stream_id.category())
            && self.part.is_none_or(|(index, parts)| {
                stream_hash(event.stream_id.as_str()) % u64::from(parts) == u64::from(index)
            })
    }

    async fn park(
        &self,
        conn: &mut PgConnection,
        event: &RecordedEvent,
        error: &BoxError,
        attempts: u32,
    ) -> Result<(), ProjectionError> {
        let (transaction, sequence) = position_to_columns(event.position);
        sqlx::query(AssertSqlSafe(self.sql.park.clone()))
            .bind(&self.key)
            .bind(event.event_id)
            .bind(transaction)
            .bind(sequence)
            .bind(event.stream_id.as_str())
            .bind(&event.event_type)
            .bind(error.to_string())
            .bind(i32::try_from(attempts).unwrap_or(i32::MAX))
            .execute(&mut *conn)
            .await
            .map_err(|e| self.store_error(e))?;
        Ok(())
    }

    async fn setup(&self) -> Result<(), ProjectionError> {
        let mut tx = self.begin().await?;
        self.setup_in(&mut tx).await?;
        tx.commit().await.map_err(|e| self.store_error(e))
    }

    /// Creates the read model's tables and the checkpoint row, if missing, within `conn`.
    pub(super) async fn setup_in(&self, conn: &mut PgConnection) -> Result<(), ProjectionError> {
        // Parts of a split projection start side by side, and concurrent `CREATE TABLE IF NOT
        // EXISTS` of one table can fail on PostgreSQL's catalog: one setup at a time per
        // projection, until the transaction ends.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind(format!(
                "es-projection-setup {} {}",
                self.store.schema(),
                self.projection.name()
            ))
            .execute(&mut *conn)
            .await
            .map_err(|e| self.store_error(e))?;
        self.projection
            .setup(&mut *conn)
            .await
            .map_err(|e| self.failed_setup(e))?;
        self.execute_keyed(conn, &self.sql.init_checkpoint).await
    }

    /// Runs one of the runner's statements whose only parameter is this runner's key.
    pub(super) async fn execute_keyed(
        &self,
        conn: &mut PgConnection,
        statement: &Arc<str>,
    ) -> Result<(), ProjectionError> {
        sqlx::query(AssertSqlSafe(Arc::clone(statement)))
            .bind(&self.key)
            .execute(&mut *conn)
            .await
            .map_err(|e| self.store_error(e))?;
        Ok(())
    }

    /// Forgets the parked events and puts the checkpoint back at the start, within `conn`.
    pub(super) async fn start_over(&self, conn: &mut PgConnection) -> Result<(), ProjectionError> {
        self.execute_keyed(conn, &self.sql.delete_parked).await?;
        self.save_checkpoint(conn, Position::START).await
    }

    /// Locks this runner's checkpoint row until the transaction ends; its position, when the
    /// row exists.
    pub(super) async fn lock_checkpoint(
        &self,
        tx: &mut PgConnection,
    ) -> Result<Option<Position>, ProjectionError> {
        let row: Option<(i64, i64)> =
            sqlx::query_as(AssertSqlSafe(self.sql.lock_checkpoint.clone()))
                .bind(&self.key)
                .fetch_optional(&mut *tx)
                .await
                .map_err(|e| self.store_error(e))?;
        Ok(row.map(|(t, p)| position_from_columns(t, p)))
    }

    /// Locks the checkpoint row for this transaction and checks it is still at `from`. Another
    /// transaction applying from the same checkpoint waits here until it ends, then finds it
    /// moved: two instances can never both commit the same events.
    async fn fence(&self, tx: &mut PgConnection, from: Position) -> Result<bool, ProjectionError> {
        let current = self.lock_checkpoint(tx).await?.unwrap_or(Position::START);
        if current != from {
            tracing::warn!(
                projection = %self.key,
                expected = %from,
                found = %current,
                "the checkpoint moved under this instance; resuming from it"
            );
        }
        Ok(current == from)
    }

    async fn load_checkpoint(&self) -> Result<Position, ProjectionError> {
        let row: Option<(i64, i64)> =
            sqlx::query_as(AssertSqlSafe(self.sql.load_checkpoint.clone()))
                .bind(&self.key)
                .fetch_optional(self.store.pool())
                .await
                .map_err(|e| self.store_error(e))?;
        Ok(row.map_or(Position::START, |(t, p)| position_from_columns(t, p)))
    }

    pub(super) async fn save_checkpoint(
        &self,
        conn: &mut PgConnection,
        position: Position,
    ) -> Result<(), ProjectionError> {
        let (transaction, sequence) = position_to_columns(position);
        sqlx::query(AssertSqlSafe(self.sql.save_checkpoint.clone()))
            .bind(&self.key)
            .bind(transaction)
            .bind(sequence)
            .execute(&mut *conn)
            .await
            .map_err(|e| self.store_error(e))?;
        Ok(())
    }

    pub(super) async fn begin(
        &self,
    ) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, ProjectionError> {
        self.store
            .pool()
            .begin()
            .await
            .map_err(|e| self.store_error(e))
    }

    /// Waits until this instance holds the projection's advisory lock, on a connection of its
    /// own that stays open while it runs.
    pub(super) async fn acquire_lock(&self) -> Result<ActiveLock, ProjectionError> {
        let options = self.store.pool().connect_options();
        let mut conn = PgConnection::connect_with(&options)
            .await
            .map_err(|e| self.store_error(e))?;
        // Per key, not per projection: parts of a split projection run side by side.
        let key = format!("es-projection {} {}", self.store.schema(), self.key);
        loop {
            let locked: bool =
                sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
                    .bind(&key)
                    .fetch_one(&mut conn)
                    .await
                    .map_err(|e| self.store_error(e))?;
            if locked {
                self.active.store(true, Ordering::SeqCst);
                tracing::info!(projection = %self.key, "this instance is active");
                return Ok(ActiveLock {
                    conn: Some(conn),
                    active: Arc::clone(&self.active),
                });
            }
            tokio::time::sleep(self.lock_retry).await;
        }
    }

    pub(super) async fn release(&self, mut lock: ActiveLock) {
        // Closing the session releases its advisory locks.
        if let Some(conn) = lock.conn.take() {
            let _ = conn.close().await;
        }
    }

    pub(super) fn store_error(&self, error: impl Into<BoxError>) -> ProjectionError {
        ProjectionError::Store {
            projection: self.projection.name().to_owned(),
            source: error.into(),
        }
    }

    pub(super) fn failed_setup(&self, error: BoxError) -> ProjectionError {
        ProjectionError::Store {
            projection: self.projection.name().to_owned(),
            source: format!("setting up the read model failed: {error}").into(),
        }
    }
}

impl<P> std::fmt::Debug for ProjectionRunner<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProjectionRunner")
            .field("schema", self.store.schema())
            .field("policy", &self.policy)
            .field("batch_size", &self.batch_size)
            .finish()
    }
}

/// FNV-1a: stable across processes, releases and platforms, unlike `std`'s hasher, so every
/// instance agrees on which part owns a stream.
fn stream_hash(stream: &str) -> u64 {
    stream.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn stream_hash_is_stable() {
        // Fixed values: changing the hash would move streams between parts of live projections.
        assert_eq!(super::stream_hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(super::stream_hash("a"), 0xaf63_dc4c_8601_ec8c);
    }
}
