//! Rebuilding a read model in place, resuming an interrupted rebuild, and the number of parts
//! a projection is split into.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;

use es_core::Position;
use sqlx::{AssertSqlSafe, PgConnection};

use super::lock::ActiveLock;
use super::runner::{Progress, ProjectionRunner, RunnerState, part_key};
use super::{ErrorPolicy, PgProjection, ProjectionError};

/// Whether a rebuild may resume an interrupted one.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Start {
    ResumeInterrupted,
    Afresh,
}

impl<P: PgProjection> ProjectionRunner<P> {
    /// Rebuilds the read model in place: empties it, forgets the checkpoints and the parked
    /// events, and replays the whole log with `policy` (usually [`ErrorPolicy::STOP`]),
    /// reporting progress after each batch. Returns how many events it read.
    ///
    /// A split projection is rebuilt whole, every part at once: called on the runner of any
    /// part, it takes every part's lock, and rebuilding with another number of parts than the
    /// store records re-splits the projection (the runners of the old parts are refused from
    /// then on). It waits to become the active instance of every part first, so live runners
    /// must stop (or hand over) before it starts.
    ///
    /// Interrupted (a crash, a stop, an error), it resumes: the reset and each batch commit
    /// with the checkpoints, and the next `rebuild` call, or a live run, carries on from the
    /// last one instead of starting over. Once it has caught up, a later call starts afresh;
    /// [`rebuild_from_scratch`](Self::rebuild_from_scratch) starts afresh in any case.
    pub async fn rebuild(
        &self,
        policy: ErrorPolicy,
        mut progress: impl FnMut(Progress) + Send,
    ) -> Result<u64, ProjectionError> {
        self.rebuild_with(policy, &mut progress, Start::ResumeInterrupted, true)
            .await
            .map(|read| read.unwrap_or(0))
    }

    /// As [`rebuild`](Self::rebuild), but starts over even when an interrupted rebuild could
    /// resume: after the projection's code changed since the interrupted one began.
    pub async fn rebuild_from_scratch(
        &self,
        policy: ErrorPolicy,
        mut progress: impl FnMut(Progress) + Send,
    ) -> Result<u64, ProjectionError> {
        self.rebuild_with(policy, &mut progress, Start::Afresh, true)
            .await
            .map(|read| read.unwrap_or(0))
    }

    /// As [`rebuild`](Self::rebuild), but when another instance holds the projection (or one
    /// of its parts) returns `Ok(None)` at once instead of waiting for it.
    pub async fn try_rebuild(
        &self,
        policy: ErrorPolicy,
        mut progress: impl FnMut(Progress) + Send,
    ) -> Result<Option<u64>, ProjectionError> {
        self.rebuild_with(policy, &mut progress, Start::ResumeInterrupted, false)
            .await
    }

    /// As [`rebuild_from_scratch`](Self::rebuild_from_scratch), but `Ok(None)` at once when
    /// another instance holds the projection (or one of its parts).
    pub async fn try_rebuild_from_scratch(
        &self,
        policy: ErrorPolicy,
        mut progress: impl FnMut(Progress) + Send,
    ) -> Result<Option<u64>, ProjectionError> {
        self.rebuild_with(policy, &mut progress, Start::Afresh, false)
            .await
    }

    /// Takes every lock the rebuild needs (waiting for them, or `Ok(None)` when one is held
    /// and `wait` is false), then rebuilds.
    async fn rebuild_with(
        &self,
        policy: ErrorPolicy,
        progress: &mut (dyn FnMut(Progress) + Send),
        start: Start,
        wait: bool,
    ) -> Result<Option<u64>, ProjectionError> {
        let whole = self.whole();
        let stale = self.stored_keys().await?;
        let mut keys = whole.checkpoint_keys();
        keys.extend(stale.iter().cloned());
        let mut lock = if wait {
            whole.acquire_locks(keys).await?
        } else {
            match whole.try_acquire_locks(keys).await? {
                Some(lock) => lock,
                None => return Ok(None),
            }
        };
        let result = whole
            .rebuild_locked(&mut lock, &stale, policy, progress, start)
            .await;
        whole.release(lock).await;
        result.map(Some)
    }

