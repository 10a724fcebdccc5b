//! Waking followers of the global log without serialising writers.
//!
//! A transaction that sends a notification takes a cluster-wide lock at commit and holds it
//! through its WAL flush, so notifying commits cannot share a flush: a notification per append
//! caps concurrent writers. Instead, an append only raises a flag, and one task per store sends
//! at most one notification per interval (default 10 ms) while appends happen, in a tiny
//! transaction of its own, after the appends it announces committed. Followers wake on it; the
//! poll interval still bounds the delay when it is lost, so correctness never rests on it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use sqlx::PgPool;

/// One store's coalescing notifier.
pub(crate) struct Wakeup {
    channel: String,
    interval: Duration,
    pending: AtomicBool,
    running: AtomicBool,
}

impl Wakeup {
    pub(crate) fn new(channel: String, interval: Duration) -> Self {
        Self {
            channel,
            interval,
            pending: AtomicBool::new(false),
            running: AtomicBool::new(false),
        }
    }

    pub(crate) fn interval(&self) -> Duration {
        self.interval
    }

    /// Announces appended events: a notification goes out within the interval. Cheap (an
    /// atomic store) after the first call, which starts the sending task when a tokio runtime
    /// is there to run it (without one, followers find the events by polling).
    pub(crate) fn signal(self: &Arc<Self>, pool: &PgPool) {
        self.pending.store(true, Ordering::Release);
        if self.running.load(Ordering::Acquire) || self.running.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.running.store(false, Ordering::Release);
            return;
        };
        let wakeup = Arc::downgrade(self);
        runtime.spawn(send_while_alive(wakeup, pool.clone()));
    }
}

/// Sends one notification per interval in which appends were announced; ends when the store
/// is dropped, or after an idle minute (the next append starts it again).
async fn send_while_alive(wakeup: Weak<Wakeup>, pool: PgPool) {
    let mut idle = Duration::ZERO;
    loop {
        let Some(this) = wakeup.upgrade() else {
            return;
        };
        let interval = this.interval;
        if this.pending.swap(false, Ordering::AcqRel) {
            idle = Duration::ZERO;
            let sent = sqlx::query("SELECT pg_notify($1, '')")
                .bind(&this.channel)
                .execute(&pool)
                .await;
            if let Err(error) = sent {
                tracing::debug!(%error, "could not wake followers; they poll");
            }
        } else {
            idle += interval;
            if idle >= Duration::from_secs(60) {
                this.running.store(false, Ordering::Release);
                // An append that raced with the stop restarts the task itself; one that
                // raised the flag just before is sent by a new task.
                if this.pending.load(Ordering::Acquire)
                    && !this.running.swap(true, Ordering::AcqRel)
                {
                    idle = Duration::ZERO;
                } else {
                    return;
                }
            }
        }
        drop(this);
        tokio::time::sleep(interval).await;
    }
}
