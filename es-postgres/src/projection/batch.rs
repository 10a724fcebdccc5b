//! Applying a batch of the global log: the checkpoint fence, the read-model writes and the
//! checkpoint in one transaction, and the error policy for an event that fails.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;

use es_core::{
    BoxError, EventDecodeError, EventStore, Position, RecordedEvent, StoreError, current_version,
};
use futures_util::FutureExt;
use sqlx::{AssertSqlSafe, Connection, PgConnection};
use tracing::Instrument;
use uuid::Uuid;

use super::lock::ActiveLock;
use super::runner::{Progress, ProjectionRunner, part_key, stream_hash};
use super::{ErrorPolicy, OnFailure, PgProjection, ProjectionError};
use crate::convert::{position_from_columns, position_to_columns};
use crate::error::transient_source;

/// What became of one event in a batch applied event by event.
enum Outcome {
    Applied,
    /// Failed, with retries left: the batch is redone after a wait, outside any transaction.
    Retry(BoxError),
}

impl<P: PgProjection> ProjectionRunner<P> {
    /// Applies every event readable now from the checkpoint, reporting progress after each
    /// batch; returns how many events it read.
    pub(super) async fn catch_up_locked(
        &self,
        lock: &mut ActiveLock,
        policy: ErrorPolicy,
        progress: &mut (dyn FnMut(Progress) + Send),
    ) -> Result<u64, ProjectionError> {
        self.check_delivery(policy)?;
        self.check_reader().await?;
        let head = self.store.head().await.map_err(|e| self.store_error(e))?;
        let mut from = self.load_checkpoint().await?.0;
        let mut follower = self.follower_at(from).without_notifications();
        // The next batch, read while the previous one was applied.
        let mut ahead = None;
        let mut events = 0;
        loop {
            let next = match ahead.take() {
                Some(read) => read,
                None => follower.try_next_batch().await,
            };
            let read = match next {
                Ok(None) => return Ok(events),
                Ok(Some(batch)) => {
                    let count = batch.len() as u64;
                    let end = batch.last().map_or(from, |e| e.position);
                    // Reading goes through the pool (or a replica) and applying through the
                    // lock's session, so the next batch is read while this one is applied.
                    // It is used only when this batch committed as read.
                    let mut reader = self.follower_at(end).without_notifications();
                    let (applied, read_ahead) = tokio::join!(
                        self.process(lock, batch, from, policy),
                        reader.try_next_batch()
                    );
                    let applied = applied?;
                    if applied == Some(end) {
                        ahead = Some(read_ahead);
                        follower = reader;
                    }
                    applied.map(|p| (p, count))
                }
                Err(
                    error @ StoreError::Malformed {
                        position: Some(at), ..
                    },
                ) if at > from => self
                    .pass_malformed(lock, from, at, error, policy)
                    .await?
                    .map(|p| (p, 1)),
                Err(error) => return Err(self.store_error(error)),
            };
            match read {
                Some((position, count)) => {
                    events += count;
                    progress(Progress {
                        events,
                        position,
                        head,
                    });
                    from = position;
                    if ahead.is_none() {
                        follower = self.follower_at(position).without_notifications();
                    }
                }
                None => {
                    ahead = None;
                    from = self.load_checkpoint().await?.0;
                    follower = self.follower_at(from).without_notifications();
                }
            }
        }
    }

