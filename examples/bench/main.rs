//! Throughput, memory and shutdown benchmark: `cargo run --release --example bench`.
//!
//! ```text
//! cargo run --release --example bench -- [--messages N] [--size BYTES] [--runs R] [--worker PATH]
//!     [--latency MS [--sigma S]] [--object-name TEMPLATE] [--pubsub-cap MBPS] [--tls]
//! cargo run --release --example bench -- --sweep [--latencies 10,50,200] [--sigmas 0,0.5,1]
//!     [--sizes 256,65536] [--writes 16,64,256,1024|none] [--messages N] [--object-name TEMPLATE]
//! cargo run --release --example bench -- --compare-object-name TEMPLATE [--messages N]
//!     [--runs PAIRS] [--size BYTES] [--latency MS [--sigma S]]
//! ```
//!
//! It starts the emulators (as the tests do), then for each run, on a fresh topic, subscription
//! and bucket each:
//!
//! 1. **Pub/Sub ceiling**: a backlog of N messages is received with the worker's own subscriber
//!    clients, streams (`PULL_STREAMS`) and settings, in this process, and acked at once (no
//!    writes).
//! 2. **Cloud Storage ceiling**: N create-only uploads of the same size through the worker's own
//!    storage client and [`Sink`], `MAX_CONCURRENT_WRITES` at a time (no Pub/Sub); half before
//!    and half after the worker, so a change of load on the machine meets both sides alike.
//! 3. **Worker**: a backlog of N messages is published, then the release binary is started with
//!    its defaults and timed until the N-th object exists; its peak RSS (`VmHWM`) and CPU time
//!    are read from `/proc`, then it gets SIGTERM while idle.
//! 4. **Busy shutdown**: a second backlog, a second worker process, SIGTERM while it writes.
//!
//! Objects are counted as fake-gcs-server renames them into the bucket's directory (inotify;
//! a name with `/` lands in nested directories, which are watched as they appear), so the
//! worker is measured from outside. Rates are "overall" (start to the last object) and
//! "steady" (between the 10% and the 90% object). The worker's rate is compared with the lower
//! of the two ceilings measured in the same run. Everything stays on loopback; every wait has a
//! deadline. The last line is `BENCH {json}` with the medians, for scripts.
//!
//! The worker binary is built first (`cargo build --bin pubsub-gcs-worker` in the profile this
//! example was built with), so a fresh clone needs nothing else. The worker's tuning variables
//! (`MAX_CONCURRENT_WRITES`, `MAX_OUTSTANDING_MESSAGES`, ...) pass through from the environment
//! for experiments; without them the worker runs with its defaults. `OBJECT_COMPRESSION=gzip`
//! passes through too: the worker's CPU per message then includes gzip, and a line gives the
//! payload's ratio (the synthetic payload compresses far better than real data).
//!
//! # Storage latency
//!
//! `--latency MS` puts `testkit`'s HTTP proxy between fake-gcs-server and all that writes to it
//! (the worker, the storage ceiling's sink); it holds each answer back by a log-normal delay of
//! median MS and spread `--sigma S` (0: always MS; 1: one answer in ten over 3.6 x MS), as
//! Cloud Storage's tens of milliseconds have a tail. `--latency 0` shows what the proxy costs
//! (its CPU is this process's). This process and the worker get the hard limit of open files:
//! each write in flight holds a socket at both ends.
//!
//! # Pub/Sub's stream cap, TLS to storage
//!
//! In any mode, `--pubsub-cap MBPS` routes the worker's Pub/Sub (the Pub/Sub ceiling's too, not
//! the publisher's) through `testkit`'s `RateCap`: each connection receives at most MBPS MB/s,
//! as Pub/Sub caps each StreamingPull stream. `--tls` puts a `TlsFront` before storage (before
//! the latency proxy, if any), trusted through `SSL_CERT_FILE`. The last lines count the
//! connections each saw.
//!
//! # `--sweep`: the rate against latency, size and concurrency
//!
//! One command for the capacity-planning table: for each message size (`--sizes`), median
//! latency (`--latencies`, ms), spread (`--sigmas`) and write limit (`--writes`), and for the
//! worker's defaults (no `MAX_CONCURRENT_WRITES`), one cell: the release worker on a fresh
//! backlog, timed to its last object, through the latency proxy. Per cell it prints the rate
//! (overall and steady), the bound `min(writes / mean latency, limit)` (the mean is
//! `median x exp(sigma² / 2)`), the ratio steady rate / bound, peak RSS and the worker's CPU per
//! message (steady, between the 10% and the 90% object; and in all).
//!
//! - **limit** is what this machine can do at all for that size, measured in the same command
//!   before and after the size's cells (the bound uses the mean): the lower of the Pub/Sub
//!   ceiling and the storage ceiling through the proxy at 0 ms, both at the highest `--writes`
//!   (and `MAX_OUTSTANDING_MESSAGES` to match). On loopback both are the emulators' limits; the
//!   storage ceiling without the proxy is printed beside it, to show what the proxy costs.
//! - The defaults' bound is the limit itself: the defaults are to reach it at every latency.
//! - Each `--writes` cell passes `MAX_CONCURRENT_WRITES` and `MAX_OUTSTANDING_MESSAGES =
//!   max(1000, 2 x writes)`, so the leases feed the writes; `MAX_OUTSTANDING_MESSAGES` in the
//!   environment replaces that for every cell, the defaults' included. `MAX_CONCURRENT_WRITES`
//!   in the environment is refused.
//! - A cell has `--messages` messages, or what takes about 15 s at its expected rate (at least
//!   1,000; at most 20,000 and 256 MiB). The default grid (90 cells) takes about an hour on 2
//!   cores; it prints an estimate at the start and the time left after each cell.
//! - The last line is `SWEEP {json}` with every cell and the limits.
//!
//! # Object names
//!
//! `--object-name TEMPLATE` runs the worker with `OBJECT_NAME=TEMPLATE` (in every mode but the
//! comparison) and gives two messages in three a `task_type` attribute (`file_processing`,
//! `data_transformation`), for templates that route by it, such as
//! `dt={publish_time:%Y-%m-%d}/{attributes.task_type|unrouted}/{hash:2}/{message_id}.{ext}`.
//!
//! `--compare-object-name TEMPLATE` measures what a template costs: `--runs` pairs (3) of worker
//! runs on fresh backlogs of the same, tagged messages, one with the default names and one with
//! the template, in alternating order so that a drift of the machine meets both alike. It
//! prints the medians of each side and of the per-pair ratio template / default: the rate
//! (overall and steady), the worker's CPU per message (steady and in all), peak RSS, and
//! fake-gcs-server's CPU per message (nested directories cost it more, which on loopback can
//! move the rate without the worker doing more), then `COMPARE {json}`.
//!
//! # Layout
//!
//! `main.rs`: arguments, the emulators, and what the modes share (publishing, buckets, the
//! ceilings, one timed worker run); one file per mode (`runs.rs`, the default; `sweep.rs`;
//! `compare.rs`), and `observe.rs`, which measures from outside (inotify, `/proc`). The
//! emulators and the proxy come from `testkit`.

