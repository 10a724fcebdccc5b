//! Events a projection set aside: listing them and applying them again.

use chrono::{DateTime, Utc};
use es_core::{EventStore, Position};
use sqlx::{AssertSqlSafe, Connection, Row};
use uuid::Uuid;

use super::runner::ProjectionRunner;
use super::{PgProjection, ProjectionError};
use crate::convert::position_from_columns;

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
    /// Taken by another replay (or removed by a rebuild) meanwhile: not touched by this one.
    pub taken_elsewhere: u64,
}

impl<P: PgProjection> ProjectionRunner<P> {
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
                    parked_at: row
                        .try_get::<Option<DateTime<Utc>>, _>(7)?
                        .unwrap_or(DateTime::UNIX_EPOCH),
                })
            })
            .collect::<Result<_, _>>()
            .map_err(|e| self.store_error(e))
    }

    /// Applies the parked events again, oldest first, each in its own transaction that first
    /// claims it (removes its parked row). Those that fail again stay parked, their error and
    /// attempts updated in that same transaction.
    ///
    /// Safe beside another replay, a rebuild or a blue/green swap of the same projection, in
    /// any process: each replayed event's transaction holds the projection's checkpoint row in
    /// share mode (a rebuild or swap locks it first, so they take turns), and a parked event
    /// is applied by whichever replay claims it first; the others find it gone and leave it
    /// (counted in [`ReplayReport::taken_elsewhere`]).
    ///
    /// A replayed event is applied after events that followed it in the log: parking trades
    /// order for progress, so a projection that parks must tolerate that.
    pub async fn replay_parked(&self) -> Result<ReplayReport, ProjectionError> {
        if self.projection.delivers() {
            return Err(ProjectionError::Unsupported {
                projection: self.key.clone(),
                reason: "its parked events cannot be replayed: they would reach the other \
                         system out of order, after events that followed them"
                    .to_owned(),
            });
        }
        let mut report = ReplayReport::default();
        for parked in self.parked().await? {
            // Read before the transaction: nothing waits on it while the event is fetched.
            let event = self.store.read_event(parked.event_id).await;
            let mut tx = self
                .store
                .pool()
                .begin()
                .await
                .map_err(|e| self.store_error(e))?;
            sqlx::query(AssertSqlSafe(self.sql.share_checkpoint.clone()))
                .bind(&self.key)
                .execute(&mut *tx)
                .await
                .map_err(|e| self.store_error(e))?;
            let claimed: Option<i32> =
                sqlx::query_scalar(AssertSqlSafe(self.sql.claim_parked.clone()))
                    .bind(&self.key)
                    .bind(parked.event_id)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(|e| self.store_error(e))?;
            let Some(attempts) = claimed else {
                tx.rollback().await.map_err(|e| self.store_error(e))?;
                report.taken_elsewhere += 1;
                continue;
            };
            let error = match event {
                Ok(Some(event)) => {
                    let mut savepoint = tx.begin().await.map_err(|e| self.store_error(e))?;
                    match self.apply_one(&mut savepoint, &event).await {
                        Ok(()) => {
                            savepoint.commit().await.map_err(|e| self.store_error(e))?;
                            tx.commit().await.map_err(|e| self.store_error(e))?;
                            report.replayed += 1;
                            continue;
                        }
                        Err(error) => {
                            savepoint
                                .rollback()
                                .await
                                .map_err(|e| self.store_error(e))?;
                            error.to_string()
                        }
                    }
                }
                Ok(None) => "the event is no longer stored".to_owned(),
                Err(error) => error.to_string(),
            };
            self.park(
                &mut tx,
                parked.event_id,
                parked.position,
                &parked.stream_id,
                &parked.event_type,
                &error,
                attempts.max(0) as u32 + 1,
            )
            .await?;
            tx.commit().await.map_err(|e| self.store_error(e))?;
            report.still_failing += 1;
        }
        Ok(report)
    }
    /// Gives up on one parked event: removes it from the parked events without applying it,
    /// so the read model never sees it. `Ok(false)` when it was not parked (any more): already
    /// replayed, skipped, or removed by a rebuild.
    ///
    /// Under the same rules as [`replay_parked`](Self::replay_parked): its transaction holds
    /// the projection's checkpoint row in share mode, so a rebuild or blue/green swap and the
    /// skip take turns, and whichever of a replay and a skip claims the event first wins.
    /// Allowed for a projection that delivers to another system too: skipping sends nothing,
    /// so nothing arrives out of order.
    pub async fn skip_parked(&self, event_id: Uuid) -> Result<bool, ProjectionError> {
        let mut tx = self
            .store
            .pool()
            .begin()
            .await
            .map_err(|e| self.store_error(e))?;
        sqlx::query(AssertSqlSafe(self.sql.share_checkpoint.clone()))
            .bind(&self.key)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.store_error(e))?;
        let claimed: Option<i32> = sqlx::query_scalar(AssertSqlSafe(self.sql.claim_parked.clone()))
            .bind(&self.key)
            .bind(event_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| self.store_error(e))?;
        tx.commit().await.map_err(|e| self.store_error(e))?;
        Ok(claimed.is_some())
    }
}