    /// Applies a batch read after `from` and commits it with the checkpoint past its last event,
    /// on the lock's session. Tries the whole batch in one go first; when an event fails, it
    /// redoes the batch event by event, each in a savepoint, so the policy can retry, park or
    /// skip just that event. Waits between retries happen outside any transaction.
    ///
    /// `Ok(None)`: the checkpoint is no longer at `from` (a previous holder's late commit, after
    /// it lost the advisory lock); nothing was applied, and the caller resumes from the
    /// checkpoint as it now is.
    pub(super) async fn process(
        &self,
        lock: &mut ActiveLock,
        batch: Vec<RecordedEvent>,
        from: Position,
        policy: ErrorPolicy,
    ) -> Result<Option<Position>, ProjectionError> {
        let Some(last) = batch.last().map(|e| e.position) else {
            return Ok(Some(from));
        };
        let span = tracing::info_span!(
            "projection_batch",
            projection = %self.key,
            events = batch.len(),
            last = %last,
            correlation_ids = tracing::field::Empty,
        );
        if !span.is_disabled() {
            span.record(
                "correlation_ids",
                tracing::field::display(correlations(&batch)),
            );
        }
        let started = std::time::Instant::now();
        let count = batch.len();
        let result = async {
            self.deliver(&batch).await?;
            if let Some(done) = self.try_whole_batch(lock, &batch, from, last).await? {
                return Ok(done);
            }
            let mut attempts: HashMap<usize, u32> = HashMap::new();
            loop {
                match self
                    .one_by_one(lock, &batch, from, last, policy, &mut attempts)
                    .await?
                {
                    Ok(done) => return Ok(done),
                    Err((index, error)) => {
                        let tries = attempts.get(&index).copied().unwrap_or(1);
                        let wait = policy.backoff.saturating_mul(1 << (tries - 1).min(16));
                        tracing::warn!(
                            event = %batch[index].event_ref(),
                            %error,
                            attempts = tries,
                            "applying failed; retrying"
                        );
                        tokio::time::sleep(wait).await;
                    }
                }
            }
        }
        .instrument(span)
        .await;
        match result {
            Err(error) => Err(lock.classify(self, error).await),
            Ok(Some(done)) => {
                crate::telemetry::batch_done(
                    crate::telemetry::projection(self.store.scope(), &self.key),
                    count,
                    started.elapsed(),
                );
                Ok(Some(done))
            }
            ok => ok,
        }
    }

    /// Hands the events the projection wants to its `before_commit`, outside any transaction.
    async fn deliver(&self, batch: &[RecordedEvent]) -> Result<(), ProjectionError> {
        if !self.projection.delivers() {
            return Ok(());
        }
        let wanted: Vec<&RecordedEvent> = batch.iter().filter(|e| self.wants(e)).collect();
        if wanted.is_empty() {
            return Ok(());
        }
        match caught(self.projection.before_commit(&self.key, &wanted)).await {
            Ok(()) => Ok(()),
            Err(error) if transient_source(error.as_ref()) => Err(self.store_error(error)),
            Err(error) => Err(ProjectionError::Failed {
                projection: self.key.clone(),
                event: Box::new(wanted[0].event_ref()),
                source: error,
            }),
        }
    }

    /// The fast path: the whole batch through `apply_batch` in one transaction. `Ok(None)` when
    /// it failed and was rolled back (the slow path then finds the failing event).
    async fn try_whole_batch(
        &self,
        lock: &mut ActiveLock,
        batch: &[RecordedEvent],
        from: Position,
        last: Position,
    ) -> Result<Option<Option<Position>>, ProjectionError> {
        let mut tx = lock.begin(self).await?;
        if !self.fence(&mut tx, from).await? {
            return Ok(Some(None));
        }
        match self.apply_all(&mut tx, batch).await {
            Ok(()) => {
                self.save_checkpoints(&mut tx, last).await?;
                tx.commit().await.map_err(|e| self.store_error(e))?;
                Ok(Some(Some(last)))
            }
            Err(error) => {
                tx.rollback().await.map_err(|e| self.store_error(e))?;
                if transient_source(error.as_ref()) {
                    return Err(self.store_error(error));
                }
                Ok(None)
            }
        }
    }

    /// The slow path: each event in a savepoint. `Ok(Err((index, error)))` when event `index`
    /// failed with retries left: the transaction was rolled back for the caller to wait and
    /// redo the batch.
    async fn one_by_one(
        &self,
        lock: &mut ActiveLock,
        batch: &[RecordedEvent],
        from: Position,
        last: Position,
        policy: ErrorPolicy,
        attempts: &mut HashMap<usize, u32>,
    ) -> Result<Result<Option<Position>, (usize, BoxError)>, ProjectionError> {
        let mut tx = lock.begin(self).await?;
        if !self.fence(&mut tx, from).await? {
            return Ok(Ok(None));
        }
        for (index, event) in batch.iter().enumerate() {
            let tries = attempts.entry(index).or_insert(0);
            match self
                .apply_with_policy(&mut tx, event, policy, tries)
                .await?
            {
                Outcome::Applied => {}
                Outcome::Retry(error) => {
                    tx.rollback().await.map_err(|e| self.store_error(e))?;
                    return Ok(Err((index, error)));
                }
            }
        }
        self.save_checkpoints(&mut tx, last).await?;
        tx.commit().await.map_err(|e| self.store_error(e))?;
        Ok(Ok(Some(last)))
    }

