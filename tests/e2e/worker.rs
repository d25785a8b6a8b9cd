//! The worker's core guarantees: every message becomes exactly one byte-exact object, failed
//! writes are nacked and retried, SIGTERM drains, and bad configuration stops it with a clear
//! error.

use crate::operations::HEALTH;
use crate::support::app::{BinaryWorker, Fixture, LEASE_SECS, Result, SETTLE, find_event};
use crate::support::app::{name_stamp, sample_messages, settled_message_ids, with_vars};
use crate::support::{HttpProxy, Latency, Mode, OutMessage, Proxy, metrics, wait_for};
use pubsub_gcs_worker::object::{BINARY, TEXT};
use std::collections::BTreeSet;
use std::time::Duration;
use testkit::SubscriptionSettings;
use tokio::time::{Instant, sleep};

/// Longer than the lease the tests give the worker: an un-acked message is back by then.
const REDELIVERY_WINDOW: Duration = Duration::from_secs(LEASE_SECS + 3);

/// N messages of mixed sizes and encodings, on up to four pull streams each with its own
/// connection, become N objects with byte-exact bodies, the right names, types and metadata, none left to
/// redeliver. The uploads share a pool of connections, about one per write permit, not per message.
/// Without object settings, an upload sends no encoding, class, cache control, custom time or key,
/// so the bucket's defaults apply. `/metrics` counts exactly what was published and written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_becomes_exactly_one_byte_exact_object() -> Result {
    const N: usize = 600;
    const WRITES: u64 = 16;
    let fx = Fixture::new(true).await?;
    let proxy = HttpProxy::recording(fx.emulators.storage_addr()).await?;
    let pubsub = Proxy::start(fx.emulators.pubsub_addr()).await?;
    let extra = [("OBJECT_PREFIX", "test/"), ("MAX_CONCURRENT_WRITES", &WRITES.to_string())];
    let streams = [("PULL_STREAMS", "4"), ("PUBSUB_EMULATOR_HOST", &pubsub.addr().to_string())];
    let worker = fx.start_worker(&proxy.url(), &[&extra[..], &streams, &HEALTH].concat()).await?;

    let published = fx.publish(&sample_messages(0..N)).await?;
    assert_eq!(published.len(), N, "message ids are unique");
    let objects = fx.gcs.wait_for_objects(&fx.bucket, N, Duration::from_secs(120)).await?;
    fx.assert_exactly_once(&published, 1).await?;

    let uploads = proxy.recorded_uploads();
    let subscription = fx.pubsub.subscription_path(&fx.subscription);
    for object in &objects {
        let id = &object.metadata["message_id"];
        let text = std::str::from_utf8(&published[id].data).is_ok();
        let stamp = name_stamp(&object.metadata["publish_time"]);
        let ext = if text { "txt" } else { "bin" };
        assert_eq!(object.name, format!("test/message_{stamp}_{id}.{ext}"));
        assert_eq!(object.metadata["subscription"], subscription);
        let sent_with: Vec<_> = uploads.iter().filter(|u| u["name"] == object.name).collect();
        let [upload] = sent_with[..] else { anyhow::bail!("one upload expected: {sent_with:?}") };
        assert_eq!(upload["contentType"], if text { TEXT } else { BINARY }, "{upload}");
        for field in ["contentEncoding", "storageClass", "cacheControl", "customTime", "kmsKeyName"]
        {
            assert!(upload.get(field).is_none(), "{field} sent: {upload}");
        }
    }
    // One connection per write permit (16 in every run so far). The bound leaves room for the
    // HTTP client's pool hand-over: a finished connection goes back to the pool from a spawned
    // task, so a write that starts in between may open a new one. One per message would be 600.
    let connections = proxy.connections();
    let many = format!("{connections} storage connections for {N} uploads, {WRITES} at a time");
    assert!(connections <= 2 * WRITES, "{many}");

    // Nothing left to redeliver: an un-acked message would be back within the window.
    sleep(REDELIVERY_WINDOW).await;
    let url = format!("http://{}/metrics", worker.health.expect("health endpoint asked for"));
    let page = metrics(&reqwest::Client::new(), &url).await?;
    let opened = page.get("pubsub_gcs_worker_pull_streams_opened_total").copied();
    let connections = Some(pubsub.accepted_connections() as f64);
    assert_eq!(connections, opened, "a connection per stream (and its acks)");
    let binary = published.values().filter(|m| std::str::from_utf8(&m.data).is_err()).count();
    let (n, bytes) = (N as f64, published.values().map(|m| m.data.len()).sum::<usize>());
    for (name, want) in [
        ("pubsub_gcs_worker_messages_received_total", n),
        ("pubsub_gcs_worker_objects_written_total", n),
        ("pubsub_gcs_worker_messages_acked_total", n),
        ("pubsub_gcs_worker_duplicates_skipped_total", 0.0),
        ("pubsub_gcs_worker_binary_messages_total", binary as f64),
        ("pubsub_gcs_worker_bytes_written_total", bytes as f64),
        ("pubsub_gcs_worker_messages_in_flight", 0.0),
        ("pubsub_gcs_worker_write_duration_seconds_count", n),
    ] {
        assert_eq!(page.get(name), Some(&want), "{name}");
    }
    let positive = |name: &str| page.get(name).is_some_and(|v| *v > 0.0);
    assert!(positive("process_resident_memory_bytes"), "process metrics");
    assert!(positive("pubsub_gcs_worker_write_concurrency_limit"), "the write limit");
    let summary = worker.stop().await?;
    assert_eq!(summary.received, N as u64, "no redelivery: {summary:?}");
    assert_eq!(summary.written, N as u64, "{summary:?}");
    assert_eq!(summary.acked, N as u64, "{summary:?}");
    assert_eq!((summary.duplicates, summary.nacked, summary.in_flight), (0, 0, 0));
    assert_eq!(fx.gcs.list_objects(&fx.bucket).await?.len(), N);

    // The acks reached the service: a new worker on the subscription gets nothing back, even
    // after the leases the first one held would have run out.
    let second = fx.start_worker(&proxy.url(), &[]).await?;
    sleep(REDELIVERY_WINDOW * 2).await;
    let again = second.stop().await?;
    assert_eq!(again.received, 0, "acked messages came back: {again:?}");
    Ok(())
}

