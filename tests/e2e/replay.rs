//! Replays after an incident (docs/incidents.md): a subscription seeked back to a time or to a
//! snapshot delivers its messages again, and the worker writes exactly the objects that are
//! missing and acks the others as already there; dead letters moved back to the topic by
//! `deploy/replay --dead-letters` become objects under their new message ids.

use crate::support::app::{Fixture, LEASE_SECS, Result, SETTLE, sample_messages};
use crate::support::{OutMessage, unique_name, wait_for};
use pubsub_gcs_worker::object::metadata_key;
use std::collections::BTreeMap;
use std::process::ExitStatus;
use std::time::Duration;
use testkit::{PROJECT_ID, SeekTo, SubscriptionSettings};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::time::sleep;

/// Longer than the lease the tests give the worker: an un-acked message is back by then.
const REDELIVERY_WINDOW: Duration = Duration::from_secs(LEASE_SECS + 3);

/// Objects deleted after their messages were acked (a lifecycle rule, a person): a seek to a time
/// before the messages brings back exactly the deleted objects, byte-exact, and acks every other
/// message as already there. No object is written twice, and none is overwritten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seek_to_a_time_writes_exactly_the_deleted_objects_again() -> Result {
    const N: u64 = 30;
    let fx = Fixture::new(true).await?;
    replayable(&fx).await?;
    // A second back: publish times are in milliseconds, and a seek to a time marks the messages
    // published before it acked.
    let before = (OffsetDateTime::now_utc() - time::Duration::SECOND).format(&Rfc3339)?;
    let published = fx.publish(&sample_messages(0..N as usize)).await?;
    let worker = fx.start_worker(&fx.emulators.storage_url(), &[]).await?;
    wait_for(SETTLE, "every message written and acked", async || {
        let now = worker.stats.snapshot();
        Ok(now.written == N && now.acked == N)
    })
    .await?;

    // The incident: every third object deleted.
    let objects = fx.gcs.list_objects(&fx.bucket).await?;
    let mut kept = BTreeMap::new();
    for (i, object) in objects.iter().enumerate() {
        if i % 3 == 0 {
            fx.gcs.delete_object(&fx.bucket, &object.name).await?;
        } else {
            kept.insert(object.name.clone(), generation(&fx, &object.name).await?);
        }
    }
    let deleted = N - kept.len() as u64;

    fx.pubsub.seek(&fx.subscription, SeekTo::Time(&before)).await?;
    wait_for(SETTLE, "every message delivered and acked again", async || {
        Ok(worker.stats.snapshot().acked == 2 * N)
    })
    .await?;
    sleep(REDELIVERY_WINDOW).await;
    let summary = worker.stop().await?;
    assert_eq!(summary.received, 2 * N, "one delivery each, and one again: {summary:?}");
    assert_eq!(summary.written, N + deleted, "the deleted ones written again: {summary:?}");
    assert_eq!(summary.duplicates, N - deleted, "the others found there: {summary:?}");
    assert_eq!((summary.acked, summary.nacked, summary.in_flight), (2 * N, 0, 0), "{summary:?}");
    fx.assert_exactly_once(&published, 1).await?;
    for (name, was) in &kept {
        assert_eq!(&generation(&fx, name).await?, was, "{name} was written again");
    }
    let left = fx.pubsub.pull(&fx.subscription, 100).await?;
    assert!(left.is_empty(), "messages left unacked: {left:?}");
    Ok(())
}

/// A snapshot taken before a change of `OBJECT_NAME` (`deploy/snapshot`), seeked to under the
/// new template: every message is written again under its new name, beside its old object,
/// which is left as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_under_a_new_object_name_writes_the_new_names_beside_the_old() -> Result {
    const N: u64 = 12;
    let fx = Fixture::new(true).await?;
    let snapshot = unique_name("before-change");
    fx.pubsub.create_snapshot(&snapshot, &fx.subscription).await?;
    let published = fx.publish(&sample_messages(0..N as usize)).await?;
    let old = fx.start_worker(&fx.emulators.storage_url(), &[]).await?;
    wait_for(SETTLE, "every message written", async || Ok(old.stats.snapshot().acked == N)).await?;
    old.stop().await?;
    let before = fx.gcs.list_objects(&fx.bucket).await?;

    let template = [("OBJECT_NAME", "v2/{message_id}.{ext}")];
    let new = fx.start_worker(&fx.emulators.storage_url(), &template).await?;
    fx.pubsub.seek(&fx.subscription, SeekTo::Snapshot(&snapshot)).await?;
    wait_for(SETTLE, "every message written again", async || Ok(new.stats.snapshot().acked == N))
        .await?;
    sleep(REDELIVERY_WINDOW).await;
    let summary = new.stop().await?;
    assert_eq!((summary.written, summary.duplicates, summary.nacked), (N, 0, 0), "{summary:?}");

    let objects = fx.gcs.list_objects(&fx.bucket).await?;
    let (renamed, unchanged): (Vec<_>, Vec<_>) =
        objects.into_iter().partition(|o| o.name.starts_with("v2/"));
    assert_eq!(unchanged, before, "the objects under the old names are left as they were");
    assert_eq!(renamed.len() as u64, N, "{renamed:?}");
    for object in &renamed {
        let id = &object.metadata["message_id"];
        assert!(object.name.starts_with(&format!("v2/{id}.")), "{}", object.name);
        let body = fx.gcs.download(&fx.bucket, &object.name).await?;
        assert_eq!(body, published[id].data, "{}", object.name);
    }
    Ok(())
}

