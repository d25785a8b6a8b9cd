//! Messages that can never be written (no bucket, or an object of another message under their
//! name) end in the dead-letter topic, and nothing already stored is touched.

use super::{dead_letter_subscription, error_lines};
use crate::operations::{HEALTH, get};
use crate::support::OutMessage;
use crate::support::app::{BinaryWorker, Fixture, Result, SETTLE, sample_message};
use crate::support::parse_metrics;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use tokio::time::{Instant, sleep};

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
    let messages: Vec<OutMessage> = (0..N).map(sample_message).collect();
    let published = fx.publish(&messages).await?;

    let mut dead: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let deadline = Instant::now() + SETTLE;
    while dead.len() < N {
        let (late, counters) = (Instant::now() >= deadline, worker.counters());
        anyhow::ensure!(!late, "{} of {N} dead-lettered; {counters:?}", dead.len());
        worker.assert_running()?;
        let got = fx.pubsub.pull(&dead_sub, 10).await?;
        let ack_ids: Vec<String> = got.iter().map(|m| m.ack_id.clone()).collect();
        fx.pubsub.settle(&dead_sub, &ack_ids, None).await?;
        for m in got {
            // The dead-letter copy has its own message id; the data identifies it.
            dead.insert(String::from_utf8_lossy(&m.data).into_owned(), m.data);
        }
        sleep(Duration::from_millis(500)).await;
    }
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

/// An object under a message's name whose metadata names another message (another id: anyone
/// who can create objects; the same id from another subscription: another topic sharing the
/// bucket and template) is never taken for this message's: every delivery is nacked with
/// reason `name_collision`, so the message ends in the dead-letter topic, and the object keeps
/// its bytes. An object that names the message itself (a genuine redelivery) is still acked,
/// without a second object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_of_another_message_under_the_name_is_left_alone_and_the_message_dead_lettered()
-> Result {
    const MAX_ATTEMPTS: i32 = 5;
    let fx = Fixture::new(true).await?;
    let dead_sub = dead_letter_subscription(&fx, MAX_ATTEMPTS).await?;
    let sent = ["other id", "other subscription", "redelivered", "fresh"];
    let published = fx.publish(&sent.map(OutMessage::new)).await?;
    let text = |data: &[u8]| String::from_utf8_lossy(data).into_owned();
    let id: BTreeMap<String, &str> =
        published.iter().map(|(id, m)| (text(&m.data), id.as_str())).collect();
    let ours = fx.pubsub.subscription_path(&fx.subscription);
    let other = fx.pubsub.subscription_path("another-subscription");
    let existing = [
        // Not a number: the emulator numbers its messages from 1, so "1" could be this one's.
        ("other id", "someone else's bytes", "not-this-message", ours.as_str()),
        ("other subscription", "another topic's message", id["other subscription"], &other),
        ("redelivered", "written by the first delivery", id["redelivered"], &ours),
    ];
    for (message, body, message_id, subscription) in existing {
        let (name, metadata) = (format!("{}.txt", id[message]), [("message_id", message_id)]);
        let metadata = [metadata[0], ("subscription", subscription)];
        fx.gcs.put_object_with_metadata(&fx.bucket, &name, body.as_bytes(), &metadata).await?;
    }

    let extra = [("OBJECT_NAME", "{message_id}.{ext}"), HEALTH[0], HEALTH[1]];
    let worker = fx.start_worker(&fx.emulators.storage_url(), &extra).await?;
    let mut dead = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    while dead.len() < 2 {
        let late = Instant::now() >= deadline;
        anyhow::ensure!(!late, "dead-lettered: {dead:?}; {:?}", worker.stats.snapshot());
        let got = fx.pubsub.pull(&dead_sub, 10).await?;
        let ack_ids: Vec<String> = got.iter().map(|m| m.ack_id.clone()).collect();
        fx.pubsub.settle(&dead_sub, &ack_ids, None).await?;
        dead.extend(got.iter().map(|m| text(&m.data)));
        sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(dead, BTreeSet::from(["other id".into(), "other subscription".into()]));

    let metrics_url = format!("http://{}/metrics", worker.health.expect("asked for"));
    let (_, page) = get(&reqwest::Client::new(), &metrics_url).await?;
    let collisions = parse_metrics(&page)
        .get("pubsub_gcs_worker_messages_nacked_total{reason=\"name_collision\"}")
        .copied()
        .unwrap_or_default();
    assert!(collisions >= 2.0, "{collisions} collisions counted:\n{page}");
    let end = worker.stop().await?;
    assert_eq!((end.acked, end.written, end.duplicates), (2, 1, 1), "{end:?}");
    for (message, body, ..) in existing {
        let name = format!("{}.txt", id[message]);
        assert_eq!(fx.gcs.download(&fx.bucket, &name).await?, body.as_bytes(), "{name}");
    }
    let fresh = format!("{}.txt", id["fresh"]);
    assert_eq!(fx.gcs.download(&fx.bucket, &fresh).await?, b"fresh");
    assert_eq!(fx.gcs.list_objects(&fx.bucket).await?.len(), 4, "no second object");
    Ok(())
}
