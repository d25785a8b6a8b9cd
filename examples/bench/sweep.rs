//! `--sweep`: the worker's rate against storage latency, message size and concurrent writes, next
//! to the bound `min(writes / latency, limit)`, in one command. See the example's header.

use super::{Bench, Latency, WorkerRun, machine, round};
use anyhow::Context as _;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// How long a cell should take at its expected rate, unless `--messages` says how many.
const CELL_SECS: f64 = 15.0;
/// Messages per cell, and at most this many bytes of them: the Pub/Sub emulator holds the
/// backlog in memory, and publishing it over REST takes seconds per 100 MB.
const CELL_MESSAGES: (usize, usize) = (1000, 20_000);
const CELL_BYTES: usize = 256 << 20;
/// What a cell costs besides its messages and publishing them: start-up, 2 s of idling,
/// clean-up; and how fast the emulator takes a backlog over REST.
const CELL_OVERHEAD_SECS: f64 = 6.0;
const PUBLISH_BYTES_PER_SEC: f64 = 20e6;

/// The grid of a sweep, from the command line.
pub struct Grid {
    /// Median latencies, each with every spread of `sigmas`.
    pub latencies_ms: Vec<u64>,
    pub sigmas: Vec<f64>,
    pub sizes: Vec<usize>,
    pub writes: Vec<usize>,
    /// Messages per cell; `None`: what takes [`CELL_SECS`] at the cell's expected rate.
    pub messages: Option<usize>,
}

impl Grid {
    /// A guess at the seconds one size's cells and limits take, before anything is measured.
    fn guess_secs(&self, size: usize, cells: usize) -> f64 {
        let messages = self.messages.unwrap_or(CELL_SECS as usize * 1000);
        let messages = messages.min((CELL_BYTES / size).max(CELL_MESSAGES.0));
        let cell = messages as f64 / 1000.0
            + CELL_OVERHEAD_SECS
            + (messages * size) as f64 / PUBLISH_BYTES_PER_SEC;
        let limits = 2.0 * 30.0;
        cells as f64 * cell + limits
    }

    /// Every median latency with every spread.
    fn latencies(&self) -> Vec<Latency> {
        let medians = self.latencies_ms.iter().map(|&ms| Duration::from_millis(ms));
        medians.flat_map(|m| self.sigmas.iter().map(move |&s| Latency::new(m, s))).collect()
    }
}

/// What this machine can do at all for one message size: the steady rates of the Pub/Sub
/// ceiling and of the storage ceiling through the proxy at no added latency; the storage ceiling
/// without the proxy shows what the proxy itself costs.
#[derive(Clone, Copy)]
struct Limit {
    pubsub: f64,
    storage: f64,
    direct: f64,
}

impl Limit {
    fn rate(&self) -> f64 {
        self.pubsub.min(self.storage)
    }

    fn json(&self) -> Value {
        json!({
            "pubsub": round(self.pubsub),
            "storage": round(self.storage),
            "storage_direct": round(self.direct),
            "limit": round(self.rate()),
        })
    }
}

/// One message size's limits, measured before and after its cells.
struct SizeLimits {
    size: usize,
    before: Limit,
    after: Limit,
}

impl SizeLimits {
    /// The limit the bounds use: the mean of before and after.
    fn rate(&self) -> f64 {
        (self.before.rate() + self.after.rate()) / 2.0
    }
}

struct Cell {
    latency: Latency,
    size: usize,
    /// `None`: the worker's defaults.
    writes: Option<usize>,
    /// What the cell passed as `MAX_OUTSTANDING_MESSAGES`, if anything.
    outstanding: Option<usize>,
    messages: usize,
    run: WorkerRun,
}

