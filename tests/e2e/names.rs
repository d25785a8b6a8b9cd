//! Object names users shape with `OBJECT_NAME`: the expected names are worked out here from the
//! rules of docs/objects.md (strftime, percent-encoding, SHA-256), not with the worker's own code.

use crate::support::app::{BinaryWorker, Fixture, Result, name_stamp, with_vars};
use crate::support::{OutMessage, wait_for};
use sha2::{Digest, Sha256};
use std::time::Duration;

const TEMPLATE: &str =
    "dt={publish_time:%Y-%m-%d}/{attributes.task_type|unrouted}/{hash:2}/{message_id}.{ext}";

/// Mixed attributes (missing, routing values, hostile ones) become exactly the expected names,
/// bytes intact; a redelivered message finds the object its first delivery wrote and is acked
/// once, without a second object and without overwriting the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_names_every_object_safely_and_a_redelivery_adds_none() -> Result {
    let fx = Fixture::new(true).await?;
    let long = "x".repeat(2048);
    // (task_type, its rendering): missing, plain, and hostile values, each encoded and capped.
    let cases: [(Option<&str>, &str); 7] = [
        (None, "unrouted"),
        (Some("file_processing"), "file_processing"),
        (Some("data_transformation"), "data_transformation"),
        (Some("../.."), "..%2F.."),
        (Some("a\r\nb"), "a%0D%0Ab"),
        (Some("ünï ✓"), "%C3%BCn%C3%AF%20%E2%9C%93"),
        (Some(&long), &long[..128]),
    ];
    let messages: Vec<OutMessage> = (0..70)
        .map(|i| {
            let data = if i % 5 == 0 { vec![0xff, i as u8] } else { format!("m{i}").into_bytes() };
            match cases[i % cases.len()].0 {
                Some(task) => OutMessage::new(data).attr("task_type", task),
                None => OutMessage::new(data),
            }
        })
        .collect();
    let published = fx.publish(&messages).await?;

    // A first delivery that wrote its object and died before the ack: the worker meets the
    // object under the name it computes itself.
    let first = fx.pubsub.pull(&fx.subscription, 1).await?;
    let first = first.first().ok_or_else(|| anyhow::anyhow!("nothing to pull"))?;
    let rendered = |sent: &OutMessage| {
        let task = sent.attributes.get("task_type").map(String::as_str);
        cases.iter().find(|(t, _)| *t == task).map_or("", |(_, rendered)| *rendered)
    };
    let sent = &published[&first.message_id];
    let first_name =
        expected_name(&first.message_id, &first.publish_time, rendered(sent), &sent.data);
    let subscription = fx.pubsub.subscription_path(&fx.subscription);
    let metadata = [("message_id", first.message_id.as_str()), ("subscription", &subscription)];
    let body = b"written by the first delivery";
    fx.gcs.put_object(&fx.bucket, &first_name, body, &metadata).await?;
    fx.pubsub.nack(&fx.subscription, &first.ack_id).await?;

    let env = with_vars(fx.binary_env(&fx.emulators.storage_url()), &[("OBJECT_NAME", TEMPLATE)]);
    let mut worker = BinaryWorker::spawn(&env, "names")?;
    let objects =
        fx.gcs.wait_for_objects(&fx.bucket, published.len(), Duration::from_secs(120)).await?;
    let end = worker.wait_quiet(Duration::from_secs(120)).await?;
    // Each message delivered once: the redelivery acked as a duplicate, no second object.
    let counts = (end.received, end.written, end.duplicates, end.acked, end.nacked);
    assert_eq!(counts, (70, 69, 1, 70, 0), "{end:?}");
    assert_eq!(objects.len(), published.len(), "one object per message");
    for object in objects.iter().filter(|o| o.name != first_name) {
        let id = &object.metadata["message_id"];
        let sent = &published[id];
        let want = expected_name(id, &object.metadata["publish_time"], rendered(sent), &sent.data);
        assert_eq!(object.name, want);
        assert_eq!(fx.gcs.download(&fx.bucket, &object.name).await?, sent.data, "{}", object.name);
    }
    let kept = fx.gcs.download(&fx.bucket, &first_name).await?;
    assert_eq!(kept, b"written by the first delivery", "a create-only write never overwrites");
    Ok(())
}

/// `dt=YYYY-MM-DD/{task}/{first 2 hex of SHA-256 of the id}/{id}.{txt|bin}`.
fn expected_name(id: &str, publish_time: &str, task: &str, data: &[u8]) -> String {
    let stamp = name_stamp(publish_time);
    let day = format!("{}-{}-{}", &stamp[..4], &stamp[4..6], &stamp[6..8]);
    let hash = format!("{:02x}", Sha256::digest(id.as_bytes())[0]);
    let ext = if std::str::from_utf8(data).is_ok() { "txt" } else { "bin" };
    format!("dt={day}/{task}/{hash}/{id}.{ext}")
}

/// A template that could give two messages one name, or cannot be rendered, or a prefix or
/// template that gives names Cloud Storage refuses, stops the worker at start (exit 2, one line
/// naming OBJECT_NAME or OBJECT_PREFIX) before it pulls anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_template_exits_2_and_leaves_the_backlog_untouched() -> Result {
    let fx = Fixture::new(true).await?;
    fx.publish(&[OutMessage::new("a"), OutMessage::new("b")]).await?;
    let too_long = format!("{}/{{message_id}}", "d".repeat(600));
    let templates = [
        "{attributes.task_type}/{publish_time}.txt",
        "{message}/{message_id}",
        "{publish_time:%Q}/{message_id}",
        "{hash:}/{message_id}",
        "{hash:9}/{message_id}",
        "{attributes.a}{message_id}",
        "{message_id",
        too_long.as_str(),
        ".well-known/acme-challenge/{message_id}",
    ];
    // Names Cloud Storage refuses because of the prefix alone: the line names OBJECT_PREFIX.
    let prefixes = [".well-known/acme-challenge/", ".well-known/"];
    let bad = templates.map(|t| ("OBJECT_NAME", t));
    for (variable, template) in bad.into_iter().chain(prefixes.map(|p| ("OBJECT_PREFIX", p))) {
        let env = with_vars(fx.binary_env(&fx.emulators.storage_url()), &[(variable, template)]);
        let mut worker = BinaryWorker::spawn(&env, "bad-template")?;
        let status = worker.wait(Duration::from_secs(30)).await?;
        let log = worker.log();
        assert_eq!(status.code(), Some(2), "{template}: {log}");
        assert_eq!(log.trim_end().lines().count(), 1, "{template}: one line: {log}");
        assert!(log.contains(&format!("{variable}={template:?} ")), "{template}: {log}");
    }
    // Nothing was leased: both messages can be pulled at once.
    let mut pulled = Vec::new();
    wait_for(Duration::from_secs(2), "both messages, untouched", async || {
        pulled.extend(fx.pubsub.pull(&fx.subscription, 10).await?);
        Ok(pulled.len() >= 2)
    })
    .await?;
    assert_eq!(pulled.len(), 2, "the backlog is untouched: {pulled:?}");
    Ok(())
}