/// SIGTERM to the real binary (up to four pull streams) while writes are in flight, then to a restarted
/// worker busy with the backlog and the redeliveries: each exits 0 within the shutdown timeout,
/// every acked message has its object and never comes back (each stream's acks flushed), and a
/// last worker completes the set with exactly one object per message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_writes_and_a_restart_completes_the_set() -> Result {
    const N: usize = 2000;
    const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(8);
    let fx = Fixture::new(true).await?;
    // Slow storage keeps writes in flight at the moment of the signal.
    let proxy = HttpProxy::start(fx.emulators.storage_addr()).await?;
    proxy.set_latency(Latency::fixed(Duration::from_millis(150)));
    let messages: Vec<OutMessage> =
        (0..N).map(|i| OutMessage::new(format!("{i:06} {}", "x".repeat(250)))).collect();
    let ids: BTreeSet<String> =
        fx.pubsub.publish(&fx.topic, &messages).await?.into_iter().collect();

    let env = with_vars(fx.binary_env(&proxy.url()), &[("PULL_STREAMS", "4")]);
    let mut first = BinaryWorker::spawn(&env, "first")?;
    fx.gcs.wait_for_objects(&fx.bucket, 300, Duration::from_secs(120)).await?;
    first.terminate(SHUTDOWN_TIMEOUT).await?;

    let lines = first.json_lines();
    assert_eq!(find_event(&lines, "starting")["max_pull_streams"], 4);
    let drain = find_event(&lines, "draining");
    let in_flight = drain["in_flight"].as_u64().unwrap_or(0);
    assert!(in_flight > 0, "the signal should catch writes in flight: {drain}");
    // The writes in flight at the signal were allowed to finish, not abandoned.
    let signal_at =
        lines.iter().position(|l| l["signal"] == "SIGTERM").expect("the signal is logged");
    let finished_in_drain = settled_message_ids(&lines[signal_at..]).len();
    assert!(finished_in_drain > 0, "no write finished during the drain");
    let spent = lines.iter().any(|l| l["event"] == "budget_spent");
    assert!(!spent, "a 150 ms write cannot need the 8 s budget");
    let summary = find_event(&lines, "stopped");
    let acked_first = settled_message_ids(&lines);
    assert_eq!(summary["acked"].as_u64(), Some(acked_first.len() as u64));
    assert!(acked_first.len() < N, "the signal came before the end");
    let objects_after_first = fx.object_ids().await?;
    assert!(acked_first.is_subset(&objects_after_first), "every acked message has its object");

    proxy.set_latency(Latency::ZERO);
    let mut second = BinaryWorker::spawn(&env, "second")?;
    fx.gcs.wait_for_objects(&fx.bucket, N * 6 / 10, SETTLE).await?;
    second.terminate(SHUTDOWN_TIMEOUT).await?;
    second.assert_no_panic()?;
    let lines = second.json_lines();
    find_event(&lines, "draining");
    let acked_second = settled_message_ids(&lines);
    assert!(acked_second.is_subset(&fx.object_ids().await?), "an ack without its object");

    let mut last = BinaryWorker::spawn(&env, "last")?;
    fx.gcs.wait_for_objects(&fx.bucket, N, SETTLE).await?;
    // Let the last worker ack the last writes before stopping it.
    let acked_before: BTreeSet<String> = acked_first.union(&acked_second).cloned().collect();
    wait_for(Duration::from_secs(30), "the last worker to settle", async || {
        Ok(acked_before.union(&settled_message_ids(&last.json_lines())).count() >= N)
    })
    .await?;
    last.terminate(SHUTDOWN_TIMEOUT + Duration::from_secs(5)).await?;

    // An ack whose flush did not finish within the budget (a loaded machine) is lost, and the
    // message comes back to meet its object: acked twice, still one object (checked below).
    let acked = [acked_first, acked_second, settled_message_ids(&last.json_lines())];
    let all: BTreeSet<String> = acked.into_iter().flatten().collect();
    assert_eq!(all, ids, "every message acked by one of the workers");
    let objects = fx.gcs.list_objects(&fx.bucket).await?;
    assert_eq!(objects.len(), N, "exactly one object per message");
    let object_ids = fx.object_ids().await?;
    assert_eq!(object_ids, ids);
    let acked_or_redelivered = objects_after_first.is_subset(&all);
    assert!(acked_or_redelivered, "every object the first worker wrote was acked or redelivered");
    Ok(())
}