mod compare;
mod fakes;
mod observe;
mod runs;
mod sweep;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use fakes::Fakes;
use observe::{
    EmulatorCpu, ObjectWatch, cpu_model, cpu_seconds, load_average, own_cpu, status_field, threads,
    vm_hwm_kb,
};
use pubsub_gcs_worker::name::NameTemplate;
use pubsub_gcs_worker::object::{ObjectSpec, TEXT};
use pubsub_gcs_worker::sink::Sink;
use pubsub_gcs_worker::{Config, clients, worker};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use testkit::{Emulators, Latency, LoopbackCa, OutMessage, PROJECT_ID, unique_name};
use tokio::sync::Semaphore;

/// Worker variables passed through from this process's environment when set.
const PASS_THROUGH: [&str; 8] = [
    "OBJECT_COMPRESSION",
    "MAX_OUTSTANDING_MESSAGES",
    "MAX_OUTSTANDING_BYTES",
    "MAX_CONCURRENT_WRITES",
    "PULL_STREAMS",
    "MAX_LEASE_EXTENSION_SECS",
    "RUST_LOG",
    "TOKIO_WORKER_THREADS",
];

const USAGE: &str = "usage: cargo run --release --example bench -- [OPTIONS]
  [--messages N (20000)] [--size BYTES (256)] [--runs R (3)] [--worker PATH]
  [--latency MS [--sigma S (0)]] [--object-name TEMPLATE]
  [--pubsub-cap MBPS (per connection, off)] [--tls] (in every mode)
  --sweep [--latencies 10,50,200] [--sigmas 0,0.5,1] [--sizes 256,65536]
          [--writes 16,64,256,1024|none] [--messages N per cell (sized by the expected rate)]
  --compare-object-name TEMPLATE [--messages N] [--runs PAIRS (3)] [--size BYTES]
          [--latency MS [--sigma S]]
(see the header of examples/bench/main.rs)";

/// Messages per run unless `--messages` says.
const DEFAULT_MESSAGES: usize = 20_000;

struct Args {
    /// `None`: [`DEFAULT_MESSAGES`] per run; in a sweep, sized per cell.
    messages: Option<usize>,
    size: usize,
    runs: usize,
    worker: Option<PathBuf>,
    /// What the proxy holds every storage answer back by; `None`: no proxy.
    latency: Option<Latency>,
    /// `OBJECT_NAME` for the worker (messages then carry a `task_type` attribute).
    object_name: Option<String>,
    /// Bytes per second each of the worker's connections to Pub/Sub receives at most.
    pubsub_cap: Option<u64>,
    /// Storage over TLS.
    tls: bool,
    mode: Mode,
}

