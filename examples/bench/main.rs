//! The end-to-end benchmark: `cargo run --release --example bench -- --help`; docs/performance.md
//! says what it measures and quotes each figure with the command that gives it. It builds the
//! release worker, starts the emulators as the tests do, and times the worker from outside: its
//! objects through its own `/metrics`, its CPU and memory through `testkit::process`.

mod callgrind;
mod feed;
mod streams;
mod sweep;
mod throttle;
mod worker;

use anyhow::{Context as _, ensure};
use clap::Parser;
use futures::future::OptionFuture;
use pubsub_gcs_worker::clients;
use pubsub_gcs_worker::config::Config;
use pubsub_gcs_worker::name::NameTemplate;
use pubsub_gcs_worker::object::{ObjectSpec, TEXT};
use pubsub_gcs_worker::sink::Sink;
use pubsub_gcs_worker::streams::PullStreams;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use testkit::process;
use testkit::{DeliveryPolicy, Emulators, FastGcs, Gcs, HttpProxy, Latency, LoopbackCa};
use testkit::{OutMessage, PROJECT_ID};
use testkit::{RateCap, TlsFront};
use worker::{Rates, Worker, WorkerRun};

/// Worker variables passed through from this process's environment when set.
const PASS_THROUGH: &str = "OBJECT_COMPRESSION MAX_OUTSTANDING_MESSAGES MAX_OUTSTANDING_BYTES MAX_CONCURRENT_WRITES \
    PULL_STREAMS MAX_LEASE_EXTENSION_SECS RUST_LOG TOKIO_WORKER_THREADS";

/// The worker on loopback emulators: its rate against the two ceilings, memory, CPU and
/// shutdown (docs/performance.md). Worker variables such as PULL_STREAMS pass through.
#[derive(Parser, Debug)]
struct Args {
    /// Messages per run [default: 20000; with --throttle, 4000; in a sweep, what takes --cell-seconds per
    /// cell]
    #[arg(long, value_parser = clap::value_parser!(u64).range(100..=1_000_000))]
    messages: Option<u64>,
    /// Bytes per message
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..))]
    size: u64,
    /// Runs of both ceilings, the worker and a busy shutdown; min, median and max of each figure
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=20))]
    runs: u64,
    /// Time another program with the same variables (it must serve the worker's /metrics, and may
    /// be a script that sets variables and execs the worker); given again for each build or
    /// setting to compare (the default mode and --throttle), whose runs then alternate
    #[arg(long, value_name = "PATH")]
    worker: Vec<PathBuf>,
    /// Storage answers take MS (the median) through testkit's latency proxy
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(0..=60_000))]
    latency: Option<u64>,
    /// The latency's log-normal spread: 0 always MS, 1 one answer in ten over 3.6 x MS
    #[arg(long, default_value_t = 0.0, requires = "latency", value_parser = sweep::sigma)]
    sigma: f64,
    /// The worker's OBJECT_NAME; two messages in three then get a `task_type` attribute
    #[arg(long, value_name = "TEMPLATE")]
    object_name: Option<String>,
    /// Each connection to Pub/Sub receives at most MBPS MB/s, as Pub/Sub caps each stream
    #[arg(long, value_name = "MBPS")]
    pubsub_cap: Option<f64>,
    /// Storage over TLS (an authority made at start, trusted through SSL_CERT_FILE)
    #[arg(long)]
    tls: bool,
    /// What the worker writes to: `fast` (testkit's in-memory FastGcs) measures the worker
    /// rather than fake-gcs-server, which spends more CPU per object than the worker
    #[arg(long, value_enum, default_value_t = Storage::FakeGcsServer)]
    storage: Storage,
    /// The capacity table: the rate against storage latency, message size and write limit
    #[arg(long, conflicts_with_all = ["size", "runs", "latency"])]
    sweep: bool,
    /// Instructions per message: the worker under callgrind on N (`--messages`, default 1000)
    /// then 2N messages, against `--storage fast`; the top functions by marginal cost
    #[arg(long, conflicts_with_all = ["sweep", "runs", "latency", "tls"])]
    callgrind: bool,
    /// Storage answers 429 to uploads beyond N a second (as a bucket does above its write rate):
    /// only the worker runs, and the bench prints its rate over N, the 429s, nacks and messages
    /// dead-lettered (a dead-letter policy of 5 attempts)
    #[arg(long, value_name = "N", conflicts_with = "sweep", value_parser = clap::value_parser!(u64).range(1..))]
    throttle: Option<u64>,
    /// Streams on demand: publish N messages a second while the worker runs (one stream, then up
    /// to PULL_STREAMS), and print the rate per window against the streams open; with
    /// --pubsub-cap, which sets each stream's cap
    #[arg(long, value_name = "N", conflicts_with_all = ["sweep", "throttle", "callgrind", "runs", "messages"])]
    publish: Option<f64>,
    /// How long `--publish` publishes to the worker with up to PULL_STREAMS streams (a third of
    /// it, at least 30 s, to the worker with one stream first)
    #[arg(long, default_value_t = 120, requires = "publish")]
    seconds: u64,
    #[command(flatten)]
    grid: sweep::Grid,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Storage {
    FakeGcsServer,
    Fast,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let fixed = std::env::var_os("MAX_CONCURRENT_WRITES").is_some();
    ensure!(!(args.sweep && fixed), "--sweep sets MAX_CONCURRENT_WRITES itself: unset it");
    let fast = args.storage == Storage::Fast;
    ensure!(!args.callgrind || fast, "--callgrind measures the worker alone: add --storage fast");
    let compares =
        args.throttle.is_some() || !(args.sweep || args.callgrind || args.publish.is_some());
    ensure!(
        args.worker.len() <= 1 || compares,
        "--worker is given once, unless in the default mode or with --throttle"
    );
    if let Some(template) = &args.object_name {
        NameTemplate::parse(template, "").map_err(|e| anyhow::anyhow!("OBJECT_NAME {e}"))?;
    }
    raise_open_files_limit();
    // This process's storage client (the storage ceiling's) trusts the TLS front as the worker
    // does, through SSL_CERT_FILE, which a client reads when it is built.
    let ca = args.tls.then(LoopbackCa::new).transpose()?;
    if let Some(ca) = &ca {
        // SAFETY: the only thread yet (the runtime starts below): nothing reads the environment.
        unsafe { std::env::set_var("SSL_CERT_FILE", ca.file()) };
    }
    tokio::runtime::Runtime::new()?.block_on(run(args, ca))
}

