//! `--sweep`: the worker's rate against storage latency, message size and write limit, next to the
//! bound `min(writes / mean latency, limit)`, `writes` the cell's `MAX_CONCURRENT_WRITES` (the
//! defaults' cap for theirs). The limit is the most the worker did for a size in the command: its
//! own rate through the proxy at no added latency (the defaults, measured before the size's
//! cells and after each round of them: the median), or the highest of the defaults' cells,
//! whichever is higher. With `--rounds N` every cell runs N times and is judged on its median. The Pub/Sub and
//! the storage ceilings, each measured alone, are printed beside it: on a machine where the
//! emulators, the proxy and the worker share the cores, they do not bind. Each cell runs the
//! worker once on a fresh backlog, through the proxy, and is judged on its late rate (the 50% to
//! the 95% object), once the worker has opened the streams it needs (on the emulator one stream
//! carries some 1,600-2,000 messages a second, and the worker opens one more each 10 s at most)
//! and grown its write limit: the ramp to them is the overall rate's.

use super::{Bench, HttpProxy, Latency, round};
use anyhow::Context as _;
use serde_json::json;
use std::time::{Duration, Instant};

/// The grid, from the command line.
#[derive(clap::Args, Debug)]
pub struct Grid {
    /// Median storage latencies of the sweep, ms
    #[arg(long, value_delimiter = ',', default_value = "10,50,200", requires = "sweep")]
    latencies: Vec<u64>,
    /// The spreads of each (log-normal sigma)
    #[arg(long, value_delimiter = ',', default_value = "0,0.5,1", value_parser = sigma)]
    #[arg(requires = "sweep")]
    sigmas: Vec<f64>,
    /// Message sizes, bytes
    #[arg(long, value_delimiter = ',', default_value = "256,65536", requires = "sweep")]
    sizes: Vec<usize>,
    /// Fixed MAX_CONCURRENT_WRITES cells beside the defaults' (`none`: the defaults' only); each
    /// with MAX_OUTSTANDING_MESSAGES = max(1000, 2 x writes) unless the environment sets it
    #[arg(long, default_value = "16,64,256,1024", requires = "sweep", value_parser = writes)]
    writes: Writes,
    /// Seconds a cell lasts at its expected rate: long enough for the worker to open the streams
    /// it needs (one each 10 s at most) and to average the latency's tail
    #[arg(long, default_value_t = 60.0, requires = "sweep")]
    cell_seconds: f64,
    /// Runs of every cell, in rounds (each round the size's cells in order, the worker's
    /// ceiling measured before the first and after each): a cell is judged on its median, the
    /// limit is the ceilings' median, so that the machine's drift and a single run's spread
    /// (10-15% on 2 cores) meet every cell alike
    #[arg(long, default_value_t = 1, requires = "sweep")]
    #[arg(value_parser = clap::value_parser!(u64).range(1..=10))]
    rounds: u64,
}

#[derive(Clone, Debug)]
pub struct Writes(Vec<usize>);

fn writes(value: &str) -> Result<Writes, String> {
    let list = value.split(',').map(|w| w.parse().map_err(|e| format!("{w:?}: {e}")));
    Ok(Writes(if value == "none" { Vec::new() } else { list.collect::<Result<_, _>>()? }))
}

/// A latency's spread: at 2, one answer in a thousand takes 480 times the median already.
pub fn sigma(value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(s) if (0.0..=2.0).contains(&s) => Ok(s),
        _ => Err(format!("a sigma from 0 to 2, not {value:?}")),
    }
}

/// A cell's messages, unless `--messages` says: what takes `--cell-seconds` at its expected rate,
/// from 1,000 to 1,000,000; the backlog is topped up while the worker runs (the Pub/Sub emulator
/// holds it in memory). The table prints a size's rows once its limit is measured after them;
/// the ratio is late / bound, CPU the worker's per message, steady (10% to 90% object) and in
/// all; peak RSS is VmHWM; limit the write limit's median from the 50% object on.
const MOST: usize = 1_000_000;

