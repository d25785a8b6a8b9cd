//! Storage fails or is slow: connections refused, reset or hanging for a while, writes slower
//! than the ack deadline, a bucket that throttles.

use super::{OUTAGE, dead_letter_subscription, error_lines};
use crate::support::app::{BinaryWorker, Fixture, Result, SETTLE, sample_messages, with_vars};
use crate::support::{HttpProxy, Latency, Mode, Proxy, wait_for};
use std::collections::BTreeSet;
use std::time::Duration;
use tokio::time::{Instant, sleep};

/// Connections to storage are refused (closed at once) for 10 s mid-stream. The client retries
/// them itself until `WRITE_TIMEOUT_SECS` (4 s here, below the outage, so the worker sees some
/// fail); then the message is nacked with reason `transient` and a backoff.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_refusing_connections_for_a_while_is_retried_without_spinning() -> Result {
    storage_outage(Mode::Refuse, "transient", &[("WRITE_TIMEOUT_SECS", "4")]).await
}

/// Connections to storage are reset (RST) for 10 s mid-stream; as above.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_resetting_connections_for_a_while_is_retried_without_spinning() -> Result {
    storage_outage(Mode::Reset, "transient", &[("WRITE_TIMEOUT_SECS", "4")]).await
}

/// Storage stops answering for 10 s mid-stream, longer than `WRITE_TIMEOUT_SECS` (5 s here): the
/// hung writes are abandoned, nacked with reason `timeout` and a backoff, and written after the
/// recovery, never held for their whole lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_hanging_for_a_while_times_out_and_is_retried_without_spinning() -> Result {
    storage_outage(Mode::Hang, "timeout", &[("WRITE_TIMEOUT_SECS", "5")]).await
}

/// Writes slower than the stream ack deadline (12 s > 10 s) for a while, with more messages
/// waiting than there are write permits: lease extension covers both the running writes and the
/// waiting messages, so nothing is delivered twice. (The backlog stays within
/// `MAX_OUTSTANDING_MESSAGES`, as the service would keep it: the emulator ignores flow control.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_slower_than_the_ack_deadline_causes_no_redelivery() -> Result {
    const N: usize = 300;
    let fx = Fixture::new(true).await?;
    let proxy = HttpProxy::start(fx.emulators.storage_addr()).await?;
    proxy.set_latency(Latency::fixed(Duration::from_secs(12)));
    let env = with_vars(fx.binary_env(&proxy.url()), &[("MAX_OUTSTANDING_MESSAGES", "1000")]);
    let mut worker = BinaryWorker::spawn(&env, "slow-storage")?;
    let published = fx.publish(&sample_messages(0..N)).await?;
    // The first writes take 12 s; every message waits at least that long for its ack.
    wait_for(Duration::from_secs(60), "the first slow writes", async || {
        Ok(worker.counters().written > 0)
    })
    .await?;
    proxy.set_latency(Latency::ZERO);
    let end = fx.settle(&mut worker, &published).await?;
    let counts = (end.received, end.duplicates, end.nacked);
    assert_eq!(counts, (N as u64, 0, 0), "none may come back while its write is slow: {end:?}");
    Ok(())
}

/// A bucket that throttles: uploads beyond 100 a second get 429, against the worker's default of
/// up to 1,024 writes at once. The storage client retries them with backoff, the write limit
/// shrinks, and every message ends with its one object: none dead-lettered (policy of 5
/// attempts), and no busy loop (CPU time and 429s counted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttling_bucket_gets_every_object_and_dead_letters_nothing() -> Result {
    const N: usize = 1500;
    let fx = Fixture::new(true).await?;
    let dead_letters = dead_letter_subscription(&fx, 5).await?;
    let proxy = HttpProxy::start(fx.emulators.storage_addr()).await?;
    proxy.throttle(100);
    let env = with_vars(fx.binary_env(&proxy.url()), &[("MAX_OUTSTANDING_MESSAGES", "5000")]);
    let published = fx.publish(&sample_messages(0..N)).await?;
    let mut worker = BinaryWorker::spawn(&env, "throttled")?;
    let started = Instant::now();
    fx.gcs.wait_for_objects(&fx.bucket, N, SETTLE).await?;
    let (took, cpu) = (started.elapsed(), worker.usage()?.cpu);
    let end = fx.settle(&mut worker, &published).await?;
    let throttled = proxy.throttled();
    assert!(throttled > 0, "the bucket throttled nothing");
    assert!(throttled < 10 * N as u64, "{throttled} uploads throttled for {N} messages");
    assert!(cpu < took / 2, "the worker used {cpu:?} of CPU in {took:?}");
    let dead = fx.pubsub.pull(&dead_letters, 100).await?;
    assert!(dead.is_empty(), "{} messages dead-lettered; {end:?}", dead.len());
    Ok(())
}

/// The storage proxy misbehaves (`mode`) for [`OUTAGE`] while writes are in flight and more
/// messages arrive. The worker keeps running, uses well under a core, opens connections at a
/// bounded rate, logs the failed writes with `reason`, and ends with exactly one object per
/// message.
async fn storage_outage(mode: Mode, reason: &str, extra: &[(&str, &str)]) -> Result {
    const N: usize = 1000;
    let fx = Fixture::new(true).await?;
    // A little latency keeps writes in flight when the outage starts.
    let slow = HttpProxy::start(fx.emulators.storage_addr()).await?;
    slow.set_latency(Latency::fixed(Duration::from_millis(100)));
    let proxy = Proxy::start(slow.addr()).await?;
    // Room for the whole backlog, which the emulator pushes regardless of flow control (its
    // unread rest would expire and come back during the outage), and at most 64 writes at once,
    // so that the bound on connections below means "a few per write".
    let room = [("MAX_OUTSTANDING_MESSAGES", "5000"), ("MAX_CONCURRENT_WRITES", "64")];
    let env = with_vars(with_vars(fx.binary_env(&proxy.url()), &room), extra);
    let mut worker = BinaryWorker::spawn(&env, "storage-outage")?;
    let mut published = fx.publish(&sample_messages(0..600)).await?;
    fx.gcs.wait_for_objects(&fx.bucket, 200, SETTLE).await?;

    let cpu_before = worker.usage()?.cpu;
    let connections_before = proxy.accepted_connections();
    let started = Instant::now();
    proxy.set_mode(mode);
    // More messages arrive during the outage.
    published.extend(fx.publish(&sample_messages(600..N)).await?);
    sleep(OUTAGE.saturating_sub(started.elapsed())).await;
    let cpu = worker.usage()?.cpu - cpu_before;
    let connections = proxy.accepted_connections() - connections_before;
    let outage = started.elapsed();
    worker.assert_running()?;
    proxy.set_mode(Mode::Pass);

    assert!(cpu < outage / 2, "{mode:?}: the worker used {cpu:?} of CPU in {outage:?} of outage");
    // A busy loop would open thousands; backoff keeps it to a few per write permit.
    assert!(connections < 64 * 10, "{mode:?}: {connections} connections in {outage:?}");
    let reasons: BTreeSet<String> =
        error_lines(&worker).iter().filter_map(|l| Some(l["reason"].as_str()?.into())).collect();
    assert!(reasons.contains(reason), "{mode:?}: failed writes gave {reasons:?}");
    fx.settle(&mut worker, &published).await?;
    Ok(())
}