async fn run(args: Args, ca: Option<LoopbackCa>) -> anyhow::Result<()> {
    let release = !cfg!(debug_assertions);
    if args.worker.is_empty() && !release {
        eprintln!("bench: WARNING: a debug build; use `cargo run --release --example bench`");
    }
    let bins = match args.worker.is_empty() {
        true => vec![process::build_worker(release)?],
        false => args.worker.clone(),
    };
    let bin = bins[0].clone();
    let binary_mb = std::fs::metadata(&bin).context("the worker binary")?.len() as f64 / 1e6;
    let overrides: Vec<(String, String)> = (PASS_THROUGH.split_whitespace())
        .filter_map(|k| Some((k.to_string(), std::env::var(k).ok()?)))
        .collect();
    eprintln!("bench: {} ({binary_mb:.1} MB), {overrides:?}, {args:?}", bin.display());
    if std::env::var("OBJECT_COMPRESSION").as_deref() == Ok("gzip") {
        // What gzip costs shows in the worker's CPU per message, against a run without it.
        let mut sample = b"0000000000 ".to_vec();
        sample.resize(args.size as usize, b'x');
        let stored = pubsub_gcs_worker::object::gzip(&sample)?.len();
        eprintln!("bench: gzip stores {} B as {stored} B (a synthetic payload)", sample.len());
    }
    let emu = Emulators::start().await.context("starting the emulators")?;
    let fast = (args.storage == Storage::Fast).then(FastGcs::start).transpose()?;
    let storage = fast.as_ref().map_or(emu.storage_addr(), FastGcs::addr);
    // Storage through the latency proxy when latency is asked for, then through TLS; Pub/Sub
    // through the rate cap. The publisher (this process, over REST) goes straight to the emulator.
    let proxy = HttpProxy::start(storage).await?;
    let via_proxy = args.latency.is_some() || args.sweep || args.throttle.is_some();
    let storage = if via_proxy { proxy.addr() } else { storage };
    let tls = OptionFuture::from(ca.as_ref().map(|ca| TlsFront::start(storage, ca)));
    let tls = tls.await.transpose()?;
    let cap = args.pubsub_cap.map(|mbps| RateCap::start(emu.pubsub_addr(), (mbps * 1e6) as u64));
    let cap = OptionFuture::from(cap).await.transpose()?;
    let mut vars = vec![];
    if let Some(cap) = &cap {
        vars.push(("PUBSUB_EMULATOR_HOST", cap.addr().to_string()));
    }
    if let (Some(front), Some(ca)) = (&tls, &ca) {
        vars.push(("STORAGE_EMULATOR_HOST", front.url()));
        vars.push(("SSL_CERT_FILE", ca.file().display().to_string()));
    } else if via_proxy {
        vars.push(("STORAGE_EMULATOR_HOST", proxy.url()));
    } else if let Some(fast) = &fast {
        vars.push(("STORAGE_EMULATOR_HOST", fast.url()));
    }
    vars.extend(args.object_name.iter().map(|t| ("OBJECT_NAME", t.clone())));
    let latency = Latency::new(Duration::from_millis(args.latency.unwrap_or(0)), args.sigma);
    proxy.set_latency(latency);
    let env: Vec<_> = emu.worker_env().into_iter().chain(overrides.clone()).collect();
    let (config, size, tagged) =
        (worker_config(&env)?, args.size as usize, args.object_name.is_some());
    let cap_rate = args.pubsub_cap.map(|mbps| mbps * 1e6);
    let fast = fast.as_ref();
    let bench =
        Bench { emu: &emu, fast, bin: &bin, env, config, size, latency, cap: cap_rate, tagged };
    let bench = bench.with(&vars)?;
    // Warm the emulators up (the JVM's JIT above all), so the first run is not the odd one out.
    let messages = args.messages.map(|n| n as usize);
    // Behind a cap, a smaller warm-up: the emulator queues it all on one capped stream.
    bench.pubsub_ceiling(if args.publish.is_some() { 200 } else { 2000 }).await?;
    if args.callgrind {
        return callgrind::run(&bench, messages.unwrap_or(1000)).await;
    }
    bench.storage_ceiling(2000).await?;
    if args.sweep {
        sweep::run(&bench, &proxy, &args.grid, messages).await?;
    } else if let Some(per_second) = args.publish {
        streams::run(&bench, per_second, args.seconds).await?;
    } else if let Some(per_second) = args.throttle {
        let n = messages.unwrap_or(4_000);
        throttle::run(&bench, &proxy, &bins, per_second, n, args.runs).await?;
    } else {
        let n = messages.unwrap_or(20_000);
        let mut runs: Vec<Vec<Figures>> = vec![Vec::new(); bins.len()];
        for i in 1..=args.runs {
            for (b, bin) in bins.iter().enumerate() {
                let figures = Bench { bin, ..bench.clone() }.run(n).await?;
                let figure =
                    |name| figures.iter().find(|(k, _)| *k == name).map_or(f64::NAN, |f| f.1);
                let (rate, per_cpu) =
                    (figure("worker_msgs_per_s"), figure("worker_msgs_per_cpu_s"));
                eprintln!(
                    "run {i}/{}, {}: {rate:.0} msg/s, {per_cpu:.0} msg per worker CPU-second",
                    args.runs,
                    bin.display()
                );
                runs[b].push(figures);
            }
        }
        report(&args, n, binary_mb, &overrides, &bins, &runs);
    }
    let counts =
        [cap.map(|c| ("pubsub cap", c.connections())), tls.map(|t| ("tls", t.connections()))];
    for (what, n) in counts.into_iter().flatten() {
        println!("{what}: {n} connections in all (every client of the run opens its own)");
    }
    Ok(())
}

