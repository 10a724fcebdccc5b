//! Running the commands sagas issued: claimed with a lease in one short statement, run outside
//! any transaction, removed (or their failure recorded) in another; retried with backoff, then
//! dead-lettered.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use es_core::{CommandContext, CommandDispatcher, Saga};
use std::panic::AssertUnwindSafe;

use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use sqlx::{AssertSqlSafe, Row};
use tracing::Instrument;
use uuid::Uuid;

use super::{PgSagaRunner, retry_wait};
use crate::projection::ProjectionError;
use crate::projection::supervise::Backoff;

/// The longest wait between two attempts of a failing command.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(300);

/// A command a saga issued that failed `max_attempts` times and waits for an operator.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct DeadLetter {
    /// The command's id (its idempotency key).
    pub command_id: Uuid,
    /// The saga instance that issued it.
    pub instance: String,
    /// The command as stored (JSON).
    pub command: String,
    /// How many times it was tried.
    pub attempts: u32,
    /// The last error.
    pub error: Option<String>,
    /// When the saga issued it.
    pub issued_at: DateTime<Utc>,
    /// When it was dead-lettered.
    pub dead_at: DateTime<Utc>,
}

/// The state of a saga's outbox, for monitoring.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct OutboxStatus {
    /// Commands waiting to run (or running, or waiting to be retried).
    pub pending: u64,
    /// Commands dead-lettered, waiting for an operator.
    pub dead_lettered: u64,
    /// How long the oldest pending command has waited.
    pub oldest_pending: Option<Duration>,
}

/// The commands a dispatcher is running, by outbox seq. Its claims take back its own leases
/// of commands it is not running (a claim whose reply was lost), never one it runs; claims
/// take turns, so a command is in the set before the next claim reads it.
#[derive(Default)]
pub(super) struct InFlight {
    seqs: std::sync::Mutex<std::collections::HashSet<i64>>,
    claiming: tokio::sync::Mutex<()>,
}

impl InFlight {
    fn snapshot(&self) -> Vec<i64> {
        self.seqs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .copied()
            .collect()
    }

    fn insert(self: &Arc<Self>, seq: i64) -> Running {
        self.seqs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(seq);
        Running {
            set: Arc::clone(self),
            seq,
        }
    }
}

/// A command in the dispatcher's set while this lives: until its run ends, however it ends
/// (finished, failed, cancelled).
struct Running {
    set: Arc<InFlight>,
    seq: i64,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.set
            .seqs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.seq);
    }
}

/// One claimed command.
struct Claimed {
    /// Keeps the command in the dispatcher's set while it is claimed here.
    _running: Running,
    seq: i64,
    command_id: Uuid,
    command: String,
    correlation: Uuid,
    causation: Uuid,
    attempts: u32,
    instance: String,
}

impl<S: Saga, D: CommandDispatcher<S::Command>> PgSagaRunner<S, D> {
    /// Runs the issued commands that are due, until none is left: each instance's in order,
    /// several instances at once. A failing command is recorded and retried later (or
    /// dead-lettered) without holding up the others. Returns how many commands were tried.
    pub async fn dispatch_pending(&self) -> Result<u64, ProjectionError> {
        let mut tried = 0;
        loop {
            let claimed = self.claim(self.concurrency()).await?;
            if claimed.is_empty() {
                return Ok(tried);
            }
            tried += claimed.len() as u64;
            let mut runs: FuturesUnordered<_> =
                claimed.into_iter().map(|c| self.run_claimed(c)).collect();
            let mut first_error = None;
            while let Some(result) = runs.next().await {
                if let Err(error) = result {
                    first_error.get_or_insert(error);
                }
            }
            if let Some(error) = first_error {
                return Err(error);
            }
        }
    }