pub async fn run(base: &Bench<'_>, grid: &Grid) -> anyhow::Result<()> {
    let user_outstanding = base.var("MAX_OUTSTANDING_MESSAGES").map(str::to_string);
    let default_writes = base.config.max_concurrent_writes;
    let high = grid.writes.iter().copied().max().unwrap_or(default_writes);
    // MAX_CONCURRENT_WRITES, and what feeds it, unless the user set MAX_OUTSTANDING_MESSAGES.
    let writes_vars = |w: usize| {
        let mut vars = vec![("MAX_CONCURRENT_WRITES", w.to_string())];
        if user_outstanding.is_none() {
            vars.push(("MAX_OUTSTANDING_MESSAGES", outstanding_for(w).to_string()));
        }
        vars
    };

    let cells_per_size = grid.latencies().len() * (grid.writes.len() + 1);
    let cells_total = grid.sizes.len() * cells_per_size;
    let guess: f64 = grid.sizes.iter().map(|&s| grid.guess_secs(s, cells_per_size)).sum();
    eprintln!(
        "sweep: {cells_total} cells ({} sizes x {} latencies x {} sigmas x defaults and {} write \
         limits), limits before and after each size: about {:.0} min at ~1,000 msg/s (on 2 idle \
         cores); refined as it goes",
        grid.sizes.len(),
        grid.latencies_ms.len(),
        grid.sigmas.len(),
        grid.writes.len(),
        guess / 60.0,
    );

    let started = Instant::now();
    let (mut limits, mut cells) = (Vec::new(), Vec::<Cell>::new());
    for &size in &grid.sizes {
        let sized = base.sized(size);
        // Before and after the size's cells: the ceilings at the highest write limit.
        let at_high = sized.with(&writes_vars(high))?;
        let measure_limit = async || limit(&at_high.through(Latency::ZERO)?, &at_high).await;
        let before = measure_limit().await?;
        eprintln!("sweep: {size} B: {}", limit_text(&before));
        for latency in grid.latencies() {
            let proxied = sized.through(latency)?;
            for writes in std::iter::once(None).chain(grid.writes.iter().copied().map(Some)) {
                let cell_started = Instant::now();
                let (bench, outstanding) = match writes {
                    None => (proxied.clone(), None),
                    Some(w) => (
                        proxied.with(&writes_vars(w))?,
                        user_outstanding.is_none().then(|| outstanding_for(w)),
                    ),
                };
                let w = writes.unwrap_or(default_writes);
                let expected = bound(w, latency, before.rate()).max(1.0);
                let most = (CELL_BYTES / size).clamp(CELL_MESSAGES.0, CELL_MESSAGES.1);
                let messages = grid.messages.unwrap_or_else(|| {
                    ((expected * CELL_SECS) as usize).clamp(CELL_MESSAGES.0, most)
                });
                let budget = bench.budget(messages)
                    + Duration::from_secs_f64(3.0 * messages as f64 / expected);
                let what = format!(
                    "{} ms, sigma {}, {size} B, writes {}",
                    latency.median().as_millis(),
                    latency.sigma(),
                    writes_text(writes, default_writes)
                );
                let run =
                    bench.backlog_run(messages, budget).await.with_context(|| what.clone())?;
                let done = cells.len() + 1;
                let per_cell = started.elapsed().as_secs_f64() / done as f64;
                eprintln!(
                    "sweep: cell {done}/{cells_total} ({what}): {messages} messages, {:.0} msg/s \
                     (steady {:.0}), peak RSS {:.1} MB; {:.0} s; about {:.0} min left",
                    run.phase.rates.overall,
                    run.phase.rates.steady,
                    run.peak_rss_kb as f64 / 1024.0,
                    cell_started.elapsed().as_secs_f64(),
                    per_cell * (cells_total - done) as f64 / 60.0,
                );
                cells.push(Cell { latency, size, writes, outstanding, messages, run });
            }
        }
        let after = measure_limit().await?;
        eprintln!("sweep: {size} B, after its cells: {}", limit_text(&after));
        limits.push(SizeLimits { size, before, after });
    }
    let object_name = base.var("OBJECT_NAME").map(str::to_string);
    let ctx = Report { grid, limits: &limits, default_writes, high, user_outstanding, object_name };
    ctx.print(&cells, started.elapsed());
    Ok(())
}

/// `MAX_OUTSTANDING_MESSAGES` that keeps `writes` writes fed: twice as many, and never below the
/// worker's default of 1,000.
fn outstanding_for(writes: usize) -> usize {
    (2 * writes).max(1000)
}

