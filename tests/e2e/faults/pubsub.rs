//! Pub/Sub goes away: the emulator restarted with its state lost, the connection reset for a
//! while. The worker reconnects and carries on.

use super::OUTAGE;
use crate::support::app::{BinaryWorker, Fixture, Result, SETTLE, sample_messages};
use crate::support::app::{settled_message_ids, with_vars};
use crate::support::{Emulators, Mode, OutMessage, Proxy, wait_for};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use tokio::time::{Instant, sleep};

/// The Pub/Sub emulator is killed and restarted mid-stream, its state lost (the topic and
/// subscription are created again, the second half published to them). The client reconnects
/// with backoff, so the worker carries on: it never exits, and the second half is written
/// exactly once. A proxy refuses connections until the subscription exists again: a reconnect in
/// between would get NOT_FOUND, which is permanent (the worker exits 1, see `gone.rs`). About one
/// run in ten, the client was left with no connection and no retry for minutes; the stream,
/// idle for `STREAM_IDLE_SECS` (60 s), is then opened again on a new client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_emulator_restart_reconnects_with_backoff_and_carries_on() -> Result {
    const HALF: usize = 1000;
    let emulators = Emulators::start().await?;
    let fx = Fixture::on(&emulators, true).await?;
    let gate = Proxy::start(emulators.pubsub_addr()).await?;
    let env = with_vars(
        fx.binary_env(&emulators.storage_url()),
        &[("PUBSUB_EMULATOR_HOST", &gate.addr().to_string())],
    );
    let mut worker = BinaryWorker::spawn(&env, "emulator-restart")?;
    let first: Vec<OutMessage> = (0..HALF).map(|i| half_message(1, i)).collect();
    let published_first = fx.publish(&first).await?;
    fx.gcs.wait_for_objects(&fx.bucket, HALF / 4, SETTLE).await?;

    emulators.stop_pubsub();
    gate.set_mode(Mode::Refuse);
    let settled_before = settled_message_ids(&worker.json_lines());
    sleep(Duration::from_secs(3)).await;
    emulators.restart_pubsub().await?;
    fx.create_topic_and_subscription().await?;
    gate.set_mode(Mode::Pass);
    let second: Vec<OutMessage> = (0..HALF).map(|i| half_message(2, i)).collect();
    let published_second = fx.publish(&second).await?;

    // The worker must not exit on the way (a stream error it takes for permanent would): each
    // poll checks it, and a timeout shows how far it got and its log.
    let mut written = 0;
    wait_for(SETTLE, "every message of the second half", async || {
        worker.assert_running()?;
        let objects = fx.gcs.list_objects(&fx.bucket).await?;
        let second = objects.iter().filter(|o| o.metadata.get("half").is_some_and(|h| h == "2"));
        written = second.count();
        Ok(written >= HALF)
    })
    .await
    .map_err(|e| {
        e.context(format!("{written} of the second half written; log:\n{}", worker.log_tail()))
    })?;
    worker.wait_quiet(SETTLE).await?;
    worker.assert_running()?;

    // `(message id, body)` of every object, by the `half` attribute.
    let mut objects: BTreeMap<u8, Vec<(String, Vec<u8>)>> = BTreeMap::new();
    for o in fx.gcs.list_objects(&fx.bucket).await? {
        let half: u8 = o.metadata.get("half").map_or(Ok(0), |h| h.parse())?;
        let id = o.metadata.get("message_id").cloned().unwrap_or_default();
        objects.entry(half).or_default().push((id, fx.gcs.download(&fx.bucket, &o.name).await?));
    }
    // Message ids start again after the restart, so each half is checked on its own.
    for (half, published) in [(1, &published_first), (2, &published_second)] {
        let got = objects.get(&half).cloned().unwrap_or_default();
        let ids: BTreeSet<&String> = got.iter().map(|(id, _)| id).collect();
        assert_eq!(ids.len(), got.len(), "half {half}: a message has two objects");
        for (id, body) in &got {
            let sent = published.get(id).map(|m| &m.data);
            assert_eq!(Some(body), sent, "half {half}: body of message {id}");
        }
    }
    let second_objects = objects.get(&2).map_or(0, Vec::len);
    assert_eq!(second_objects, HALF, "every message of the second half");
    let first_ids: BTreeSet<String> =
        objects.get(&1).map(|v| v.iter().map(|(id, _)| id.clone()).collect()).unwrap_or_default();
    let kept = settled_before.is_subset(&first_ids);
    assert!(kept, "every message acked before the kill has its object");
    Ok(())
}