    /// The dispatcher of `run`: keeps up to the dispatcher's concurrency of commands running,
    /// claiming more as soon as one finishes (a slow command holds up no other), and fires
    /// due deadlines every interval meanwhile. On stop it claims nothing more and lets the
    /// commands in flight finish. Database faults are ridden out with backoff; a permanent
    /// one ends it.
    pub(super) async fn dispatch_until(
        &self,
        mut stopped: tokio::sync::watch::Receiver<bool>,
    ) -> Result<(), ProjectionError> {
        let mut running = FuturesUnordered::new();
        let mut backoff = Backoff::new();
        let mut next_round = tokio::time::Instant::now();
        loop {
            let stopping = *stopped.borrow();
            if stopping && running.is_empty() {
                return Ok(());
            }
            let now = tokio::time::Instant::now();
            if !stopping && now >= next_round {
                // Computed before the round: it must not hold a borrow of the running commands
                // across its awaits.
                let free = self.concurrency().saturating_sub(running.len());
                let round = async {
                    let fired = self.fire_due_deadlines().await?;
                    let claimed = if free > 0 {
                        self.claim(free).await?
                    } else {
                        Vec::new()
                    };
                    Ok::<_, ProjectionError>((fired, claimed))
                };
                next_round = match round.await {
                    Ok((fired, claimed)) => {
                        backoff.reset();
                        let busy = fired > 0 || !claimed.is_empty();
                        running.extend(claimed.into_iter().map(|c| self.run_claimed(c)));
                        if busy {
                            now
                        } else {
                            now + self.dispatch.interval
                        }
                    }
                    Err(error) if !error.is_transient() => {
                        tracing::error!(saga = self.name(), %error, "dispatching stopped");
                        return Err(error);
                    }
                    Err(error) => {
                        let wait = backoff.next();
                        tracing::warn!(saga = self.name(), %error, retry_in = ?wait, "dispatching failed; retrying");
                        now + wait
                    }
                };
                continue;
            }
            tokio::select! {
                Some(finished) = running.next(), if !running.is_empty() => {
                    if let Err(error) = finished {
                        // The command's own failure is recorded; this is the database's, when
                        // recording the outcome: its lease is still this dispatcher's, and the
                        // next claim takes the command back (it runs again; commands are
                        // idempotent by their id).
                        if !error.is_transient() {
                            tracing::error!(saga = self.name(), %error, "dispatching stopped");
                            return Err(error);
                        }
                        tracing::warn!(saga = self.name(), %error, "recording a command's outcome failed; the next claim takes it back and runs it again");
                    }
                    // A slot is free: claim again now.
                    next_round = tokio::time::Instant::now();
                }
                () = tokio::time::sleep_until(next_round), if !stopping => {}
                _ = stopped.changed(), if !stopping => {}
            }
        }
    }

    /// Commands run at once: the configured concurrency, but never more than the pool leaves
    /// once the feed has its connection, so commands do not stall on the pool.
    fn concurrency(&self) -> usize {
        let pool = self.store.pool().options().get_max_connections() as usize;
        self.dispatch.concurrency.min(pool.saturating_sub(1).max(1))
    }

    /// Claims up to `limit` ready, due commands; the claim counts an attempt.
    async fn claim(&self, limit: usize) -> Result<Vec<Claimed>, ProjectionError> {
        let _turn = self.in_flight.claiming.lock().await;
        let rows = sqlx::query(AssertSqlSafe(self.sql.claim.clone()))
            .bind(self.name())
            .bind(self.dispatch.id.to_string())
            .bind(millis(self.dispatch.lease))
            .bind(limit as i64)
            .bind(self.in_flight.snapshot())
            .fetch_all(self.store.pool())
            .await
            .map_err(|e| self.error(e))?;
        rows.iter()
            .map(|row| -> Result<Claimed, sqlx::Error> {
                let seq: i64 = row.try_get(0)?;
                Ok(Claimed {
                    _running: self.in_flight.insert(seq),
                    seq,
                    command_id: row.try_get(1)?,
                    command: row.try_get(2)?,
                    correlation: row.try_get(3)?,
                    causation: row.try_get(4)?,
                    attempts: row.try_get::<i32, _>(5)?.max(0) as u32,
                    instance: row.try_get(6)?,
                })
            })
            .collect::<Result<_, _>>()
            .map_err(|e| self.error(e))
    }