pub async fn run(
    base: &Bench<'_>,
    proxy: &HttpProxy,
    grid: &Grid,
    messages: Option<usize>,
) -> anyhow::Result<()> {
    // MAX_CONCURRENT_WRITES, and MAX_OUTSTANDING_MESSAGES to feed it unless the user set it.
    let user_outstanding = base.env.iter().any(|(k, _)| k == "MAX_OUTSTANDING_MESSAGES");
    let vars = |w: usize| {
        let outstanding = ("MAX_OUTSTANDING_MESSAGES", (2 * w).max(1000).to_string());
        let vars = [("MAX_CONCURRENT_WRITES", w.to_string())].into_iter();
        vars.chain((!user_outstanding).then_some(outstanding)).collect::<Vec<_>>()
    };
    let default_writes = base.config.max_concurrent_writes;
    let high = grid.writes.0.iter().copied().max().unwrap_or(default_writes);
    let medians = grid.latencies.iter().map(|&ms| Duration::from_millis(ms));
    let latencies: Vec<_> =
        medians.flat_map(|m| grid.sigmas.iter().map(move |&s| Latency::new(m, s))).collect();
    let writes: Vec<_> =
        [None].into_iter().chain(grid.writes.0.iter().copied().map(Some)).collect();
    let rounds = grid.rounds as usize;
    let total = grid.sizes.len() * latencies.len() * writes.len() * rounds;
    let (started, mut rows, mut limits) = (Instant::now(), Vec::new(), Vec::new());
    let mut emulator = Emulator { taken: 0, restarts: 0 };
    let head =
        "latency sigma     size  writes   msgs  overall   steady     late    bound  ratio  peak MB";
    let spread = if rounds > 1 { "  late min-max" } else { "" };
    println!("{head}  CPU µs  (all)  limit{spread}");
    for &size in &grid.sizes {
        let sized = Bench { size, ..base.clone() };
        let at_cap = sized.with(&vars(high))?;
        let seconds = grid.cell_seconds;
        let mut ceilings = vec![limit(&at_cap, &sized, proxy, seconds, &mut emulator).await?];
        // Each cell's runs, a round at a time.
        let mut cells: Vec<Cell> = Vec::new();
        for round in 0..rounds {
            for (c, (&latency, &w)) in
                latencies.iter().flat_map(|l| writes.iter().map(move |w| (l, w))).enumerate()
            {
                proxy.set_latency(latency);
                let bench =
                    Bench { latency, ..w.map_or(Ok(sized.clone()), |w| sized.with(&vars(w)))? };
                let expected = bound(w.unwrap_or(default_writes), latency, least(ceilings[0]));
                let n = (expected * grid.cell_seconds) as usize;
                let n = messages.unwrap_or(n.clamp(1000, MOST));
                emulator.room(&bench, n).await?;
                let run = bench
                    .backlog_run(n)
                    .await
                    .with_context(|| format!("{size} B, {latency:?}, writes {w:?}"))?;
                let done = rows.len() * rounds + round * latencies.len() * writes.len() + c + 1;
                let left = started.elapsed().as_secs() as usize * (total - done) / done / 60;
                // The cell's figures now, for a sweep that fails before its table.
                let (rates, peak_mb) = (&run.rates, run.usage.peak_rss_kib as f64 / 1024.0);
                let (ms, sigma) = (latency.median().as_millis(), latency.sigma());
                let label = w.map_or("default".to_string(), |w| w.to_string());
                eprintln!(
                    "sweep: cell {done}/{total} (round {}/{rounds}, {size} B, {ms} ms, \
                     sigma {sigma}, writes {label}): late {:.0}, \
                     steady {:.0}, overall {:.0} msg/s, peak {peak_mb:.1} MB, {:.0} µs/msg, \
                     write limit {:.0}; about {left} min left",
                    round + 1,
                    rates.late,
                    rates.steady,
                    rates.overall,
                    run.steady_cpu_per_msg * 1e6,
                    run.late_limit
                );
                match cells.get_mut(c) {
                    Some(cell) => cell.runs.push(run),
                    None => cells.push(Cell { latency, writes: w, n, runs: vec![run] }),
                }
            }
            ceilings.push(limit(&at_cap, &sized, proxy, seconds, &mut emulator).await?);
        }
        // The most the worker did for this size in this command: its own ceiling (the median
        // of its runs), or a defaults cell's median late rate if higher. At no added latency
        // storage answers in a fraction of a millisecond, where the write limit takes the CPU's
        // jitter for a queue and holds fewer writes than at 10 ms, so the zero-latency run is
        // not always the highest. With one round the median of two is the higher.
        let own = median(ceilings.iter().map(|c| c[2]));
        let defaults = cells.iter().filter(|cell| cell.writes.is_none()).map(Cell::late);
        let limit = defaults.chain([own]).fold(0.0, f64::max);
        for cell in &mut cells {
            let (latency, w, n) = (cell.latency, cell.writes, cell.n);
            let bound = bound(w.unwrap_or(default_writes), latency, limit);
            let lates: Vec<f64> = cell.runs.iter().map(|r| round(r.rates.late)).collect();
            let run = cell.median_run();
            let (rates, ms, sigma) = (&run.rates, latency.median().as_millis(), latency.sigma());
            let (ratio, peak_mb) = (rates.late / bound, run.usage.peak_rss_kib as f64 / 1024.0);
            let cpu = [run.steady_cpu_per_msg * 1e6, run.usage.cpu.as_secs_f64() / n as f64 * 1e6];
            let writes = w.map_or("default".to_string(), |w| w.to_string());
            let (overall, steady, late) = (rates.overall, rates.steady, rates.late);
            let (low, high) = lates.iter().fold((f64::MAX, 0.0), |(l, h), &v| (v.min(l), v.max(h)));
            let range = if rounds > 1 { format!("  {low:>6.0}-{high:.0}") } else { String::new() };
            println!(
                "{ms:>4} ms {sigma:>5} {size:>8} {writes:>7} {n:>6} {overall:>8.0} {steady:>8.0} {late:>8.0} \
                 {bound:>8.0} {ratio:>6.2} {peak_mb:>8.1} {:>7.0} {:>6.0} {:>6.0}{range}",
                cpu[0], cpu[1], run.late_limit
            );
            rows.push(json!({
                "latency_ms": ms as u64, "sigma": sigma, "size": size, "writes": w,
                "default_writes": w.is_none().then_some(default_writes), "messages": n,
                "overall": round(overall), "steady": round(steady), "late": round(late),
                "late_runs": lates, "bound": round(bound),
                "ratio": round(ratio), "peak_rss_mb": round(peak_mb),
                "cpu_us_per_msg": round(cpu[0]), "cpu_us_per_msg_all": round(cpu[1]),
                "write_limit_late": round(run.late_limit),
            }));
        }
        let shown: Vec<String> = ceilings.iter().map(|c| format!("{c:.0?}")).collect();
        let shown = shown.join(", then ");
        println!("{size} B: limit {limit:.0} msg/s (Pub/Sub, storage and worker ceilings {shown})");
        let ceilings: Vec<_> = ceilings.iter().map(|c| c.map(round)).collect();
        let (own, limit) = (round(own), round(limit));
        limits.push(json!({ "size": size, "ceilings": ceilings, "worker": own, "limit": limit }));
    }
    let minutes = round(started.elapsed().as_secs_f64() / 60.0);
    let restarts = emulator.restarts;
    let summary = json!({ "minutes": minutes, "limit_writes": high, "limits": limits,
        "emulator_restarts": restarts, "cells": rows });
    println!("SWEEP {summary}");
    Ok(())
}

