//! The worker's counters: the progress line, the final summary, the liveness probe and the
//! Prometheus `/metrics` page all read the same metrics, so they cannot disagree.
//!
//! Each metric is an atomic; a snapshot taken while messages are moving may be a few messages
//! apart between counters, which is fine for a progress line.

use crate::sink::FailureKind;
use prometheus::core::Collector;
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Why a message was nacked, as the `reason` label of `messages_nacked_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NackReason {
    /// The write failed.
    WriteFailed(FailureKind),
    /// The shutdown budget ran out before the write finished.
    Shutdown,
}

impl NackReason {
    fn label(self) -> &'static str {
        match self {
            NackReason::WriteFailed(kind) => kind.as_str(),
            NackReason::Shutdown => "shutdown",
        }
    }
}

/// Live metrics, shared by the pipeline's tasks.
#[derive(Debug)]
pub struct Stats {
    registry: Registry,
    received: IntCounter,
    written: IntCounter,
    duplicates: IntCounter,
    acked: IntCounter,
    acks_failed: IntCounter,
    binary: IntCounter,
    nacked: IntCounterVec,
    bytes_written: IntCounter,
    in_flight: IntGauge,
    write_limit: IntGauge,
    /// Pull streams open now, and opened since start (see `streams::demand`).
    pull_streams: (IntGauge, IntCounter),
    write_seconds: Histogram,
    delivery_attempt: Histogram,
    /// When a message last settled (acked or nacked), or work started after an idle spell, in
    /// milliseconds since `epoch`: the liveness probe's notion of progress.
    last_progress_ms: AtomicU64,
    epoch: Instant,
}

/// A copy of the counters at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Snapshot {
    /// Messages delivered to the worker (redeliveries count again).
    pub received: u64,
    /// Objects created.
    pub written: u64,
    /// Messages whose object already existed (an earlier delivery wrote it); acked.
    pub duplicates: u64,
    /// Messages acked: `written + duplicates`.
    pub acked: u64,
    /// Messages nacked: failed writes and writes abandoned at shutdown.
    pub nacked: u64,
    /// Bytes of message data in created objects.
    pub bytes_written: u64,
    /// Messages received and not yet acked or nacked.
    pub in_flight: u64,
}

const NAMESPACE: &str = "pubsub_gcs_worker";

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

impl Stats {
    pub fn new() -> Self {
        let registry = Registry::new();
        let new = Register(&registry);
        let nacked_help = "Messages nacked, by reason: bucket_not_found, permission_denied, \
             rejected, transient, timeout (write failures), name_collision (an object of the name \
             holds another message) or shutdown (unfinished at the shutdown deadline).";
        let nacked = IntCounterVec::new(opts("messages_nacked_total", nacked_help), &["reason"]);
        let stats = Self {
            received: new.counter(
                "messages_received_total",
                "Messages delivered by the subscription, redeliveries included.",
            ),
            written: new.counter("objects_written_total", "Objects created."),
            duplicates: new.counter(
                "duplicates_skipped_total",
                "Messages whose object already existed (written by an earlier delivery); acked.",
            ),
            acked: new.counter("messages_acked_total", "Messages acked."),
            acks_failed: new.counter(
                "acks_failed_total",
                "Acks Pub/Sub did not confirm on a subscription with exactly-once delivery; the \
                 message is delivered again and meets its object.",
            ),
            binary: new.counter(
                "binary_messages_total",
                "Messages whose data is not valid UTF-8, stored unchanged as \
                 application/octet-stream (redeliveries count again).",
            ),
            nacked: registered(&registry, nacked),
            bytes_written: new
                .counter("bytes_written_total", "Bytes of message data in created objects."),
            in_flight: new
                .gauge("messages_in_flight", "Messages received and not yet acked or nacked."),
            write_limit: new.gauge(
                "write_concurrency_limit",
                "Object writes allowed at once now: follows storage latency, up to \
                 MAX_CONCURRENT_WRITES.",
            ),
            pull_streams: new.pull_streams(),
            write_seconds: new.histogram(
                "write_duration_seconds",
                "Time to write one object, retries included, successful or not.",
                &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0],
            ),
            delivery_attempt: new.histogram(
                "delivery_attempt",
                "Delivery attempt of received messages (only known when the subscription has a \
                 dead-letter policy).",
                &[1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0, 100.0],
            ),
            last_progress_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            registry,
        };
        register(&stats.registry, prometheus::process_collector::ProcessCollector::for_self());
        stats
    }

    pub fn received(&self, delivery_attempt: Option<i32>) {
        self.received.inc();
        if self.in_flight.get() == 0 {
            // Work after an idle spell: the stall clock starts now, not at the last settle.
            self.touch();
        }
        self.in_flight.inc();
        if let Some(attempt) = delivery_attempt {
            self.delivery_attempt.observe(f64::from(attempt));
        }
    }

    pub fn written(&self, bytes: usize, took: Duration) {
        self.written.inc();
        self.bytes_written.inc_by(bytes as u64);
        self.write_seconds.observe(took.as_secs_f64());
        self.settled();
        self.acked.inc();
    }

    /// An ack that Pub/Sub did not confirm (exactly-once delivery only): the message comes back.
    pub fn ack_failed(&self) {
        self.acks_failed.inc();
    }

    pub fn duplicate(&self, took: Duration) {
        self.duplicates.inc();
        self.write_seconds.observe(took.as_secs_f64());
        self.settled();
        self.acked.inc();
    }

    /// A message whose data is not valid UTF-8 is being written.
    pub fn binary(&self) {
        self.binary.inc();
    }

    /// A nack; `took` is the failed write's duration (none for an abandoned one).
    pub fn nacked(&self, reason: NackReason, took: Option<Duration>) {
        if let Some(took) = took {
            self.write_seconds.observe(took.as_secs_f64());
        }
        self.nacked.with_label_values(&[reason.label()]).inc();
        self.settled();
    }

    /// The write concurrency limit now (the `WriteLimit` of the pipeline).
    pub fn write_limit(&self, limit: usize) {
        self.write_limit.set(limit as i64);
    }

    /// The last [`Stats::write_limit`].
    /// A stream was opened (`opened`) or closed; `open` are open now.
    pub fn pull_streams(&self, open: usize, opened: bool) {
        self.pull_streams.0.set(open as i64);
        if opened {
            self.pull_streams.1.inc();
        }
    }

    /// Messages received since start.
    pub fn received_total(&self) -> u64 {
        self.received.get()
    }

    pub fn current_write_limit(&self) -> i64 {
        self.write_limit.get()
    }

    pub fn snapshot(&self) -> Snapshot {
        let nacked = self
            .nacked
            .collect()
            .iter()
            .flat_map(|family| family.get_metric())
            .map(|m| m.get_counter().get_value() as u64)
            .sum();
        Snapshot {
            received: self.received.get(),
            written: self.written.get(),
            duplicates: self.duplicates.get(),
            acked: self.acked.get(),
            nacked,
            bytes_written: self.bytes_written.get(),
            in_flight: self.in_flight.get().max(0) as u64,
        }
    }

    /// How long messages have been in flight without any of them settling; `None` when nothing
    /// is in flight (an idle subscription is healthy).
    pub fn stalled_for(&self) -> Option<Duration> {
        if self.in_flight.get() <= 0 {
            return None;
        }
        let last = Duration::from_millis(self.last_progress_ms.load(Ordering::Relaxed));
        Some(self.epoch.elapsed().saturating_sub(last))
    }

    /// The metrics in Prometheus' text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if TextEncoder::new().encode(&self.registry.gather(), &mut out).is_err() {
            return String::new();
        }
        String::from_utf8(out).unwrap_or_default()
    }

    fn settled(&self) {
        self.in_flight.dec();
        self.touch();
    }

    fn touch(&self) {
        let now = self.epoch.elapsed().as_millis() as u64;
        self.last_progress_ms.store(now, Ordering::Relaxed);
    }
}

/// Registration fails only for duplicate or inconsistent descriptors, which the fixed set above
/// never has; the process collector also fails harmlessly where `/proc` is missing.
fn register(registry: &Registry, collector: impl Collector + 'static) {
    let _ = registry.register(Box::new(collector));
}

/// Makes metrics in this worker's namespace, registered in one registry.
struct Register<'a>(&'a Registry);

impl Register<'_> {
    fn counter(&self, name: &str, help: &str) -> IntCounter {
        registered(self.0, IntCounter::with_opts(opts(name, help)))
    }

    fn gauge(&self, name: &str, help: &str) -> IntGauge {
        registered(self.0, IntGauge::with_opts(opts(name, help)))
    }

    fn pull_streams(&self) -> (IntGauge, IntCounter) {
        let open = "StreamingPull streams open now: one, and more while the load needs them, up \
            to PULL_STREAMS.";
        let opened = "StreamingPull streams opened since start, those tried and closed included.";
        (self.gauge("pull_streams", open), self.counter("pull_streams_opened_total", opened))
    }

    fn histogram(&self, name: &str, help: &str, buckets: &[f64]) -> Histogram {
        let opts = HistogramOpts::new(name, help).namespace(NAMESPACE).buckets(buckets.into());
        registered(self.0, Histogram::with_opts(opts))
    }
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help).namespace(NAMESPACE)
}

/// `metric`, registered in `registry`. Its options are constants of this file, so an error is a
/// bug caught by the tests.
fn registered<M: Collector + Clone + 'static>(
    registry: &Registry,
    metric: prometheus::Result<M>,
) -> M {
    let metric = metric.expect("valid metric options");
    register(registry, metric.clone());
    metric
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn acks_are_writes_plus_duplicates_and_in_flight_is_the_rest() {
        let stats = Stats::new();
        for _ in 0..5 {
            stats.received(None);
        }
        stats.written(10, MS);
        stats.written(5, MS);
        stats.duplicate(MS);
        stats.nacked(NackReason::WriteFailed(FailureKind::Transient), Some(MS));
        let s = stats.snapshot();
        assert_eq!(
            s,
            Snapshot {
                received: 5,
                written: 2,
                duplicates: 1,
                acked: 3,
                nacked: 1,
                bytes_written: 15,
                in_flight: 1,
            }
        );
    }

    #[test]
    fn metrics_page_has_every_metric_with_its_labels() {
        let stats = Stats::new();
        stats.received(Some(3));
        stats.received(None);
        stats.written(7, MS);
        stats.binary();
        stats.nacked(NackReason::Shutdown, None);
        let page = stats.render();
        for line in [
            "pubsub_gcs_worker_messages_received_total 2",
            "pubsub_gcs_worker_objects_written_total 1",
            "pubsub_gcs_worker_messages_acked_total 1",
            "pubsub_gcs_worker_duplicates_skipped_total 0",
            "pubsub_gcs_worker_binary_messages_total 1",
            "pubsub_gcs_worker_bytes_written_total 7",
            "pubsub_gcs_worker_messages_in_flight 0",
            "pubsub_gcs_worker_pull_streams 0",
            "pubsub_gcs_worker_pull_streams_opened_total 0",
            "pubsub_gcs_worker_messages_nacked_total{reason=\"shutdown\"} 1",
            "pubsub_gcs_worker_write_duration_seconds_count 1",
            "pubsub_gcs_worker_delivery_attempt_bucket{le=\"3\"} 1",
            "pubsub_gcs_worker_delivery_attempt_count 1",
            "process_resident_memory_bytes ",
        ] {
            assert!(page.contains(line), "missing {line:?} in\n{page}");
        }
    }

    #[test]
    fn stall_clock_runs_only_while_messages_are_in_flight() {
        let stats = Stats::new();
        assert_eq!(stats.stalled_for(), None, "idle is not stalled");
        stats.received(None);
        assert!(stats.stalled_for().is_some_and(|d| d < Duration::from_secs(1)));
        stats.written(1, MS);
        assert_eq!(stats.stalled_for(), None);
    }
}