enum Mode {
    /// The ceilings, the worker and a busy shutdown, `runs` times.
    Runs,
    Sweep(sweep::Grid),
    /// The default object names against a template, `runs` pairs.
    Compare(String),
}

fn parse_args() -> anyhow::Result<Args> {
    let (mut messages, mut size, mut runs, mut worker) = (None, None, None, None);
    let (mut latency, mut sigma) = (None, None);
    let (mut sweep, mut latencies, mut sigmas, mut sizes, mut writes) =
        (false, None, None, None, None);
    let (mut object_name, mut compare, mut pubsub_cap, mut tls) = (None, None, None, false);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--messages" => messages = Some(number(&flag, &value()?, 100..=1_000_000)?),
            "--size" => size = Some(number(&flag, &value()?, 1..=1_000_000)?),
            "--runs" => runs = Some(number(&flag, &value()?, 1..=20)?),
            "--worker" => worker = Some(PathBuf::from(value()?)),
            "--latency" => latency = Some(Duration::from_millis(number(&flag, &value()?, MS)?)),
            "--sigma" => sigma = Some(number(&flag, &value()?, SIGMA)?),
            "--sweep" => sweep = true,
            "--latencies" => latencies = Some(list(&flag, &value()?, MS)?),
            "--sigmas" => sigmas = Some(list(&flag, &value()?, SIGMA)?),
            "--sizes" => sizes = Some(list(&flag, &value()?, 1..=1_000_000)?),
            // `none`: the defaults' cells only.
            "--writes" => {
                let value = value()?;
                writes = Some(match value.as_str() {
                    "none" => Vec::new(),
                    _ => list(&flag, &value, 1..=10_000)?,
                });
            }
            "--object-name" => object_name = Some(value()?),
            "--compare-object-name" => compare = Some(value()?),
            "--tls" => tls = true,
            "--pubsub-cap" => {
                let mbps: f64 = number(&flag, &value()?, 0.01..=10_000.0)?;
                pubsub_cap = Some((mbps * 1e6) as u64);
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    if sweep && compare.is_some() {
        bail!("--sweep and --compare-object-name are two modes: choose one");
    }
    if compare.is_some() && object_name.is_some() {
        bail!("--compare-object-name compares the default names with TEMPLATE: drop --object-name");
    }
    // Refused now rather than after the emulators have started.
    if let Some(template) = compare.as_ref().or(object_name.as_ref()) {
        NameTemplate::parse(template, "").map_err(|e| anyhow::anyhow!("OBJECT_NAME {e}"))?;
    }
    let mode = if sweep {
        let given = [
            ("--size", size.is_some()),
            ("--runs", runs.is_some()),
            ("--latency", latency.is_some()),
            ("--sigma", sigma.is_some()),
        ];
        if let Some((flag, _)) = given.iter().find(|(_, given)| *given) {
            bail!(
                "--sweep takes --sizes, --latencies and --sigmas and runs each cell once: \
                 drop {flag}"
            );
        }
        Mode::Sweep(sweep::Grid {
            latencies_ms: latencies.unwrap_or_else(|| vec![10, 50, 200]),
            sizes: sizes.unwrap_or_else(|| vec![256, 65_536]),
            writes: writes.unwrap_or_else(|| vec![16, 64, 256, 1024]),
            sigmas: sigmas.unwrap_or_else(|| vec![0.0, 0.5, 1.0]),
            messages,
        })
    } else {
        if latencies.is_some() || sigmas.is_some() || sizes.is_some() || writes.is_some() {
            bail!("--latencies, --sigmas, --sizes and --writes belong to --sweep");
        }
        if sigma.is_some() && latency.is_none() {
            bail!("--sigma spreads the --latency MS around its median: give --latency");
        }
        compare.map_or(Mode::Runs, Mode::Compare)
    };
    let (size, runs) = (size.unwrap_or(256), runs.unwrap_or(3));
    let latency = latency.map(|median| Latency::new(median, sigma.unwrap_or(0.0)));
    Ok(Args { messages, size, runs, worker, latency, object_name, pubsub_cap, tls, mode })
}

/// Milliseconds a latency may take: up to a minute.
const MS: std::ops::RangeInclusive<u64> = 0..=60_000;
/// A latency's spread: at 2, one answer in a thousand takes 480 times the median already.
const SIGMA: std::ops::RangeInclusive<f64> = 0.0..=2.0;

fn number<T>(flag: &str, value: &str, range: std::ops::RangeInclusive<T>) -> anyhow::Result<T>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display,
{
    match value.trim().parse::<T>() {
        Ok(n) if range.contains(&n) => Ok(n),
        _ => bail!("{flag} takes numbers from {} to {}, not {value:?}", range.start(), range.end()),
    }
}

/// A comma-separated list of numbers, e.g. `10,50,200`.
fn list<T>(flag: &str, value: &str, range: std::ops::RangeInclusive<T>) -> anyhow::Result<Vec<T>>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display + Clone,
{
    value.split(',').map(|v| number(flag, v, range.clone())).collect()
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    raise_open_files_limit();
    // With --tls this process's own storage client (the storage ceiling's) must trust the TLS
    // fronts' authority as the worker does, through SSL_CERT_FILE, read when a client is built.
    let ca = args.tls.then(LoopbackCa::new).transpose()?;
    if let Some(ca) = &ca {
        // SAFETY: this is still the only thread (the runtime starts below), so no other reads
        // the environment meanwhile.
        unsafe { std::env::set_var("SSL_CERT_FILE", ca.file()) };
    }
    tokio::runtime::Runtime::new()?.block_on(run(args, ca.as_ref()))
}

async fn run(args: Args, ca: Option<&LoopbackCa>) -> anyhow::Result<()> {
    let worker_bin = match &args.worker {
        Some(path) => path.clone(),
        None => build_worker()?,
    };
    let binary_size = std::fs::metadata(&worker_bin)
        .with_context(|| format!("worker binary {}", worker_bin.display()))?
        .len();
    let overrides: Vec<(String, String)> =
        PASS_THROUGH.iter().filter_map(|k| Some((k.to_string(), std::env::var(k).ok()?))).collect();
    if matches!(args.mode, Mode::Sweep(_)) && std::env::var_os("MAX_CONCURRENT_WRITES").is_some() {
        bail!("--sweep sets MAX_CONCURRENT_WRITES itself (--writes): unset it");
    }
    let what = match &args.mode {
        Mode::Runs => format!(
            "{} messages of {} B, {} run(s)",
            args.messages.unwrap_or(DEFAULT_MESSAGES),
            args.size,
            args.runs
        ),
        Mode::Sweep(_) => "sweep".to_string(),
        Mode::Compare(template) => format!(
            "OBJECT_NAME={template} against the default, {} messages of {} B, {} pair(s)",
            args.messages.unwrap_or(DEFAULT_MESSAGES),
            args.size,
            args.runs
        ),
    };
    eprintln!(
        "bench: {what}; worker {} ({:.1} MB){}{}",
        worker_bin.display(),
        binary_size as f64 / 1e6,
        if overrides.is_empty() { String::new() } else { format!("; overrides {overrides:?}") },
        fakes_text(&args, "; "),
    );
    if std::env::var("OBJECT_COMPRESSION").as_deref() == Ok("gzip") {
        // What gzip costs shows in the worker's CPU per message, against a run without it.
        let sample = Bench::payload_of(args.size, 0);
        let stored = pubsub_gcs_worker::object::gzip(&sample)?.len();
        let ratio = sample.len() as f64 / stored.max(1) as f64;
        eprintln!(
            "bench: gzip stores {} B as {stored} B ({ratio:.1}:1, a synthetic payload)",
            sample.len()
        );
    }
    eprintln!("bench: starting the emulators...");
    let emu = Emulators::start().await.context("starting the emulators")?;
    let fakes = Fakes::start(&emu, args.pubsub_cap, ca).await?;
    let mut env = emu.worker_env();
    env.extend(overrides.iter().cloned());
    let mut bench = Bench::new(&emu, &fakes, &worker_bin, env, args.size)?;
    if let Some(template) = &args.object_name {
        bench = bench.with(&[("OBJECT_NAME", template.clone())])?.tagged();
    }
    if let Some(latency) = args.latency {
        bench = bench.through(latency)?;
    }

    // Warm the emulators up (the JVM's JIT above all), so the first run is not the odd one out.
    let warm = args.messages.unwrap_or(DEFAULT_MESSAGES).min(2000);
    eprintln!("bench: warming the emulators up with {warm} messages...");
    bench.pubsub_ceiling(warm).await?;
    bench.storage_ceiling(warm).await?;

    match &args.mode {
        Mode::Runs => {
            let messages = args.messages.unwrap_or(DEFAULT_MESSAGES);
            runs::run(&bench, &args, messages, binary_size, &overrides).await?;
        }
        Mode::Sweep(grid) => sweep::run(&bench, grid).await?,
        Mode::Compare(template) => {
            let messages = args.messages.unwrap_or(DEFAULT_MESSAGES);
            compare::run(&bench, template, messages, args.runs).await?;
        }
    }
    fakes.report();
    Ok(())
}

/// `50 ms`, or `50 ms median, sigma 1 (mean 82 ms)`.
/// What stands between the worker and the emulators, each part after `separator`, for the
/// first and the summary lines.
fn fakes_text(args: &Args, separator: &str) -> String {
    let mut text = String::new();
    if let Some(latency) = &args.latency {
        text += &format!("{separator}storage latency {}", latency_text(latency));
    }
    if let Some(rate) = args.pubsub_cap {
        text += &format!("{separator}Pub/Sub capped at {} MB/s a connection", rate as f64 / 1e6);
    }
    if args.tls {
        text += &format!("{separator}storage over TLS");
    }
    text
}

fn latency_text(latency: &Latency) -> String {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    match latency.sigma() {
        0.0 => format!("{:.0} ms", ms(latency.median())),
        sigma => format!(
            "{:.0} ms median, sigma {sigma} (mean {:.0} ms)",
            ms(latency.median()),
            ms(latency.mean())
        ),
    }
}

/// Raises the soft limit of open files to the hard one, for this process (the proxy holds a
/// socket to each writer and one to fake-gcs-server per request in flight) and for the worker,
/// which inherits it: at 1,024 concurrent writes, 1,024 sockets is the common soft default.
fn raise_open_files_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain syscalls with a valid pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// Builds the worker in this example's profile and returns its path (next to `examples/`).
fn build_worker() -> anyhow::Result<PathBuf> {
    let release = !cfg!(debug_assertions);
    if !release {
        eprintln!("bench: WARNING: a debug build; use `cargo run --release --example bench`");
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = std::process::Command::new(cargo);
    cmd.current_dir(env!("CARGO_MANIFEST_DIR")).args([
        "build",
        "--quiet",
        "--bin",
        "pubsub-gcs-worker",
    ]);
    if release {
        cmd.arg("--release");
    }
    let status = cmd.status().context("running cargo build")?;
    if !status.success() {
        bail!("cargo build --bin pubsub-gcs-worker failed ({status})");
    }
    // target/<profile>/examples/bench -> target/<profile>/pubsub-gcs-worker
    let exe = std::env::current_exe()?;
    let dir = exe.parent().and_then(Path::parent).context("locating the target directory")?;
    Ok(dir.join("pubsub-gcs-worker"))
}

/// What runs against the emulators: the worker's environment, and the configuration the worker
/// builds from it, which the ceilings use for the same clients and settings.
#[derive(Clone)]
struct Bench<'a> {
    emu: &'a Emulators,
    fakes: &'a Fakes,
    worker_bin: &'a Path,
    /// The emulators (storage perhaps through the proxy), the pass-through variables and what
    /// a mode sets.
    env: Vec<(String, String)>,
    config: Config,
    size: usize,
    /// What the proxy holds storage answers back by, when storage is reached through it.
    latency: Latency,
    /// Messages carry a `task_type` attribute, for templates that route by it.
    tagged: bool,
}

impl<'a> Bench<'a> {
    /// The worker with `env`, through `fakes`.
    fn new(
        emu: &'a Emulators,
        fakes: &'a Fakes,
        worker_bin: &'a Path,
        env: Vec<(String, String)>,
        size: usize,
    ) -> anyhow::Result<Self> {
        let config = worker_config(&env)?;
        let latency = Latency::ZERO;
        let bench = Self { emu, fakes, worker_bin, env, config, size, latency, tagged: false };
        bench.with(&fakes.worker_vars())
    }

    /// The same, with a `task_type` attribute on two messages in three: `file_processing`,
    /// `data_transformation`, none.
    fn tagged(&self) -> Self {
        Self { tagged: true, ..self.clone() }
    }

    /// The same, with messages of `size` bytes.
    fn sized(&self, size: usize) -> Self {
        Self { size, ..self.clone() }
    }

    /// The same, writing through the latency proxy, which from now on holds every storage
    /// answer back by a delay drawn from `latency` (for every bench that writes through it).
    fn through(&self, latency: Latency) -> anyhow::Result<Self> {
        self.fakes.proxy.set_latency(latency);
        let bench = self.with(&[("STORAGE_EMULATOR_HOST", self.fakes.storage_through_proxy())])?;
        Ok(Self { latency, ..bench })
    }

    /// The time a phase of `n` messages may take: generous, but a stuck phase fails the
    /// benchmark. The proxy's mean delay, at the configured write limit, counts three times over,
    /// and so does the Pub/Sub cap (as if on one connection; ~200 B of framing a message).
    fn budget(&self, n: usize) -> Duration {
        let waves = n as f64 / self.config.max_concurrent_writes as f64;
        Duration::from_secs(120)
            + Duration::from_millis(n as u64 * 10)
            + self.latency.mean().mul_f64(3.0 * waves)
            + self.fakes.pubsub_time((n * (self.size + 200)) as u64) * 3
    }

    /// A slow storage answer: three sigmas above the median, slower than all but one in 700.
    fn slow_answer(&self) -> Duration {
        self.latency.median().mul_f64((3.0 * self.latency.sigma()).exp())
    }

    /// A variable of the worker's environment.
    fn var(&self, name: &str) -> Option<&str> {
        self.env.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// The same, with `vars` set in the worker's environment (replacing what was there).
    fn with(&self, vars: &[(&str, String)]) -> anyhow::Result<Self> {
        let mut env = self.env.clone();
        env.retain(|(k, _)| !vars.iter().any(|(name, _)| k == name));
        env.extend(vars.iter().map(|(k, v)| (k.to_string(), v.clone())));
        Ok(Self { config: worker_config(&env)?, env, ..self.clone() })
    }
}

/// What the worker makes of `env` (its own two names come per run).
fn worker_config(env: &[(String, String)]) -> anyhow::Result<Config> {
    let names = [("SUBSCRIPTION_ID", "unused"), ("BUCKET_NAME", "unused")];
    let vars = env.iter().cloned().chain(names.map(|(k, v)| (k.into(), v.into())));
    Config::from_vars(vars).context("the worker's configuration")
}

/// The rates of one phase, from the completion time of each message.
#[derive(Clone, Copy)]
struct Rates {
    /// Messages per second from the start of the phase to the last completion.
    overall: f64,
    /// Messages per second between the 10% and the 90% completion.
    steady: f64,
    /// Seconds to the first completion.
    first: f64,
    /// Seconds to the last completion.
    total: f64,
    count: usize,
}

impl Rates {
    fn new(start: Instant, mut done: Vec<Instant>) -> Self {
        done.sort();
        let at = |i: usize| (done[i] - start).as_secs_f64();
        let n = done.len();
        let (a, b) = (n / 10, n * 9 / 10 - 1);
        Self {
            overall: n as f64 / at(n - 1),
            steady: (b - a) as f64 / (at(b) - at(a)),
            first: at(0),
            total: at(n - 1),
            count: n,
        }
    }

    /// Two measurements of the same thing, as one: total count over total time.
    fn combine(self, other: Self) -> Self {
        Self {
            overall: (self.count + other.count) as f64 / (self.total + other.total),
            steady: (self.steady + other.steady) / 2.0,
            first: self.first.min(other.first),
            total: self.total + other.total,
            count: self.count + other.count,
        }
    }
}

impl Bench<'_> {
    fn payload(&self, i: usize) -> Vec<u8> {
        Self::payload_of(self.size, i)
    }

    fn payload_of(size: usize, i: usize) -> Vec<u8> {
        // Text (the worker's common case), distinct per message.
        let mut data = format!("{i:010} ").into_bytes();
        data.resize(size, b'x');
        data
    }

    async fn fresh_subscription(&self, n: usize) -> anyhow::Result<(String, String)> {
        let ps = self.emu.pubsub();
        let (topic, sub) = (unique_name("bench"), unique_name("bench"));
        ps.create_topic(&topic).await?;
        ps.create_subscription(&topic, &sub, 60, None).await?;
        self.publish(&topic, 0, n).await?;
        Ok((topic, sub))
    }

    fn message(&self, i: usize) -> OutMessage {
        let message = OutMessage::new(self.payload(i));
        match (self.tagged, i % 3) {
            (true, 0) => message.attr("task_type", "file_processing"),
            (true, 1) => message.attr("task_type", "data_transformation"),
            _ => message,
        }
    }

    async fn publish(&self, topic: &str, from: usize, n: usize) -> anyhow::Result<()> {
        let ps = self.emu.pubsub();
        let messages: Vec<OutMessage> = (from..from + n).map(|i| self.message(i)).collect();
        ps.publish(topic, &messages).await?;
        // Let the JVM settle (GC after the publish burst) before anything is timed.
        tokio::time::sleep(Duration::from_millis(500)).await;
        Ok(())
    }

    /// Frees the emulator of a run's messages (the topic stays: without a subscription it
    /// holds nothing).
    async fn drop_subscription(&self, sub: &str) {
        let _ = self.emu.pubsub().delete_subscription(sub).await;
    }

    /// A new bucket and a watcher that timestamps every object created in it.
    async fn fresh_bucket(&self) -> anyhow::Result<(String, ObjectWatch)> {
        let bucket = unique_name("bench");
        self.emu.gcs().create_bucket(&bucket).await?;
        let dir = self.bucket_dir(&bucket);
        std::fs::create_dir_all(&dir)?;
        Ok((bucket, ObjectWatch::start(&dir)?))
    }

    /// Where fake-gcs-server's filesystem backend keeps the bucket's objects.
    fn bucket_dir(&self, bucket: &str) -> PathBuf {
        self.emu.log_dir().join("gcs-root").join(bucket)
    }

    /// Deletes the bucket's files once it has been measured: fake-gcs-server keeps objects as
    /// files, and a sweep of 64 KiB messages writes gigabytes.
    fn remove_objects(&self, bucket: &str) -> anyhow::Result<()> {
        let dir = self.bucket_dir(bucket);
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))
    }

    /// Receive-and-ack rate of the worker's own subscriber clients, streams and settings.
    async fn pubsub_ceiling(&self, n: usize) -> anyhow::Result<Phase> {
        let (_topic, sub) = self.fresh_subscription(n).await?;
        let cpu = EmulatorCpu::now();
        let own = own_cpu();
        let start = Instant::now();
        let subscribers = clients::subscribers(&self.config).await?;
        let path = self.emu.pubsub().subscription_path(&sub);
        let streams = worker::open_streams(&subscribers, &path, &self.config);
        let tokens: Vec<_> = streams.iter().map(|s| s.shutdown_token()).collect();
        // All streams read as one, in this task (the worker reads each in a task of its own).
        use futures::StreamExt as _;
        let mut stream = futures::stream::select_all(streams.into_iter().map(|stream| {
            Box::pin(futures::stream::unfold(stream, |mut s| async move {
                s.next().await.map(|item| (item, s))
            }))
        }));
        let mut times = Vec::with_capacity(n);
        let deadline = start + self.budget(n);
        while times.len() < n {
            let next = tokio::time::timeout_at(deadline.into(), stream.next()).await.with_context(
                || format!("pubsub ceiling: {} of {n} messages by the deadline", times.len()),
            )?;
            match next {
                Some(Ok((_message, handler))) => {
                    handler.ack();
                    times.push(Instant::now());
                }
                Some(Err(e)) => bail!("pubsub ceiling: stream failed: {e}"),
                None => bail!("pubsub ceiling: streams ended"),
            }
        }
        drop(stream);
        for token in tokens {
            let _ = tokio::time::timeout(Duration::from_secs(10), token.shutdown()).await;
        }
        let phase = Phase {
            rates: Rates::new(start, times),
            emulator_cpu: cpu.since(),
            client_cpu: own_cpu() - own,
        };
        self.drop_subscription(&sub).await;
        Ok(phase)
    }

    /// Create-only upload rate of the worker's own storage client and sink, at its concurrency.
    async fn storage_ceiling(&self, n: usize) -> anyhow::Result<Phase> {
        // The watch runs as it does while the worker is timed, at the same cost to this process.
        let (bucket, _watch) = self.fresh_bucket().await?;
        let config = &self.config;
        let sink =
            Arc::new(Sink::new(clients::storage(config).await?, &bucket, config.write_timeout));
        let permits = Arc::new(Semaphore::new(self.config.max_concurrent_writes));
        let times = Arc::new(Mutex::new(Vec::with_capacity(n)));
        let subscription = format!("projects/{}/subscriptions/bench", PROJECT_ID);
        let cpu = EmulatorCpu::now();
        let own = own_cpu();
        let start = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..n {
            let permit = permits.clone().acquire_owned().await?;
            // What the worker builds per message: a name, the content type and metadata.
            let spec = ObjectSpec {
                name: format!("message_20250101_000000_{i:06}_{i}.txt"),
                content_type: TEXT.into(),
                text: true,
                gzip: false,
                custom_time: None,
                metadata: BTreeMap::from([
                    ("message_id".to_string(), i.to_string()),
                    ("publish_time".to_string(), "2025-01-01T00:00:00.000000Z".to_string()),
                    ("subscription".to_string(), subscription.clone()),
                ]),
            };
            let data = Bytes::from(self.payload(i));
            let (sink, times) = (sink.clone(), times.clone());
            tasks.spawn(async move {
                let result = sink.write(&spec, data).await;
                drop(permit);
                if result.is_ok() {
                    times.lock().expect("lock").push(Instant::now());
                }
                result.map(|_| ()).map_err(|e| anyhow::anyhow!("{e}"))
            });
            while let Some(done) = tasks.try_join_next() {
                done??;
            }
        }
        let deadline = start + self.budget(n);
        while let Some(done) = tokio::time::timeout_at(deadline.into(), tasks.join_next())
            .await
            .context("storage ceiling: uploads not finished by the deadline")?
        {
            done??;
        }
        let client_cpu = own_cpu() - own;
        let emulator_cpu = cpu.since();
        self.remove_objects(&bucket)?;
        let times = std::mem::take(&mut *times.lock().expect("lock"));
        Ok(Phase { rates: Rates::new(start, times), emulator_cpu, client_cpu })
    }

    fn spawn_worker(
        &self,
        sub: &str,
        bucket: &str,
        log: &Path,
    ) -> anyhow::Result<tokio::process::Child> {
        let log = std::fs::File::create(log)?;
        let child = tokio::process::Command::new(self.worker_bin)
            .env_clear()
            .envs(self.env.iter().cloned())
            .env("SUBSCRIPTION_ID", sub)
            .env("BUCKET_NAME", bucket)
            .env("LOG_FORMAT", "json")
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", self.worker_bin.display()))?;
        Ok(child)
    }

    /// Starts the worker on `sub`, a backlog of `n` messages, and times it until the n-th object
    /// is in `bucket`; once it is idle, reads its peak memory and CPU time, stops it (SIGTERM)
    /// and checks that it reports `n` objects written.
    async fn measure_worker(
        &self,
        sub: &str,
        bucket: &str,
        watch: &ObjectWatch,
        n: usize,
        budget: Duration,
    ) -> anyhow::Result<WorkerRun> {
        let log = self.emu.log_dir().join(format!("{bucket}.worker.log"));
        let cpu = EmulatorCpu::now();
        let own = own_cpu();
        let start = Instant::now();
        let mut child = self.spawn_worker(sub, bucket, &log)?;
        let pid = child.id().context("worker pid")?;
        // Objects and CPU seconds at the 10% and the 90% object, then at the last.
        let mut marks = [(0, 0.0); 3];
        for (mark, target) in marks.iter_mut().zip([n / 10, n * 9 / 10, n]) {
            watch
                .wait_for(target, start + budget, &mut child)
                .await
                .with_context(|| format!("worker log: {}", log.display()))?;
            *mark = (watch.count(), cpu_seconds(pid)?);
        }
        let [(count_10, cpu_10), (count_90, cpu_90), _] = marks;
        let emulator_cpu = cpu.since();
        let bench_cpu = own_cpu() - own;
        let rates = Rates::new(start, watch.times());
        // The last object exists before the proxy answers its write: let the answers arrive, the
        // acks flush and the process go idle, then read its peak memory and CPU time.
        tokio::time::sleep(Duration::from_secs(2) + self.slow_answer()).await;
        let peak_rss_kb = vm_hwm_kb(pid)?;
        let cpu_s = cpu_seconds(pid)?;
        let threads = threads(pid)?;
        let rss_anon_kb = status_field(pid, "RssAnon:")?;
        let rss_file_kb = status_field(pid, "RssFile:")?;
        let idle_exit_s = terminate(&mut child, pid).await?;
        let summary = stopped_summary(&log);
        if summary.get("written").and_then(Value::as_u64) != Some(n as u64) {
            bail!(
                "the worker did not report {n} objects written: {summary} (log {})",
                log.display()
            );
        }
        Ok(WorkerRun {
            phase: Phase { rates, emulator_cpu, client_cpu: cpu_s },
            steady_cpu_per_msg: (cpu_90 - cpu_10) / count_90.saturating_sub(count_10).max(1) as f64,
            peak_rss_kb,
            rss_anon_kb,
            rss_file_kb,
            threads,
            idle_exit_s,
            bench_cpu,
            example: watch.first(),
        })
    }

    /// The worker on a fresh backlog of `n` messages into a fresh bucket (see
    /// [`Bench::measure_worker`]); the subscription and the objects are deleted afterwards.
    async fn backlog_run(&self, n: usize, budget: Duration) -> anyhow::Result<WorkerRun> {
        let (_topic, sub) = self.fresh_subscription(n).await?;
        let (bucket, watch) = self.fresh_bucket().await?;
        let run = self.measure_worker(&sub, &bucket, &watch, n, budget).await;
        drop(watch);
        self.drop_subscription(&sub).await;
        self.remove_objects(&bucket)?;
        run
    }
}

