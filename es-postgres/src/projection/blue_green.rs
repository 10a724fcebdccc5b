//! Blue/green rebuilds: the next version of a read model is built beside the live one, then
//! swapped in by one transaction, so readers see the old version or the new, never a half-built
//! one.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use sqlx::{AssertSqlSafe, Executor};

use super::runner::{Progress, ProjectionRunner};
use super::{ErrorPolicy, PgProjection, ProjectionError, ReadModel};

impl<P: PgProjection> ProjectionRunner<P> {
    /// Rebuilds the read model blue/green: `next`, a second instance of the projection whose
    /// [`read_model`](PgProjection::read_model) names the same tables in another schema, is
    /// built from the start of the log with `policy` (usually [`ErrorPolicy::STOP`]) while the
    /// live version goes on serving and following; then one transaction swaps them. Returns how
    /// many events the build read.
    ///
    /// The swap waits for the live runner's batch in flight, drops the live tables, moves the
    /// new ones into the live schema (their indexes and constraints move with them), hands the
    /// live checkpoint the build's, and replaces the live parked events with the build's. A live
    /// runner, in this process or another, notices the moved checkpoint at its next batch and
    /// resumes from it on the new tables. Readers querying the tables by name wait out the swap
    /// and then see the new version. Objects that depend on the live tables (views, foreign
    /// keys from other tables) make the swap fail, leaving the live version as it was.
    ///
    /// A build is started from scratch on each call (its tables are dropped and recreated);
    /// a crash during the build leaves the live version untouched.
    pub async fn rebuild_blue_green(
        &self,
        next: P,
        policy: ErrorPolicy,
        mut progress: impl FnMut(Progress) + Send,
    ) -> Result<u64, ProjectionError> {
        let (live_model, next_model) = self.blue_green_models(&next)?;
        let builder = self.builder(next);
        let lock = builder.acquire_lock().await?;
        let result = async {
            builder.start_build(&next_model).await?;
            let events = builder.catch_up_locked(policy, &mut progress).await?;
            self.swap(&builder, &live_model, &next_model).await?;
            Ok(events)
        }
        .await;
        builder.release(lock).await;
        result
    }

    fn blue_green_models(&self, next: &P) -> Result<(ReadModel, ReadModel), ProjectionError> {
        let refuse = |reason: String| ProjectionError::BlueGreen {
            projection: self.key.clone(),
            reason,
        };
        let live = self.projection.read_model().ok_or_else(|| {
            refuse("it does not declare its tables (PgProjection::read_model)".to_owned())
        })?;
        let built = next
            .read_model()
            .ok_or_else(|| refuse("the next version does not declare its tables".to_owned()))?;
        if next.name() != self.projection.name() {
            return Err(refuse(format!(
                "the next version is named {:?}, not {:?}",
                next.name(),
                self.projection.name()
            )));
        }
        live.can_be_replaced_by(&built).map_err(refuse)?;
        Ok((live, built))
    }

    /// A runner of `next` keeping its own checkpoint, lock and parked events beside the live
    /// runner's.
    fn builder(&self, next: P) -> ProjectionRunner<P> {
        ProjectionRunner {
            store: self.store.clone(),
            projection: Arc::new(next),
            key: format!("{}~next", self.key),
            part: self.part,
            upcasters: Arc::clone(&self.upcasters),
            policy: self.policy,
            batch_size: self.batch_size,
            poll_interval: self.poll_interval,
            lock_retry: self.lock_retry,
            sql: Arc::clone(&self.sql),
            active: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Creates the build's schema and empty tables, and sets its checkpoint to the start.
    async fn start_build(&self, model: &ReadModel) -> Result<(), ProjectionError> {
        let mut tx = self.begin().await?;
        let ddl = format!(
            "CREATE SCHEMA IF NOT EXISTS {}; DROP TABLE IF EXISTS {}",
            model.schema().quoted(),
            model.qualified_list()
        );
        tx.execute(AssertSqlSafe(ddl))
            .await
            .map_err(|e| self.store_error(e))?;
        self.setup_in(&mut tx).await?;
        self.start_over(&mut tx).await?;
        tx.commit().await.map_err(|e| self.store_error(e))
    }

    /// Puts the build's tables, checkpoint and parked events in the live version's place, in
    /// one transaction.
    async fn swap(
        &self,
        builder: &ProjectionRunner<P>,
        live: &ReadModel,
        next: &ReadModel,
    ) -> Result<(), ProjectionError> {
        let mut tx = self.begin().await?;
        // Both checkpoint rows first, the build's then the live one's (a live runner only ever
        // locks its own): the live runner's batch in flight commits before the swap, and its
        // next batch waits for the swap, then finds the checkpoint moved.
        let Some(built) = builder.lock_checkpoint(&mut tx).await? else {
            return Err(self.store_error("the build's checkpoint vanished during the build"));
        };
        self.execute_keyed(&mut tx, &self.sql.init_checkpoint)
            .await?;
        self.lock_checkpoint(&mut tx).await?;

        let mut ddl = format!("DROP TABLE IF EXISTS {};", live.qualified_list());
        for table in next.tables() {
            ddl.push_str(&format!(
                " ALTER TABLE {}.\"{table}\" SET SCHEMA {};",
                next.schema().quoted(),
                live.schema().quoted()
            ));
        }
        tx.execute(AssertSqlSafe(ddl))
            .await
            .map_err(|e| self.store_error(e))?;

        self.save_checkpoint(&mut tx, built).await?;
        self.execute_keyed(&mut tx, &self.sql.delete_parked).await?;
        sqlx::query(AssertSqlSafe(self.sql.move_parked.clone()))
            .bind(&builder.key)
            .bind(&self.key)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.store_error(e))?;
        builder
            .execute_keyed(&mut tx, &self.sql.delete_checkpoint)
            .await?;
        tx.commit().await.map_err(|e| self.store_error(e))?;
        tracing::info!(
            projection = %self.key,
            from = %next.schema(),
            into = %live.schema(),
            "swapped in the rebuilt read model"
        );
        Ok(())
    }
}
