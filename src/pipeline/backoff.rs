//! How long a failed write waits before its message is nacked.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// Delay before nacking a failed write: grows with consecutive failures across the worker (the
/// bucket is down for everyone) and with the message's own delivery attempt when the
/// subscription reports it; resets on the first success.
#[derive(Debug, Default)]
pub(super) struct FailureBackoff {
    consecutive: AtomicU32,
}

impl FailureBackoff {
    const BASE: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(10);

    pub(super) fn failure(&self, delivery_attempt: Option<i32>) -> Duration {
        let consecutive = self.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
        let attempt = delivery_attempt.unwrap_or(1).max(1) as u32;
        Self::delay(consecutive.max(attempt))
    }

    /// The delay for a failure of one message alone (a name collision, an object refused): it
    /// follows the message's own delivery attempt and leaves the worker-wide count as it is.
    pub(super) fn for_message(delivery_attempt: Option<i32>) -> Duration {
        Self::delay(delivery_attempt.unwrap_or(1).max(1) as u32)
    }

    pub(super) fn success(&self) {
        self.consecutive.store(0, Ordering::Relaxed);
    }

    fn delay(n: u32) -> Duration {
        Self::BASE.saturating_mul(1u32 << (n.clamp(1, 16) - 1)).min(Self::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_backoff_doubles_up_to_the_cap_and_resets_on_success() {
        let b = FailureBackoff::default();
        assert_eq!(b.failure(None), Duration::from_millis(100));
        assert_eq!(b.failure(None), Duration::from_millis(200));
        assert_eq!(b.failure(None), Duration::from_millis(400));
        for _ in 0..20 {
            b.failure(None);
        }
        assert_eq!(b.failure(None), Duration::from_secs(10));
        b.success();
        assert_eq!(b.failure(None), Duration::from_millis(100));
    }

    #[test]
    fn failure_backoff_follows_the_delivery_attempt() {
        let b = FailureBackoff::default();
        assert_eq!(b.failure(Some(4)), Duration::from_millis(800));
        b.success();
        assert_eq!(b.failure(Some(1000)), Duration::from_secs(10));
    }

    #[test]
    fn one_message_s_failure_leaves_the_worker_wide_count_alone() {
        let b = FailureBackoff::default();
        for _ in 0..20 {
            assert_eq!(FailureBackoff::for_message(None), Duration::from_millis(100));
        }
        assert_eq!(FailureBackoff::for_message(Some(3)), Duration::from_millis(400));
        assert_eq!(b.failure(None), Duration::from_millis(100), "the count did not grow");
    }
}