/// Raises the soft limit of open files to the hard one, for this process (the proxy holds two
/// sockets per write in flight) and the worker, which inherits it: at 1,024 writes at once,
/// 1,024 files is the common soft default.
fn raise_open_files_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain syscalls with a valid pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// What runs against the emulators: the worker's environment, and the configuration the worker
/// makes of it, which the ceilings use for the same clients and settings.
#[derive(Clone)]
struct Bench<'a> {
    emu: &'a Emulators,
    /// The storage the worker writes to, when not fake-gcs-server (`--storage fast`).
    fast: Option<&'a FastGcs>,
    bin: &'a Path,
    env: Vec<(String, String)>,
    config: Config,
    size: usize,
    /// What the proxy holds storage answers back by.
    latency: Latency,
    /// Bytes per second of the Pub/Sub cap.
    cap: Option<f64>,
    /// Two messages in three carry a `task_type` attribute, for templates that route by it.
    tagged: bool,
}

impl Bench<'_> {
    /// The same, with `vars` set in the worker's environment (replacing what was there).
    fn with(&self, vars: &[(&str, String)]) -> anyhow::Result<Self> {
        let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let env = process::with_vars(self.env.clone(), &vars);
        Ok(Self { config: worker_config(&env)?, env, ..self.clone() })
    }

    /// The time a phase of `n` messages may take: generous, but a stuck phase fails the
    /// benchmark. The proxy's mean delay per wave of writes counts three times, and so does the
    /// Pub/Sub cap (as if on one connection; ~200 B of framing a message).
    fn budget(&self, n: usize) -> Duration {
        let waves = n as f64 / self.config.max_concurrent_writes as f64;
        let capped = (n * (self.size + 200)) as f64 / self.cap.unwrap_or(f64::INFINITY);
        Duration::from_secs(120 + n as u64 / 100)
            + self.latency.mean().mul_f64(3.0 * waves)
            + Duration::from_secs_f64(3.0 * capped)
    }

    /// Text (the worker's common case), distinct per message.
    fn payload(&self, i: usize) -> Vec<u8> {
        payload(self.size, i)
    }

    /// Message `i`: its payload, and with `tagged` two in three a `task_type` attribute.
    fn message(&self, i: usize) -> OutMessage {
        let tasks = ["file_processing", "data_transformation"];
        match tasks.get(i % 3).filter(|_| self.tagged) {
            Some(task) => OutMessage::new(self.payload(i)).attr("task_type", *task),
            None => OutMessage::new(self.payload(i)),
        }
    }

    /// A fresh topic, subscription and bucket, with a backlog of `n` messages from number `from`.
    async fn fresh(&self, from: usize, n: usize) -> anyhow::Result<Fresh<'_>> {
        self.fresh_with(from, n, None, 60).await
    }

    /// [`Bench::fresh`], with a delivery `policy` and an ack deadline of `lease` seconds on the
    /// subscription.
    async fn fresh_with(
        &self,
        from: usize,
        n: usize,
        policy: Option<&DeliveryPolicy>,
        lease: i32,
    ) -> anyhow::Result<Fresh<'_>> {
        let (ps, topic) = (self.emu.pubsub(), testkit::unique_name("bench"));
        ps.create_topic(&topic).await?;
        ps.create_subscription(&topic, &topic, lease, policy).await?;
        if n > 0 {
            let messages: Vec<_> = (from..from + n).map(|i| self.message(i)).collect();
            ps.publish(&topic, &messages).await?;
            // Let the JVM settle (GC after the publish burst) before anything is timed.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        self.gcs().create_bucket(&topic).await?;
        Ok(Fresh { emu: self.emu, fast: self.fast, name: topic })
    }

    /// The REST helper of the storage the worker writes to.
    fn gcs(&self) -> Gcs {
        self.fast.map_or_else(|| self.emu.gcs(), |fast| Gcs::new(&fast.url(), PROJECT_ID))
    }

    /// The CPU time the storage has used so far: FastGcs's thread, or fake-gcs-server's process
    /// (in clock ticks: 10 ms).
    fn storage_cpu(&self) -> anyhow::Result<Duration> {
        match self.fast {
            Some(fast) => fast.cpu_time(),
            None => process::cpu(self.emu.storage_pid().context("fake-gcs-server is not running")?),
        }
    }

    /// Receive-and-ack rate of the worker's own subscriber clients and settings, on as many
    /// streams as the worker may open (`PULL_STREAMS`).
    async fn pubsub_ceiling(&self, n: usize) -> anyhow::Result<Rates> {
        use futures::StreamExt as _;
        let fresh = self.fresh(0, n).await?;
        let start = Instant::now();
        let subscription = self.emu.pubsub().subscription_path(&fresh.name);
        let mut opener = PullStreams::new(&Config { subscription, ..self.config.clone() }).await?;
        let mut streams = Vec::with_capacity(opener.max());
        for index in 0..opener.max() {
            streams.push(opener.open(index).await?);
        }
        let tokens: Vec<_> = streams.iter().map(|s| s.shutdown_token()).collect();
        // All streams read as one, in this task (the worker reads each in a task of its own).
        let mut stream = futures::stream::select_all(streams.into_iter().map(|stream| {
            Box::pin(futures::stream::unfold(stream, |mut s| async move {
                s.next().await.map(|item| (item, s))
            }))
        }));
        let (mut times, deadline) = (Vec::with_capacity(n), start + self.budget(n));
        while times.len() < n {
            let next = tokio::time::timeout_at(deadline.into(), stream.next()).await;
            let (_, handler) = next.context("pubsub ceiling: deadline")?.context("no stream")??;
            handler.ack();
            times.push(Instant::now());
        }
        drop(stream);
        for token in tokens {
            let _ = tokio::time::timeout(Duration::from_secs(10), token.shutdown()).await;
        }
        Ok(Rates::of_times(start, times))
    }

    /// Create-only upload rate of the worker's own storage client and sink, at its concurrency.
    async fn storage_ceiling(&self, n: usize) -> anyhow::Result<Rates> {
        let fresh = self.fresh(0, 0).await?;
        let config = &self.config;
        let clients = clients::storage(config).await?;
        let sink = Arc::new(Sink::new(clients, &fresh.name, config.write_timeout));
        let permits = Arc::new(tokio::sync::Semaphore::new(config.max_concurrent_writes));
        let times = Arc::new(Mutex::new(Vec::with_capacity(n)));
        let (start, mut tasks) = (Instant::now(), tokio::task::JoinSet::new());
        for i in 0..n {
            let permit = permits.clone().acquire_owned().await?;
            // What the worker builds per message: a name, the content type and metadata.
            let metadata = [("message_id", i.to_string()), ("subscription", fresh.name.clone())];
            let spec = ObjectSpec {
                name: format!("message_20250101_000000_{i:06}_{i}.txt"),
                content_type: TEXT.into(),
                metadata: metadata.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
                text: true,
                gzip: false,
                custom_time: None,
            };
            let (data, sink, times) = (self.payload(i).into(), sink.clone(), times.clone());
            tasks.spawn(async move {
                let written = sink.write(&spec, data).await.map_err(|e| anyhow::anyhow!("{e}"));
                drop(permit);
                times.lock().expect("lock").push(Instant::now());
                written.map(drop)
            });
            while let Some(done) = tasks.try_join_next() {
                done??;
            }
        }
        let deadline = (start + self.budget(n)).into();
        let late = "storage ceiling: uploads not done by the deadline";
        while let Some(done) =
            tokio::time::timeout_at(deadline, tasks.join_next()).await.context(late)?
        {
            done??;
        }
        let times = std::mem::take(&mut *times.lock().expect("lock"));
        Ok(Rates::of_times(start, times))
    }

    /// The worker on a fresh backlog of `n` messages, timed until it has written them all; once
    /// it is idle, its memory and CPU time, then SIGTERM. A backlog larger than
    /// [`Bench::first`] is topped up as the worker writes, so that it never runs dry.
    async fn backlog_run(&self, n: usize) -> anyhow::Result<WorkerRun> {
        let first = self.first(n);
        let fresh = self.fresh(0, first).await?;
        let start = Instant::now();
        let mut worker = Worker::spawn(self, &fresh.name, "worker")?;
        let deadline = start + self.budget(n);
        let written = worker.count.clone();
        let pace = feed::Pace { per_second: None, seconds: None };
        let feeding = self.feed(&fresh.name, first..n, pace, &written);
        let watching = async {
            // Objects and CPU time at the 10% and the 90% object: the steady CPU per message.
            let tenth = worker.wait_for(n / 10, deadline).await?;
            let ninetieth = worker.wait_for(n * 9 / 10, deadline).await?;
            worker.wait_for(n, deadline).await?;
            anyhow::Ok((tenth, ninetieth))
        };
        let (_, ((count_10, cpu_10), (count_90, cpu_90))) = tokio::try_join!(feeding, watching)?;
        let (rates, late_limit) = (worker.rates(start, n), worker.late_limit(n));
        // Let the acks flush and the process go idle.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let usage = worker.process.usage()?;
        let idle_exit_s = worker.process.terminate(Duration::from_secs(30)).await?.as_secs_f64();
        let (written, log) = (worker.stopped("written"), worker.process.log_path().display());
        ensure!(written == Some(n as u64), "{written:?} of {n} objects written: {log}");
        let steady_cpu = (cpu_90 - cpu_10).as_secs_f64() / (count_90 - count_10).max(1) as f64;
        Ok(WorkerRun { rates, usage, steady_cpu_per_msg: steady_cpu, idle_exit_s, late_limit })
    }

    /// The default mode's run: both ceilings, the worker on a backlog, then a busy shutdown;
    /// every figure by name.
    async fn run(&self, n: usize) -> anyhow::Result<Figures> {
        let pubsub = self.pubsub_ceiling(n).await?;
        // The storage ceiling in two halves, before and after the worker, so that a change of
        // load on the machine meets both sides alike; the storage's own CPU per object is read
        // over the two, when it serves uploads and nothing else.
        let cpu = self.storage_cpu()?;
        let storage_before = self.storage_ceiling(n / 2).await?;
        let storage_cpu = self.storage_cpu()?.saturating_sub(cpu);
        let worker = self.backlog_run(n).await?;
        let cpu = self.storage_cpu()?;
        let storage = storage_before.combine(self.storage_ceiling(n - n / 2).await?);
        let storage_cpu = storage_cpu + self.storage_cpu()?.saturating_sub(cpu);
        // Busy shutdown: a second process on a second backlog gets SIGTERM while it writes.
        let busy_n = (n / 4).max(1000);
        let fresh = self.fresh(n, busy_n).await?;
        let mut busy = Worker::spawn(self, &fresh.name, "busy")?;
        busy.wait_for(busy_n / 4, Instant::now() + self.budget(busy_n)).await?;
        let busy_exit_s = busy.process.terminate(Duration::from_secs(30)).await?.as_secs_f64();
        let busy_nacked = busy.stopped("nacked").map_or(f64::NAN, |n| n as f64);
        let (w, mb) = (&worker, |kib: u64| kib as f64 / 1024.0);
        let (rates, ps, gcs, cpu) = (&w.rates, &pubsub, &storage, w.usage.cpu.as_secs_f64());
        Ok(vec![
            ("worker_msgs_per_s", rates.overall),
            ("worker_steady_msgs_per_s", rates.steady),
            ("pubsub_ceiling_msgs_per_s", ps.overall),
            ("pubsub_ceiling_steady", ps.steady),
            ("gcs_ceiling_msgs_per_s", gcs.overall),
            ("gcs_ceiling_steady", gcs.steady),
            ("ratio", rates.overall / ps.overall.min(gcs.overall)),
            ("ratio_steady", rates.steady / ps.steady.min(gcs.steady)),
            ("peak_rss_mb", mb(w.usage.peak_rss_kib)),
            ("idle_rss_anon_mb", mb(w.usage.rss_anon_kib)),
            ("idle_rss_file_mb", mb(w.usage.rss_file_kib)),
            ("worker_cpu_s", cpu),
            ("worker_cpu_us_per_msg", cpu / n as f64 * 1e6),
            ("worker_cpu_us_per_msg_steady", w.steady_cpu_per_msg * 1e6),
            ("worker_msgs_per_cpu_s", n as f64 / cpu),
            ("worker_msgs_per_cpu_s_steady", 1.0 / w.steady_cpu_per_msg),
            ("storage_cpu_us_per_obj", storage_cpu.as_secs_f64() / n as f64 * 1e6),
            ("worker_first_object_s", rates.first),
            ("idle_exit_s", w.idle_exit_s),
            ("busy_exit_s", busy_exit_s),
            ("busy_nacked", busy_nacked),
            ("threads", w.usage.threads as f64),
        ])
    }
}

