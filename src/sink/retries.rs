//! The storage client's retries of one write, and what they met on the way.
//!
//! The client retries a 429 or a 503 of a create-only upload itself (`ifGenerationMatch=0` makes
//! it idempotent), so a write that storage pushed back on ends as a slow success, and the write
//! limit (`crate::concurrency`) would take the client's waits for a queue. Each write therefore
//! gets its own retry policy, the client's own ([`RetryableErrors`] within `WRITE_TIMEOUT_SECS`),
//! which notes what each failed attempt was: the sink then reports that storage pushed back,
//! and the limit backs off, as it does for a 429 that ends a write.
//!
//! A throttled attempt (429) is retried after at most [`THROTTLED_MAX`], not the client's
//! default backoff (1 s doubling to 60 s): the write limit is what slows the worker down
//! against a bucket that throttles, and a write that waits for tens of seconds holds one of
//! the limit's few places idle meanwhile, while the bucket's allowance goes unused. Other
//! failures (503, network errors) keep the client's default backoff.

use google_cloud_gax::backoff_policy::BackoffPolicy;
use google_cloud_gax::error::Error;
use google_cloud_gax::error::rpc::Code;
use google_cloud_gax::exponential_backoff::{ExponentialBackoff, ExponentialBackoffBuilder};
use google_cloud_gax::retry_policy::{LimitedElapsedTime, RetryPolicy, RetryPolicyExt as _};
use google_cloud_gax::retry_result::RetryResult;
use google_cloud_gax::retry_state::RetryState;
use google_cloud_gax::throttle_result::ThrottleResult;
use google_cloud_storage::retry_policy::RetryableErrors;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The wait before the first retry of a throttled attempt is drawn from 0 to this.
pub(crate) const THROTTLED_INITIAL: Duration = Duration::from_millis(500);
/// ... and doubles with each attempt up to this.
pub(crate) const THROTTLED_MAX: Duration = Duration::from_secs(1);

/// What one write's attempts met, shared by its retry and backoff policies.
#[derive(Debug, Default)]
pub(super) struct Attempts {
    /// Some attempt was answered 429 or 503: storage asked for less.
    pushed_back: AtomicBool,
    /// The latest failed attempt was answered 429.
    throttled: AtomicBool,
}

impl Attempts {
    pub(super) fn pushed_back(&self) -> bool {
        self.pushed_back.load(Ordering::Relaxed)
    }
}

/// The policies of one write, and what its attempts met.
pub(super) struct Policies {
    pub(super) retry: Retry,
    pub(super) backoff: Backoff,
    pub(super) attempts: Arc<Attempts>,
}

impl Policies {
    /// Retries within `time_limit` (no new attempt starts after it).
    pub(super) fn new(time_limit: Duration) -> Self {
        let attempts = Arc::new(Attempts::default());
        let retry = Retry {
            inner: RetryableErrors.with_time_limit(time_limit),
            attempts: attempts.clone(),
        };
        let backoff = Backoff {
            throttled: exponential(THROTTLED_INITIAL, THROTTLED_MAX),
            otherwise: exponential(Duration::from_secs(1), Duration::from_secs(60)),
            attempts: attempts.clone(),
        };
        Self { retry, backoff, attempts }
    }
}

/// Truncated exponential backoff with full jitter, doubling from `initial` up to `max`.
fn exponential(initial: Duration, max: Duration) -> ExponentialBackoff {
    let builder = ExponentialBackoffBuilder::new().with_scaling(2.0);
    let built = builder.with_initial_delay(initial).with_maximum_delay(max).build();
    // The builder refuses only a zero initial delay, a maximum below it or a scaling below 1.
    built.unwrap_or_default()
}

/// The client's retry policy, noting what each failed attempt was.
#[derive(Debug)]
pub(super) struct Retry {
    inner: LimitedElapsedTime<RetryableErrors>,
    attempts: Arc<Attempts>,
}

impl RetryPolicy for Retry {
    fn on_error(&self, state: &RetryState, error: Error) -> RetryResult {
        let (status, code) = (error.http_status_code(), error.status().map(|s| s.code));
        let throttled = status == Some(429) || code == Some(Code::ResourceExhausted);
        let unavailable = status == Some(503) || code == Some(Code::Unavailable);
        self.attempts.throttled.store(throttled, Ordering::Relaxed);
        if throttled || unavailable {
            self.attempts.pushed_back.store(true, Ordering::Relaxed);
        }
        self.inner.on_error(state, error)
    }

    fn on_throttle(&self, state: &RetryState, error: Error) -> ThrottleResult {
        self.inner.on_throttle(state, error)
    }

    fn remaining_time(&self, state: &RetryState) -> Option<Duration> {
        self.inner.remaining_time(state)
    }
}

/// The client's backoff, shorter after a throttled attempt.
#[derive(Debug)]
pub(super) struct Backoff {
    throttled: ExponentialBackoff,
    otherwise: ExponentialBackoff,
    attempts: Arc<Attempts>,
}

impl BackoffPolicy for Backoff {
    fn on_failure(&self, state: &RetryState) -> Duration {
        match self.attempts.throttled.load(Ordering::Relaxed) {
            true => self.throttled.on_failure(state),
            false => self.otherwise.on_failure(state),
        }
    }
}
