//! Sagas on PostgreSQL: instance states, the commands they issue, their deadlines and the
//! checkpoint commit in one transaction (`feed.rs`); a dispatcher then executes the commands
//! from that outbox under leases, never inside a transaction (`outbox.rs`), and a firing loop
//! runs deadlines that fall due (`deadlines.rs`).

mod deadlines;
mod feed;
mod outbox;
mod sql;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use es_core::{BoxError, CommandDispatcher, Saga};
use sqlx::AssertSqlSafe;
use uuid::Uuid;

pub use deadlines::DeadlineStatus;
pub use feed::SagaProjection;
pub use outbox::{DeadLetter, OutboxStatus};

use crate::PgEventStore;
use crate::error::Transient;
use crate::projection::{ProjectionError, ProjectionRunner};
use sql::Statements;

/// Runs a [`Saga`] durably: a projection runner feeds it the global log (one active instance,
/// catch up then live, checkpointed), and each event's state change and issued commands commit
/// with the checkpoint; a dispatcher executes the issued commands and removes them once done.
///
/// Crash anywhere and nothing is lost or done twice: an event whose transaction did not commit
/// is delivered again and issues the same command ids; a command that ran but was not removed
/// runs again as an idempotent command, which does nothing the second time.
///
/// No transaction waits on a command: the dispatcher claims commands with a lease in one short
/// statement, runs them outside any transaction (several at once, each instance's in order),
/// and removes each in another. A command that fails is tried again later, waiting longer each
/// time, and after `max_attempts` is dead-lettered ([`dead_letters`](Self::dead_letters)),
/// so one bad command never holds up the others.
pub struct PgSagaRunner<S: Saga, D> {
    runner: ProjectionRunner<SagaProjection<S>>,
    dispatcher: D,
    store: PgEventStore,
    sql: Arc<Statements>,
    dispatch: DispatchSettings,
    /// The commands this dispatcher is running, by outbox seq (see `outbox::InFlight`).
    in_flight: Arc<outbox::InFlight>,
}

/// How the dispatcher runs commands.
#[derive(Clone, Copy, Debug)]
struct DispatchSettings {
    interval: Duration,
    lease: Duration,
    max_attempts: u32,
    backoff: Duration,
    concurrency: usize,
    /// This dispatcher's name in the leases it takes.
    id: Uuid,
}

impl<S: Saga, D: CommandDispatcher<S::Command>> PgSagaRunner<S, D> {
    /// A runner of `saga` over `store`'s global log, executing its commands with `dispatcher`.
    pub fn new(store: PgEventStore, saga: S, dispatcher: D) -> Self {
        let sql = Arc::new(Statements::new(store.schema()));
        let projection = SagaProjection {
            saga,
            sql: Arc::clone(&sql),
        };
        Self {
            runner: ProjectionRunner::new(store.clone(), projection)
                .error_policy(crate::ErrorPolicy::STOP),
            dispatcher,
            store,
            sql,
            dispatch: DispatchSettings {
                interval: Duration::from_millis(100),
                lease: Duration::from_secs(60),
                max_attempts: 10,
                backoff: Duration::from_secs(1),
                concurrency: 8,
                id: Uuid::now_v7(),
            },
            in_flight: Arc::default(),
        }
    }

    /// Adjusts the runner feeding the saga (batch size, poll interval, upcasters...). Its error
    /// policy is stop by default: a saga that skipped an event would leave a workflow stuck.
    pub fn configure(
        mut self,
        f: impl FnOnce(ProjectionRunner<SagaProjection<S>>) -> ProjectionRunner<SagaProjection<S>>,
    ) -> Self {
        self.runner = f(self.runner);
        self
    }

    /// How often the dispatcher looks for issued commands and due deadlines when it found none
    /// (default 100 ms): also how late a deadline may fire.
    pub fn dispatch_interval(mut self, interval: Duration) -> Self {
        self.dispatch.interval = interval;
        self
    }

    /// How long a claimed command is reserved for this dispatcher (default 60 s). The lease
    /// is renewed while the command runs; a dispatcher that dies leaves it to expire, and
    /// another dispatcher runs the command again (idempotently).
    pub fn lease(mut self, lease: Duration) -> Self {
        self.dispatch.lease = lease.max(Duration::from_millis(100));
        self
    }