    /// Applies one event in a savepoint of `tx`; on failure follows `policy` (`tries` counts
    /// this event's failures across redos of the batch).
    async fn apply_with_policy(
        &self,
        tx: &mut PgConnection,
        event: &RecordedEvent,
        policy: ErrorPolicy,
        tries: &mut u32,
    ) -> Result<Outcome, ProjectionError> {
        let mut savepoint = tx.begin().await.map_err(|e| self.store_error(e))?;
        let error = match self.apply_one(&mut savepoint, event).await {
            Ok(()) => {
                savepoint.commit().await.map_err(|e| self.store_error(e))?;
                return Ok(Outcome::Applied);
            }
            Err(error) => error,
        };
        savepoint
            .rollback()
            .await
            .map_err(|e| self.store_error(e))?;
        if transient_source(error.as_ref()) {
            // The database, not the event: the whole batch is retried by the supervisor.
            return Err(self.store_error(error));
        }
        *tries += 1;
        // An event that does not decode never will: no point waiting to try again.
        let hopeless = error.downcast_ref::<EventDecodeError>().is_some();
        if !hopeless && *tries <= policy.retries {
            return Ok(Outcome::Retry(error));
        }
        match policy.then {
            OnFailure::Stop => Err(ProjectionError::Failed {
                projection: self.key.clone(),
                event: Box::new(event.event_ref()),
                source: error,
            }),
            OnFailure::Park => {
                tracing::error!(event = %event.event_ref(), %error, "parking the event");
                self.park(
                    tx,
                    event.event_id,
                    event.position,
                    event.stream_id.as_str(),
                    &event.event_type,
                    &error.to_string(),
                    *tries,
                )
                .await?;
                Ok(Outcome::Applied)
            }
            OnFailure::Skip => {
                tracing::error!(event = %event.event_ref(), %error, "skipping the event");
                Ok(Outcome::Applied)
            }
        }
    }

    /// Decodes the events the projection wants and hands them to it as one batch.
    async fn apply_all(
        &self,
        conn: &mut PgConnection,
        batch: &[RecordedEvent],
    ) -> Result<(), BoxError> {
        if !self.projection.applies() {
            return Ok(());
        }
        let mut envelopes = Vec::with_capacity(batch.len());
        for event in batch.iter().filter(|e| self.wants(e)) {
            self.upcasters.select_ref_into(event, &mut envelopes)?;
        }
        if envelopes.is_empty() {
            return Ok(());
        }
        caught(self.projection.apply_batch(conn, &envelopes)).await
    }

    /// Decodes (through the upcasters) and applies one event, if the projection wants it.
    pub(super) async fn apply_one(
        &self,
        conn: &mut PgConnection,
        event: &RecordedEvent,
    ) -> Result<(), BoxError> {
        if !self.projection.applies() || !self.wants(event) {
            return Ok(());
        }
        let span = tracing::debug_span!(
            "apply",
            projection = %self.key,
            event_id = %event.event_id,
            correlation_id = %event.correlation_id,
        );
        async {
            let mut envelopes = Vec::with_capacity(1);
            self.upcasters
                .select_ref_into::<P::Event>(event, &mut envelopes)?;
            for envelope in &envelopes {
                caught(self.projection.apply(conn, envelope)).await?;
            }
            Ok(())
        }
        .instrument(span)
        .await
    }

    fn wants(&self, event: &RecordedEvent) -> bool {
        self.wants_raw(event.stream_id.as_str(), &event.event_type)
    }

