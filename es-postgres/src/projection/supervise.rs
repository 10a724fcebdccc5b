//! Riding out transient faults: how long a supervised loop waits before trying again.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Capped exponential backoff with jitter: 200 ms, 400 ms, ... up to 30 s, each wait drawn
/// from [75 %, 125 %] of the nominal one, so instances that failed together (a database
/// restart) do not all come back at the same instant.
pub(crate) struct Backoff {
    attempt: u32,
    seed: u64,
}

const FIRST: Duration = Duration::from_millis(200);
const CAP: Duration = Duration::from_secs(30);

impl Backoff {
    pub(crate) fn new() -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        Self {
            attempt: 0,
            seed: u64::from(nanos) ^ (u64::from(std::process::id()) << 32) | 1,
        }
    }

    /// The next wait.
    pub(crate) fn next(&mut self) -> Duration {
        let nominal = FIRST.saturating_mul(1 << self.attempt.min(10)).min(CAP);
        self.attempt = self.attempt.saturating_add(1);
        // xorshift64: enough to spread instances apart.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let permille = 750 + self.seed % 501;
        nominal.mul_f64(permille as f64 / 1000.0)
    }

    /// After progress: the next fault starts from the first wait again.
    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_grow_to_a_cap_with_jitter() {
        let mut backoff = Backoff::new();
        let first = backoff.next();
        assert!(first >= Duration::from_millis(150) && first <= Duration::from_millis(250));
        for _ in 0..20 {
            assert!(backoff.next() <= CAP.mul_f64(1.25));
        }
        backoff.reset();
        assert!(backoff.next() <= Duration::from_millis(250));
    }
}
