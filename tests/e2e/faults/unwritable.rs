//! Messages that can never be written (no bucket, or an object of another message under their
//! name) end in the dead-letter topic, and nothing already stored is touched.

use super::{dead_letter_subscription, error_lines};
use crate::operations::HEALTH;
use crate::support::app::{BinaryWorker, Fixture, Result, SETTLE, sample_messages};
use crate::support::{OutMessage, metrics, wait_for};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use tokio::time::Instant;

/// Messages that can never be written (here: the bucket never exists) on a subscription with a
/// dead-letter policy, as `deploy/setup` creates it: each delivery fails and is nacked after the
/// backoff, and after `maxDeliveryAttempts` Pub/Sub forwards the message, unchanged, to the
/// dead-letter topic. The worker never acks it, never exits and does not spin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_that_can_never_be_written_end_in_the_dead_letter_topic() -> Result {
    const N: usize = 5;
    const MAX_ATTEMPTS: i32 = 5;
    let fx = Fixture::new(false).await?;
    let dead_sub = dead_letter_subscription(&fx, MAX_ATTEMPTS).await?;
    let mut worker =
        BinaryWorker::spawn(&fx.binary_env(&fx.emulators.storage_url()), "dead-letter")?;
    let cpu_before = worker.usage()?.cpu;
    let started = Instant::now();
    let published = fx.publish(&sample_messages(0..N)).await?;

    let mut dead: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    wait_for(SETTLE, "every message in the dead-letter topic", async || {
        worker.assert_running()?;
        for m in fx.pubsub.pull_all(&dead_sub).await? {
            // The dead-letter copy has its own message id; the data identifies it.
            dead.insert(String::from_utf8_lossy(&m.data).into_owned(), m.data);
        }
        Ok(dead.len() >= N)
    })
    .await?;
    let took = started.elapsed();
    let cpu = worker.usage()?.cpu - cpu_before;
    let end = worker.wait_quiet(SETTLE).await?;
    let mut sent: Vec<&Vec<u8>> = published.values().map(|m| &m.data).collect();
    sent.sort();
    let got: Vec<&Vec<u8>> = dead.values().collect();
    assert_eq!(got, sent, "every message, unchanged, in the dead-letter topic");
    assert_eq!((end.acked, end.in_flight), (0, 0), "{end:?}");
    let deliveries = (N as u64) * MAX_ATTEMPTS as u64;
    assert!(end.received >= deliveries, "{MAX_ATTEMPTS} deliveries each: {end:?}");
    assert!(cpu < took / 4, "{cpu:?} of CPU in {took:?}");
    let attempts: BTreeSet<i64> =
        error_lines(&worker).iter().filter_map(|l| l["delivery_attempt"].as_i64()).collect();
    assert_eq!(attempts, (1..=i64::from(MAX_ATTEMPTS)).collect(), "each attempt is logged");
    Ok(())
}

/// An object under a message's name whose metadata names another message (another id, or the
/// same id from another subscription) is never taken for this message's: every delivery is
/// nacked with reason `name_collision` until the message is dead-lettered, and the object keeps
/// its bytes; one that names the message itself (a redelivery) is acked, without a second object.
/// A hundred such messages do not hold up two hundred healthy ones: a collision gives its write
/// permit back before it waits for its nack (when the waits held the permits, the healthy 200
/// took about 75 s; alone they take under a second).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_of_another_message_under_the_name_is_left_alone_and_the_message_dead_lettered()
-> Result {
    const MAX_ATTEMPTS: i32 = 5;
    const COLLIDING: usize = 100;
    const HEALTHY: usize = 200;
    let fx = Fixture::new(true).await?;
    let dead_sub = dead_letter_subscription(&fx, MAX_ATTEMPTS).await?;
    let mut sent: Vec<String> = ["other subscription", "redelivered"].map(String::from).to_vec();
    sent.extend((0..COLLIDING).map(|i| format!("other id {i}")));
    sent.extend((0..HEALTHY).map(|i| format!("fresh {i}")));
    let published =
        fx.publish(&sent.iter().map(|s| OutMessage::new(s.as_str())).collect::<Vec<_>>()).await?;
    let text = |data: &[u8]| String::from_utf8_lossy(data).into_owned();
    let id: BTreeMap<String, &str> =
        published.iter().map(|(id, m)| (text(&m.data), id.as_str())).collect();
    let ours = fx.pubsub.subscription_path(&fx.subscription);
    let other = fx.pubsub.subscription_path("another-subscription");
    let mut existing: Vec<(String, &str, &str, &str)> = vec![
        ("other subscription".into(), "another topic's message", id["other subscription"], &other),
        ("redelivered".into(), "written by the first delivery", id["redelivered"], &ours),
    ];
    // Not a number: the emulator numbers its messages from 1, so "1" could be this one's.
    existing.extend(
        (0..COLLIDING)
            .map(|i| (format!("other id {i}"), "someone else's bytes", "not-ours", &*ours)),
    );
    for (message, body, message_id, subscription) in &existing {
        let name = format!("{}.txt", id[message]);
        let metadata = [("message_id", *message_id), ("subscription", *subscription)];
        fx.gcs.put_object(&fx.bucket, &name, body.as_bytes(), &metadata).await?;
    }

    let extra = [("OBJECT_NAME", "{message_id}.{ext}"), HEALTH[0], HEALTH[1]];
    let worker = fx.start_worker(&fx.emulators.storage_url(), &extra).await?;
    let started = Instant::now();
    wait_for(Duration::from_secs(20), "the healthy messages to be written", async || {
        Ok(worker.stats.snapshot().written == HEALTHY as u64)
    })
    .await?;
    let healthy_took = started.elapsed();
    let mut dead = BTreeSet::new();
    wait_for(Duration::from_secs(120), "the colliding messages' dead letters", async || {
        dead.extend(fx.pubsub.pull_all(&dead_sub).await?.iter().map(|m| text(&m.data)));
        Ok(dead.len() > COLLIDING)
    })
    .await?;
    let colliding: BTreeSet<String> =
        existing[..1].iter().chain(&existing[2..]).map(|e| e.0.clone()).collect();
    assert_eq!(dead, colliding, "exactly the colliding messages are dead-lettered");

    let metrics_url = format!("http://{}/metrics", worker.health.expect("asked for"));
    let page = metrics(&reqwest::Client::new(), &metrics_url).await?;
    let collisions = page.get("pubsub_gcs_worker_messages_nacked_total{reason=\"name_collision\"}");
    let collisions = collisions.copied().unwrap_or_default();
    assert!(collisions >= colliding.len() as f64, "{collisions} collisions counted: {page:?}");
    let end = worker.stop().await?;
    let healthy = HEALTHY as u64;
    assert_eq!((end.acked, end.written, end.duplicates), (healthy + 1, healthy, 1), "{end:?}");
    for (message, body, ..) in &existing {
        let name = format!("{}.txt", id[message]);
        assert_eq!(fx.gcs.download(&fx.bucket, &name).await?, body.as_bytes(), "{name}");
    }
    for i in 0..HEALTHY {
        let fresh = format!("fresh {i}");
        let name = format!("{}.txt", id[&fresh]);
        assert_eq!(fx.gcs.download(&fx.bucket, &name).await?, fresh.as_bytes(), "{name}");
    }
    let objects = fx.gcs.list_objects(&fx.bucket).await?.len();
    assert_eq!(objects, existing.len() + HEALTHY, "no second object");
    eprintln!("{HEALTHY} healthy messages among {COLLIDING} colliding written in {healthy_took:?}");
    Ok(())
}
