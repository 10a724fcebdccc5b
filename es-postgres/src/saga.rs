//! Sagas on PostgreSQL: instance states, the commands they issue, their deadlines and the
//! checkpoint commit in one transaction; a dispatcher then executes the commands from that
//! outbox, and a firing loop runs deadlines that fall due.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use es_core::{
    BoxError, Cause, CommandContext, CommandDispatcher, Deadline, Envelope, Issued, Saga,
    ScheduledDeadline, issue, issue_on_deadline, rescheduled_deadlines,
};
use sqlx::{AssertSqlSafe, PgConnection, Row};
use uuid::Uuid;

use crate::error::Transient;
use crate::projection::{PgProjection, ProjectionError, ProjectionRunner};
use crate::{PgEventStore, SchemaName};

/// Runs a [`Saga`] durably: a projection runner feeds it the global log (one active instance,
/// catch up then live, checkpointed), and each event's state change and issued commands commit
/// with the checkpoint; a dispatcher executes the issued commands and removes them once done.
///
/// Crash anywhere and nothing is lost or done twice: an event whose transaction did not commit
/// is delivered again and issues the same command ids; a command that ran but was not removed
/// runs again as an idempotent command, which does nothing the second time.
pub struct PgSagaRunner<S: Saga, D> {
    runner: ProjectionRunner<SagaProjection<S>>,
    dispatcher: D,
    store: PgEventStore,
    sql: Arc<Statements>,
    dispatch_interval: Duration,
}

struct Statements {
    lock_state: String,
    read_state: String,
    save_state: String,
    enqueue: String,
    next_pending: String,
    done: String,
    failed: String,
    pending: String,
    reset_states: String,
    reset_outbox: String,
    reset_deadlines: String,
    drop_deadlines: String,
    upsert_deadlines: String,
    due_deadlines: String,
    lock_deadline: String,
    mark_fired: String,
    pending_deadlines: String,
    deadline_status: String,
}

impl Statements {
    fn new(schema: &SchemaName) -> Self {
        let s = schema.quoted();
        Self {
            lock_state: format!(
                "SELECT state::text FROM {s}.saga_states WHERE saga = $1 AND instance = $2 FOR UPDATE"
            ),
            read_state: format!(
                "SELECT state::text FROM {s}.saga_states WHERE saga = $1 AND instance = $2"
            ),
            save_state: format!(
                "INSERT INTO {s}.saga_states (saga, instance, state) VALUES ($1, $2, $3::json) \
                 ON CONFLICT (saga, instance) DO UPDATE SET state = EXCLUDED.state, updated_at = now()"
            ),
            enqueue: format!(
                "INSERT INTO {s}.saga_outbox (saga, command_id, instance, command, correlation_id, \
                 causation_id) VALUES ($1, $2, $3, $4::json, $5, $6) \
                 ON CONFLICT (saga, command_id) DO NOTHING"
            ),
            // SKIP LOCKED: several dispatchers share the outbox, each command held by one.
            next_pending: format!(
                "SELECT seq, command_id, command::text, correlation_id, causation_id \
                 FROM {s}.saga_outbox WHERE saga = $1 ORDER BY seq LIMIT 1 FOR UPDATE SKIP LOCKED"
            ),
            done: format!("DELETE FROM {s}.saga_outbox WHERE seq = $1"),
            failed: format!(
                "UPDATE {s}.saga_outbox SET attempts = attempts + 1, last_error = $2 WHERE seq = $1"
            ),
            pending: format!("SELECT count(*) FROM {s}.saga_outbox WHERE saga = $1"),
            reset_states: format!("DELETE FROM {s}.saga_states WHERE saga = $1"),
            reset_outbox: format!("DELETE FROM {s}.saga_outbox WHERE saga = $1"),
            reset_deadlines: format!("DELETE FROM {s}.saga_deadlines WHERE saga = $1"),
            drop_deadlines: format!(
                "DELETE FROM {s}.saga_deadlines \
                 WHERE saga = $1 AND instance = $2 AND NOT (name = ANY($3))"
            ),
            // An unchanged deadline keeps its fire id and fired mark; a new due time re-arms it.
            upsert_deadlines: format!(
                "INSERT INTO {s}.saga_deadlines AS d (saga, instance, name, due, fire_id, \
                     correlation_id, causation_id) \
                 SELECT $1, $2, w.name, w.due, w.fire_id, w.correlation_id, w.causation_id \
                 FROM UNNEST($3::text[], $4::timestamptz[], $5::uuid[], $6::uuid[], $7::uuid[]) \
                     AS w(name, due, fire_id, correlation_id, causation_id) \
                 ON CONFLICT (saga, instance, name) DO UPDATE SET due = EXCLUDED.due, \
                     fire_id = EXCLUDED.fire_id, correlation_id = EXCLUDED.correlation_id, \
                     causation_id = EXCLUDED.causation_id, fired_at = NULL \
                 WHERE d.due <> EXCLUDED.due"
            ),
            due_deadlines: format!(
                "SELECT instance, name FROM {s}.saga_deadlines \
                 WHERE saga = $1 AND fired_at IS NULL AND due <= $2 ORDER BY due LIMIT $3"
            ),
            lock_deadline: format!(
                "SELECT due, fire_id, correlation_id, causation_id FROM {s}.saga_deadlines \
                 WHERE saga = $1 AND instance = $2 AND name = $3 AND fired_at IS NULL \
                   AND due <= $4 FOR UPDATE"
            ),
            mark_fired: format!(
                "UPDATE {s}.saga_deadlines SET fired_at = now() \
                 WHERE saga = $1 AND instance = $2 AND name = $3"
            ),
            deadline_status: format!(
                "SELECT count(*), count(*) FILTER (WHERE due <= clock_timestamp()), min(due) \
                 FROM {s}.saga_deadlines WHERE saga = $1 AND fired_at IS NULL"
            ),
            pending_deadlines: format!(
                "SELECT name, due FROM {s}.saga_deadlines \
                 WHERE saga = $1 AND instance = $2 AND fired_at IS NULL ORDER BY due, name"
            ),
        }
    }
}

