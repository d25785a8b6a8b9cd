//! `--publish R`: streams on demand, measured. A publisher sends R messages a second while the
//! worker runs, for `--seconds`; not a backlog first, since the emulator leases a stream what
//! its connection takes, and behind a cap a connection's buffers hold tens of seconds of it: a
//! backlog would queue on the first stream while it alone is open. Each run is two phases on
//! fresh subscriptions: first `PULL_STREAMS=1`, whose rate is one stream's (the baseline, in the
//! same command, so that a slow day meets both alike), then the worker's own maximum, sampled
//! each second. Every 5 s window in which the
//! number of open streams held is a row: its rate over (streams x one stream's rate), and over
//! (streams x the cap in messages) with `--pubsub-cap`.
//!
//! The emulator splits what arrives between the streams that are ready for more, each pulling
//! again at once while it gets messages and 50 ms after it got none. A publisher well above what
//! the streams carry keeps each one fed; the excess waits, in the backlog or queued on the
//! streams, and is not counted. The emulator holds what is queued in memory and fails
//! (`OutOfMemoryError`) past a few GB: the publisher pauses while more than [`AHEAD`] bytes are
//! published and not yet written.
//!
//! [`AHEAD`]: super::feed::AHEAD

use super::{Bench, Worker, feed::Pace, round};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Seconds per window, as the worker's own (`pipeline::receivers`).
const WINDOW: usize = 5;
/// The subscription's ack deadline and the worker's lease: messages queued on a capped stream
/// wait there; a shorter lease would expire in the queue and bring them back again and again.
const LEASE: i32 = 600;

pub async fn run(base: &Bench<'_>, per_second: f64, seconds: u64) -> anyhow::Result<()> {
    let lease = LEASE.to_string();
    let leased = base.with(&[("MAX_LEASE_EXTENSION_SECS", lease.clone())])?;
    let one = leased.with(&[("PULL_STREAMS", "1".into()), ("MAX_LEASE_EXTENSION_SECS", lease)])?;
    let baseline_secs = (seconds / 3).max(30);
    eprintln!("streams: one stream, {per_second} msg/s published for {baseline_secs} s");
    let single = phase(&one, per_second, baseline_secs).await?;
    // One stream's rate: its windows after the first (the stream connects and fills).
    let one_rate = mean(single.windows.iter().skip(1).map(|w| w.rate));
    let max = leased.config.pull_streams;
    eprintln!("streams: one stream carries {one_rate:.1} msg/s; now up to {max} streams");
    let many = phase(&leased, per_second, seconds).await?;

    // The cap in messages: bytes per second over the message's size and its gRPC framing
    // (~100 B: ack id, message id, publish time).
    let cap_msgs = base.cap.map(|cap| cap / (base.size as f64 + 100.0));
    println!(
        "\n{per_second} msg/s x {} B published for {seconds} s; up to {max} streams; one stream: \
         {one_rate:.1} msg/s{}",
        base.size,
        cap_msgs.map_or(String::new(), |c| format!(" (the cap: {c:.1} msg/s)"))
    );
    println!(
        "{:>6} {:>8} {:>9} {:>13} {:>11}",
        "at s", "streams", "msg/s", "/ (k x one)", "/ (k x cap)"
    );
    for w in &many.windows {
        let k = w.streams as f64;
        let of_cap = cap_msgs.map_or(String::from("-"), |c| format!("{:.2}", w.rate / (k * c)));
        let held = if w.held { "" } else { "  (streams changed)" };
        println!(
            "{:>6} {:>8} {:>9.1} {:>13.2} {:>11}{held}",
            w.at,
            w.streams,
            w.rate,
            w.rate / (k * one_rate),
            of_cap
        );
    }
    // Per number of streams: the windows it held for, but the first (the new stream connects).
    let mut by_streams: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    let mut previous = None;
    for w in &many.windows {
        if w.held && previous == Some(w.streams) {
            by_streams.entry(w.streams).or_default().push(w.rate);
        }
        previous = w.held.then_some(w.streams);
    }
    println!(
        "\n{:>8} {:>8} {:>9} {:>13} {:>11}",
        "streams", "windows", "msg/s", "/ (k x one)", "/ (k x cap)"
    );
    let mut rows = Vec::new();
    for (&k, rates) in &by_streams {
        let rate = mean(rates.iter().copied());
        let (of_one, of_cap) =
            (rate / (k as f64 * one_rate), cap_msgs.map(|c| rate / (k as f64 * c)));
        let cap_col = of_cap.map_or(String::from("-"), |r| format!("{r:.2}"));
        println!("{k:>8} {:>8} {rate:>9.1} {of_one:>13.2} {cap_col:>11}", rates.len());
        rows.push(json!({ "streams": k, "windows": rates.len(), "msgs_per_s": round(rate),
            "of_k_one": round(of_one), "of_k_cap": of_cap.map(round) }));
    }
    println!("stream events (event, streams, msg/s before): {:?}", many.events);
    let summary = json!({ "size": base.size, "publish_per_s": per_second, "seconds": seconds,
        "max_streams": max, "cap_bytes_per_s": base.cap, "one_stream_msgs_per_s": round(one_rate),
        "by_streams": rows, "opened": many.opened, "peak_rss_mb": round(many.peak_rss_mb) });
    println!("STREAMS {summary}");
    Ok(())
}

