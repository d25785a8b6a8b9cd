//! Shared test harness: starts the REAL emulators (Google's Pub/Sub emulator and
//! fake-gcs-server) on loopback and offers small REST helpers to drive them.
//!
//! Use it from `tests/*.rs` with `mod support;` and from `examples/*.rs` / benches with
//! `#[path = "../tests/support/mod.rs"] mod support;`.
//!
//! ```ignore
//! let emu = support::Emulators::shared().await;          // one pair per test process
//! let (ps, gcs) = (emu.pubsub(), emu.gcs());             // fresh HTTP clients per test
//! let topic = support::unique_name("topic");             // names never collide between tests
//! ps.create_topic(&topic).await?;
//! ```
//!
//! Design notes (why it looks like this):
//! * The emulators are shared per process because the Pub/Sub emulator is a JVM that takes
//!   seconds to start; isolation between tests comes from [`unique_name`] instead.
//! * The helpers ([`PubSub`], [`Gcs`]) are cheap values built per test, never statics: a
//!   `reqwest::Client` keeps pooled connections on the tokio runtime that opened them, and
//!   every `#[tokio::test]` has its own runtime, so a shared client fails once the runtime
//!   of an earlier test is gone.
//! * Every emulator process dies with the test process (see `emulators.rs`).

// Each test binary compiles its own copy of this module and uses only part of it.
#![allow(dead_code, unused_imports)]

pub mod emulators;
pub mod gcs;
pub mod proxy;
pub mod pubsub;
// Needs the worker binary's path, which Cargo gives integration tests only, not examples.
#[cfg(test)]
pub mod worker;

pub use emulators::Emulators;
pub use gcs::{Gcs, ObjectInfo};
pub use proxy::{Mode, Proxy};
pub use pubsub::{OutMessage, PubSub, Received};

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Returns a fresh name such as `orders-4242-7-k3f9q` that is valid at the same time as a
/// Pub/Sub topic id, a subscription id and a GCS bucket name: lowercase letters, digits and
/// dashes, starts with a letter, ends with a digit or letter, 3..=63 characters.
///
/// It contains the process id (test binaries may run concurrently against their own
/// emulators, but a developer may also point several at one emulator), a per-process counter
/// (unique within the process) and a short time-derived part (unique across reruns of a
/// process that got the same pid).
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut p: String = prefix
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .collect();
    // Topic ids must start with a letter and must not start with "goog".
    if !p.starts_with(|c: char| c.is_ascii_lowercase()) || p.starts_with("goog") {
        p.insert_str(0, "t-");
    }
    p.truncate(30);
    let p = p.trim_end_matches('-');
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    // 5 base-36 digits of a mix of time and counter.
    let mut r = (nanos ^ (u128::from(n) << 20)) as u64 % 36u64.pow(5);
    let mut tail = String::new();
    for _ in 0..5 {
        let d = (r % 36) as u32;
        tail.push(char::from_digit(d, 36).unwrap_or('x'));
        r /= 36;
    }
    format!("{p}-{}-{n}-{tail}", std::process::id())
}

/// Percent-encodes everything but RFC 3986 unreserved characters, for object names in URL
/// paths and query strings (object names may contain `/`, spaces, UTF-8...).
pub(crate) fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Turns a non-2xx response into an error that carries the method, URL, status and body,
/// because "404" alone does not say which of the emulator calls failed.
pub(crate) async fn check(
    resp: reqwest::Response,
    what: &str,
) -> anyhow::Result<reqwest::Response> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let body = resp.text().await.unwrap_or_default();
    let body: String = body.chars().take(2000).collect();
    anyhow::bail!("{what}: HTTP {status}: {body}")
}

/// A reqwest client for loopback emulators: no proxy (the `system-proxy` feature is off),
/// bounded timeouts so a broken emulator fails a test instead of hanging it.
pub(crate) fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(std::time::Duration::from_secs(120))
        .build()
        .expect("building a reqwest client cannot fail without TLS")
}
