//! Blue/green rebuilds: the next version of a read model is built beside the live one, then
//! swapped in by one transaction, so readers see the old version or the new, never a half-built
//! one.

use std::sync::Arc;

use es_core::Position;
use sqlx::{AssertSqlSafe, Executor};

use super::lock::ActiveLock;
use super::runner::{Progress, ProjectionRunner};
use super::supervise::Backoff;
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
    /// a crash during the build leaves the live version untouched. A split projection is built
    /// whole (every part's events, by this one call) and every live part resumes from the
    /// build's checkpoint after the swap.
    pub async fn rebuild_blue_green(
        &self,
        next: P,
        policy: ErrorPolicy,
        mut progress: impl FnMut(Progress) + Send,
    ) -> Result<u64, ProjectionError> {
        self.blue_green(next, policy, &mut progress, true)
            .await
            .map(|read| read.unwrap_or(0))
    }

    /// As [`rebuild_blue_green`](Self::rebuild_blue_green), but `Ok(None)` at once when
    /// another process is building the next version already.
    pub async fn try_rebuild_blue_green(
        &self,
        next: P,
        policy: ErrorPolicy,
        mut progress: impl FnMut(Progress) + Send,
    ) -> Result<Option<u64>, ProjectionError> {
        self.blue_green(next, policy, &mut progress, false).await
    }

    async fn blue_green(
        &self,
        next: P,
        policy: ErrorPolicy,
        progress: &mut (dyn FnMut(Progress) + Send),
        wait: bool,
    ) -> Result<Option<u64>, ProjectionError> {
        let (live_model, next_model) = self.blue_green_models(&next)?;
        // The swap replaces whole tables, which the tenants of a row-tenancy schema share,
        // however this store was made.
        let mut conn = self
            .store
            .pool()
            .acquire()
            .await
            .map_err(|e| self.store_error(e))?;
        let shared = crate::tenancy::is_row_tenancy(&mut conn, self.store.schema())
            .await
            .map_err(|e| self.store_error(e))?;
        drop(conn);
        if shared {
            return Err(ProjectionError::BlueGreen {
                projection: self.key.clone(),
                reason: "its store is a row-tenancy schema, whose read-model tables every \
                         tenant shares: rebuild the tenant's rows in place (rebuild)"
                    .to_owned(),
            });
        }
        let builder = self.builder(next);
        let mut lock = if wait {
            builder.acquire_lock().await?
        } else {
            match builder.try_acquire_locks(builder.checkpoint_keys()).await? {
                Some(lock) => lock,
                None => return Ok(None),
            }
        };
        let result = async {
            builder.start_build(&mut lock, &next_model).await?;
            let mut reached = Position::START;
            // The build commits its batches without waiting for their flush (see
            // `relax_commits`); the swap's synchronous commit makes them durable.
            lock.relax_commits(true);
            let events = builder
                .catch_up_locked(&mut lock, policy, &mut |p: Progress| {
                    reached = p.position;
                    progress(p)
                })
                .await;
            lock.relax_commits(false);
            let events = events?;
            self.whole()
                .swap(&builder, &mut lock, reached, &live_model, &next_model)
                .await?;
            Ok(Some(events))
        }
        .await;
        builder.release(lock).await;
        result
    }

    /// The holder of the next version's build, when one is being built.
    pub async fn blue_green_holder(&self) -> Result<Option<super::LockHolder>, ProjectionError> {
        let mut builder = self.derived(
            format!("{}~next", self.projection.name()),
            Arc::clone(&self.projection),
        );
        builder.part = None;
        builder.holder().await
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
    /// runner's. It builds every part's events: a split projection's next version is built
    /// whole, and every live part takes the build's checkpoint at the swap.
    fn builder(&self, next: P) -> ProjectionRunner<P> {
        self.detached(format!("{}~next", self.projection.name()), next)
    }

    /// Creates the build's schema and empty tables, and sets its checkpoint to the start.
    async fn start_build(
        &self,
        lock: &mut ActiveLock,
        model: &ReadModel,
    ) -> Result<(), ProjectionError> {
        let mut tx = lock.begin(self).await?;
        let ddl = format!(
            "CREATE SCHEMA IF NOT EXISTS {}; DROP TABLE IF EXISTS {}",
            model.schema().quoted(),
            model.qualified_list()
        );
        tx.execute(AssertSqlSafe(ddl))
            .await
            .map_err(|e| self.store_error(e))?;
        self.setup_in(&mut tx).await?;
        let keys = self.checkpoint_keys();
        self.execute_on_keys(&mut tx, &self.sql.delete_parked, &keys)
            .await?;
        self.save_checkpoints_of(&mut tx, &keys, Position::START)
            .await?;
        tx.commit().await.map_err(|e| self.store_error(e))
    }

    /// Puts the build's tables, checkpoint and parked events in the live version's place, in
    /// one transaction on the build's lock session (a build whose session ended, and so may
    /// have been taken over, can swap nothing). DDL waits at most a few seconds for the live
    /// tables; the swap is then rolled back and tried again, the build kept.
    async fn swap(
        &self,
        builder: &ProjectionRunner<P>,
        lock: &mut ActiveLock,
        reached: Position,
        live: &ReadModel,
        next: &ReadModel,
    ) -> Result<(), ProjectionError> {
        let mut backoff = Backoff::new();
        let mut attempts = 0;
        loop {
            match self.try_swap(builder, lock, reached, live, next).await {
                Err(error) if is_lock_timeout(&error) && attempts < SWAP_ATTEMPTS => {
                    attempts += 1;
                    let wait = backoff.next();
                    tracing::warn!(projection = %self.key, %error, attempts, retry_in = ?wait, "the swap waited too long for a lock; trying again");
                    tokio::time::sleep(wait).await;
                }
                Err(error) => return Err(lock.classify(builder, error).await),
                Ok(()) => {
                    tracing::info!(
                        projection = %self.key,
                        from = %next.schema(),
                        into = %live.schema(),
                        "swapped in the rebuilt read model"
                    );
                    return Ok(());
                }
            }
        }
    }

    async fn try_swap(
        &self,
        builder: &ProjectionRunner<P>,
        lock: &mut ActiveLock,
        reached: Position,
        live: &ReadModel,
        next: &ReadModel,
    ) -> Result<(), ProjectionError> {
        let mut tx = lock.begin(builder).await?;
        tx.execute(AssertSqlSafe(format!(
            "SET LOCAL lock_timeout = '{}ms'",
            SWAP_LOCK_TIMEOUT.as_millis()
        )))
        .await
        .map_err(|e| self.store_error(e))?;
        // Always in this order, as setups, batches, replays and rebuilds take them: the
        // projection's setup lock, the build's checkpoint row, the live checkpoint rows (the
        // live runners' batches in flight commit first; their next ones wait for the swap,
        // then find their checkpoints moved), and only then the tables.
        self.setup_lock(&mut tx).await?;
        let built = builder
            .lock_checkpoints(&mut tx, &builder.checkpoint_keys())
            .await?;
        match built.first() {
            Some((_, built, _)) if *built == reached => {}
            other => {
                return Err(ProjectionError::Store {
                    projection: self.key.clone(),
                    transient: false,
                    source: format!(
                        "the build's checkpoint is at {:?}, not where this build left it \
                         ({reached}): another build took it over; nothing was swapped",
                        other.map(|(_, position, _)| position)
                    )
                    .into(),
                });
            }
        }
        let live_keys = self.checkpoint_keys();
        self.init_checkpoints(&mut tx, &live_keys).await?;
        self.lock_checkpoints(&mut tx, &live_keys).await?;
        self.check_layout(&mut tx).await?;

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

        self.save_checkpoints_of(&mut tx, &live_keys, reached)
            .await?;
        self.execute_on_keys(&mut tx, &self.sql.delete_parked, &live_keys)
            .await?;
        let parked: Vec<(uuid::Uuid, String)> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT event_id, stream_id FROM {}.parked_events WHERE projection = $1",
            self.store.schema().quoted()
        )))
        .bind(&builder.key)
        .fetch_all(&mut *tx)
        .await
        .map_err(|e| self.store_error(e))?;
        for (event_id, stream) in parked {
            sqlx::query(AssertSqlSafe(self.sql.move_parked.clone()))
                .bind(&builder.key)
                .bind(self.park_key(&stream))
                .bind(event_id)
                .execute(&mut *tx)
                .await
                .map_err(|e| self.store_error(e))?;
        }
        builder
            .execute_on_keys(
                &mut tx,
                &self.sql.delete_checkpoints,
                &builder.checkpoint_keys(),
            )
            .await?;
        tx.commit().await.map_err(|e| self.store_error(e))
    }
}

/// How long the swap waits for a lock on the live tables before it backs off and tries
/// again, and how many times it tries.
const SWAP_LOCK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
const SWAP_ATTEMPTS: u32 = 20;

/// Whether the error is `lock_timeout` expiring (SQLSTATE 55P03).
fn is_lock_timeout(error: &ProjectionError) -> bool {
    let ProjectionError::Store { source, .. } = error else {
        return false;
    };
    source
        .downcast_ref::<sqlx::Error>()
        .and_then(|e| e.as_database_error())
        .and_then(|e| e.code())
        .is_some_and(|code| code == "55P03")
}