    /// Whether the projection takes events of this stream and type (and, for a part, whether
    /// the stream is this part's).
    pub(super) fn wants_raw(&self, stream: &str, event_type: &str) -> bool {
        let category = stream.split_once('-').map_or(stream, |(c, _)| c);
        let own = current_version::<P::Event>(event_type).is_some();
        let known = own || self.upcasters.lifts(event_type);
        if !self.projection.wants_category(category) {
            return false;
        }
        if !known {
            if !self.projection.ignores(event_type) {
                self.unknown_types
                    .passed_over(&self.key, category, event_type);
            }
            return false;
        }
        // A category it reads is one where a type of its own enum is stored: an
        // application-wide registry's upcasters lift types of every category.
        if own {
            self.unknown_types.known(category);
        }
        self.part
            .is_none_or(|(index, parts)| stream_hash(stream) % u64::from(parts) == u64::from(index))
    }

    /// Hands a stored row that does not read as an event (at `at`, the next after `from`) to
    /// the policy, when the projection would take it: stop naming it, park it, or skip it.
    /// Retrying is pointless: stored events never change. Commits the checkpoint past it.
    pub(super) async fn pass_malformed(
        &self,
        lock: &mut ActiveLock,
        from: Position,
        at: Position,
        error: StoreError,
        policy: ErrorPolicy,
    ) -> Result<Option<Position>, ProjectionError> {
        let result = async {
            let mut tx = lock.begin(self).await?;
            if !self.fence(&mut tx, from).await? {
                return Ok(None);
            }
            let (transaction, sequence) = position_to_columns(at);
            let raw: Option<(Uuid, String, String)> =
                sqlx::query_as(AssertSqlSafe(self.sql.raw_event.clone()))
                    .bind(transaction)
                    .bind(sequence)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(|e| self.store_error(e))?;
            let Some((event_id, stream, event_type)) = raw else {
                return Err(self.store_error(format!(
                    "the malformed event at position {at} vanished while being passed"
                )));
            };
            if self.wants_raw(&stream, &event_type) {
                match policy.then {
                    OnFailure::Stop => {
                        return Err(ProjectionError::Unreadable {
                            projection: self.key.clone(),
                            source: error,
                        });
                    }
                    OnFailure::Park => {
                        tracing::error!(%error, "parking a stored event that cannot be read");
                        self.park(
                            &mut tx,
                            event_id,
                            at,
                            &stream,
                            &event_type,
                            &error.to_string(),
                            1,
                        )
                        .await?;
                    }
                    OnFailure::Skip => {
                        tracing::error!(%error, "skipping a stored event that cannot be read");
                    }
                }
            } else {
                tracing::warn!(%error, "passing over a stored event that cannot be read");
            }
            self.save_checkpoints(&mut tx, at).await?;
            tx.commit().await.map_err(|e| self.store_error(e))?;
            Ok(Some(at))
        }
        .await;
        match result {
            Err(error) => Err(lock.classify(self, error).await),
            ok => ok,
        }
    }