/// A saga's deadlines that have not fired, for monitoring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeadlineStatus {
    /// Deadlines waiting to fire.
    pub waiting: u64,
    /// Of those, the ones already due.
    pub due: u64,
    /// When the next one falls due.
    pub next: Option<DateTime<Utc>>,
}

/// A saga seen as a projection whose read model is its instance states and outbox: what
/// [`PgSagaRunner`] feeds through a [`ProjectionRunner`].
pub struct SagaProjection<S> {
    saga: S,
    sql: Arc<Statements>,
}

#[async_trait]
impl<S: Saga> PgProjection for SagaProjection<S> {
    type Event = S::Event;

    fn name(&self) -> &str {
        self.saga.name()
    }

    async fn setup(&self, _conn: &mut PgConnection) -> Result<(), BoxError> {
        // The tables come with the store's migrations.
        Ok(())
    }

    async fn reset(&self, conn: &mut PgConnection) -> Result<(), BoxError> {
        for statement in [
            &self.sql.reset_states,
            &self.sql.reset_outbox,
            &self.sql.reset_deadlines,
        ] {
            sqlx::query(AssertSqlSafe(statement.clone()))
                .bind(self.saga.name())
                .execute(&mut *conn)
                .await?;
        }
        Ok(())
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        event: &Envelope<S::Event>,
    ) -> Result<(), BoxError> {
        let Some(instance) = self.saga.instance_of(event) else {
            return Ok(());
        };
        let mut state = self.lock_state(conn, &instance).await?;
        let before = self.saga.deadlines(&state);
        let issued = issue(&self.saga, &mut state, event);
        let wanted =
            rescheduled_deadlines(&self.saga, &instance, &before, &state, Cause::event(event))?;
        self.save(conn, &instance, &state, issued, wanted).await
    }
}