    /// Runs one claimed command, renewing its lease while it runs, then removes it or records
    /// the failure. A command claimed more often than the cap without an outcome (its
    /// dispatcher died with it, or it brought the process down) is dead-lettered unrun; a
    /// panic is a failure like any other. Errors are the database's only.
    async fn run_claimed(&self, claimed: Claimed) -> Result<(), ProjectionError> {
        let cap = self.dispatch.max_attempts;
        if claimed.attempts > cap {
            let reason = format!(
                "claimed {} times without an outcome: its dispatchers died while it ran",
                claimed.attempts - 1
            );
            tracing::error!(saga = self.name(), command_id = %claimed.command_id, %reason, "dead-lettering the command");
            return self.record(&claimed, Some(&reason), 0, None).await;
        }
        let command: S::Command = match serde_json::from_str(&claimed.command) {
            Ok(command) => command,
            Err(error) => {
                let reason = format!("the command does not deserialize: {error}");
                tracing::error!(saga = self.name(), command_id = %claimed.command_id, %reason, "dead-lettering the command");
                return self.record(&claimed, Some(&reason), 0, None).await;
            }
        };
        let context = CommandContext::new()
            .idempotent(claimed.command_id)
            .correlated_with(claimed.correlation)
            .caused_by(claimed.causation);
        // The command handler's spans (execute, append) nest under this one, which names the
        // event that caused the command: the thread from one service's log to the next step.
        let span = tracing::info_span!(
            "saga_command",
            saga = self.name(),
            instance = %claimed.instance,
            command_id = %claimed.command_id,
            correlation_id = %claimed.correlation,
            causation_id = %claimed.causation,
            attempt = claimed.attempts,
        );
        #[cfg(feature = "otel")]
        self.continue_trace(&span, claimed.causation).await;
        let started = Instant::now();
        let dispatch =
            AssertUnwindSafe(self.dispatcher.dispatch(command, context).instrument(span))
                .catch_unwind();
        tokio::pin!(dispatch);
        let mut renew = tokio::time::interval(self.dispatch.lease / 3);
        renew.tick().await;
        let outcome = loop {
            tokio::select! {
                outcome = &mut dispatch => break outcome,
                _ = renew.tick() => self.renew(&claimed).await,
            }
        };
        let took = started.elapsed();
        let error = match outcome {
            Ok(Ok(())) => return self.record(&claimed, None, cap, Some(took)).await,
            Ok(Err(error)) => error.to_string(),
            Err(panic) => format!("the dispatcher panicked: {}", panic_message(&*panic)),
        };
        tracing::warn!(saga = self.name(), command_id = %claimed.command_id, %error, attempts = claimed.attempts, "the command failed");
        self.record(&claimed, Some(&error), cap, Some(took)).await
    }

    /// [`finish`](Self::finish) once the outcome is known (the command ran, or is
    /// dead-lettered unrun), tried again after a transient fault (a terminated connection, a
    /// restart) for a third of the lease: leaving it would run the command again, and a
    /// finish that fails at once would otherwise be claimed back and fail again at claim rate.
    /// Both statements are guarded by the lease's holder, so a retry after a commit whose
    /// reply was lost changes nothing. When a run is cancelled instead (the runner stopped on
    /// a permanent error, a caller's timeout), the next claim takes the command back at once:
    /// work the cancelled run started elsewhere may still land, which commands' idempotency by
    /// id absorbs.
    async fn record(
        &self,
        claimed: &Claimed,
        error: Option<&str>,
        cap: u32,
        took: Option<Duration>,
    ) -> Result<(), ProjectionError> {
        // Renewed every third of the lease while the command ran: a third is left even when the
        // last renewal failed.
        let until = Instant::now() + self.dispatch.lease / 3;
        let mut backoff = Backoff::new();
        loop {
            match self.finish(claimed, error, cap, took).await {
                Err(fault) if fault.is_transient() => {
                    let wait = backoff.next();
                    if Instant::now() + wait >= until {
                        return Err(fault);
                    }
                    tracing::warn!(saga = self.name(), command_id = %claimed.command_id, error = %fault, retry_in = ?wait, "recording a command's outcome failed; retrying");
                    tokio::time::sleep(wait).await;
                }
                done => return done,
            }
        }
    }