/// Writes that cannot finish within the shutdown budget (storage hangs) are nacked, not acked,
/// and a later worker writes them: nothing is lost, nothing is written twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_unfinished_at_the_shutdown_deadline_are_nacked_and_redelivered() -> Result {
    const N: usize = 40;
    let fx = Fixture::new(true).await?;
    let proxy = Proxy::start(fx.emulators.storage_addr()).await?;
    proxy.set_mode(Mode::Hang);
    let worker = fx.start_worker(&proxy.url(), &[("SHUTDOWN_TIMEOUT_SECS", "2")]).await?;
    fx.publish(&sample_messages(0..N)).await?;
    wait_for(Duration::from_secs(30), "every message to be in flight", async || {
        Ok(worker.stats.snapshot().in_flight == N as u64)
    })
    .await?;

    let stopping = Instant::now();
    let summary = worker.stop().await?;
    assert!(stopping.elapsed() < Duration::from_secs(3), "{:?}", stopping.elapsed());
    assert_eq!((summary.acked, summary.nacked, summary.in_flight), (0, N as u64, 0), "{summary:?}");

    proxy.set_mode(Mode::Pass);
    let again = fx.start_worker(&proxy.url(), &[]).await?;
    let objects = fx.gcs.wait_for_objects(&fx.bucket, N, Duration::from_secs(120)).await?;
    wait_for(Duration::from_secs(30), "every message to be acked", async || {
        Ok(again.stats.snapshot().acked == N as u64)
    })
    .await?;
    let summary = again.stop().await?;
    assert_eq!(objects.len(), N);
    assert_eq!(summary.acked, N as u64, "{summary:?}");
    Ok(())
}