impl<S: Saga> SagaProjection<S> {
    /// The instance's state, its row locked until the transaction ends (the feed and the
    /// deadline loop both take this lock first, so they never deadlock on each other).
    async fn lock_state(
        &self,
        conn: &mut PgConnection,
        instance: &str,
    ) -> Result<S::State, BoxError> {
        let name = self.saga.name();
        let stored: Option<String> = sqlx::query_scalar(AssertSqlSafe(self.sql.lock_state.clone()))
            .bind(name)
            .bind(instance)
            .fetch_optional(&mut *conn)
            .await?;
        Ok(match stored {
            Some(text) => serde_json::from_str(&text).map_err(|e| {
                format!("the state of saga {name} instance {instance} does not deserialize: {e}")
            })?,
            None => S::State::default(),
        })
    }

    /// Writes the instance's new state, the commands it issued and, when they changed, the
    /// deadlines it now waits on (the rows always match what the saved state lists, so an
    /// unchanged list needs no statement), within the caller's transaction.
    async fn save(
        &self,
        conn: &mut PgConnection,
        instance: &str,
        state: &S::State,
        issued: Vec<Issued<S::Command>>,
        wanted: Option<Vec<ScheduledDeadline>>,
    ) -> Result<(), BoxError> {
        let name = self.saga.name();
        sqlx::query(AssertSqlSafe(self.sql.save_state.clone()))
            .bind(name)
            .bind(instance)
            .bind(serde_json::to_string(state)?)
            .execute(&mut *conn)
            .await?;
        for Issued { command, context } in issued {
            sqlx::query(AssertSqlSafe(self.sql.enqueue.clone()))
                .bind(name)
                .bind(context.command_id)
                .bind(instance)
                .bind(serde_json::to_string(&command)?)
                .bind(context.effective_correlation_id())
                .bind(context.effective_causation_id())
                .execute(&mut *conn)
                .await?;
        }
        let Some(wanted) = wanted else {
            return Ok(());
        };
        let names: Vec<&str> = wanted.iter().map(|w| w.deadline.name()).collect();
        sqlx::query(AssertSqlSafe(self.sql.drop_deadlines.clone()))
            .bind(name)
            .bind(instance)
            .bind(&names)
            .execute(&mut *conn)
            .await?;
        if !wanted.is_empty() {
            let dues: Vec<DateTime<Utc>> = wanted.iter().map(|w| w.deadline.due()).collect();
            let fire_ids: Vec<Uuid> = wanted.iter().map(|w| w.fire_id).collect();
            let correlations: Vec<Uuid> = wanted.iter().map(|w| w.correlation_id).collect();
            let causations: Vec<Uuid> = wanted.iter().map(|w| w.causation_id).collect();
            sqlx::query(AssertSqlSafe(self.sql.upsert_deadlines.clone()))
                .bind(name)
                .bind(instance)
                .bind(&names)
                .bind(&dues)
                .bind(&fire_ids)
                .bind(&correlations)
                .bind(&causations)
                .execute(&mut *conn)
                .await?;
        }
        Ok(())
    }

