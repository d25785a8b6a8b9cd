//! Bounded memory over time: a huge backlog, large messages and a soak. Each is slow (minutes)
//! and `#[ignore]`d: `cargo test -- --ignored` runs them, one at a time.

use crate::support::app::{BinaryWorker, Fixture, Result, SETTLE, figures};
use crate::support::app::{one_slow_test_at_a_time, sample_messages, with_vars};
use crate::support::{OutMessage, wait_for};
use std::collections::BTreeMap;
use std::time::Duration;
use testkit::process::Usage;
use tokio::time::{Instant, sleep};

/// A backlog of 100,000 messages: the worker holds at most `MAX_OUTSTANDING_MESSAGES` of them,
/// so its peak RSS stays far below the backlog.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "slow: 100,000 messages, about 15 minutes"]
async fn huge_backlog_of_small_messages_keeps_memory_bounded() -> Result {
    let _turn = one_slow_test_at_a_time().await;
    const N: usize = 100_000;
    /// Well below the backlog's 97 MiB of data alone: the worker cannot be holding it.
    const BOUND_KIB: u64 = 80 * 1024;
    let fx = Fixture::new(true).await?;
    let vars = [
        ("MAX_OUTSTANDING_MESSAGES", "1000"),
        ("MAX_CONCURRENT_WRITES", "64"),
        // The emulator pushes the whole backlog regardless of flow control, and an unread
        // message would come back every lease: 600 s (Pub/Sub's maximum) outlasts the drain,
        // and `wait_quiet` then waits that long to see that no ack was lost.
        ("MAX_LEASE_EXTENSION_SECS", "600"),
    ];
    let messages: Vec<OutMessage> = (0..N)
        .map(|i| OutMessage::new(format!("{i:06} {}", "x".repeat(1017))).attr("i", i.to_string()))
        .collect();
    let t = Instant::now();
    let published = fx.publish(&messages).await?;
    let publish_time = t.elapsed();
    // Every object's size and attributes, every 50th body (fake-gcs-server downloads are slow).
    let drained = drain_backlog(&fx, &published, &vars, 50, BOUND_KIB, "backlog").await?;
    let done = format!("{N} x 1 KiB published in {publish_time:?}, one object each; {drained}");
    figures("backlog-100k", &done);
    Ok(())
}

/// 200 messages of 5-10 MB (about 1.5 GB): the worker holds at most `MAX_OUTSTANDING_BYTES`
/// of message data (enforced by the service, and by the worker itself because the emulator
/// does not), so its peak RSS stays within a small multiple of that budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "slow: 1.5 GB of 5-10 MB messages, about 8 minutes"]
async fn large_messages_keep_memory_within_the_byte_budget() -> Result {
    let _turn = one_slow_test_at_a_time().await;
    const N: usize = 200;
    const BUDGET: u64 = 64 << 20;
    let fx = Fixture::new(true).await?;
    let budget = BUDGET.to_string();
    // See huge_backlog_of_small_messages_keeps_memory_bounded.
    let vars = [
        ("MAX_OUTSTANDING_BYTES", budget.as_str()),
        ("MAX_CONCURRENT_WRITES", "8"),
        ("MAX_LEASE_EXTENSION_SECS", "300"),
    ];
    // The whole backlog first, as after an outage; then the worker.
    let mut published = BTreeMap::new();
    let t = Instant::now();
    for chunk in 0..N / 20 {
        let messages: Vec<OutMessage> = (chunk * 20..chunk * 20 + 20)
            .map(|i| {
                let size = 5_000_000 + i * 25_000; // 5 MB .. 10 MB
                OutMessage::new((0..size).map(|b| ((b + i) % 253) as u8).collect::<Vec<u8>>())
            })
            .collect();
        published.extend(fx.publish(&messages).await?);
    }
    let publish_time = t.elapsed();
    // The process itself (an idle debug build is about 40 MiB), the budget's message data, one
    // upload body per running write (at most the budget again), and the client's receive
    // buffers (the emulator pushes the backlog regardless of flow control).
    let bound = 48 * 1024 + 3 * BUDGET / 1024;
    let drained = drain_backlog(&fx, &published, &vars, 1, bound, "large").await?;
    let done = format!("{N} of 5-10 MB published in {publish_time:?}, one object each; {drained}");
    figures("large-messages", &done);
    Ok(())
}

