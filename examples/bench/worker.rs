//! The worker process as the benchmark watches it: from outside, through its own `/metrics`
//! (objects written, the write limit) and `/proc` (CPU, memory), and the rates made of that.

use super::Bench;
use anyhow::{Context as _, bail, ensure};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use testkit::process::{self, Process, Usage};

/// A worker process, watched through its own `/metrics` (`HEALTH_PORT=0`: it logs the address).
pub struct Worker {
    pub process: Process,
    pub metrics: Option<String>,
    pub http: reqwest::Client,
    /// Objects written, polled every `poll.0` until the first, then every `poll.1` (each poll
    /// costs the worker a connection and a render).
    pub samples: Vec<(Instant, u64)>,
    pub poll: (Duration, Duration),
    /// The write limit at each poll, and the last page's counters.
    pub limits: Vec<f64>,
    pub last: std::collections::BTreeMap<String, f64>,
    /// Objects written at the last poll, for a publisher that keeps a backlog ahead of them.
    pub count: Arc<AtomicU64>,
}

impl Worker {
    pub fn spawn(bench: &Bench, name: &str, role: &str) -> anyhow::Result<Self> {
        let log = bench.emu.log_dir().join(format!("{name}.{role}.log"));
        let process = Process::spawn(bench.bin, &Self::env(bench, name), log)?;
        Ok(Self::watch(process, (Duration::from_millis(10), Duration::from_millis(100))))
    }

    /// The worker's environment on the subscription and bucket `name`.
    pub fn env(bench: &Bench, name: &str) -> Vec<(String, String)> {
        let own = [("SUBSCRIPTION_ID", name), ("BUCKET_NAME", name), ("LOG_FORMAT", "json")];
        let health = [("HEALTH_HOST", "127.0.0.1"), ("HEALTH_PORT", "0")];
        let own = own.into_iter().chain(health).map(|(k, v)| (k.to_string(), v.to_string()));
        bench.env.iter().cloned().chain(own).collect()
    }

    /// Watches `process`, a worker started with `HEALTH_PORT=0` and `LOG_FORMAT=json`.
    pub fn watch(process: Process, poll: (Duration, Duration)) -> Self {
        let http = reqwest::Client::new();
        let (samples, limits, last) = (Vec::new(), Vec::new(), Default::default());
        let count = Arc::default();
        Self { process, metrics: None, http, samples, poll, limits, last, count }
    }

    /// Polls until `n` objects are written; the count and the worker's CPU time then.
    pub async fn wait_for(
        &mut self,
        n: usize,
        deadline: Instant,
    ) -> anyhow::Result<(u64, Duration)> {
        loop {
            let log = self.process.log_path().display().to_string();
            let written = self.written().await.with_context(|| log.clone())?;
            self.samples.push((Instant::now(), written));
            if written >= n as u64 {
                return Ok((written, process::cpu(self.process.pid())?));
            }
            if let Some(status) = self.process.exited()? {
                bail!("the worker exited ({status}) after {written} of {n} objects: {log}");
            }
            ensure!(Instant::now() < deadline, "{written} of {n} objects in time: {log}");
            tokio::time::sleep(if written == 0 { self.poll.0 } else { self.poll.1 }).await;
        }
    }

    /// `objects_written_total` from `/metrics`; 0 until the worker listens.
    pub async fn written(&mut self) -> anyhow::Result<u64> {
        if self.metrics.is_none() {
            let up = self.process.event("listening");
            self.metrics =
                up.and_then(|up| Some(format!("http://{}/metrics", up["addr"].as_str()?)));
        }
        let Some(url) = &self.metrics else { return Ok(0) };
        self.last = testkit::metrics(&self.http, url).await?;
        let limit = self.last.get("pubsub_gcs_worker_write_concurrency_limit");
        self.limits.extend(limit);
        let total = self.last.get("pubsub_gcs_worker_objects_written_total");
        let total = *total.context("no objects_written_total in /metrics")? as u64;
        self.count.store(total, Ordering::Relaxed);
        Ok(total)
    }

    /// The rates, from the polls: when the k-th object was written, interpolated between two.
    pub fn rates(&self, start: Instant, n: usize) -> Rates {
        let since = |t: Instant| (t - start).as_secs_f64();
        Rates::new(n, |k| {
            let after = self.samples.iter().position(|&(_, c)| c >= k as u64).unwrap_or(0);
            let (t1, c1) = self.samples[after];
            let (t0, c0) = if after == 0 { (start, 0) } else { self.samples[after - 1] };
            since(t0) + (since(t1) - since(t0)) * (k as u64 - c0) as f64 / (c1 - c0).max(1) as f64
        })
    }

    /// The median write limit of the polls from the `n / 2`-th object on (the late rate's part
    /// of the run); NaN without a poll that read it. The last poll reads both the count and the
    /// limit, so the two lists line up from their ends.
    pub fn late_limit(&self, n: usize) -> f64 {
        let late = self.samples.iter().rev().zip(self.limits.iter().rev());
        let mut late: Vec<f64> =
            late.take_while(|((_, count), _)| *count >= (n / 2) as u64).map(|(_, l)| *l).collect();
        late.sort_by(f64::total_cmp);
        late.get(late.len() / 2).copied().unwrap_or(f64::NAN)
    }

    /// The counter `key` of the worker's `stopped` line.
    pub fn stopped(&self, key: &str) -> Option<u64> {
        self.process.event("stopped")?[key].as_u64()
    }
}

/// The rates of one phase: messages per second from its start to the last one (`overall`),
/// between the 10% and the 90% one (`steady`) and between the 50% and the 95% one (`late`: once
/// the worker has opened the streams and grown the write limit it needs); seconds to the first
/// and to the last one.
#[derive(Clone, Copy)]
pub struct Rates {
    pub overall: f64,
    pub steady: f64,
    pub late: f64,
    pub first: f64,
    pub total: f64,
    pub count: usize,
}

impl Rates {
    /// From `at(k)`, the seconds until the k-th message was done.
    pub fn new(n: usize, at: impl Fn(usize) -> f64) -> Self {
        let between = |a: usize, b: usize| (b - a) as f64 / (at(b) - at(a));
        let (overall, steady) = (n as f64 / at(n), between((n / 10).max(1), n * 9 / 10));
        let late = between((n / 2).max(1), n * 19 / 20);
        Self { overall, steady, late, first: at(1), total: at(n), count: n }
    }

    pub fn of_times(start: Instant, mut times: Vec<Instant>) -> Self {
        times.sort();
        Self::new(times.len(), |k| (times[k - 1] - start).as_secs_f64())
    }

    /// Two halves of one measurement: the total count over the total time.
    pub fn combine(self, b: Self) -> Self {
        let (count, total, steady) =
            (self.count + b.count, self.total + b.total, (self.steady + b.steady) / 2.0);
        let (late, first) = ((self.late + b.late) / 2.0, self.first);
        Rates { overall: count as f64 / total, steady, late, first, total, count }
    }
}

/// A worker process timed on a backlog, from its start to the last object, then stopped idle.
pub struct WorkerRun {
    pub rates: Rates,
    /// When idle at the end: its CPU time includes start-up and 2 s of idling.
    pub usage: Usage,
    /// CPU seconds per object between the 10% and the 90% object: without start-up.
    pub steady_cpu_per_msg: f64,
    pub idle_exit_s: f64,
    /// The write limit's median from the 50% object on ([`Worker::late_limit`]).
    pub late_limit: f64,
}
