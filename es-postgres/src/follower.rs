//! Following the global log: catch up from a checkpoint, then wait for new events.

use std::time::Duration;

use es_core::{EventStore, Position, RecordedEvent, StoreError};
use sqlx::postgres::{PgListener, PgPoolOptions};

use crate::PgEventStore;

/// Reads the global log in batches from a position on, and when it has caught up waits for the
/// next append: woken by the notification stores send (at most once per wake-up interval, 10 ms
/// by default, while appends happen), or after the poll interval when a
/// notification is lost (a dropped listener connection, an append that commits while an older
/// transaction still holds the horizon). Correctness rests on the reads, never on notifications.
pub struct LogFollower {
    store: PgEventStore,
    after: Position,
    batch_size: usize,
    poll_interval: Duration,
    listener: Option<PgListener>,
    listening: bool,
    /// Whether to LISTEN at all; readers that never wait do not.
    notifications: bool,
    /// The store whose server the follower listens on, when not the one it reads (a hot
    /// standby can neither send nor receive notifications).
    wake_source: Option<PgEventStore>,
    /// After a notification whose events the horizon still hides: the next short wait before
    /// reading again, and when the notification came.
    held_back: Option<(Duration, std::time::Instant)>,
}

/// The first wait before re-reading when a notified event is not readable yet.
const HELD_BACK_FIRST_WAIT: Duration = Duration::from_millis(2);
/// The longest: a transaction holding the horizon for a quarter of a second (an ANALYZE, a
/// slow writer) then delays the follower by at most this much more.
const HELD_BACK_MAX_WAIT: Duration = Duration::from_millis(50);

impl LogFollower {
    pub(crate) fn new(store: PgEventStore, after: Position) -> Self {
        Self {
            store,
            after,
            batch_size: 500,
            poll_interval: Duration::from_millis(500),
            listener: None,
            listening: false,
            notifications: true,
            wake_source: None,
            held_back: None,
        }
    }

    /// Listens for wake-ups on `primary`'s server instead of the one it reads: for a follower
    /// of a hot standby (see [`ProjectionRunner::read_from`](crate::ProjectionRunner::read_from)),
    /// where LISTEN is refused. A wake-up may come before the standby has replayed the append;
    /// the follower then re-reads after a short backoff, as when the horizon hides an event.
    pub fn wake_on(mut self, primary: &PgEventStore) -> Self {
        self.wake_source = Some(primary.clone());
        self
    }

    /// Reads at most `size` events per batch (default 500).
    pub fn batch_size(mut self, size: usize) -> Self {
        self.batch_size = size.max(1);
        self
    }

    /// Polls at least this often when no notification arrives (default 500 ms).
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// Never listens for notifications: for a reader that only ever calls
    /// [`try_next_batch`](Self::try_next_batch), which spares it a connection.
    pub(crate) fn without_notifications(mut self) -> Self {
        self.notifications = false;
        self
    }

    /// The position of the last event returned: where a restarted follower resumes.
    pub fn position(&self) -> Position {
        self.after
    }

    /// The next batch of events, not empty; waits until there is one.
    ///
    /// Rides out transient errors (a restart, a lost connection, a pool timeout: see
    /// [`StoreError::is_transient`]) by itself: each is logged through `tracing` and the read
    /// tried again after a backoff (200 ms doubling to 30 s, with jitter), from the same
    /// position. Only permanent errors are returned, such as a stored row that cannot be read
    /// ([`StoreError::Malformed`], naming its position).
    pub async fn next_batch(&mut self) -> Result<Vec<RecordedEvent>, StoreError> {
        let mut backoff = crate::projection::supervise::Backoff::new();
        loop {
            match self.try_next_batch().await {
                Ok(Some(batch)) => return Ok(batch),
                Ok(None) => self.wait_for_more().await,
                Err(error) if error.is_transient() => {
                    let wait = backoff.next();
                    tracing::warn!(%error, after = %self.after, retry_in = ?wait, "reading the global log failed; retrying");
                    tokio::time::sleep(wait).await;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// The next batch of events if there is one now, without waiting.
    pub async fn try_next_batch(&mut self) -> Result<Option<Vec<RecordedEvent>>, StoreError> {
        // Listen before reading: a notification that arrives between the read and the wait is
        // then queued, not lost.
        self.ensure_listening().await;
        let batch = self.store.read_all(self.after, self.batch_size).await?;
        Ok(batch.last().map(|last| last.position).map(|last| {
            self.after = last;
            self.held_back = None;
            batch
        }))
    }

    async fn ensure_listening(&mut self) {
        if self.listening || !self.notifications {
            return;
        }
        // A connection of its own, not one from the store's pool: a pool busy with batches
        // would make the follower wait out the pool's acquire timeout before every read.
        let source = self.wake_source.as_ref().unwrap_or(&self.store);
        let own = PgPoolOptions::new()
            .max_connections(1)
            .min_connections(0)
            .max_lifetime(None)
            .idle_timeout(None)
            .acquire_timeout(Duration::from_secs(10))
            .connect_lazy_with(source.pool().connect_options().as_ref().clone());
        match PgListener::connect_with(&own).await {
            Ok(mut listener) => match listener.listen(&source.schema().channel()).await {
                Ok(()) => {
                    self.listener = Some(listener);
                    self.listening = true;
                }
                Err(err) => tracing::warn!(error = %err, "cannot LISTEN; polling instead"),
            },
            Err(err) => tracing::warn!(error = %err, "cannot connect a listener; polling instead"),
        }
    }

    /// Waits until new events may be readable: a notification, a short backoff while the
    /// horizon hides a notified event, or the poll interval.
    pub(crate) async fn wait_for_more(&mut self) {
        // A notification means an event committed past our position. When the read found
        // nothing, an older transaction still holds the horizon, and its end sends no
        // notification if it appended nothing: re-read soon, backing off up to the poll interval.
        if let Some((wait, since)) = self.held_back {
            tokio::time::sleep(wait).await;
            // Re-read at growing intervals, up to HELD_BACK_MAX_WAIT, for a poll interval
            // after the notification; then wait as usual.
            let next = wait.saturating_mul(2).min(HELD_BACK_MAX_WAIT);
            self.held_back = (since.elapsed() < self.poll_interval).then_some((next, since));
            return;
        }
        let Some(listener) = self.listener.as_mut() else {
            tokio::time::sleep(self.poll_interval).await;
            // Try to listen again on the next round.
            self.listening = false;
            return;
        };
        match tokio::time::timeout(self.poll_interval, listener.try_recv()).await {
            Ok(Ok(Some(_))) => {
                // Several appends may have notified; one read serves them all.
                while listener.next_buffered().is_some() {}
                self.held_back = Some((HELD_BACK_FIRST_WAIT, std::time::Instant::now()));
            }
            Ok(Ok(None)) => {
                // The listener reconnects by itself; notifications sent meanwhile are lost,
                // which the next read covers.
            }
            Ok(Err(err)) => {
                tracing::warn!(error = %err, "listener failed; polling until it reconnects");
                self.listener = None;
                self.listening = false;
            }
            Err(_elapsed) => {}
        }
    }
}
