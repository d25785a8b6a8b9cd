//! What a storage fake does to answers besides giving them, shared by [`crate::HttpProxy`] and
//! [`crate::FastGcs`] knob for knob:
//!
//! * **Latency**: every answer is held back by a delay drawn from a [`Latency`] (log-normal: a
//!   median and a tail), as real Cloud Storage takes tens of milliseconds, now and then far more.
//! * **403 for 412**: Cloud Storage may answer a create-only write of an existing object with
//!   403 when the caller may not read objects.
//! * **Throttling**: uploads above a rate get 429, as a bucket's index ramping up answers them.
//! * **Failing uploads or reads**: every upload (or read of an object's data, `alt=media`) gets a
//!   chosen status until switched off, as a bucket whose permission was revoked, whose quota is
//!   spent or whose backend is down answers them (reads: once the object's key is disabled).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::StatusCode;

use crate::Latency;

/// The fault knobs of a storage fake; [`crate::HttpProxy`] and [`crate::FastGcs`] dereference
/// to theirs, so `proxy.throttle(100)` turns them.
pub struct Faults {
    latency: Mutex<Latency>,
    forbid_existing: AtomicBool,
    /// Uploads allowed per second (0: no limit), and the current second's start and count.
    throttle: (AtomicU64, Mutex<(Instant, u64)>),
    throttled: AtomicU64,
    /// The status every upload gets instead of its answer (0: none).
    fail_uploads: AtomicU64,
    /// The status every read of an object's data gets instead of its answer (0: none).
    fail_reads: AtomicU64,
}

impl Faults {
    pub(crate) fn new() -> Self {
        Faults {
            latency: Mutex::new(Latency::ZERO),
            forbid_existing: AtomicBool::new(false),
            throttle: (AtomicU64::new(0), Mutex::new((Instant::now(), 0))),
            throttled: AtomicU64::new(0),
            fail_uploads: AtomicU64::new(0),
            fail_reads: AtomicU64::new(0),
        }
    }

    /// Holds every answer back by a delay drawn from `latency`, anew for each request.
    pub fn set_latency(&self, latency: Latency) {
        *self.latency.lock().unwrap() = latency;
    }

    /// Answers 403 where the answer would be 412 (a create-only write of an existing object).
    pub fn forbid_existing(&self, on: bool) {
        self.forbid_existing.store(on, Ordering::Relaxed);
    }

    /// Answers 429 to the uploads beyond `per_second` in each second (0: no limit).
    pub fn throttle(&self, per_second: u64) {
        self.throttle.0.store(per_second, Ordering::Relaxed);
    }

    /// Answers every upload with `status` (e.g. 403, 429, 503) instead of its answer, from now
    /// until called with `None`; other requests are served.
    pub fn fail_uploads(&self, status: Option<StatusCode>) {
        self.fail_uploads.store(status.map_or(0, |s| u64::from(s.as_u16())), Ordering::Relaxed);
    }

    /// Answers every read of an object's data (`alt=media`) with `status`, from now until
    /// called with `None`; other requests are served.
    pub fn fail_reads(&self, status: Option<StatusCode>) {
        self.fail_reads.store(status.map_or(0, |s| u64::from(s.as_u16())), Ordering::Relaxed);
    }

    /// Uploads answered with 429 so far.
    pub fn throttled(&self) -> u64 {
        self.throttled.load(Ordering::Relaxed)
    }

    /// Waits a delay drawn from the latency, anew for each request (from the thread's
    /// generator: a fake serves many connections at once, and which request draws which delay
    /// is up to the scheduler anyway).
    pub(crate) async fn hold(&self) {
        let latency = *self.latency.lock().unwrap();
        let delay = latency.sample(&mut rand::rng());
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }

    /// The status and JSON error body that replace the answer to the request for `target` (its
    /// path and query), if a fault is switched on for it: a failing upload or read, else an
    /// upload over the rate. An upload is counted against the rate only when it is not failed.
    pub(crate) fn injected(&self, target: &str) -> Option<(StatusCode, Bytes)> {
        let upload = target.contains("uploadType=");
        let failing = match () {
            _ if upload => self.fail_uploads.load(Ordering::Relaxed),
            _ if target.contains("alt=media") => self.fail_reads.load(Ordering::Relaxed),
            _ => 0,
        };
        if let Ok(status) = StatusCode::from_u16(failing as u16) {
            return Some((status, error_body(status, "injected by testkit")));
        }
        if upload && self.over_rate() {
            self.throttled.fetch_add(1, Ordering::Relaxed);
            let status = StatusCode::TOO_MANY_REQUESTS;
            return Some((status, error_body(status, "rate limit exceeded")));
        }
        None
    }

    /// `status`, or 403 for a 412 while [`Faults::forbid_existing`] is on.
    pub(crate) fn status(&self, status: StatusCode) -> StatusCode {
        match status {
            StatusCode::PRECONDITION_FAILED if self.forbid_existing.load(Ordering::Relaxed) => {
                StatusCode::FORBIDDEN
            }
            status => status,
        }
    }

    /// Counts an upload against this second's allowance; whether it is over.
    fn over_rate(&self) -> bool {
        let limit = self.throttle.0.load(Ordering::Relaxed);
        if limit == 0 {
            return false;
        }
        let mut second = self.throttle.1.lock().unwrap();
        if second.0.elapsed() >= Duration::from_secs(1) {
            *second = (Instant::now(), 0);
        }
        second.1 += 1;
        second.1 > limit
    }
}

/// An error in the shape of Cloud Storage's JSON API: `{"error":{"code":404,"message":"..",
/// "errors":[{"message":"..","domain":"global","reason":"notFound"}]}}`.
pub(crate) fn error_body(status: StatusCode, message: &str) -> Bytes {
    let reason = match status.as_u16() {
        400 => "invalid",
        401 => "required",
        403 => "forbidden",
        404 => "notFound",
        409 => "conflict",
        412 => "conditionNotMet",
        429 => "rateLimitExceeded",
        503 => "backendError",
        _ => "error",
    };
    let (code, message) = (status.as_u16(), serde_json::Value::from(message));
    Bytes::from(format!(
        r#"{{"error":{{"code":{code},"message":{message},"errors":[{{"message":{message},"domain":"global","reason":"{reason}"}}]}}}}"#
    ))
}
