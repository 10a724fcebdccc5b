//! The projection runner: one active instance per projection (or part), catch up then follow
//! live, checkpoint in the same transaction as the read-model writes.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use es_core::{EventStore, Position, StoreError, Upcasters};
use sqlx::{AssertSqlSafe, PgConnection, PgPool, Row};

use super::lock::{ActiveLock, Contact};
use super::sql::Statements;
use super::supervise::Backoff;
use super::{ErrorPolicy, PgProjection, ProjectionError};
use crate::PgEventStore;
use crate::convert::{position_from_columns, position_to_columns};
use crate::error::Transient;

/// A projection's progress, for operators.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct ProjectionStatus {
    /// The key its checkpoint is kept under: the projection's name, with `#{index}/{parts}` for
    /// one part of a split projection.
    pub name: String,
    /// The position of the last event it has taken into account.
    pub checkpoint: Position,
    /// The position of the last event readers can see.
    pub head: Position,
    /// How many readable events it has not yet taken into account.
    pub lag_events: u64,
    /// How long ago the oldest of those was recorded (by the database's clock); `None` when
    /// it is caught up.
    pub lag: Option<Duration>,
    /// How many events it parked.
    pub parked: u64,
    /// Whether a rebuild reset the read model and has not caught up yet (it resumes from the
    /// checkpoint, in a rebuild or a live run, after a crash).
    pub rebuilding: bool,
    /// What this runner instance is doing now.
    pub state: RunnerState,
}

/// What a runner instance is doing.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RunnerState {
    /// Not running (never started, or stopped).
    Idle,
    /// Waiting for another instance to release the projection.
    Waiting,
    /// Holding the projection: applying events or waiting for new ones.
    Active,
    /// A transient fault interrupted it (a restart, a lost connection); it is retrying with
    /// backoff and resumes from its checkpoint.
    Reconnecting {
        /// When the fault began.
        since: DateTime<Utc>,
        /// The last error met.
        last_error: String,
    },
}

impl std::fmt::Display for RunnerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunnerState::Idle => f.write_str("idle"),
            RunnerState::Waiting => f.write_str("waiting for the lock"),
            RunnerState::Active => f.write_str("active"),
            RunnerState::Reconnecting { since, last_error } => {
                write!(f, "reconnecting since {since}, last error: {last_error}")
            }
        }
    }
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

/// Runs one [`PgProjection`]: waits to be the one active instance, catches up from its
/// checkpoint, then follows the log live, until told to stop.
///
/// Several processes may run the same projection: an advisory lock, held on a connection of
/// the runner's own, lets exactly one apply events; the others wait and take over when the
/// holder stops or dies (its connection closes, releasing the lock). The active instance
/// applies every batch on that same connection, so an instance whose session ended (killed,
/// restarted, cut off) can apply nothing; it notices at its next batch or lock check, stops
/// reporting itself active and contends again.
pub struct ProjectionRunner<P> {
    pub(super) store: PgEventStore,
    /// Where the log is read, when not `store` (a hot standby; see [`Self::read_from`]).
    pub(super) reader: Option<PgEventStore>,
    pub(super) projection: Arc<P>,
    /// The key its checkpoint, parked events and lock are kept under: the projection's name,
    /// with `#{index}/{parts}` for one part of a split projection.
    pub(super) key: String,
    pub(super) part: Option<(u32, u32)>,
    /// Set on the runner a rebuild of a split projection uses: it applies every part's events
    /// and moves every part's checkpoint, under every part's lock.
    pub(super) all_parts: Option<u32>,
    pub(super) upcasters: Arc<Upcasters>,
    pub(super) policy: ErrorPolicy,
    pub(super) batch_size: usize,
    pub(super) poll_interval: Duration,
    pub(super) lock_retry: Duration,
    pub(super) lock_check: Duration,
    pub(super) sql: Arc<Statements>,
    pub(super) active: Arc<AtomicBool>,
    pub(super) contact: Arc<Contact>,
    pub(super) state: Arc<Mutex<RunnerState>>,
    /// Whether its state is exported as a metric: not for a blue/green build beside the live
    /// runner, whose key lives only while it builds (a stale `idle` series would alert).
    pub(super) metered: bool,
    /// Types of read categories passed over because nothing reads them, warned about once.
    pub(super) unknown_types: Arc<super::batch::TypeWatch>,
}