    async fn rebuild_locked(
        &self,
        lock: &mut ActiveLock,
        stale: &[String],
        policy: ErrorPolicy,
        progress: &mut (dyn FnMut(Progress) + Send),
        start: Start,
    ) -> Result<u64, ProjectionError> {
        self.set_state(RunnerState::Active);
        if self.metered {
            crate::telemetry::set_state(&self.metric_labels(), "rebuilding");
        }
        let keys = self.checkpoint_keys();
        let resume = {
            let mut tx = lock.begin(self).await?;
            self.setup_in(&mut tx).await?;
            // Lock every checkpoint row first: a previous holder's batch still in flight
            // commits before the reset, never after it.
            let mut all: Vec<String> = keys.iter().chain(stale).cloned().collect();
            all.sort();
            all.dedup();
            let rows = self.lock_checkpoints(&mut tx, &all).await?;
            let resume = start == Start::ResumeInterrupted
                && stale.is_empty()
                && self.stored_parts(&mut tx).await? == Some(self.parts())
                && rows
                    .iter()
                    .any(|(key, _, rebuilding)| *rebuilding && keys.contains(key));
            if resume {
                tracing::info!(projection = %self.key, "resuming an interrupted rebuild");
            } else {
                // Parked events first: a replay that claimed one (and holds its row) commits
                // before the read model is emptied, never after.
                self.execute_on_keys(&mut tx, &self.sql.delete_parked, &keys)
                    .await?;
                if !stale.is_empty() {
                    self.execute_on_keys(&mut tx, &self.sql.delete_parked, stale)
                        .await?;
                    self.execute_on_keys(&mut tx, &self.sql.delete_checkpoints, stale)
                        .await?;
                }
                self.projection
                    .reset(&mut tx)
                    .await
                    .map_err(|e| self.failed_setup(e))?;
                self.save_checkpoints_of(&mut tx, &keys, Position::START)
                    .await?;
                self.execute_on_keys(&mut tx, &self.sql.mark_rebuilding, &keys)
                    .await?;
                self.set_parts(&mut tx).await?;
            }
            tx.commit().await.map_err(|e| self.store_error(e))?;
            resume
        };
        lock.relax_commits(true);
        let events = if resume && self.all_parts.is_some() && !self.parts_level().await? {
            // The parts were resumed separately since the interruption: each catches up
            // from its own checkpoint.
            let mut events = 0;
            let mut caught_up = Ok(0);
            for index in 0..self.parts() {
                match self
                    .sibling(index)
                    .catch_up_locked(lock, policy, progress)
                    .await
                {
                    Ok(count) => events += count,
                    Err(error) => {
                        caught_up = Err(error);
                        break;
                    }
                }
            }
            caught_up.map(|_: u64| events)
        } else {
            self.catch_up_locked(lock, policy, progress).await
        };
        lock.relax_commits(false);
        let events = events?;
        // A synchronous commit: its flush makes every relaxed batch before it durable.
        let conn = lock.conn(self)?;
        self.execute_on_keys(conn, &self.sql.clear_rebuilding, &keys)
            .await?;
        Ok(events)
    }

    /// Whether every part's checkpoint is at the same position.
    async fn parts_level(&self) -> Result<bool, ProjectionError> {
        let mut positions = Vec::new();
        for index in 0..self.parts() {
            positions.push(self.sibling(index).load_checkpoint().await?.0);
        }
        Ok(positions.windows(2).all(|w| w[0] == w[1]))
    }

    /// The runner a rebuild uses: this one when the projection is not split, otherwise one
    /// that applies every part's events and moves every part's checkpoint.
    pub(super) fn whole(&self) -> ProjectionRunner<P> {
        let parts = self.parts();
        let mut whole = self.derived(
            self.projection.name().to_owned(),
            Arc::clone(&self.projection),
        );
        if parts > 1 {
            whole.key = part_key(self.projection.name(), 0, parts);
            whole.all_parts = Some(parts);
        }
        whole
    }

    /// The runner of part `index` of the projection split as this runner's is.
    fn sibling(&self, index: u32) -> ProjectionRunner<P> {
        let parts = self.parts();
        let mut part = self.derived(
            part_key(self.projection.name(), index, parts),
            Arc::clone(&self.projection),
        );
        part.part = Some((index, parts));
        part
    }

    /// A runner with this one's settings, unsplit, under `key`, sharing this one's state.
    pub(super) fn derived(&self, key: String, projection: Arc<P>) -> ProjectionRunner<P> {
        ProjectionRunner {
            store: self.store.clone(),
            reader: self.reader.clone(),
            projection,
            key,
            part: None,
            all_parts: None,
            upcasters: Arc::clone(&self.upcasters),
            policy: self.policy,
            batch_size: self.batch_size,
            poll_interval: self.poll_interval,
            lock_retry: self.lock_retry,
            lock_check: self.lock_check,
            sql: Arc::clone(&self.sql),
            active: Arc::clone(&self.active),
            contact: Arc::clone(&self.contact),
            state: Arc::clone(&self.state),
            metered: self.metered,
            unknown_types: Arc::clone(&self.unknown_types),
        }
    }

