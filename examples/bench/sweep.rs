//! `--sweep`: the worker's rate against storage latency, message size and write limit, next to the
//! bound `min(writes / mean latency, limit)`, `writes` the cell's `MAX_CONCURRENT_WRITES` (the
//! defaults' cap for theirs). The limit is the most the worker did for a size in the command: its
//! own rate through the proxy at no added latency (the defaults, measured before and after the
//! size's cells), or the highest of the defaults' cells, whichever is higher. The Pub/Sub and
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
    let total = grid.sizes.len() * latencies.len() * writes.len();
    let (started, mut rows, mut limits) = (Instant::now(), Vec::new(), Vec::new());
    let head =
        "latency sigma     size  writes   msgs  overall   steady     late    bound  ratio  peak MB";
    println!("{head}  CPU µs  (all)  limit");
    for &size in &grid.sizes {
        let sized = Bench { size, ..base.clone() };
        let before = limit(&sized.with(&vars(high))?, &sized, proxy, grid.cell_seconds).await?;
        let mut cells = Vec::new();
        for &latency in &latencies {
            proxy.set_latency(latency);
            for &w in &writes {
                let bench =
                    Bench { latency, ..w.map_or(Ok(sized.clone()), |w| sized.with(&vars(w)))? };
                let expected = bound(w.unwrap_or(default_writes), latency, least(before));
                let n = (expected * grid.cell_seconds) as usize;
                let n = messages.unwrap_or(n.clamp(1000, MOST));
                let run = bench
                    .backlog_run(n)
                    .await
                    .with_context(|| format!("{size} B, {latency:?}, writes {w:?}"))?;
                let done = rows.len() + cells.len() + 1;
                let left = started.elapsed().as_secs() as usize * (total - done) / done / 60;
                // The cell's figures now, for a sweep that fails before its table.
                let (rates, peak_mb) = (&run.rates, run.usage.peak_rss_kib as f64 / 1024.0);
                let (ms, sigma) = (latency.median().as_millis(), latency.sigma());
                let writes = w.map_or("default".to_string(), |w| w.to_string());
                eprintln!(
                    "sweep: cell {done}/{total} ({size} B, {ms} ms, sigma {sigma}, writes {writes}): \
                     late {:.0}, \
                     steady {:.0}, overall {:.0} msg/s, peak {peak_mb:.1} MB, {:.0} µs/msg, \
                     write limit {:.0}; about {left} min left",
                    rates.late,
                    rates.steady,
                    rates.overall,
                    run.steady_cpu_per_msg * 1e6,
                    run.late_limit
                );
                cells.push((latency, w, n, run));
            }
        }
        let after = limit(&sized.with(&vars(high))?, &sized, proxy, grid.cell_seconds).await?;
        // The most the worker did for this size in this command: its own ceiling, or a defaults
        // cell's late rate if higher. At no added latency storage answers in a fraction of a
        // millisecond, where the write limit takes the CPU's jitter for a queue and holds fewer
        // writes than at 10 ms, so the zero-latency run is not always the highest.
        let defaults = cells.iter().filter(|cell| cell.1.is_none()).map(|cell| cell.3.rates.late);
        let limit = defaults.chain([before[2], after[2]]).fold(0.0, f64::max);
        for (latency, w, n, run) in cells {
            let bound = bound(w.unwrap_or(default_writes), latency, limit);
            let (rates, ms, sigma) = (&run.rates, latency.median().as_millis(), latency.sigma());
            let (ratio, peak_mb) = (rates.late / bound, run.usage.peak_rss_kib as f64 / 1024.0);
            let cpu = [run.steady_cpu_per_msg * 1e6, run.usage.cpu.as_secs_f64() / n as f64 * 1e6];
            let writes = w.map_or("default".to_string(), |w| w.to_string());
            let (overall, steady, late) = (rates.overall, rates.steady, rates.late);
            println!(
                "{ms:>4} ms {sigma:>5} {size:>8} {writes:>7} {n:>6} {overall:>8.0} {steady:>8.0} {late:>8.0} \
                 {bound:>8.0} {ratio:>6.2} {peak_mb:>8.1} {:>7.0} {:>6.0} {:>6.0}",
                cpu[0], cpu[1], run.late_limit
            );
            rows.push(json!({
                "latency_ms": ms as u64, "sigma": sigma, "size": size, "writes": w,
                "default_writes": w.is_none().then_some(default_writes), "messages": n,
                "overall": round(overall), "steady": round(steady), "late": round(late),
                "bound": round(bound),
                "ratio": round(ratio), "peak_rss_mb": round(peak_mb),
                "cpu_us_per_msg": round(cpu[0]), "cpu_us_per_msg_all": round(cpu[1]),
                "write_limit_late": round(run.late_limit),
            }));
        }
        let ceilings =
            format!("Pub/Sub, storage and worker ceilings {before:.0?}, after {after:.0?}");
        println!("{size} B: limit {limit:.0} msg/s ({ceilings})");
        let (before, after, limit) = (before.map(round), after.map(round), round(limit));
        limits.push(json!({ "size": size, "before": before, "after": after, "limit": limit }));
    }
    let minutes = round(started.elapsed().as_secs_f64() / 60.0);
    let summary =
        json!({ "minutes": minutes, "limit_writes": high, "limits": limits, "cells": rows });
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
) -> anyhow::Result<[f64; 3]> {
    proxy.set_latency(Latency::ZERO);
    let bench = Bench { latency: Latency::ZERO, ..ceilings.clone() };
    // Enough to be past the ramp, within ~128 MB of messages in the emulator.
    let n = ((128 << 20) / bench.size).clamp(2000, 5000);
    let pubsub = bench.pubsub_ceiling(n).await.context("Pub/Sub ceiling")?.steady;
    let storage = bench.storage_ceiling(n).await.context("storage ceiling")?.steady;
    let worker = Bench { latency: Latency::ZERO, ..worker.clone() };
    let n = ((pubsub.min(storage) * cell_seconds) as usize).clamp(2000, MOST);
    let own = worker.backlog_run(n).await.context("the worker's ceiling")?.rates.late;
    Ok([pubsub, storage, own])
}

/// The least of the ceilings.
fn least(ceilings: [f64; 3]) -> f64 {
    ceilings.into_iter().fold(f64::INFINITY, f64::min)
}