/// Message `i`'s data: text of `size` bytes, distinct per message.
fn payload(size: usize, i: usize) -> Vec<u8> {
    let mut data = format!("{i:010} ").into_bytes();
    data.resize(size, b'x');
    data
}

/// What the worker makes of `env` (its own two names come per run).
fn worker_config(env: &[(String, String)]) -> anyhow::Result<Config> {
    let names = [("SUBSCRIPTION_ID", "unused"), ("BUCKET_NAME", "unused")];
    let vars = env.iter().cloned().chain(names.map(|(k, v)| (k.into(), v.into())));
    Config::from_vars(vars).context("the worker's configuration")
}

/// A topic, its subscription and a bucket, all of one name; deleted when dropped (the
/// emulator keeps a backlog in memory, fake-gcs-server objects as files: gigabytes in a sweep).
struct Fresh<'a> {
    emu: &'a Emulators,
    fast: Option<&'a FastGcs>,
    name: String,
}

impl Drop for Fresh<'_> {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(self.emu.log_dir().join("gcs-root").join(&self.name));
        if let Some(fast) = self.fast {
            fast.remove_bucket(&self.name);
        }
        let (ps, name) = (self.emu.pubsub(), self.name.clone());
        tokio::spawn(async move { ps.delete_subscription(&name).await });
    }
}