/// `min(writes / mean latency, limit)`: `writes` writes in flight, each waiting a latency, finish
/// at `writes / mean` per second.
fn bound(writes: usize, latency: Latency, limit: f64) -> f64 {
    let mean = latency.mean().as_secs_f64();
    if mean > 0.0 { (writes as f64 / mean).min(limit) } else { limit }
}

/// The Pub/Sub and the storage ceiling's steady rates through the proxy at no added latency
/// (`ceilings` sets the storage ceiling's writes), and the worker's own: `worker` (the defaults)
/// on a backlog through the proxy at no added latency. On a machine where the emulators, the
/// proxy and the worker share the cores, the worker, writing while it receives, cannot reach
/// the lower of the first two, each measured alone: its own rate there is its ceiling, over a
/// cell's time at the lower of the other two, judged late as the cells are.
async fn limit(
    ceilings: &Bench<'_>,
    worker: &Bench<'_>,
    proxy: &HttpProxy,
    cell_seconds: f64,
    emulator: &mut Emulator,
) -> anyhow::Result<[f64; 3]> {
    proxy.set_latency(Latency::ZERO);
    let bench = Bench { latency: Latency::ZERO, ..ceilings.clone() };
    // Enough to be past the ramp, within ~128 MB of messages in the emulator.
    let n = ((128 << 20) / bench.size).clamp(2000, 5000);
    emulator.room(&bench, n).await?; // The Pub/Sub ceiling's backlog; the storage's publishes none.
    let pubsub = bench.pubsub_ceiling(n).await.context("Pub/Sub ceiling")?.steady;
    let storage = bench.storage_ceiling(n).await.context("storage ceiling")?.steady;
    let worker = Bench { latency: Latency::ZERO, ..worker.clone() };
    let n = ((pubsub.min(storage) * cell_seconds) as usize).clamp(2000, MOST);
    emulator.room(&worker, n).await?;
    let own = worker.backlog_run(n).await.context("the worker's ceiling")?.rates.late;
    Ok([pubsub, storage, own])
}