/// SIGTERM while every write fails (the bucket is missing) and the failed messages wait out
/// their backoff before the nack: they are nacked at once, so the worker exits promptly instead
/// of sleeping through its shutdown budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_storage_outage_nacks_at_once_without_spending_the_budget() -> Result {
    const N: usize = 20;
    let fx = Fixture::new(false).await?;
    let mut worker = BinaryWorker::spawn(&fx.binary_env(&fx.emulators.storage_url()), "outage")?;
    fx.publish(&sample_messages(0..N)).await?;
    // By then the backoff before each nack has grown to seconds.
    wait_for(Duration::from_secs(60), "failed writes", async || {
        Ok(worker.counters().nacked >= N as u64)
    })
    .await?;
    let took = worker.terminate(Duration::from_secs(15)).await?;
    assert!(took < Duration::from_secs(3), "took {took:?} to exit");
    let lines = worker.json_lines();
    let spent = lines.iter().any(|l| l["event"] == "budget_spent");
    assert!(!spent, "nothing was writing, yet the budget was spent: {}", worker.log_tail());
    let summary = find_event(&lines, "stopped");
    let settled = (summary["acked"].as_u64(), summary["in_flight"].as_u64());
    assert_eq!(settled, (Some(0), Some(0)), "{summary}");
    Ok(())
}

/// Bad configuration: exit 2 and one line naming every bad variable (`gs://` alone is no bucket,
/// an invalid `RUST_LOG` is reported with the rest), before anything is pulled.
#[tokio::test]
async fn bad_configuration_exits_2_naming_every_variable_in_one_line() -> Result {
    let bad = [("BUCKET_NAME", "gs://"), ("SUBSCRIPTION_ID", "sub "), ("RUST_LOG", "info,[{")];
    let bad = [&bad[..], &[("OBJECT_COMPRESSION", "zip"), ("KMS_KEY_NAME", "my-key")]].concat();
    let mut worker = BinaryWorker::spawn(&with_vars(Vec::new(), &bad), "bad-configuration")?;
    let status = worker.wait(Duration::from_secs(30)).await?;
    let output = worker.log();
    assert_eq!(status.code(), Some(2), "{output}");
    assert_eq!(output.trim_end().lines().count(), 1, "one line: {output}");
    for problem in [
        "PROJECT_ID is not set",
        "BUCKET_NAME=\"gs://\" is invalid",
        "RUST_LOG=\"info,[{\"",
        "OBJECT_COMPRESSION=\"zip\" is invalid",
        "KMS_KEY_NAME=\"my-key\" is invalid",
    ] {
        assert!(output.contains(problem), "{problem}: {output}");
    }
    assert!(!output.contains("SUBSCRIPTION_ID"), "a trailing space is trimmed: {output}");
    Ok(())
}

/// A subscription with exactly-once delivery (`EXACTLY_ONCE_DELIVERY=true` in `deploy/setup`),
/// which the emulator implements (it says so on the stream and confirms each ack): the client
/// hands the worker exactly-once handlers and confirms their acks by itself. Every message
/// becomes one byte-exact object, and none is left to deliver.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exactly_once_subscription_gets_every_object_once() -> Result {
    const N: u64 = 100;
    let fx = Fixture::new(true).await?;
    let settings = SubscriptionSettings { exactly_once: true, ..SubscriptionSettings::default() };
    fx.pubsub.delete_subscription(&fx.subscription).await?;
    let lease = LEASE_SECS as i32;
    fx.pubsub.create_subscription_with(&fx.topic, &fx.subscription, lease, &settings).await?;
    let published = fx.publish(&sample_messages(0..N as usize)).await?;
    let worker = fx.start_worker(&fx.emulators.storage_url(), &[]).await?;
    wait_for(Duration::from_secs(120), "every message acked", async || {
        Ok(worker.stats.snapshot().acked == N)
    })
    .await?;
    sleep(REDELIVERY_WINDOW).await;
    let summary = worker.stop().await?;
    assert_eq!((summary.received, summary.written, summary.duplicates), (N, N, 0), "{summary:?}");
    fx.assert_exactly_once(&published, 1).await?;
    let left = fx.pubsub.pull(&fx.subscription, 100).await?;
    assert!(left.is_empty(), "acked messages left to deliver: {left:?}");
    Ok(())
}