/// Sends SIGTERM and returns the seconds until the process exited (successfully).
async fn terminate(child: &mut tokio::process::Child, pid: u32) -> anyhow::Result<f64> {
    let sent = Instant::now();
    // SAFETY: plain syscall on our own child, which has not been reaped yet.
    if unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) } != 0 {
        bail!("kill: {}", std::io::Error::last_os_error());
    }
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .context("the worker did not exit within 30 s of SIGTERM")??;
    let took = sent.elapsed().as_secs_f64();
    if !status.success() {
        bail!("the worker exited with {status} after SIGTERM");
    }
    Ok(took)
}

/// The counters of the worker's final `stopped` log line.
fn stopped_summary(log: &Path) -> Value {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .rfind(|v| v["message"] == "stopped")
        .unwrap_or(Value::Null)
}

struct Phase {
    rates: Rates,
    /// CPU seconds of the Pub/Sub emulator and fake-gcs-server during the phase.
    emulator_cpu: (f64, f64),
    /// CPU seconds of the client: this process for the ceilings, the worker process for it.
    client_cpu: f64,
}

/// A worker process timed on a backlog, from its start to the last object, then stopped idle.
struct WorkerRun {
    /// The client CPU is the worker's, start-up and 2 s of idling after the last object included.
    phase: Phase,
    /// CPU seconds per object between the 10% and the 90% object: without start-up.
    steady_cpu_per_msg: f64,
    peak_rss_kb: u64,
    /// Resident memory at the end, when idle: heap and stacks, and mapped files (the binary).
    rss_anon_kb: u64,
    rss_file_kb: u64,
    threads: u64,
    idle_exit_s: f64,
    /// CPU seconds of this process meanwhile: the proxy (when in the path) and the watch.
    bench_cpu: f64,
    /// The first object's name, as the worker made it.
    example: Option<PathBuf>,
}

impl WorkerRun {
    /// `seconds` per object written.
    fn per_message(&self, seconds: f64) -> f64 {
        seconds / self.phase.rates.count as f64
    }
}

impl Phase {
    fn combine(self, other: Self) -> Self {
        Self {
            rates: self.rates.combine(other.rates),
            emulator_cpu: (
                self.emulator_cpu.0 + other.emulator_cpu.0,
                self.emulator_cpu.1 + other.emulator_cpu.1,
            ),
            client_cpu: self.client_cpu + other.client_cpu,
        }
    }
}

/// `2 cores, AMD EPYC ...`.
fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores, {}", cpu_model())
}

/// To three decimals, for the JSON lines.
fn round(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}