/// Bytes of messages the Pub/Sub emulator may take in before the sweep restarts it, each
/// message counted with [`EMULATOR_OVERHEAD`]: its memory grows with what it was sent though
/// every run's subscription is deleted after it (as far as its failures show), and it failed (an `OutOfMemoryError`, or a publisher whose
/// connection dropped) after 13-15 GB of 64 KiB messages, and after some 8 million of 256 B (16
/// runs of a sweep).
const EMULATOR_BYTES: u64 = 4 << 30;
/// What the emulator is taken to keep of a message besides its data (a guess from the two
/// failures above, on the safe side).
const EMULATOR_OVERHEAD: usize = 400;

/// What the Pub/Sub emulator has taken in since it started, and its restart before a run that
/// would take it past [`EMULATOR_BYTES`].
struct Emulator {
    taken: u64,
    restarts: usize,
}

impl Emulator {
    /// Restarts the emulator if `n` messages would take it past [`EMULATOR_BYTES`], and warms
    /// the new one's JIT as the benchmark's start does; then counts them.
    async fn room(&mut self, bench: &Bench<'_>, n: usize) -> anyhow::Result<()> {
        let bytes = (n * (bench.size + EMULATOR_OVERHEAD)) as u64;
        if self.taken > 0 && self.taken + bytes > EMULATOR_BYTES {
            eprintln!("sweep: restarting the Pub/Sub emulator after {} MB", self.taken >> 20);
            bench.emu.restart_pubsub().await.context("restarting the Pub/Sub emulator")?;
            bench.pubsub_ceiling(2000).await.context("warming the restarted emulator")?;
            (self.taken, self.restarts) = (0, self.restarts + 1);
        }
        self.taken += bytes;
        Ok(())
    }
}

/// A cell of the grid and its runs, one a round.
struct Cell {
    latency: Latency,
    writes: Option<usize>,
    n: usize,
    runs: Vec<super::WorkerRun>,
}

impl Cell {
    /// The run of the median late rate (the higher of two), whose other figures the table shows.
    fn median_run(&mut self) -> &super::WorkerRun {
        self.runs.sort_by(|a, b| a.rates.late.total_cmp(&b.rates.late));
        &self.runs[self.runs.len() / 2]
    }

    fn late(&self) -> f64 {
        median(self.runs.iter().map(|r| r.rates.late))
    }
}

/// The median (of an even count, the higher middle value).
fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.collect();
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The least of the ceilings.
fn least(ceilings: [f64; 3]) -> f64 {
    ceilings.into_iter().fold(f64::INFINITY, f64::min)
}
