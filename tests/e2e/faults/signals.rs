//! The process stops mid-stream: SIGKILL (no drain), and SIGTERM to a worker that holds messages it
//! cannot write; each followed by a restart (`worker.rs` covers SIGTERM under load).

use super::dead_letter_subscription;
use crate::support::app::{BinaryWorker, Fixture, Result, SETTLE, figures};
use crate::support::app::{sample_messages, settled_message_ids, with_vars};
use crate::support::{HttpProxy, Latency, OutMessage, wait_for};
use std::collections::BTreeSet;
use std::time::Duration;
use tokio::time::sleep;

/// The worker's default `SHUTDOWN_TIMEOUT_SECS`.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(8);

/// SIGKILL under load: no drain. Writes the storage had finished but whose acks never left are
/// redelivered to the restarted worker and land on their existing objects (412, counted as
/// duplicates); no message gets two objects, and no worker refuses (nacks) a message, so none is
/// dead-lettered on its account.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_redeliveries_land_on_existing_objects() -> Result {
    sigkill_and_restart(false).await
}

/// The same where Cloud Storage answers 403, not 412, to a create-only write of an object that
/// exists (as it may to a principal that cannot read objects): the worker reads that object's
/// metadata, finds it and acks, so redeliveries after a crash do not pile up as false alarms in
/// the dead-letter topic (without the read, each would be nacked until dead-lettered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_with_403_for_existing_objects_dead_letters_nothing() -> Result {
    sigkill_and_restart(true).await
}

/// Dead-letter policy: 5 attempts. The emulator (not the service) goes on sending a share of
/// the redeliveries to a crashed worker's dead stream, counting each 10 s round as an attempt,
/// so under load some messages are dead-lettered before a live worker sees them. Hence: every
/// message ends as one object or in the dead-letter topic, and neither worker nacked any.
async fn sigkill_and_restart(forbid_existing: bool) -> Result {
    const N: usize = 1000;
    let fx = Fixture::new(true).await?;
    let dead_letters = dead_letter_subscription(&fx, 5).await?;
    // Responses 250 ms late: at the kill, objects exist whose writes were never acknowledged.
    let proxy = HttpProxy::start(fx.emulators.storage_addr()).await?;
    proxy.set_latency(Latency::fixed(Duration::from_millis(250)));
    proxy.forbid_existing(forbid_existing);
    let messages: Vec<OutMessage> = (0..N).map(|i| OutMessage::new(format!("m{i:04}"))).collect();
    let published = fx.publish(&messages).await?;
    let extra = [("MAX_OUTSTANDING_MESSAGES", "5000"), ("MAX_CONCURRENT_WRITES", "64")];
    let env = with_vars(fx.binary_env(&proxy.url()), &extra);

    let mut first = BinaryWorker::spawn(&env, "killed")?;
    fx.gcs.wait_for_objects(&fx.bucket, N - 200, SETTLE).await?;
    first.signal(libc::SIGKILL);
    let status = first.wait(Duration::from_secs(10)).await?;
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(libc::SIGKILL));
    first.assert_no_panic()?;

    proxy.set_latency(Latency::ZERO);
    let mut second = BinaryWorker::spawn(&env, "restarted")?;
    let text = |data: &[u8]| String::from_utf8_lossy(data).into_owned();
    let mut dead = BTreeSet::new();
    wait_for(SETTLE, "every message written or dead-lettered", async || {
        dead.extend(fx.pubsub.pull_all(&dead_letters).await?.iter().map(|m| text(&m.data)));
        let written = fx.object_ids().await?;
        let mut left = published.iter().filter(|(id, _)| !written.contains(*id));
        Ok(left.all(|(_, m)| dead.contains(&text(&m.data))))
    })
    .await?;
    let end = second.wait_quiet(SETTLE).await?;
    let bodies: BTreeSet<String> = published.values().map(|m| text(&m.data)).collect();
    let seen = settled_message_ids(&second.json_lines());
    let objects = fx.gcs.list_objects(&fx.bucket).await?;
    let ids: BTreeSet<&String> = objects.iter().map(|o| &o.metadata["message_id"]).collect();
    assert_eq!(ids.len(), objects.len(), "a message has two objects");
    for id in &seen {
        assert!(ids.contains(id), "message {id} acked without its object");
    }
    assert!(dead.is_subset(&bodies), "unknown dead letters");
    assert_eq!(first.counters().nacked + end.nacked, 0, "{end:?}");
    assert!(end.duplicates > 0, "unacked writes are redelivered onto their objects: {end:?}");
    figures("sigkill", &format!("{} dead-lettered by the emulator; {end:?}", dead.len()));
    Ok(())
}

/// The streams a worker cancels on SIGTERM are closed on the emulator's side too, and the
/// messages they held reach the next worker: here a worker whose storage never answers leases
/// most of them, and nacks them on its way out. The emulator as gcloud ships it fails to close a
/// cancelled stream (`NoSuchMethodError` in its log; `testkit` mends it) and goes on routing
/// messages to it: over an hour of restarts that strands messages and wears the emulator down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_a_sigtermed_worker_held_reach_the_next_one() -> Result {
    const N: usize = 300;
    let fx = Fixture::new(true).await?;
    let hung = HttpProxy::start(fx.emulators.storage_addr()).await?;
    hung.set_latency(Latency::fixed(Duration::from_secs(600)));
    let published = fx.publish(&sample_messages(0..N)).await?;

    let mut first = BinaryWorker::spawn(&fx.binary_env(&hung.url()), "storage-hung")?;
    wait_for(SETTLE, "half the messages to be received", async || {
        Ok(first.counters().received >= N as u64 / 2)
    })
    .await?;
    // What the emulator sends it now, it holds too.
    sleep(Duration::from_secs(2)).await;
    first.terminate(SHUTDOWN_TIMEOUT + Duration::from_secs(5)).await?;
    assert_eq!(first.counters().acked, 0, "nothing was written");

    let mut next = BinaryWorker::spawn(&fx.binary_env(&fx.emulators.storage_url()), "next")?;
    // Their leases were given back (nacked) at the SIGTERM: a few stream ack deadlines at most.
    fx.gcs.wait_for_objects(&fx.bucket, N, Duration::from_secs(60)).await?;
    fx.settle(&mut next, &published).await?;
    let log = std::fs::read_to_string(fx.emulators.log_dir().join("pubsub-emulator.log"))?;
    assert!(!log.contains("NoSuchMethodError"), "the emulator failed to close a stream");
    Ok(())
}
