//! The test harness: starts the REAL emulators (Google's Pub/Sub emulator and fake-gcs-server)
//! on loopback, drives them over their REST APIs, breaks or slows the connections to them, and
//! runs the worker against them.
//!
//! - [`emulators`]: the processes, one pair per test process ([`emulators::Emulators::shared`])
//!   or a private pair for tests that kill and restart one.
//! - [`pubsub`], [`gcs`]: REST helpers, built per test (a `reqwest::Client` belongs to the
//!   runtime of the test that made it).
//! - [`proxy`]: TCP faults (refuse, reset, hang); [`http_proxy`]: latency, recording, 403s.
//! - `app`: a fresh topic, subscription and bucket per test, and the worker run in this process
//!   or as the real binary. Tests stay apart through [`unique_name`], so they run in parallel.
//!
//! `examples/local.rs` and `examples/bench.rs` include this module too (all but `app`, which
//! needs the binary's path that Cargo gives integration tests only).

#[cfg(test)]
pub mod app;
pub mod emulators;
pub mod gcs;
pub mod http_proxy;
pub mod proxy;
pub mod pubsub;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A fresh name such as `orders-4242-7-k3f9q`, valid at once as a topic id, a subscription id
/// and a bucket name: the process id (several test processes may share an emulator), a counter
/// (unique within the process) and a time-derived tail (unique across reruns with the same pid).
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut p: String = prefix
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_lowercase() || c.is_ascii_digit() { c } else { '-' })
        .collect();
    // Topic ids must start with a letter and must not start with "goog".
    if !p.starts_with(|c: char| c.is_ascii_lowercase()) || p.starts_with("goog") {
        p.insert_str(0, "t-");
    }
    p.truncate(30);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let mut r = (nanos ^ (u128::from(n) << 20)) as u64 % 36u64.pow(5);
    let tail: String = (0..5)
        .map(|_| {
            let d = (r % 36) as u32;
            r /= 36;
            char::from_digit(d, 36).unwrap_or('x')
        })
        .collect();
    format!("{}-{}-{n}-{tail}", p.trim_end_matches('-'), std::process::id())
}

/// Percent-encodes everything but RFC 3986 unreserved characters, for names in URLs.
fn url_encode(s: &str) -> String {
    use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
    const UNRESERVED: &AsciiSet =
        &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');
    utf8_percent_encode(s, UNRESERVED).to_string()
}

/// Sends `request`; a non-2xx answer becomes an error with `what`, the status and the body,
/// because "404" alone does not say which of the emulator calls failed.
async fn send(request: reqwest::RequestBuilder, what: &str) -> anyhow::Result<reqwest::Response> {
    let response = request.send().await.map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let body: String = response.text().await.unwrap_or_default().chars().take(2000).collect();
    anyhow::bail!("{what}: HTTP {status}: {body}")
}

/// A client for loopback emulators: no proxy, bounded timeouts so a broken emulator fails a
/// test instead of hanging it.
fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(std::time::Duration::from_secs(120))
        .build()
        .unwrap_or_default()
}
