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
        // SeqCst on both flags, here and in the task: the task's "stop when nothing is
        // pending" and this "start unless running" must not both read the other's old value.
        self.pending.store(true, Ordering::SeqCst);
        if self.running.load(Ordering::SeqCst) || self.running.swap(true, Ordering::SeqCst) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.running.store(false, Ordering::SeqCst);
            return;
        };
        let wakeup = Arc::downgrade(self);
        runtime.spawn(send_while_alive(wakeup, pool.clone()));
    }
}

/// Marks the task stopped however it ends, its runtime shutting down included: a later append
/// starts a new one.
struct Running {
    wakeup: Weak<Wakeup>,
    /// Off once the task cleared the flag itself (a new task may own it by then).
    armed: bool,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(wakeup) = self.wakeup.upgrade().filter(|_| self.armed) {
            wakeup.running.store(false, Ordering::SeqCst);
        }
    }
}

/// Sends one notification per interval in which appends were announced; ends when the store
/// is dropped, or after an idle minute (the next append starts it again).
async fn send_while_alive(wakeup: Weak<Wakeup>, pool: PgPool) {
    let mut running = Running {
        wakeup: wakeup.clone(),
        armed: true,
    };
    let mut idle = Duration::ZERO;
    loop {
        let Some(this) = wakeup.upgrade() else {
            return;
        };
        let interval = this.interval;
        if this.pending.swap(false, Ordering::SeqCst) {
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
                this.running.store(false, Ordering::SeqCst);
                // An append that raised the flag after the check above but saw the task still
                // running started none: go on for it, unless another task took over.
                if this.pending.load(Ordering::SeqCst) && !this.running.swap(true, Ordering::SeqCst)
                {
                    idle = Duration::ZERO;
                } else {
                    running.armed = false;
                    return;
                }
            }
        }
        drop(this);
        tokio::time::sleep(interval).await;
    }
}