    /// Makes the command's span a child of the span that wrote the event causing it, when
    /// that event carries a trace context: the trace goes on across the log.
    #[cfg(feature = "otel")]
    async fn continue_trace(&self, span: &tracing::Span, cause: Uuid) {
        use es_core::EventStore;
        if span.is_disabled() {
            return;
        }
        match self.store.read_event(cause).await {
            Ok(Some(event)) => {
                if let Some(traceparent) = es_core::otel::traceparent_of(&event.metadata) {
                    es_core::otel::continue_trace(span, &traceparent);
                }
            }
            Ok(None) => {}
            Err(error) => {
                tracing::debug!(%error, event_id = %cause, "reading the trace context of a command's cause failed")
            }
        }
    }

    async fn renew(&self, claimed: &Claimed) {
        let renewed = sqlx::query(AssertSqlSafe(self.sql.extend.clone()))
            .bind(claimed.seq)
            .bind(self.dispatch.id.to_string())
            .bind(millis(self.dispatch.lease))
            .execute(self.store.pool())
            .await;
        if let Err(error) = renewed {
            tracing::warn!(saga = self.name(), command_id = %claimed.command_id, %error, "renewing a command's lease failed");
        }
    }

    /// Ends a claimed command's attempt in one short transaction: removes it when it ran
    /// (`error` is `None`), or records the failure, after which it waits longer before its
    /// next attempt and is dead-lettered once it has failed `cap` times (at once for a cap of
    /// 0). When it leaves the line, the instance's next command becomes ready.
    async fn finish(
        &self,
        claimed: &Claimed,
        error: Option<&str>,
        cap: u32,
        took: Option<Duration>,
    ) -> Result<(), ProjectionError> {
        let mut tx = self.store.pool().begin().await.map_err(|e| self.error(e))?;
        sqlx::query(AssertSqlSafe(self.sql.share_state.clone()))
            .bind(self.name())
            .bind(&claimed.instance)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.error(e))?;
        let left = match error {
            None => {
                sqlx::query(AssertSqlSafe(self.sql.done.clone()))
                    .bind(claimed.seq)
                    .bind(self.dispatch.id.to_string())
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| self.error(e))?;
                true
            }
            Some(error) => {
                let wait = retry_wait(self.dispatch.backoff, claimed.attempts, MAX_RETRY_WAIT);
                let dead: Option<bool> = sqlx::query_scalar(AssertSqlSafe(self.sql.failed.clone()))
                    .bind(claimed.seq)
                    .bind(self.dispatch.id.to_string())
                    .bind(crate::error::storable(error).as_ref())
                    .bind(millis(wait))
                    .bind(i32::try_from(cap).unwrap_or(i32::MAX))
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(|e| self.error(e))?;
                dead == Some(true)
            }
        };
        if left {
            sqlx::query(AssertSqlSafe(self.sql.advance.clone()))
                .bind(self.name())
                .bind(&claimed.instance)
                .execute(&mut *tx)
                .await
                .map_err(|e| self.error(e))?;
        }
        tx.commit().await.map_err(|e| self.error(e))?;
        let outcome = match (error, left) {
            (None, _) => "dispatched",
            (Some(_), true) => "dead_lettered",
            (Some(_), false) => "failed",
        };
        crate::telemetry::saga_command(self.metric_labels(), outcome, took);
        Ok(())
    }

    /// How many commands wait, how many are dead-lettered, and how long the oldest waits.
    pub async fn outbox_status(&self) -> Result<OutboxStatus, ProjectionError> {
        let (pending, dead, oldest): (i64, i64, Option<f64>) =
            sqlx::query_as(AssertSqlSafe(self.sql.outbox_status.clone()))
                .bind(self.name())
                .fetch_one(self.store.pool())
                .await
                .map_err(|e| self.error(e))?;
        Ok(OutboxStatus {
            pending: pending.max(0) as u64,
            dead_lettered: dead.max(0) as u64,
            oldest_pending: crate::convert::seconds(oldest),
        })
    }

    /// How many issued commands wait to run (dead letters not included).
    pub async fn pending(&self) -> Result<u64, ProjectionError> {
        Ok(self.outbox_status().await?.pending)
    }

    /// The dead-lettered commands, oldest first.
    pub async fn dead_letters(&self) -> Result<Vec<DeadLetter>, ProjectionError> {
        let rows = sqlx::query(AssertSqlSafe(self.sql.dead_letters.clone()))
            .bind(self.name())
            .fetch_all(self.store.pool())
            .await
            .map_err(|e| self.error(e))?;
        rows.iter()
            .map(|row| -> Result<DeadLetter, sqlx::Error> {
                Ok(DeadLetter {
                    command_id: row.try_get(0)?,
                    instance: row.try_get(1)?,
                    command: row.try_get(2)?,
                    attempts: row.try_get::<i32, _>(3)?.max(0) as u32,
                    error: row.try_get(4)?,
                    issued_at: row.try_get(5)?,
                    dead_at: row.try_get(6)?,
                })
            })
            .collect::<Result<_, _>>()
            .map_err(|e| self.error(e))
    }

    /// Puts dead-lettered commands back in line, with their attempts reset; returns how many.
    /// A retried command runs after the commands of its instance already in line, never beside
    /// them.
    pub async fn retry_dead_letters(&self, command_ids: &[Uuid]) -> Result<u64, ProjectionError> {
        let mut retried = 0;
        for id in command_ids {
            let mut tx = self.store.pool().begin().await.map_err(|e| self.error(e))?;
            let instance: Option<String> =
                sqlx::query_scalar(AssertSqlSafe(self.sql.instance_of_command.clone()))
                    .bind(self.name())
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(|e| self.error(e))?;
            let Some(instance) = instance else {
                continue;
            };
            sqlx::query(AssertSqlSafe(self.sql.lock_state.clone()))
                .bind(self.name())
                .bind(&instance)
                .execute(&mut *tx)
                .await
                .map_err(|e| self.error(e))?;
            let done = sqlx::query(AssertSqlSafe(self.sql.retry_dead.clone()))
                .bind(self.name())
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(|e| self.error(e))?;
            tx.commit().await.map_err(|e| self.error(e))?;
            retried += done.rows_affected();
        }
        Ok(retried)
    }

    /// Removes dead-lettered commands for good (the saga is not told); returns how many.
    pub async fn discard_dead_letters(&self, command_ids: &[Uuid]) -> Result<u64, ProjectionError> {
        self.on_dead_letters(&self.sql.discard_dead, command_ids)
            .await
    }

    async fn on_dead_letters(
        &self,
        statement: &str,
        command_ids: &[Uuid],
    ) -> Result<u64, ProjectionError> {
        let done = sqlx::query(AssertSqlSafe(statement.to_owned()))
            .bind(self.name())
            .bind(command_ids)
            .execute(self.store.pool())
            .await
            .map_err(|e| self.error(e))?;
        Ok(done.rows_affected())
    }
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// A panic's message, when it has one.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}