/// `min(writes / mean latency, limit)`; at no latency, the limit. The mean, not the median:
/// `writes` writes in flight each wait a latency, so they finish at `writes / mean` per second.
fn bound(writes: usize, latency: Latency, limit: f64) -> f64 {
    let mean = latency.mean().as_secs_f64();
    match mean > 0.0 {
        true => (writes as f64 / mean).min(limit),
        false => limit,
    }
}

/// The ceilings at no added latency, on `proxied`'s settings (the sweep's highest write limit);
/// the storage ceiling also without the proxy, on `direct`.
async fn limit(proxied: &Bench<'_>, direct: &Bench<'_>) -> anyhow::Result<Limit> {
    // Enough to be past the ramp, within ~128 MB of messages in the emulator.
    let n = ((128 << 20) / proxied.size).clamp(2000, 5000);
    let pubsub = proxied.pubsub_ceiling(n).await.context("Pub/Sub ceiling")?.rates.steady;
    let storage = proxied.storage_ceiling(n).await.context("storage ceiling")?.rates.steady;
    let direct = direct.storage_ceiling(n).await.context("storage ceiling, direct")?.rates.steady;
    Ok(Limit { pubsub, storage, direct })
}

fn limit_text(l: &Limit) -> String {
    format!(
        "Pub/Sub ceiling {:.0} msg/s, storage ceiling {:.0} through the proxy ({:.0} direct): \
         limit {:.0} msg/s",
        l.pubsub,
        l.storage,
        l.direct,
        l.rate()
    )
}

fn writes_text(writes: Option<usize>, default_writes: usize) -> String {
    writes.map_or(format!("default ({default_writes})"), |w| w.to_string())
}

struct Report<'a> {
    grid: &'a Grid,
    limits: &'a [SizeLimits],
    default_writes: usize,
    high: usize,
    user_outstanding: Option<String>,
    object_name: Option<String>,
}