    /// How many times a command is tried before it is dead-lettered (default 10).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.dispatch.max_attempts = attempts.max(1);
        self
    }

    /// The wait after a command's first failure (default 1 s), doubling with each further
    /// failure up to 5 minutes.
    pub fn retry_backoff(mut self, backoff: Duration) -> Self {
        self.dispatch.backoff = backoff;
        self
    }

    /// How many commands run at once (default 8); an instance's commands always run one
    /// after another, in the order issued.
    pub fn dispatch_concurrency(mut self, commands: usize) -> Self {
        self.dispatch.concurrency = commands.max(1);
        self
    }

    /// Runs until `shutdown` completes: feeds the saga live, fires deadlines as they fall due
    /// and dispatches the commands issued. When the feed stops for good (its error policy said
    /// stop, a state does not deserialize), the dispatcher stops too and `run` returns the
    /// feed's error. Transient faults (a restart, lost connections) are ridden out by both,
    /// with backoff, logged through `tracing`.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) -> Result<(), ProjectionError> {
        let pool_size = self.store.pool().options().get_max_connections();
        if pool_size < 2 {
            return Err(ProjectionError::Store {
                projection: self.name().to_owned(),
                transient: false,
                source: format!(
                    "a saga runner needs a pool of at least 2 connections (its feed reads while \
                     its dispatcher claims commands); this store's pool allows {pool_size}"
                )
                .into(),
            });
        }
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let feed = async {
            let result = self.runner.run(until_stopped(stopped.clone())).await;
            // Whatever ended the feed ends the dispatcher.
            let _ = stop.send(true);
            result
        };
        let dispatch = async {
            let result = self.dispatch_until(stopped.clone()).await;
            if result.is_err() {
                // A dispatcher that stopped for good ends the feed too: commands would pile up
                // with nothing to run them.
                let _ = stop.send(true);
            }
            result
        };
        let work = async { tokio::join!(feed, dispatch) };
        tokio::pin!(work, shutdown);
        let (fed, dispatched) = tokio::select! {
            done = &mut work => done,
            () = &mut shutdown => {
                let _ = stop.send(true);
                work.await
            }
        };
        fed.and(dispatched)
    }

    /// Pool connections this runner may use at once while it runs: one for its feed's reads,
    /// one for claiming and finishing commands, and one per command running (commands that use
    /// the same pool; see [`dispatch_concurrency`](Self::dispatch_concurrency)).
    pub fn pool_demand(&self) -> u32 {
        let pool = self.store.pool().options().get_max_connections() as usize;
        2 + self.dispatch.concurrency.min(pool) as u32
    }

    /// Feeds the saga every event readable now (state and outbox only; see
    /// [`dispatch_pending`](Self::dispatch_pending)). Returns how many events it read.
    pub async fn catch_up(&self) -> Result<u64, ProjectionError> {
        self.runner.catch_up().await
    }

    /// The state of `instance`, if the saga has seen it.
    pub async fn state(&self, instance: &str) -> Result<Option<S::State>, ProjectionError> {
        let text: Option<String> = sqlx::query_scalar(AssertSqlSafe(self.sql.read_state.clone()))
            .bind(self.name())
            .bind(instance)
            .fetch_optional(self.store.pool())
            .await
            .map_err(|e| self.error(e))?;
        text.map(|t| serde_json::from_str(&t))
            .transpose()
            .map_err(|e| self.error(e))
    }

    /// The runner feeding the saga: status, lag, parked events.
    pub fn feed(&self) -> &ProjectionRunner<SagaProjection<S>> {
        &self.runner
    }

    /// The stored event types the saga's events cannot read: versions newer than its code's,
    /// or older ones no upcaster lifts. Types it does not know are not listed: a saga's event
    /// type is by design the few it reacts to.
    pub async fn unreadable_types(&self) -> Result<Vec<crate::UnreadableType>, ProjectionError> {
        self.runner.unreadable(false).await
    }

    /// [`unreadable_types`](Self::unreadable_types) as a refusal
    /// ([`ProjectionError::UnreadableTypes`]), for start-up.
    pub async fn check_stored_types(&self) -> Result<(), ProjectionError> {
        let types = self.unreadable_types().await?;
        if types.is_empty() {
            return Ok(());
        }
        Err(ProjectionError::UnreadableTypes {
            projection: self.runner.key().to_owned(),
            types,
        })
    }

    /// Sets the saga's gauges: its feed's (as a projection, see
    /// [`ProjectionRunner::observe`]), the outbox (pending, dead-lettered, age of the oldest)
    /// and deadlines (waiting, due, failing); see [`es_core::telemetry`].
    pub async fn observe(&self) -> Result<(OutboxStatus, DeadlineStatus), ProjectionError> {
        use crate::telemetry::{gauge, seconds};
        use es_core::telemetry as names;
        self.runner.observe().await?;
        let outbox = self.outbox_status().await?;
        let deadlines = self.deadline_status().await?;
        let labels = self.metric_labels();
        gauge(names::SAGA_OUTBOX_PENDING, &labels, outbox.pending as f64);
        gauge(
            names::SAGA_OUTBOX_DEAD,
            &labels,
            outbox.dead_lettered as f64,
        );
        gauge(
            names::SAGA_OUTBOX_OLDEST_SECONDS,
            &labels,
            seconds(outbox.oldest_pending),
        );
        gauge(
            names::SAGA_DEADLINES_WAITING,
            &labels,
            deadlines.waiting as f64,
        );
        gauge(names::SAGA_DEADLINES_DUE, &labels, deadlines.due as f64);
        gauge(
            names::SAGA_DEADLINES_FAILING,
            &labels,
            deadlines.failing as f64,
        );
        Ok((outbox, deadlines))
    }

    /// The labels of this saga's series: the store's schema and the saga's name.
    pub(crate) fn metric_labels(&self) -> Vec<metrics::Label> {
        crate::telemetry::saga(self.store.scope(), self.name())
    }

    /// Whether this instance feeds the saga now.
    pub fn is_active(&self) -> bool {
        self.runner.is_active()
    }

    fn name(&self) -> &str {
        self.runner.projection().saga.name()
    }

    fn error<E: Into<BoxError> + Transient>(&self, error: E) -> ProjectionError {
        ProjectionError::Store {
            projection: self.name().to_owned(),
            transient: error.is_transient(),
            source: error.into(),
        }
    }
}

/// Completes once `stopped` says so (or its sender is gone).
async fn until_stopped(mut stopped: tokio::sync::watch::Receiver<bool>) {
    while !*stopped.borrow_and_update() {
        if stopped.changed().await.is_err() {
            return;
        }
    }
}

/// The wait before attempt `attempts + 1` of something that failed `attempts` times: `first`,
/// doubling, capped.
fn retry_wait(first: Duration, attempts: u32, cap: Duration) -> Duration {
    first
        .saturating_mul(1 << attempts.saturating_sub(1).min(20))
        .min(cap)
}