impl<P: PgProjection> ProjectionRunner<P> {
    /// A runner of `projection` over `store`'s global log, with the default error policy
    /// (retry, then park), batches of 500 events and the store's upcasters.
    pub fn new(store: PgEventStore, projection: P) -> Self {
        let sql = Arc::new(Statements::new(store.schema()));
        let upcasters = store.upcasters();
        // A delivering projection cannot park (see `PgProjection::delivers`).
        let policy = if projection.delivers() {
            ErrorPolicy {
                then: super::OnFailure::Stop,
                ..ErrorPolicy::default()
            }
        } else {
            ErrorPolicy::default()
        };
        Self {
            store,
            reader: None,
            key: projection.name().to_owned(),
            part: None,
            all_parts: None,
            projection: Arc::new(projection),
            upcasters,
            policy,
            batch_size: 500,
            poll_interval: Duration::from_millis(500),
            lock_retry: Duration::from_secs(1),
            lock_check: Duration::from_secs(1),
            sql,
            active: Arc::new(AtomicBool::new(false)),
            contact: Arc::new(Contact::new()),
            state: Arc::new(Mutex::new(RunnerState::Idle)),
            metered: true,
            unknown_types: Arc::default(),
        }
    }

    /// Makes this runner handle part `index` of `parts` (0-based) of the projection: only
    /// streams whose id hashes to `index`. Each part has its own checkpoint, lock and parked
    /// events, so parts run in parallel, each in its own process if wished; all events of one
    /// stream go to one part, in order. Run one runner per part, with the same `parts`: the
    /// store records the number, and a runner configured with another is refused
    /// ([`ProjectionError::Layout`]) until a [`rebuild`](Self::rebuild) re-splits the
    /// projection.
    ///
    /// # Panics
    /// When `parts` is 0 or `index >= parts`: a configuration error.
    pub fn part(mut self, index: u32, parts: u32) -> Self {
        assert!(index < parts, "part {index} of {parts} does not exist");
        self.key = part_key(self.projection.name(), index, parts);
        self.part = Some((index, parts));
        self
    }

    /// Reads the global log from `replica`, a pool on a hot standby of the store's server,
    /// while the read model, checkpoint, lock and parked events stay where the store is: the
    /// log's reading load leaves the primary. The standby's transaction horizon follows the
    /// primary's as it replays, so the runner never skips an event there either; it sees an
    /// event once the standby has replayed it, so its lag ([`status`](Self::status), measured
    /// against the primary's log) includes the standby's replay lag. It listens for wake-ups
    /// on the primary (a standby has no notifications). A read the standby cancels for a
    /// recovery conflict is retried like any transient error.
    pub fn read_from(mut self, replica: PgPool) -> Self {
        self.reader = Some(self.store.on_pool(replica));
        self
    }

    /// Lifts old events through `upcasters` before the projection sees them, instead of the
    /// store's ([`PgEventStore::with_upcasters`]).
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

    /// How often an idle active instance checks that its lock session is still alive
    /// (default 1 s): at most this long after losing it, it stops reporting itself active.
    pub fn lock_check_interval(mut self, interval: Duration) -> Self {
        self.lock_check = interval;
        self
    }

    /// The projection.
    pub fn projection(&self) -> &P {
        &self.projection
    }

    /// The key its checkpoint, parked events and lock are kept under.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Whether this instance holds the projection now: it holds the lock, and its lock
    /// session answered within the last `max(3 × lock check interval, 30 s)` (a session cut
    /// off by the network mid-batch is dropped by the server's keepalives within about 25 s,
    /// and another instance may then take over).
    pub fn is_active(&self) -> bool {
        let bound = self
            .lock_check
            .saturating_mul(3)
            .max(Duration::from_secs(30));
        self.active.load(Ordering::SeqCst) && self.contact.within(bound)
    }