impl Report<'_> {
    fn limit(&self, size: usize) -> f64 {
        self.limits.iter().find(|l| l.size == size).map_or(f64::NAN, SizeLimits::rate)
    }

    /// The cell's bound; for the defaults, the limit itself, which they are to reach at every
    /// latency (the bound at their own fixed write limit would excuse a limit set too low).
    fn bound(&self, cell: &Cell) -> f64 {
        let limit = self.limit(cell.size);
        match cell.writes {
            None => limit,
            Some(w) => bound(w, cell.latency, limit),
        }
    }

    /// `min(writes / latency, limit)` at the cell's own write limit, the defaults' included.
    fn bound_at_writes(&self, cell: &Cell) -> f64 {
        let writes = cell.writes.unwrap_or(self.default_writes);
        bound(writes, cell.latency, self.limit(cell.size))
    }

    fn print(&self, cells: &[Cell], took: Duration) {
        let grid = self.grid;
        println!(
            "\nSweep: {}; {:.0} min; storage latency added by the proxy: log-normal, the median \
             and sigma of each row (mean = median x exp(sigma² / 2))",
            machine(),
            took.as_secs_f64() / 60.0,
        );
        if let Some(template) = &self.object_name {
            println!("OBJECT_NAME={template}");
        }
        println!(
            "limit = what this machine can do at all for that size, with no added latency: the \
             lower of the Pub/Sub ceiling (receive and ack, nothing written) and the storage \
             ceiling (create-only uploads through the proxy at 0 ms, {} at once), steady rates, \
             the mean of before and after the size's cells. Both are the emulators' limits on \
             loopback, not the worker's: the worker's own cost is its CPU per message.",
            self.high
        );
        println!(
            "{:>8} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "size", "when", "pubsub", "storage", "direct", "limit"
        );
        for l in self.limits {
            for (when, limit) in [("before", &l.before), ("after", &l.after)] {
                println!(
                    "{:>8} {when:>9} {:>9.0} {:>9.0} {:>9.0} {:>9.0}",
                    size_text(l.size),
                    limit.pubsub,
                    limit.storage,
                    limit.direct,
                    limit.rate()
                );
            }
        }
        println!(
            "bound = min(writes / mean latency, limit); for the defaults row, the limit. rate: overall \
             (start to last object) and steady (10% to 90% object); ratio = steady / bound. \
             {}. CPU: the worker's, in µs per message, steady (10% to 90% object) and in all \
             (start-up and 2 s idle included). Peak RSS: VmHWM.",
            match &self.user_outstanding {
                None => "MAX_OUTSTANDING_MESSAGES = max(1000, 2 x writes) on each writes row; \
                         the defaults row sets neither variable"
                    .to_string(),
                Some(v) => format!("MAX_OUTSTANDING_MESSAGES={v} from the environment, every row"),
            }
        );
        println!(
            "{:>8} {:>5} {:>8} {:>13} {:>6} {:>8} {:>8} {:>8} {:>6} {:>9} {:>8} {:>8}",
            "latency",
            "sigma",
            "size",
            "writes",
            "msgs",
            "overall",
            "steady",
            "bound",
            "ratio",
            "peak MB",
            "CPU µs",
            "(all)"
        );
        let mut rows = Vec::new();
        for cell in cells {
            let (rates, bound) = (&cell.run.phase.rates, self.bound(cell));
            let cpu_us = cell.run.steady_cpu_per_msg * 1e6;
            let cpu_all_us = cell.run.per_message(cell.run.phase.client_cpu) * 1e6;
            let peak_mb = cell.run.peak_rss_kb as f64 / 1024.0;
            println!(
                "{:>8} {:>5} {:>8} {:>13} {:>6} {:>8.0} {:>8.0} {:>8.0} {:>6.2} {:>9.1} {:>8.0} \
                 {:>8.0}",
                format!("{} ms", cell.latency.median().as_millis()),
                cell.latency.sigma(),
                size_text(cell.size),
                writes_text(cell.writes, self.default_writes),
                cell.messages,
                rates.overall,
                rates.steady,
                bound,
                rates.steady / bound,
                peak_mb,
                cpu_us,
                cpu_all_us,
            );
            rows.push(json!({
                "latency_ms": cell.latency.median().as_millis() as u64,
                "sigma": cell.latency.sigma(),
                "mean_latency_ms": round(cell.latency.mean().as_secs_f64() * 1000.0),
                "size": cell.size,
                "writes": cell.writes,
                "default_writes": cell.writes.is_none().then_some(self.default_writes),
                "max_outstanding_messages": cell.outstanding,
                "messages": cell.messages,
                "overall": round(rates.overall),
                "steady": round(rates.steady),
                "bound": round(bound),
                "bound_at_writes": round(self.bound_at_writes(cell)),
                "ratio": round(rates.steady / bound),
                "peak_rss_mb": round(peak_mb),
                "cpu_us_per_msg": round(cpu_us),
                "cpu_us_per_msg_all": round(cpu_all_us),
                "bench_cpu_us_per_msg": round(cell.run.per_message(cell.run.bench_cpu) * 1e6),
                "gcs_emulator_cpu_us_per_msg":
                    round(cell.run.per_message(cell.run.phase.emulator_cpu.1) * 1e6),
            }));
        }
        let limits: Vec<Value> = self
            .limits
            .iter()
            .map(|l| {
                json!({
                    "size": l.size,
                    "before": l.before.json(),
                    "after": l.after.json(),
                    "limit": round(l.rate()),
                })
            })
            .collect();
        let summary = json!({
            "machine": machine(),
            "minutes": round(took.as_secs_f64() / 60.0),
            "sigmas": grid.sigmas,
            "limit_writes": self.high,
            "max_outstanding_messages_from_env": self.user_outstanding,
            "object_name": self.object_name,
            "limits": limits,
            "cells": rows,
        });
        println!("SWEEP {summary}");
    }
}

fn size_text(size: usize) -> String {
    match size {
        s if s >= 1024 && s % 1024 == 0 => format!("{} KiB", s / 1024),
        s => format!("{s} B"),
    }
}