type Figures = Vec<(&'static str, f64)>;

/// Each build's (or setting's) runs: min, median and max of each figure, and a `BENCH {json}`
/// line with the medians, one per build.
fn report(
    args: &Args,
    n: usize,
    binary_mb: f64,
    overrides: &[(String, String)],
    bins: &[PathBuf],
    runs: &[Vec<Figures>],
) {
    let overrides: Vec<String> = overrides.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let storage =
        clap::ValueEnum::to_possible_value(&args.storage).map(|v| v.get_name().to_owned());
    let setup = json!({ "storage": storage, "latency_ms": args.latency, "sigma": args.sigma,
        "tls": args.tls, "pubsub_cap_mbps": args.pubsub_cap, "object_name": args.object_name });
    for (bin, runs) in bins.iter().zip(runs) {
        println!("\n{n} messages x {} B, {} run(s): {}", args.size, runs.len(), bin.display());
        let medians = summary_table(runs);
        let summary = json!({ "messages": n, "size": args.size, "runs": runs.len(),
            "binary_mb": round(binary_mb), "worker": bin.display().to_string(),
            "overrides": overrides, "setup": setup, "median": medians });
        println!("BENCH {summary}");
    }
}

/// Prints min, median and max of each figure over `runs` (each the same figures in the same
/// order); returns the medians by name.
fn summary_table(runs: &[Figures]) -> serde_json::Map<String, serde_json::Value> {
    println!("{:<32} {:>10} {:>10} {:>10}", "", "min", "median", "max");
    let mut medians = serde_json::Map::new();
    for (i, (name, _)) in runs[0].iter().enumerate() {
        let mut values: Vec<f64> = runs.iter().map(|r| r[i].1).collect();
        values.sort_by(f64::total_cmp);
        let (min, median, max) = (values[0], values[values.len() / 2], values[values.len() - 1]);
        let fmt = |v: f64| match v {
            _ if v.fract() == 0.0 || v >= 100.0 => format!("{v:.0}"),
            _ => format!("{v:.3}"),
        };
        println!("{name:<32} {:>10} {:>10} {:>10}", fmt(min), fmt(median), fmt(max));
        medians.insert(name.to_string(), json!(round(median)));
    }
    medians
}

/// To three decimals, for the JSON lines.
fn round(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}