/// A window of the worker's run: when it ended (seconds since the start), the streams open at
/// its end, whether that number held throughout, and the objects written a second.
struct Window {
    at: usize,
    streams: usize,
    held: bool,
    rate: f64,
}

struct Phase {
    windows: Vec<Window>,
    events: Vec<(String, u64, u64)>,
    opened: u64,
    peak_rss_mb: f64,
}

/// The worker on a fresh subscription while `per_second` messages a second are published, for
/// `seconds`; sampled each second through its `/metrics`.
async fn phase(bench: &Bench<'_>, per_second: f64, seconds: u64) -> anyhow::Result<Phase> {
    let fresh = bench.fresh_with(0, 0, None, LEASE).await?;
    let mut worker = Worker::spawn(bench, &fresh.name, "streams")?;
    let (written, duration) = (worker.count.clone(), Duration::from_secs(seconds));
    let pace = Pace { per_second: Some(per_second), seconds: Some(duration) };
    let publishing = bench.feed(&fresh.name, 0..usize::MAX, pace, &written);
    let start = Instant::now();
    let mut samples: Vec<(u64, usize)> = Vec::new();
    let sampling = async {
        let mut ticks = tokio::time::interval(Duration::from_secs(1));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        while start.elapsed() < Duration::from_secs(seconds) {
            ticks.tick().await;
            let objects = worker.written().await?;
            let streams = worker.last.get("pubsub_gcs_worker_pull_streams").copied();
            samples.push((objects, streams.unwrap_or(0.0) as usize));
            if let Some(status) = worker.process.exited()? {
                let log = worker.process.log_path().display();
                anyhow::bail!("the worker exited ({status}): {log}");
            }
        }
        Ok(())
    };
    tokio::try_join!(publishing, sampling)?;
    let usage = worker.process.usage()?;
    let events = stream_events(&worker.process.json_lines());
    worker.process.terminate(Duration::from_secs(60)).await?;
    let opened = events.iter().filter(|(e, ..)| e == "stream_opened").count() as u64;
    // Windows from the first sample on (the worker listens then), WINDOW samples each.
    let windows = samples
        .windows(WINDOW + 1)
        .step_by(WINDOW)
        .enumerate()
        .map(|(i, s)| Window {
            at: (i + 1) * WINDOW,
            streams: s[WINDOW].1,
            held: s.iter().all(|&(_, k)| k == s[0].1),
            rate: (s[WINDOW].0 - s[0].0) as f64 / WINDOW as f64,
        })
        .collect();
    let peak_rss_mb = usage.peak_rss_kib as f64 / 1024.0;
    Ok(Phase { windows, events, opened, peak_rss_mb })
}

/// The stream events of a worker's log: (event, streams open after it, rate before it).
fn stream_events(lines: &[serde_json::Value]) -> Vec<(String, u64, u64)> {
    let events = ["stream_opened", "stream_kept", "stream_closed"];
    let row = |l: &serde_json::Value| {
        let event = l["event"].as_str().filter(|e| events.contains(e))?;
        let n = |k: &str| l[k].as_u64().unwrap_or(0);
        Some((event.to_string(), n("streams"), n("rate")))
    };
    lines.iter().filter_map(row).collect()
}

fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    if n == 0 { f64::NAN } else { sum / n as f64 }
}
