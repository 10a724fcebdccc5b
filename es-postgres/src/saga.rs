//! Sagas on PostgreSQL: instance states, the commands they issue and the checkpoint commit in
//! one transaction; a dispatcher then executes the commands from that outbox.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use es_core::{BoxError, CommandContext, CommandDispatcher, Envelope, Issued, Saga, issue};
use sqlx::{AssertSqlSafe, PgConnection, Row};
use uuid::Uuid;

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
        }
    }
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
        for statement in [&self.sql.reset_states, &self.sql.reset_outbox] {
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
        let name = self.saga.name();
        let stored: Option<String> = sqlx::query_scalar(AssertSqlSafe(self.sql.lock_state.clone()))
            .bind(name)
            .bind(&instance)
            .fetch_optional(&mut *conn)
            .await?;
        let mut state: S::State = match stored {
            Some(text) => serde_json::from_str(&text).map_err(|e| {
                format!("the state of saga {name} instance {instance} does not deserialize: {e}")
            })?,
            None => S::State::default(),
        };
        let issued = issue(&self.saga, &mut state, event);
        sqlx::query(AssertSqlSafe(self.sql.save_state.clone()))
            .bind(name)
            .bind(&instance)
            .bind(serde_json::to_string(&state)?)
            .execute(&mut *conn)
            .await?;
        for Issued { command, context } in issued {
            sqlx::query(AssertSqlSafe(self.sql.enqueue.clone()))
                .bind(name)
                .bind(context.command_id)
                .bind(&instance)
                .bind(serde_json::to_string(&command)?)
                .bind(context.effective_correlation_id())
                .bind(context.effective_causation_id())
                .execute(&mut *conn)
                .await?;
        }
        Ok(())
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

    /// How often the dispatcher looks for issued commands when it found none (default 100 ms).
    pub fn dispatch_interval(mut self, interval: Duration) -> Self {
        self.dispatch_interval = interval;
        self
    }

    /// Runs until `shutdown` completes: feeds the saga live and dispatches its commands.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) -> Result<(), ProjectionError> {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let feed = self.runner.run(async {
            shutdown.await;
            let _ = stop.send(true);
        });
        let dispatch = async {
            let mut stopped = stopped.clone();
            loop {
                if *stopped.borrow() {
                    return Ok(());
                }
                match self.dispatch_pending().await {
                    Ok(0) => {}
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
        };
        let (fed, dispatched): (Result<(), ProjectionError>, Result<(), ProjectionError>) =
            tokio::join!(feed, dispatch);
        fed.and(dispatched)
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
                        source: format!("dispatching command {command_id} failed: {error}").into(),
                    });
                }
            }
        }
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

    fn error(&self, error: impl Into<BoxError>) -> ProjectionError {
        ProjectionError::Store {
            projection: self.name().to_owned(),
            source: error.into(),
        }
    }
}