    /// A runner with this one's settings under `key`, with a state of its own (a blue/green
    /// build beside the live runner).
    pub(super) fn detached(&self, key: String, projection: P) -> ProjectionRunner<P> {
        let mut runner = self.derived(key, Arc::new(projection));
        runner.active = Arc::new(AtomicBool::new(false));
        runner.contact = Arc::new(super::lock::Contact::new());
        runner.state = Arc::new(Mutex::new(RunnerState::Idle));
        runner.metered = false;
        runner
    }

    /// The checkpoint keys stored for this projection that another number of parts than this
    /// runner's left: what a rebuild re-splitting it must remove.
    async fn stored_keys(&self) -> Result<Vec<String>, ProjectionError> {
        let mine = self.whole().checkpoint_keys();
        let stored: Vec<String> =
            sqlx::query_scalar(AssertSqlSafe(self.sql.checkpoint_keys.clone()))
                .bind(self.projection.name())
                .fetch_all(self.store.pool())
                .await
                .map_err(|e| self.store_error(e))?;
        let name = self.projection.name();
        Ok(stored
            .into_iter()
            .filter(|k| parts_of_key(name, k).is_some() && !mine.contains(k))
            .collect())
    }

    /// The number of parts the store records for the projection.
    async fn stored_parts(&self, conn: &mut PgConnection) -> Result<Option<u32>, ProjectionError> {
        let parts: Option<i32> = sqlx::query_scalar(AssertSqlSafe(self.sql.layout.clone()))
            .bind(self.projection.name())
            .fetch_optional(&mut *conn)
            .await
            .map_err(|e| self.store_error(e))?;
        Ok(parts.map(|p| p.max(1) as u32))
    }

    async fn set_parts(&self, conn: &mut PgConnection) -> Result<(), ProjectionError> {
        sqlx::query(AssertSqlSafe(self.sql.set_layout.clone()))
            .bind(self.projection.name())
            .bind(i32::try_from(self.parts()).unwrap_or(i32::MAX))
            .execute(&mut *conn)
            .await
            .map_err(|e| self.store_error(e))?;
        Ok(())
    }

    /// Refuses to run with another number of parts than the store records (which would apply
    /// events twice or not at all); records it when the projection is new. Stores that predate
    /// the record are judged by the checkpoints they hold.
    pub(super) async fn check_layout(
        &self,
        conn: &mut PgConnection,
    ) -> Result<(), ProjectionError> {
        let configured = self.parts();
        let stored = match self.stored_parts(conn).await? {
            Some(parts) => parts,
            None => {
                let keys: Vec<String> =
                    sqlx::query_scalar(AssertSqlSafe(self.sql.checkpoint_keys.clone()))
                        .bind(self.projection.name())
                        .fetch_all(&mut *conn)
                        .await
                        .map_err(|e| self.store_error(e))?;
                let name = self.projection.name();
                let other = keys
                    .iter()
                    .filter_map(|key| parts_of_key(name, key))
                    .find(|parts| *parts != configured);
                match other {
                    Some(parts) => parts,
                    None => {
                        self.set_parts(conn).await?;
                        configured
                    }
                }
            }
        };
        if stored != configured {
            return Err(ProjectionError::Layout {
                projection: self.projection.name().to_owned(),
                configured,
                stored,
            });
        }
        Ok(())
    }
}

/// The number of parts a checkpoint key of projection `name` belongs to: 1 for `name`, `n`
/// for `name#i/n`; `None` for any other key (another projection whose name starts alike).
fn parts_of_key(name: &str, key: &str) -> Option<u32> {
    if key == name {
        return Some(1);
    }
    let (index, parts) = key.strip_prefix(name)?.strip_prefix('#')?.split_once('/')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(index) || !digits(parts) {
        return None;
    }
    let (index, parts) = (index.parse::<u32>().ok()?, parts.parse::<u32>().ok()?);
    (index < parts).then_some(parts)
}

#[cfg(test)]
mod tests {
    use super::parts_of_key;

    #[test]
    fn only_this_projections_keys_count() {
        assert_eq!(parts_of_key("a", "a"), Some(1));
        assert_eq!(parts_of_key("a", "a#2/4"), Some(4));
        for other in ["a#v2", "a#1/x", "a#4/4", "ab", "a~next", "a#/2", "a#1/2/3"] {
            assert_eq!(parts_of_key("a", other), None, "{other}");
        }
    }
}
