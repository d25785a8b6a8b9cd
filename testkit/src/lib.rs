//! What the worker's tests, examples and benchmark share: the REAL emulators (Google's Pub/Sub
//! emulator and fake-gcs-server) on loopback, their REST APIs, and proxies that break or slow the
//! connections to them. Nothing here knows the worker: it is the world the worker runs in.
//!
//! # Layout
//!
//! - [`Emulators`]: the processes, one pair per process ([`Emulators::shared`]) or a private pair.
//! - [`PubSub`], [`Gcs`]: REST helpers, built per test (a `reqwest::Client` belongs to the
//!   runtime of the test that made it); `rest.rs` holds their one HTTP call helper.
//! - [`Proxy`]: TCP faults (refuse, reset, hang). [`HttpProxy`]: latency, recording, 403s, 429s.
//! - [`FastGcs`]: Cloud Storage's JSON API in memory, with the [`HttpProxy`]'s faults
//!   (`faults.rs`), for a benchmark that must measure the worker rather than fake-gcs-server.
//! - [`RateCap`]: a TCP proxy that caps how fast each connection receives, as Pub/Sub caps each
//!   StreamingPull stream.
//! - [`TlsFront`]: TLS in front of a fake, with a [`LoopbackCa`] made at run time that a client
//!   trusts through `SSL_CERT_FILE`, as Cloud Storage is reached only over TLS.
//! - [`Latency`]: a delay with a tail (log-normal), what the [`HttpProxy`] holds answers back by;
//!   with a seeded generator, unit tests draw the same delays every run ([`rand`] is re-exported
//!   so that theirs is the same version).
//! - [`Soak`]: the chaos soak: worker processes killed and restarted at random while
//!   storage and the Pub/Sub connection fail in windows, then an account of every message.
//! - [`unique_name`] keeps tests apart on shared emulators, so they run in parallel;
//!   [`wait_for`] is the one way to wait for an effect; [`get`] and [`metrics`] read the
//!   worker's health endpoint and `/metrics`.
//! - [`process`]: the one way to run a child ([`process::Process`], with its `/proc` figures),
//!   [`process::build_worker`] for the examples, and [`process::pip_installed`].

mod emulators;
mod fast_gcs;
pub mod faults;
mod gcs;
mod http_proxy;
mod latency;
pub mod process;
mod proxy;
mod pubsub;
mod rate_cap;
mod rest;
mod soak;
mod tls;

pub use emulators::{Emulators, PROJECT_ID};
pub use fast_gcs::FastGcs;
pub use gcs::{Gcs, ObjectInfo};
pub use http_proxy::HttpProxy;
pub use latency::Latency;
pub use proxy::{Mode, Proxy};
pub use pubsub::{DeliveryPolicy, OutMessage, PubSub, Received, SeekTo, SubscriptionSettings};
pub use rand;
pub use rate_cap::RateCap;
pub use soak::{Soak, SoakReport};
pub use tls::{LoopbackCa, TlsFront};

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::{Instant, sleep};
use tokio_util::task::AbortOnDropHandle;

/// A fresh name such as `orders-4242-7-k3f9q`, valid at once as a topic id, a subscription id
/// and a bucket name: the process id (several test processes may share an emulator), a counter
/// (unique within the process) and a random tail (unique across reruns with the same pid).
pub fn unique_name(prefix: &str) -> String {
    use rand::RngExt as _;
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
    let tail = rand::rng().sample_iter(rand::distr::Alphanumeric).take(5).map(char::from);
    let tail: String = tail.collect::<String>().to_ascii_lowercase();
    format!("{}-{}-{n}-{tail}", p.trim_end_matches('-'), std::process::id())
}

/// Polls `done` every 100 ms until it holds; fails after `limit`, naming `what`, or as soon as
/// `done` fails. `done` is async, so a check may ask an emulator or the worker's `/metrics`.
pub async fn wait_for(
    limit: Duration,
    what: &str,
    mut done: impl AsyncFnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while !done().await? {
        anyhow::ensure!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// GETs `url` (the worker's health endpoint, say): the status and the body.
pub async fn get(http: &reqwest::Client, url: &str) -> anyhow::Result<(u16, String)> {
    let response = http.get(url).send().await?;
    Ok((response.status().as_u16(), response.text().await?))
}

/// The samples of the Prometheus page at `url` (the worker's `/metrics`) by series: the name with
/// its labels as written (`messages_nacked_total{reason="transient"}`), to its value.
pub async fn metrics(http: &reqwest::Client, url: &str) -> anyhow::Result<BTreeMap<String, f64>> {
    Ok(parse_metrics(&rest::send(http.get(url), url).await?.text().await?))
}

/// A Prometheus text page (exposition format 0.0.4) by series. Comments, and lines that are not
/// `SERIES VALUE`, are skipped; the worker writes no timestamps.
fn parse_metrics(page: &str) -> BTreeMap<String, f64> {
    (page.lines())
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// A listener on a free 127.0.0.1 port with a backlog as deep as the kernel allows
/// (`somaxconn`): a writer with a thousand writes at once opens a thousand connections in a
/// burst, and tokio's default of 1,024 would drop some of them (`ListenOverflows`), each retried
/// a second later. Call it within a tokio runtime, which the listener then belongs to.
fn listen_on_loopback() -> std::io::Result<tokio::net::TcpListener> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))?;
    socket.listen(4096)
}

/// Accepts connections on `listener` in a task that lives as long as the handle, counts each in
/// `accepted` and serves it with `serve`; dropping the handle closes every connection.
fn accept_each<F, Fut>(
    listener: tokio::net::TcpListener,
    accepted: std::sync::Arc<AtomicU64>,
    serve: F,
) -> AbortOnDropHandle<()>
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    AbortOnDropHandle::new(tokio::spawn(async move {
        let mut tasks = tokio::task::JoinSet::new();
        loop {
            while tasks.try_join_next().is_some() {}
            let Ok((client, _)) = listener.accept().await else {
                // e.g. EMFILE: back off instead of spinning.
                sleep(Duration::from_millis(50)).await;
                continue;
            };
            accepted.fetch_add(1, Ordering::Relaxed);
            tasks.spawn(serve(client));
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::parse_metrics;

    #[test]
    fn a_metrics_page_reads_as_series_and_values() {
        let page = "# HELP a_total A.\n# TYPE a_total counter\na_total 3\n\
                    b{reason=\"x y\"} 1.5\nc NaN\nnot a sample\n";
        let metrics = parse_metrics(page);
        assert_eq!(metrics.get("a_total"), Some(&3.0));
        assert_eq!(metrics.get("b{reason=\"x y\"}"), Some(&1.5));
        assert!(metrics["c"].is_nan());
        assert_eq!(metrics.len(), 3);
    }
}
