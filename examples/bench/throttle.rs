//! `--throttle N`: the worker against a bucket that answers 429 to uploads beyond N a second, as
//! a new Cloud Storage bucket does above about 1,000 writes a second. Each run gives the worker a
//! fresh backlog on a subscription that dead-letters after 5 deliveries, through the proxy, which
//! throttles only while the worker runs; it prints the steady rate over N (10% to 90% object), the
//! 429s the proxy answered, the worker's nacks and redeliveries, the messages dead-lettered, and
//! the write limit the worker reported while it wrote. With several `--worker` builds, their runs
//! alternate, so that a change of load on the machine meets each alike.

use super::{Bench, Figures, HttpProxy, Worker, round, summary_table};
use anyhow::ensure;
use serde_json::json;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use testkit::DeliveryPolicy;

/// Deliveries before the emulator moves a message to the dead-letter topic.
const MAX_DELIVERY_ATTEMPTS: i32 = 5;

pub async fn run(
    base: &Bench<'_>,
    proxy: &HttpProxy,
    bins: &[PathBuf],
    per_second: u64,
    n: usize,
    runs: u64,
) -> anyhow::Result<()> {
    let mut figures: Vec<Vec<Figures>> = vec![Vec::new(); bins.len()];
    for i in 1..=runs {
        for (b, bin) in bins.iter().enumerate() {
            let bench = Bench { bin, ..base.clone() };
            let run = one(&bench, proxy, per_second, n).await?;
            eprintln!(
                "throttle: run {i}/{runs}, {}: {:.0} msg/s steady = {:.2} of {per_second}/s, \
                 {} x 429, {} nacked, {} dead-lettered, write limit median {}",
                bin.display(),
                run[0].1,
                run[1].1,
                run[3].1,
                run[5].1,
                run[7].1,
                run[8].1
            );
            figures[b].push(run);
        }
    }
    println!(
        "\n{n} messages x {} B, 429 above {per_second} uploads/s, {runs} run(s) each",
        base.size
    );
    let mut summary = Vec::new();
    for (bin, runs) in bins.iter().zip(&figures) {
        println!("{}", bin.display());
        let medians = summary_table(runs);
        let each: Vec<f64> = runs.iter().map(|r| round(r[1].1)).collect();
        summary.push(json!({ "worker": bin.display().to_string(), "share_steady": each,
            "median": medians }));
    }
    let summary = json!({ "messages": n, "size": base.size, "throttle": per_second,
        "runs": runs, "workers": summary });
    println!("THROTTLE {summary}");
    Ok(())
}

/// One worker on a fresh backlog of `n` messages behind a bucket that takes `per_second`.
async fn one(
    bench: &Bench<'_>,
    proxy: &HttpProxy,
    per_second: u64,
    n: usize,
) -> anyhow::Result<Figures> {
    let ps = bench.emu.pubsub();
    let dead = testkit::unique_name("dead-letter");
    ps.create_topic(&dead).await?;
    ps.create_subscription(&dead, &dead, 60, None).await?;
    let policy = DeliveryPolicy {
        dead_letter_topic: dead.clone(),
        max_delivery_attempts: MAX_DELIVERY_ATTEMPTS,
        backoff: None,
    };
    let fresh = bench.fresh_with(0, n, Some(&policy), 60).await?;
    let throttled = proxy.throttled();
    proxy.throttle(per_second);
    let start = Instant::now();
    let mut worker = Worker::spawn(bench, &fresh.name, "throttled")?;
    let written = worker.wait_for(n, start + bench.budget(n)).await;
    proxy.throttle(0);
    written?;
    let (rates, throttled) = (worker.rates(start, n), proxy.throttled() - throttled);
    let limits = {
        let mut l = worker.limits.clone();
        l.sort_by(f64::total_cmp);
        (l.get(l.len() / 2).copied().unwrap_or(f64::NAN), l.last().copied().unwrap_or(f64::NAN))
    };
    worker.process.terminate(Duration::from_secs(30)).await?;
    let log = worker.process.log_path().display().to_string();
    let counter = |key| worker.stopped(key).map_or(f64::NAN, |v| v as f64);
    let (written, received, nacked) = (counter("written"), counter("received"), counter("nacked"));
    ensure!(written == n as f64, "{written} of {n} objects written: {log}");
    let dead_lettered = ps.pull_all(&dead).await?.len();
    ps.delete_subscription(&dead).await?;
    let per_second = per_second as f64;
    Ok(vec![
        ("steady_msgs_per_s", rates.steady),
        ("steady_share_of_throttle", rates.steady / per_second),
        ("overall_share_of_throttle", rates.overall / per_second),
        ("http_429", throttled as f64),
        ("http_429_per_object", throttled as f64 / n as f64),
        ("nacked", nacked),
        ("redelivered", received - n as f64),
        ("dead_lettered", dead_lettered as f64),
        ("write_limit_median", limits.0),
        ("write_limit_max", limits.1),
    ])
}