    /// Fires `instance`'s deadline `name` if it is still unfired and due by `at`, in `conn`'s
    /// transaction: runs the saga's reaction, marks it fired, saves what the reaction changed.
    /// Returns whether it fired.
    async fn fire(
        &self,
        conn: &mut PgConnection,
        instance: &str,
        name: &str,
        at: DateTime<Utc>,
    ) -> Result<bool, BoxError> {
        let mut state = self.lock_state(conn, instance).await?;
        let saga = self.saga.name();
        let Some(row) = sqlx::query(AssertSqlSafe(self.sql.lock_deadline.clone()))
            .bind(saga)
            .bind(instance)
            .bind(name)
            .bind(at)
            .fetch_optional(&mut *conn)
            .await?
        else {
            return Ok(false); // fired or rescheduled by someone else meanwhile
        };
        let scheduled = ScheduledDeadline {
            instance: instance.to_owned(),
            deadline: Deadline::new(name, row.try_get(0)?),
            fire_id: row.try_get(1)?,
            correlation_id: row.try_get(2)?,
            causation_id: row.try_get(3)?,
        };
        let before = self.saga.deadlines(&state);
        // Fired only if the instance still lists it: the saga may have moved on.
        let issued = if before.contains(&scheduled.deadline) {
            issue_on_deadline(&self.saga, &mut state, &scheduled)
        } else {
            Vec::new()
        };
        sqlx::query(AssertSqlSafe(self.sql.mark_fired.clone()))
            .bind(saga)
            .bind(instance)
            .bind(name)
            .execute(&mut *conn)
            .await?;
        let cause = Cause::deadline(&scheduled);
        let wanted = rescheduled_deadlines(&self.saga, instance, &before, &state, cause)?;
        self.save(conn, instance, &state, issued, wanted).await?;
        Ok(true)
    }
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
            dispatch_interval: Duration::from_millis(100),
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
        self.dispatch_interval = interval;
        self
    }

    /// Runs until `shutdown` completes: feeds the saga live, fires deadlines as they fall due
    /// and dispatches the commands issued. When the feed stops for good (its error policy said
    /// stop, a state does not deserialize), the dispatcher stops too and `run` returns the
    /// feed's error; transient faults are ridden out by both.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) -> Result<(), ProjectionError> {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let feed = async {
            let result = self.runner.run(until_stopped(stopped.clone())).await;
            // Whatever ended the feed ends the dispatcher.
            let _ = stop.send(true);
            result
        };
        let dispatch = self.dispatch_until(stopped.clone());
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

    async fn dispatch_until(
        &self,
        mut stopped: tokio::sync::watch::Receiver<bool>,
    ) -> Result<(), ProjectionError> {
        loop {
            if *stopped.borrow() {
                return Ok(());
            }
            let fired = self.fire_due_deadlines().await.unwrap_or_else(|error| {
                tracing::warn!(saga = self.name(), %error, "firing deadlines failed; retrying");
                0
            });
            match self.dispatch_pending().await {
                Ok(0) if fired == 0 => {}
                Ok(_) => continue,
                Err(error) => {
                    tracing::warn!(saga = self.name(), %error, "dispatch failed; retrying")
                }
            }
            tokio::select! {
                _ = stopped.changed() => {}
                () = tokio::time::sleep(self.dispatch_interval) => {}
            }
        }
    }

    /// Feeds the saga every event readable now (state and outbox only; see
    /// [`dispatch_pending`](Self::dispatch_pending)). Returns how many events it read.
    pub async fn catch_up(&self) -> Result<u64, ProjectionError> {
        self.runner.catch_up().await
    }

    /// Executes the issued commands waiting in the outbox, oldest first, each removed in the
    /// transaction that held it; stops at the first failure (left for the next round). Returns
    /// how many ran.
    pub async fn dispatch_pending(&self) -> Result<u64, ProjectionError> {
        let mut done = 0;
        loop {
            let mut tx = self.store.pool().begin().await.map_err(|e| self.error(e))?;
            let Some(row) = sqlx::query(AssertSqlSafe(self.sql.next_pending.clone()))
                .bind(self.name())
                .fetch_optional(&mut *tx)
                .await
                .map_err(|e| self.error(e))?
            else {
                return Ok(done);
            };
            let seq: i64 = row.try_get(0).map_err(|e| self.error(e))?;
            let command_id: Uuid = row.try_get(1).map_err(|e| self.error(e))?;
            let text: String = row.try_get(2).map_err(|e| self.error(e))?;
            let correlation: Uuid = row.try_get(3).map_err(|e| self.error(e))?;
            let causation: Uuid = row.try_get(4).map_err(|e| self.error(e))?;
            let command: S::Command = serde_json::from_str(&text).map_err(|e| {
                self.error(format!(
                    "issued command {command_id} does not deserialize: {e}"
                ))
            })?;
            let context = CommandContext::new()
                .idempotent(command_id)
                .correlated_with(correlation)
                .caused_by(causation);
            match self.dispatcher.dispatch(command, context).await {
                Ok(()) => {
                    sqlx::query(AssertSqlSafe(self.sql.done.clone()))
                        .bind(seq)
                        .execute(&mut *tx)
                        .await
                        .map_err(|e| self.error(e))?;
                    tx.commit().await.map_err(|e| self.error(e))?;
                    done += 1;
                }
                Err(error) => {
                    sqlx::query(AssertSqlSafe(self.sql.failed.clone()))
                        .bind(seq)
                        .bind(error.to_string())
                        .execute(&mut *tx)
                        .await
                        .map_err(|e| self.error(e))?;
                    tx.commit().await.map_err(|e| self.error(e))?;
                    return Err(ProjectionError::Store {
                        projection: self.name().to_owned(),
                        transient: true,
                        source: format!("dispatching command {command_id} failed: {error}").into(),
                    });
                }
            }
        }
    }

    /// Fires every deadline due now, by the database's clock (the clock that stamps the
    /// events sagas derive due times from), that has not fired; see
    /// [`fire_deadlines_due_by`](Self::fire_deadlines_due_by).
    pub async fn fire_due_deadlines(&self) -> Result<u64, ProjectionError> {
        let now: DateTime<Utc> = sqlx::query_scalar("SELECT clock_timestamp()")
            .fetch_one(self.store.pool())
            .await
            .map_err(|e| self.error(e))?;
        self.fire_deadlines_due_by(now).await
    }

    /// Fires every deadline due by `at` that has not fired, each in a transaction of its own:
    /// the saga's [`on_deadline`](Saga::on_deadline) runs on the locked instance state, and the
    /// new state, the commands it issued (to the outbox, for `dispatch_pending`) and the
    /// deadline's fired mark commit together. Several processes may fire at once; each deadline
    /// fires once. Returns how many fired.
    pub async fn fire_deadlines_due_by(&self, at: DateTime<Utc>) -> Result<u64, ProjectionError> {
        const PAGE: i64 = 100;
        let projection = self.runner.projection();
        let mut fired = 0;
        loop {
            let due: Vec<(String, String)> =
                sqlx::query_as(AssertSqlSafe(self.sql.due_deadlines.clone()))
                    .bind(self.name())
                    .bind(at)
                    .bind(PAGE)
                    .fetch_all(self.store.pool())
                    .await
                    .map_err(|e| self.error(e))?;
            let full_page = due.len() as i64 == PAGE;
            for (instance, name) in due {
                let mut tx = self.store.pool().begin().await.map_err(|e| self.error(e))?;
                if projection
                    .fire(&mut tx, &instance, &name, at)
                    .await
                    .map_err(|e| self.error(format!("deadline {name} of {instance}: {e}")))?
                {
                    tx.commit().await.map_err(|e| self.error(e))?;
                    fired += 1;
                }
            }
            if !full_page {
                return Ok(fired);
            }
        }
    }

    /// How many deadlines wait to fire, how many of them are due already (more than a few
    /// dispatch intervals' worth means nothing is firing them), and the next due time.
    pub async fn deadline_status(&self) -> Result<DeadlineStatus, ProjectionError> {
        let (waiting, overdue, next): (i64, i64, Option<DateTime<Utc>>) =
            sqlx::query_as(AssertSqlSafe(self.sql.deadline_status.clone()))
                .bind(self.name())
                .fetch_one(self.store.pool())
                .await
                .map_err(|e| self.error(e))?;
        Ok(DeadlineStatus {
            waiting: waiting.max(0) as u64,
            due: overdue.max(0) as u64,
            next,
        })
    }

    /// The deadlines `instance` waits on that have not fired, soonest first.
    pub async fn deadlines(&self, instance: &str) -> Result<Vec<Deadline>, ProjectionError> {
        let rows: Vec<(String, DateTime<Utc>)> =
            sqlx::query_as(AssertSqlSafe(self.sql.pending_deadlines.clone()))
                .bind(self.name())
                .bind(instance)
                .fetch_all(self.store.pool())
                .await
                .map_err(|e| self.error(e))?;
        Ok(rows
            .into_iter()
            .map(|(name, due)| Deadline::new(name, due))
            .collect())
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

    /// How many issued commands wait to run.
    pub async fn pending(&self) -> Result<u64, ProjectionError> {
        let count: i64 = sqlx::query_scalar(AssertSqlSafe(self.sql.pending.clone()))
            .bind(self.name())
            .fetch_one(self.store.pool())
            .await
            .map_err(|e| self.error(e))?;
        Ok(count.max(0) as u64)
    }

    /// The runner feeding the saga: status, lag, parked events.
    pub fn feed(&self) -> &ProjectionRunner<SagaProjection<S>> {
        &self.runner
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