    /// What this instance is doing now.
    pub fn state(&self) -> RunnerState {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(super) fn set_state(&self, state: RunnerState) {
        if self.metered {
            let held = matches!(state, RunnerState::Active);
            crate::telemetry::set_state(
                &self.metric_labels(),
                crate::telemetry::state_label(&state, false, held),
            );
        }
        *self.state.lock().unwrap_or_else(PoisonError::into_inner) = state;
    }

    /// The labels of this runner's series: the store's schema and the projection's key.
    pub(super) fn metric_labels(&self) -> Vec<metrics::Label> {
        crate::telemetry::projection(self.store.scope(), &self.key)
    }

    /// Sets this projection's gauges (lag in events and seconds, parked events, checkpoint,
    /// state) from its status and lock holder; see [`es_core::telemetry`]. A scrape handler or
    /// a timer calls it; counters and histograms are recorded as the work happens.
    ///
    /// The state is this instance's while it contends for the projection or reconnects;
    /// otherwise `running` (`rebuilding` during a rebuild) while any instance holds the
    /// projection's lock, and `idle` while none does, also after an interrupted rebuild.
    pub async fn observe(&self) -> Result<ProjectionStatus, ProjectionError> {
        use crate::telemetry::{gauge, seconds};
        use es_core::telemetry as names;
        let status = self.status().await?;
        // Asked of the database unless this instance holds it now: a cancelled run leaves
        // its state behind, not its lock.
        let held = self.is_active() || self.holder().await?.is_some();
        let labels = self.metric_labels();
        gauge(
            names::PROJECTION_LAG_EVENTS,
            &labels,
            status.lag_events as f64,
        );
        gauge(names::PROJECTION_LAG_SECONDS, &labels, seconds(status.lag));
        gauge(names::PROJECTION_PARKED, &labels, status.parked as f64);
        gauge(
            names::PROJECTION_CHECKPOINT,
            &labels,
            status.checkpoint.sequence as f64,
        );
        crate::telemetry::set_state(
            &labels,
            crate::telemetry::state_label(&status.state, status.rebuilding, held),
        );
        Ok(status)
    }

    /// Runs until `shutdown` completes: waits to become the active instance, catches up, then
    /// follows the log live. Shutdown stops it at once: a batch in flight is rolled back and
    /// applied again by the next run (its checkpoint did not move).
    ///
    /// Transient faults (the database restarting, a lost connection, a lost lock session) do
    /// not end it: it logs them, backs off (capped, with jitter), contends for the lock again
    /// and resumes from its checkpoint, reporting [`RunnerState::Reconnecting`] meanwhile.
    /// It returns an error only for what retrying cannot fix: the error policy said stop, the
    /// read model's setup failed, a configuration mismatch.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) -> Result<(), ProjectionError> {
        tokio::pin!(shutdown);
        let mut backoff = Backoff::new();
        let result = loop {
            let attempt = async {
                let mut lock = self.acquire_lock().await?;
                let result = self.follow_locked(&mut lock, &mut backoff).await;
                self.release(lock).await;
                result
            };
            let outcome = tokio::select! {
                outcome = attempt => outcome,
                () = &mut shutdown => break Ok(()),
            };
            match outcome {
                Ok(()) => break Ok(()),
                Err(error) if error.is_transient() => {
                    let wait = backoff.next();
                    let since = match self.state() {
                        RunnerState::Reconnecting { since, .. } => since,
                        _ => Utc::now(),
                    };
                    tracing::warn!(
                        projection = %self.key,
                        %error,
                        retry_in = ?wait,
                        "projection interrupted; resuming from its checkpoint"
                    );
                    self.set_state(RunnerState::Reconnecting {
                        since,
                        last_error: error.to_string(),
                    });
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = &mut shutdown => break Ok(()),
                    }
                }
                Err(error) => break Err(error),
            }
        };
        self.set_state(RunnerState::Idle);
        result
    }

    /// Holding the lock: sets up, catches up, then follows live. Returns only on errors: a
    /// shutdown cancels it between batches (the caller selects on it).
    async fn follow_locked(
        &self,
        lock: &mut ActiveLock,
        backoff: &mut Backoff,
    ) -> Result<(), ProjectionError> {
        self.setup(lock).await?;
        self.check_delivery(self.policy)?;
        self.check_reader().await?;
        let (checkpoint, mut rebuilding) = self.load_checkpoint().await?;
        let mut follower = self.follower_at(checkpoint);
        loop {
            let from = follower.position();
            match follower.try_next_batch().await {
                Ok(Some(batch)) => match self.process(lock, batch, from, self.policy).await? {
                    Some(_) => backoff.reset(),
                    None => follower = self.follower_at(self.load_checkpoint().await?.0),
                },
                Ok(None) => {
                    if rebuilding {
                        // A rebuild interrupted earlier is complete once caught up.
                        self.clear_rebuilding(lock).await?;
                        rebuilding = false;
                    }
                    self.set_state(RunnerState::Active);
                    backoff.reset();
                    lock.check(self, self.lock_check).await?;
                    follower.wait_for_more().await;
                }
                Err(
                    error @ StoreError::Malformed {
                        position: Some(at), ..
                    },
                ) if at > from => {
                    match self
                        .pass_malformed(lock, from, at, error, self.policy)
                        .await?
                    {
                        Some(next) => follower = self.follower_at(next),
                        None => follower = self.follower_at(self.load_checkpoint().await?.0),
                    }
                }
                Err(error) => return Err(self.store_error(error)),
            }
        }
    }

    /// Refuses what a projection that delivers outside the database cannot do: park, or
    /// deliver several parts' events from one runner (a rebuild of a split one).
    pub(super) fn check_delivery(&self, policy: ErrorPolicy) -> Result<(), ProjectionError> {
        self.check_delivery_split()?;
        if !self.projection.delivers() {
            return Ok(());
        }
        if policy.then == super::OnFailure::Park {
            return Err(ProjectionError::Unsupported {
                projection: self.key.clone(),
                reason:
                    "it cannot park events (a parked event never reaches the other system, and a \
                 replay would deliver it out of order): use OnFailure::Stop, or OnFailure::Skip \
                 to pass over stored rows that cannot be read"
                        .to_owned(),
            });
        }
        Ok(())
    }

    /// Refuses a runner that would deliver several parts' events to one destination (the
    /// rebuild of a split delivering projection): checked before anything is recorded.
    pub(super) fn check_delivery_split(&self) -> Result<(), ProjectionError> {
        if self.projection.delivers() && self.all_parts.is_some() {
            return Err(ProjectionError::Unsupported {
                projection: self.key.clone(),
                reason: "a split one cannot be rebuilt (one runner would deliver every part's \
                         events to one destination): rebuild it unsplit, then run its parts"
                    .to_owned(),
            });
        }
        Ok(())
    }

    /// For a runner given a replica: checks it is a physical copy of the store's server (a hot
    /// standby, or the server itself after a failover). A logical replica numbers transactions
    /// its own way, and its horizon says nothing of the primary's: reading the log there could
    /// skip events.
    pub(super) async fn check_reader(&self) -> Result<(), ProjectionError> {
        let Some(reader) = &self.reader else {
            return Ok(());
        };
        let in_recovery: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
            .fetch_one(reader.pool())
            .await
            .map_err(|e| self.store_error(e))?;
        // Readable by superusers and members of pg_monitor; without it, only the recovery check.
        let system = "SELECT system_identifier FROM pg_control_system()";
        let replica_system: Option<i64> = sqlx::query_scalar(system)
            .fetch_one(reader.pool())
            .await
            .ok();
        let primary_system: Option<i64> = sqlx::query_scalar(system)
            .fetch_one(self.store.pool())
            .await
            .ok();
        let refuse = |why: &str| ProjectionError::Store {
            projection: self.key.clone(),
            source: format!(
                "the pool given to read_from {why}: only a streaming (physical) replica of the \
                 store's server keeps the global log's order"
            )
            .into(),
            transient: false,
        };
        match (replica_system, primary_system) {
            (Some(replica), Some(primary)) if replica != primary => Err(refuse(&format!(
                "is on another cluster (system identifier {replica}, the store's {primary})"
            ))),
            (Some(_), Some(_)) => Ok(()),
            _ if in_recovery => Ok(()),
            _ => Err(refuse(
                "is not on a hot standby (pg_is_in_recovery() is false)",
            )),
        }
    }

    pub(super) fn follower_at(&self, position: Position) -> crate::LogFollower {
        let follower = match &self.reader {
            Some(replica) => replica.follow(position).wake_on(&self.store),
            None => self.store.follow(position),
        };
        follower
            .batch_size(self.batch_size)
            .poll_interval(self.poll_interval)
    }

    /// Applies every event readable now, then returns how many events it read. Waits to become
    /// the active instance first.
    pub async fn catch_up(&self) -> Result<u64, ProjectionError> {
        let mut lock = self.acquire_lock().await?;
        let result = async {
            self.setup(&mut lock).await?;
            self.catch_up_locked(&mut lock, self.policy, &mut |_| {})
                .await
        }
        .await;
        self.release(lock).await;
        result
    }

    /// Where the projection is, how far behind, how many events it parked, and what this
    /// instance is doing.
    pub async fn status(&self) -> Result<ProjectionStatus, ProjectionError> {
        let (checkpoint, rebuilding) = self.load_checkpoint().await?;
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
        let lag: Option<f64> = row.try_get(1).map_err(|e| self.store_error(e))?;
        let parked: i64 = row.try_get(2).map_err(|e| self.store_error(e))?;
        Ok(ProjectionStatus {
            name: self.key.clone(),
            checkpoint,
            head,
            lag_events: lag_events.max(0) as u64,
            lag: crate::convert::seconds(lag),
            parked: parked.max(0) as u64,
            rebuilding,
            state: self.state(),
        })
    }

    /// The keys whose checkpoints this runner moves: its own, or every part's for the runner
    /// of a split projection's rebuild.
    pub(super) fn checkpoint_keys(&self) -> Vec<String> {
        match self.all_parts {
            Some(parts) => (0..parts)
                .map(|i| part_key(self.projection.name(), i, parts))
                .collect(),
            None => vec![self.key.clone()],
        }
    }

    /// The number of parts this runner is configured for (1 when not split).
    pub(super) fn parts(&self) -> u32 {
        self.all_parts
            .or(self.part.map(|(_, parts)| parts))
            .unwrap_or(1)
    }

    /// Sets the read model up (tables, checkpoint rows) and checks the store records the same
    /// number of parts as this runner's, in one transaction on the lock's connection.
    pub(super) async fn setup(&self, lock: &mut ActiveLock) -> Result<(), ProjectionError> {
        let mut tx = lock.begin(self).await?;
        self.setup_in(&mut tx).await?;
        self.check_layout(&mut tx).await?;
        tx.commit().await.map_err(|e| self.store_error(e))
    }

    /// Creates the read model's tables and the checkpoint rows, if missing, within `conn`.
    pub(super) async fn setup_in(&self, conn: &mut PgConnection) -> Result<(), ProjectionError> {
        self.store
            .check_tenancy(conn)
            .await
            .map_err(|error| ProjectionError::Store {
                projection: self.key.clone(),
                transient: matches!(&error, crate::PgError::Database(e) if crate::is_transient(e)),
                source: error.into(),
            })?;
        self.setup_lock(conn).await?;
        self.projection
            .setup(&mut *conn)
            .await
            .map_err(|e| self.failed_setup(e))?;
        self.init_checkpoints(conn, &self.checkpoint_keys()).await
    }

    /// Takes the projection's setup lock until the transaction ends. Parts of a split
    /// projection start side by side, and concurrent `CREATE TABLE IF NOT EXISTS` of one table
    /// can fail on PostgreSQL's catalog: one setup (or swap) at a time per projection.
    pub(super) async fn setup_lock(&self, conn: &mut PgConnection) -> Result<(), ProjectionError> {
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind(format!(
                "es-projection-setup {} {}",
                self.store.schema(),
                self.projection.name()
            ))
            .execute(&mut *conn)
            .await
            .map_err(|e| self.store_error(e))?;
        Ok(())
    }

    pub(super) async fn init_checkpoints(
        &self,
        conn: &mut PgConnection,
        keys: &[String],
    ) -> Result<(), ProjectionError> {
        self.execute_on_keys(conn, &self.sql.init_checkpoints, keys)
            .await
            .map(|_| ())
    }

    /// Runs one of the runner's statements whose only parameter is a list of keys.
    pub(super) async fn execute_on_keys(
        &self,
        conn: &mut PgConnection,
        statement: &Arc<str>,
        keys: &[String],
    ) -> Result<u64, ProjectionError> {
        let done = sqlx::query(AssertSqlSafe(Arc::clone(statement)))
            .bind(keys)
            .execute(&mut *conn)
            .await
            .map_err(|e| self.store_error(e))?;
        Ok(done.rows_affected())
    }

    /// Ends an interrupted rebuild's mark once the read model has caught up.
    async fn clear_rebuilding(&self, lock: &mut ActiveLock) -> Result<(), ProjectionError> {
        let conn = lock.conn(self)?;
        let cleared = self
            .execute_on_keys(conn, &self.sql.clear_rebuilding, &self.checkpoint_keys())
            .await;
        match cleared {
            Ok(_) => Ok(()),
            Err(error) => Err(lock.classify(self, error).await),
        }
    }

    /// Whether a rebuild reset the read model and has not caught up yet.
    pub(crate) async fn rebuild_unfinished(&self) -> Result<bool, ProjectionError> {
        Ok(self.load_checkpoint().await?.1)
    }

    /// The checkpoint (and whether a rebuild is unfinished), from the pool.
    pub(super) async fn load_checkpoint(&self) -> Result<(Position, bool), ProjectionError> {
        let row: Option<(i64, i64, bool)> =
            sqlx::query_as(AssertSqlSafe(self.sql.load_checkpoint.clone()))
                .bind(&self.key)
                .fetch_optional(self.store.pool())
                .await
                .map_err(|e| self.store_error(e))?;
        Ok(row.map_or((Position::START, false), |(t, p, rebuilding)| {
            (position_from_columns(t, p), rebuilding)
        }))
    }

    pub(super) fn store_error<E>(&self, error: E) -> ProjectionError
    where
        E: Into<es_core::BoxError> + Transient,
    {
        ProjectionError::Store {
            projection: self.key.clone(),
            transient: error.is_transient(),
            source: error.into(),
        }
    }

    pub(super) fn failed_setup(&self, error: es_core::BoxError) -> ProjectionError {
        ProjectionError::Store {
            projection: self.key.clone(),
            // A lost connection or a deadlock during setup is worth another try; a setup
            // that is wrong is not.
            transient: crate::error::transient_source(error.as_ref()),
            source: format!("setting up the read model failed: {error}").into(),
        }
    }
}

/// The key part `index` of `parts` of projection `name` keeps its checkpoint under.
pub(super) fn part_key(name: &str, index: u32, parts: u32) -> String {
    format!("{name}#{index}/{parts}")
}

impl<P> std::fmt::Debug for ProjectionRunner<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProjectionRunner")
            .field("key", &self.key)
            .field("schema", self.store.schema())
            .field("policy", &self.policy)
            .field("batch_size", &self.batch_size)
            .finish()
    }
}

/// FNV-1a: stable across processes, releases and platforms, unlike `std`'s hasher, so every
/// instance agrees on which part owns a stream.
pub(super) fn stream_hash(stream: &str) -> u64 {
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
