//! Firing saga deadlines that fell due, each in a short transaction of its own; a failing one
//! is recorded and tried again later while the others go on.

use chrono::{DateTime, Utc};
use es_core::{CommandDispatcher, Deadline, Saga};
use sqlx::AssertSqlSafe;

use super::PgSagaRunner;
use crate::projection::ProjectionError;

/// A saga's deadlines that have not fired, for monitoring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeadlineStatus {
    /// Deadlines waiting to fire.
    pub waiting: u64,
    /// Of those, the ones already due.
    pub due: u64,
    /// When the next one falls due.
    pub next: Option<DateTime<Utc>>,
    /// Of those, the ones whose reaction failed at least once (retried with backoff; the
    /// error is kept in `saga_deadlines.last_error`).
    pub failing: u64,
}

impl<S: Saga, D: CommandDispatcher<S::Command>> PgSagaRunner<S, D> {
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
    /// fires once. A deadline whose reaction fails (its state does not deserialize, say) is
    /// recorded with its error and tried again later, waiting longer each time; the others
    /// fire meanwhile. Returns how many fired.
    ///
    /// While the saga's feed is being rebuilt, nothing fires: deadlines derived from a state
    /// that has not yet seen its later events may be ones history cancelled.
    pub async fn fire_deadlines_due_by(&self, at: DateTime<Utc>) -> Result<u64, ProjectionError> {
        const PAGE: i64 = 100;
        if self.runner.rebuild_unfinished().await? {
            tracing::debug!(
                saga = self.name(),
                "the feed is being rebuilt: deadlines wait"
            );
            return Ok(0);
        }
        let projection = self.runner.projection();
        let mut fired = 0;
        let mut after = (String::new(), String::new());
        loop {
            let due: Vec<(String, String)> =
                sqlx::query_as(AssertSqlSafe(self.sql.due_deadlines.clone()))
                    .bind(self.name())
                    .bind(at)
                    .bind(PAGE)
                    .bind(&after.0)
                    .bind(&after.1)
                    .fetch_all(self.store.pool())
                    .await
                    .map_err(|e| self.error(e))?;
            let full_page = due.len() as i64 == PAGE;
            for (instance, name) in due {
                let mut tx = self.store.pool().begin().await.map_err(|e| self.error(e))?;
                match projection.fire(&mut tx, &instance, &name, at).await {
                    Ok(true) => {
                        tx.commit().await.map_err(|e| self.error(e))?;
                        fired += 1;
                    }
                    Ok(false) => tx.rollback().await.map_err(|e| self.error(e))?,
                    Err(error) => {
                        tx.rollback().await.map_err(|e| self.error(e))?;
                        if crate::error::transient_source(error.as_ref()) {
                            return Err(self.error(error));
                        }
                        self.record_deadline_failure(&instance, &name, &error.to_string())
                            .await?;
                    }
                }
                after = (instance, name);
            }
            if !full_page {
                return Ok(fired);
            }
        }
    }

    async fn record_deadline_failure(
        &self,
        instance: &str,
        name: &str,
        error: &str,
    ) -> Result<(), ProjectionError> {
        let attempts: Option<i32> =
            sqlx::query_scalar(AssertSqlSafe(self.sql.deadline_failed.clone()))
                .bind(self.name())
                .bind(instance)
                .bind(name)
                .bind(crate::error::storable(error).as_ref())
                .fetch_optional(self.store.pool())
                .await
                .map_err(|e| self.error(e))?;
        tracing::error!(
            saga = self.name(),
            instance,
            deadline = name,
            error,
            attempts,
            "a deadline's reaction failed; it is retried later"
        );
        Ok(())
    }

    /// How many deadlines wait to fire, how many of them are due already (more than a few
    /// dispatch intervals' worth means nothing is firing them), the next due time, and how
    /// many are failing.
    pub async fn deadline_status(&self) -> Result<DeadlineStatus, ProjectionError> {
        let (waiting, overdue, next, failing): (i64, i64, Option<DateTime<Utc>>, i64) =
            sqlx::query_as(AssertSqlSafe(self.sql.deadline_status.clone()))
                .bind(self.name())
                .fetch_one(self.store.pool())
                .await
                .map_err(|e| self.error(e))?;
        Ok(DeadlineStatus {
            waiting: waiting.max(0) as u64,
            due: overdue.max(0) as u64,
            next,
            failing: failing.max(0) as u64,
        })
    }

    /// The deadlines `instance` waits on that have not fired, soonest first.
    pub async fn deadlines(&self, instance: &str) -> Result<Vec<Deadline>, ProjectionError> {
        let rows: Vec<(String, Option<DateTime<Utc>>)> =
            sqlx::query_as(AssertSqlSafe(self.sql.pending_deadlines.clone()))
                .bind(self.name())
                .bind(instance)
                .fetch_all(self.store.pool())
                .await
                .map_err(|e| self.error(e))?;
        // A due time no date can hold (set by hand) never falls due.
        Ok(rows
            .into_iter()
            .filter_map(|(name, due)| due.map(|due| Deadline::new(name, due)))
            .collect())
    }
}