/// A few minutes at a steady publish rate: RSS flat, no growth in open files or threads, the
/// worker keeps up. Stops by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "slow: a 3-minute soak"]
async fn soak_at_a_steady_rate_keeps_memory_files_and_threads_flat() -> Result {
    let _turn = one_slow_test_at_a_time().await;
    const DURATION: Duration = Duration::from_secs(180);
    const PER_SECOND: usize = 50;
    let fx = Fixture::new(true).await?;
    let env = with_vars(
        fx.binary_env(&fx.emulators.storage_url()),
        &[
            ("RUST_LOG", "info"),
            ("MAX_OUTSTANDING_MESSAGES", "1000"),
            // As in huge_backlog_of_small_messages_keeps_memory_bounded, should it fall behind.
            ("MAX_LEASE_EXTENSION_SECS", "60"),
        ],
    );
    let mut worker = BinaryWorker::spawn(&env, "soak")?;
    let mut published = BTreeMap::new();
    let mut samples: Vec<(Duration, Usage, u64)> = Vec::new();
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut second = 0usize;
    while started.elapsed() < DURATION {
        tick.tick().await;
        let batch = sample_messages(second * PER_SECOND..(second + 1) * PER_SECOND);
        published.extend(fx.publish(&batch).await?);
        if second.is_multiple_of(10) {
            samples.push((started.elapsed(), worker.usage()?, worker.counters().written));
        }
        second += 1;
    }
    fx.gcs.wait_for_objects(&fx.bucket, published.len(), SETTLE).await?;
    let caught_up = started.elapsed() - DURATION;
    let end = worker.wait_quiet(SETTLE).await?;
    fx.assert_exactly_once(&published, 1).await?;

    // Compare the last third with the first third (after a warm-up minute).
    let third = samples.len() / 3;
    let max = |s: &[(Duration, Usage, u64)], f: fn(&Usage) -> u64| {
        s.iter().map(|(_, p, _)| f(p)).max().unwrap_or(0)
    };
    let (early, late) = (&samples[third..2 * third], &samples[2 * third..]);
    let rss = (max(early, |p| p.rss_kib), max(late, |p| p.rss_kib));
    let fds = (max(early, |p| p.open_fds), max(late, |p| p.open_fds));
    let threads = (max(early, |p| p.threads), max(late, |p| p.threads));
    assert!(rss.1 <= rss.0 + rss.0 / 5, "RSS grew: {rss:?} KiB");
    // Pooled storage connections come and go with load (up to one per write permit); a leak
    // of one descriptor per message would show thousands here.
    assert!(fds.1 <= fds.0 + 16, "open files grew: {fds:?}");
    assert!(threads.1 <= threads.0 + 2, "threads grew: {threads:?}");
    let rates: Vec<u64> = samples
        .windows(2)
        .map(|w| (w[1].2 - w[0].2) / (w[1].0 - w[0].0).as_secs().max(1))
        .collect();
    let (n, peak) = (published.len(), worker.usage()?.peak_rss_kib);
    figures(
        "soak",
        &format!(
            "{n} messages at {PER_SECOND}/s, one object each, caught up {caught_up:?} after the \
             last publish; early/late max RSS {rss:?} KiB, fds {fds:?}, threads {threads:?}; \
             written/s per 10 s {rates:?}; peak RSS {peak} KiB; {end:?}"
        ),
    );
    Ok(())
}

/// Starts the worker with `vars` (logs at `info`) on the backlog `published`, samples its
/// `/proc` figures every 5 s until it has written an object per message, waits until it is
/// quiet, checks the objects (every `every`-th body) and a peak RSS below `bound` KiB. Its
/// figures: drain time, peak RSS, RSS every 30 s (seconds, KiB) and the end counters.
async fn drain_backlog(
    fx: &Fixture<'_>,
    published: &BTreeMap<String, OutMessage>,
    vars: &[(&str, &str)],
    every: usize,
    bound: u64,
    name: &str,
) -> Result<String> {
    let env = with_vars(fx.binary_env(&fx.emulators.storage_url()), &[("RUST_LOG", "info")]);
    let mut worker = BinaryWorker::spawn(&with_vars(env, vars), name)?;
    let (n, started, mut samples) = (published.len() as u64, Instant::now(), Vec::new());
    wait_for(Duration::from_secs(1800), &format!("{n} objects written"), async || {
        let written = worker.counters().written;
        samples.push((started.elapsed(), worker.usage()?.rss_kib));
        if written < n {
            sleep(Duration::from_secs(5)).await;
        }
        Ok(written >= n)
    })
    .await?;
    let drained = started.elapsed();
    let end = worker.wait_quiet(SETTLE).await?;
    let peak = worker.usage()?.peak_rss_kib;
    fx.assert_exactly_once(published, every).await?;
    assert!(peak < bound, "peak RSS {peak} KiB over {bound} KiB; samples {samples:?}");
    let rss: Vec<_> = samples.iter().step_by(6).map(|(t, kib)| (t.as_secs(), kib)).collect();
    Ok(format!(
        "drained in {drained:?}, peak RSS {peak} KiB (bound {bound}); RSS (s, KiB) {rss:?}; {end:?}"
    ))
}