    /// Records a failed event in the parked events of the part that owns its stream.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn park(
        &self,
        conn: &mut PgConnection,
        event_id: Uuid,
        position: Position,
        stream: &str,
        event_type: &str,
        error: &str,
        attempts: u32,
    ) -> Result<(), ProjectionError> {
        let (transaction, sequence) = position_to_columns(position);
        sqlx::query(AssertSqlSafe(self.sql.park.clone()))
            .bind(self.park_key(stream))
            .bind(event_id)
            .bind(transaction)
            .bind(sequence)
            .bind(stream)
            .bind(event_type)
            .bind(crate::error::storable(error).as_ref())
            .bind(i32::try_from(attempts).unwrap_or(i32::MAX))
            .execute(&mut *conn)
            .await
            .map_err(|e| self.store_error(e))?;
        Ok(())
    }

    /// The key an event of `stream` is parked under: the part owning the stream when this
    /// runner applies every part.
    pub(super) fn park_key(&self, stream: &str) -> String {
        match self.all_parts {
            Some(parts) => part_key(
                self.projection.name(),
                (stream_hash(stream) % u64::from(parts)) as u32,
                parts,
            ),
            None => self.key.clone(),
        }
    }

    /// Locks this runner's checkpoint rows for this transaction and checks they are still at
    /// `from`. Another transaction applying from the same checkpoint waits here until it ends,
    /// then finds it moved: two instances can never both commit the same events.
    pub(super) async fn fence(
        &self,
        tx: &mut PgConnection,
        from: Position,
    ) -> Result<bool, ProjectionError> {
        let keys = self.checkpoint_keys();
        let rows = self.lock_checkpoints(tx, &keys).await?;
        if rows.len() != keys.len() {
            return Err(ProjectionError::Store {
                projection: self.key.clone(),
                transient: false,
                source: "its checkpoint is gone: another process re-split or removed the \
                         projection; restart the runner with the projection's current parts"
                    .into(),
            });
        }
        let moved = rows.iter().find(|(_, position, _)| *position != from);
        if let Some((key, found, _)) = moved {
            tracing::warn!(
                projection = %key,
                expected = %from,
                found = %found,
                "the checkpoint moved under this instance; resuming from it"
            );
        }
        Ok(moved.is_none())
    }

    /// Locks the checkpoint rows of `keys` (in key order) until the transaction ends: each
    /// key, its position and whether a rebuild of it is unfinished.
    pub(super) async fn lock_checkpoints(
        &self,
        tx: &mut PgConnection,
        keys: &[String],
    ) -> Result<Vec<(String, Position, bool)>, ProjectionError> {
        let rows: Vec<(String, i64, i64, bool)> =
            sqlx::query_as(AssertSqlSafe(self.sql.lock_checkpoints.clone()))
                .bind(keys)
                .fetch_all(&mut *tx)
                .await
                .map_err(|e| self.store_error(e))?;
        Ok(rows
            .into_iter()
            .map(|(key, t, p, rebuilding)| (key, position_from_columns(t, p), rebuilding))
            .collect())
    }

    /// Moves this runner's checkpoints to `position`, within `tx`.
    pub(super) async fn save_checkpoints(
        &self,
        tx: &mut PgConnection,
        position: Position,
    ) -> Result<(), ProjectionError> {
        self.save_checkpoints_of(tx, &self.checkpoint_keys(), position)
            .await
    }

    pub(super) async fn save_checkpoints_of(
        &self,
        tx: &mut PgConnection,
        keys: &[String],
        position: Position,
    ) -> Result<(), ProjectionError> {
        let (transaction, sequence) = position_to_columns(position);
        sqlx::query(AssertSqlSafe(self.sql.save_checkpoints.clone()))
            .bind(keys)
            .bind(transaction)
            .bind(sequence)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.store_error(e))?;
        Ok(())
    }
}

/// Runs a projection's future, turning a panic into an error the policy handles like any
/// other: a bug in one event's handling parks that event instead of killing the process.
async fn caught(
    work: impl std::future::Future<Output = Result<(), BoxError>>,
) -> Result<(), BoxError> {
    match AssertUnwindSafe(work).catch_unwind().await {
        Ok(result) => result,
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".to_owned());
            Err(format!("the projection panicked: {message}").into())
        }
    }
}

/// Notices event types passed over in categories where the projection does read other types:
/// what a type renamed without an upcaster looks like. Warns once per type.
#[derive(Default)]
pub(super) struct TypeWatch {
    seen: std::sync::Mutex<(
        std::collections::HashSet<String>,
        std::collections::HashSet<String>,
    )>,
}

impl TypeWatch {
    fn known(&self, category: &str) {
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !seen.0.contains(category) {
            seen.0.insert(category.to_owned());
        }
    }

    fn passed_over(&self, projection: &str, category: &str, event_type: &str) {
        if es_core::is_store_type(event_type) {
            return;
        }
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if seen.0.contains(category) && seen.1.insert(event_type.to_owned()) {
            tracing::warn!(
                projection,
                category,
                event_type,
                "passing over events of a type this projection does not know and no upcaster \
                 lifts, in a category it reads: if the type was renamed, add an upcaster; if the \
                 projection does not need it, list it in PgProjection::ignores"
            );
        }
    }
}

/// The distinct correlation ids of a batch, in order, at most eight then an ellipsis: enough
/// to find a piece of work's batches among the spans without a huge field.
fn correlations(batch: &[RecordedEvent]) -> String {
    let mut seen: Vec<uuid::Uuid> = Vec::new();
    let mut more = false;
    for event in batch {
        if seen.contains(&event.correlation_id) {
            continue;
        }
        if seen.len() == 8 {
            more = true;
            break;
        }
        seen.push(event.correlation_id);
    }
    let mut text = seen
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",");
    if more {
        text.push_str(",...");
    }
    text
}