/// The connection to Pub/Sub is reset for 10 s mid-stream: the worker reconnects and carries
/// on; acks lost with the connection turn into redeliveries that land on existing objects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_connection_resets_reconnect_and_carry_on() -> Result {
    const N: usize = 1000;
    let fx = Fixture::new(true).await?;
    let gate = Proxy::start(fx.emulators.pubsub_addr()).await?;
    let env = with_vars(
        fx.binary_env(&fx.emulators.storage_url()),
        &[("PUBSUB_EMULATOR_HOST", &gate.addr().to_string())],
    );
    let mut worker = BinaryWorker::spawn(&env, "pubsub-reset")?;
    let mut published = fx.publish(&sample_messages(0..N / 2)).await?;
    fx.gcs.wait_for_objects(&fx.bucket, N / 8, SETTLE).await?;

    let cpu_before = worker.usage()?.cpu;
    let started = Instant::now();
    gate.set_mode(Mode::Reset);
    sleep(OUTAGE).await;
    let cpu = worker.usage()?.cpu - cpu_before;
    worker.assert_running()?;
    gate.set_mode(Mode::Pass);
    published.extend(fx.publish(&sample_messages(N / 2..N)).await?);
    assert!(cpu < started.elapsed() / 2, "{cpu:?} of CPU during the outage");

    fx.settle(&mut worker, &published).await?;
    Ok(())
}

/// A connection dropped silently on the way (neither a reset nor a close reaches the worker, as
/// when a NAT or load balancer forgets it) leaves the client's stream waiting for ever: the
/// client has no keepalive. After `STREAM_IDLE_SECS` without a message the worker opens the
/// stream again on a new connection, and what was published meanwhile is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silently_dropped_connection_is_replaced_once_the_stream_is_idle() -> Result {
    const N: usize = 200;
    const IDLE: &str = "5";
    let fx = Fixture::new(true).await?;
    let gate = Proxy::start(fx.emulators.pubsub_addr()).await?;
    let gate_addr = gate.addr().to_string();
    // One stream: a trial stream, on a connection of its own, would carry the messages too.
    let vars = [
        ("PUBSUB_EMULATOR_HOST", gate_addr.as_str()),
        ("STREAM_IDLE_SECS", IDLE),
        ("PULL_STREAMS", "1"),
    ];
    let env = with_vars(fx.binary_env(&fx.emulators.storage_url()), &vars);
    let mut worker = BinaryWorker::spawn(&env, "blackhole")?;
    let mut published = fx.publish(&sample_messages(0..N / 2)).await?;
    fx.gcs.wait_for_objects(&fx.bucket, N / 2, SETTLE).await?;

    gate.set_mode(Mode::Blackhole);
    published.extend(fx.publish(&sample_messages(N / 2..N)).await?);
    fx.settle(&mut worker, &published).await?;
    let reopened = worker.event("stream_reopened");
    assert!(reopened.is_some(), "no stream_reopened event:\n{}", worker.log_tail());
    Ok(())
}

/// A message of the first or second half of the emulator-restart test.
fn half_message(half: u8, i: usize) -> OutMessage {
    OutMessage::new(format!("half {half} message {i:05} {}", "h".repeat(i % 300)))
        .attr("half", half.to_string())
}
