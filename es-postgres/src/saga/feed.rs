//! Feeding a saga: a projection whose read model is the saga's instance states, outbox and
//! deadlines, all written in the runner's batch transaction with the checkpoint.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use es_core::{
    BoxError, Cause, Deadline, Envelope, Issued, Saga, ScheduledDeadline, issue, issue_on_deadline,
    rescheduled_deadlines,
};
use sqlx::{AssertSqlSafe, PgConnection, Row};
use uuid::Uuid;

use super::sql::Statements;
use crate::projection::PgProjection;

/// A saga seen as a projection whose read model is its instance states and outbox: what
/// [`PgSagaRunner`] feeds through a [`ProjectionRunner`].
pub struct SagaProjection<S> {
    pub(super) saga: S,
    pub(super) sql: Arc<Statements>,
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
    pub(super) async fn fire(
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
            deadline: Deadline::new(
                name,
                row.try_get::<Option<DateTime<Utc>>, _>(0)?.ok_or_else(|| {
                    format!("deadline {name} of {instance} has no usable due time")
                })?,
            ),
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