/// Dead letters moved back to the topic after a fix (`deploy/replay --dead-letters`, on the
/// emulator): a move that cannot publish stops and leaves every dead letter where it was; then
/// each becomes one object, byte-exact with its attributes, under the new message id it was
/// published with, and the dead-letter subscription is left empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_moved_back_become_one_object_each() -> Result {
    const N: usize = 150;
    let fx = Fixture::new(true).await?;
    let (dead_letter_topic, dead_letters) = (unique_name("dead-letter"), unique_name("dl-sub"));
    fx.pubsub.create_topic(&dead_letter_topic).await?;
    fx.pubsub.create_subscription(&dead_letter_topic, &dead_letters, 10, None).await?;
    // As Pub/Sub forwards them: the message, with attributes that say where it came from.
    let sent: Vec<OutMessage> = sample_messages(0..N)
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            m.attr("n", i.to_string())
                .attr("CloudPubSubDeadLetterSourceSubscription", &fx.subscription)
                .attr("CloudPubSubDeadLetterSourceDeliveryCount", "5")
        })
        .collect();
    fx.pubsub.publish(&dead_letter_topic, &sent).await?;
    let worker = fx.start_worker(&fx.emulators.storage_url(), &[]).await?;

    let (status, log) =
        move_dead_letters(&fx, &unique_name("no-such-topic"), &dead_letters).await?;
    assert!(!status.success(), "a move to a missing topic succeeded:\n{log}");
    sleep(REDELIVERY_WINDOW).await;
    assert_eq!(worker.stats.snapshot().received, 0, "a message reached the worker's topic");

    let (status, log) = move_dead_letters(&fx, &fx.topic, &dead_letters).await?;
    assert!(status.success(), "the move failed:\n{log}");
    fx.gcs.wait_for_objects(&fx.bucket, N, SETTLE).await?;
    sleep(REDELIVERY_WINDOW).await;
    let summary = worker.stop().await?;
    assert_eq!((summary.written, summary.duplicates, summary.nacked), (N as u64, 0, 0));
    let objects = fx.gcs.list_objects(&fx.bucket).await?;
    assert_eq!(objects.len(), N, "one object per dead letter");
    let mut seen = BTreeMap::new();
    for object in &objects {
        let n: usize = object.metadata["n"].parse()?;
        let twice = seen.insert(n, object.metadata["message_id"].clone());
        assert!(twice.is_none(), "dead letter {n} has two objects");
        for (key, value) in &sent[n].attributes {
            let stored = object.metadata.get(metadata_key(key).as_ref());
            assert_eq!(stored, Some(value), "{}: {key}", object.name);
        }
        let body = fx.gcs.download(&fx.bucket, &object.name).await?;
        assert_eq!(body, sent[n].data, "{}", object.name);
    }
    let left = fx.pubsub.pull(&dead_letters, 100).await?;
    assert!(left.is_empty(), "dead letters left behind: {left:?}");
    Ok(())
}

/// Makes the fixture's subscription keep acked messages for an hour, as `deploy/setup` does.
async fn replayable(fx: &Fixture<'_>) -> Result {
    let settings = SubscriptionSettings {
        retain_acked_for: Some(Duration::from_secs(3600)),
        exactly_once: false,
    };
    fx.pubsub.delete_subscription(&fx.subscription).await?;
    let lease = LEASE_SECS as i32;
    fx.pubsub.create_subscription_with(&fx.topic, &fx.subscription, lease, &settings).await
}

/// The object's generation: a new one each time it is written.
async fn generation(fx: &Fixture<'_>, name: &str) -> Result<String> {
    let object = fx.gcs.object(&fx.bucket, name).await?;
    Ok(object["generation"].as_str().unwrap_or_default().to_string())
}

/// Runs `deploy/replay --dead-letters --yes` against the emulator, from `dead_letters` to
/// `topic`; returns how it ended and what it printed.
async fn move_dead_letters(
    fx: &Fixture<'_>,
    topic: &str,
    dead_letters: &str,
) -> Result<(ExitStatus, String)> {
    let dir = tempfile::tempdir()?;
    let env_file = dir.path().join("replay.env");
    let settings = [
        ("PROJECT_ID", PROJECT_ID),
        ("SUBSCRIPTION_ID", &fx.subscription),
        ("BUCKET_NAME", &fx.bucket),
        ("TOPIC_ID", topic),
        ("DEAD_LETTER_SUBSCRIPTION_ID", dead_letters),
        ("PUBSUB_EMULATOR_HOST", &fx.emulators.pubsub_addr().to_string()),
    ];
    let lines: Vec<String> = settings.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    std::fs::write(&env_file, lines.concat())?;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/replay");
    // The script runs the Python that comes with gcloud, and gcloud wants a home of its own.
    let run = tokio::process::Command::new(script)
        .args(["--dead-letters", "--yes"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("ENV_FILE", &env_file)
        .env("HOME", dir.path())
        .env("CLOUDSDK_CONFIG", dir.path().join("gcloud"))
        .env("CLOUDSDK_CORE_DISABLE_USAGE_REPORTING", "true")
        .env("CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK", "true")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(180), run).await??;
    let printed = [out.stdout, out.stderr].map(|o| String::from_utf8_lossy(&o).into_owned());
    Ok((out.status, printed.join("\n")))
}
