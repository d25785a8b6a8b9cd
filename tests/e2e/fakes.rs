//! The two storage fakes answer the worker alike: fake-gcs-server, which the tests use, and
//! testkit's `FastGcs`, which the benchmark may use instead (`--storage fast`) to measure the
//! worker rather than its storage. The worker's own client path (`clients::storage` and
//! `Sink::write`) runs against each; testkit's REST helper reads back what it stored.

use crate::support::app::Result;
use bytes::Bytes;
use google_cloud_wkt::Timestamp;
use pubsub_gcs_worker::clients;
use pubsub_gcs_worker::config::Config;
use pubsub_gcs_worker::object::{ObjectSettings, ObjectSpec, TEXT};
use pubsub_gcs_worker::sink::{FailureKind, Sink, Written};
use serde_json::Value;
use std::time::Duration;
use testkit::{Emulators, FastGcs, Gcs, ObjectInfo, PROJECT_ID, unique_name};

const SUBSCRIPTION: &str = "projects/test-project/subscriptions/alike";

/// A create, a redelivery of it (the sink reads the object's metadata back: already there), a
/// name taken by another message's object (a collision), a write into a missing bucket, then the
/// stored bytes, resource and listing: the same on both fakes. The names hold characters that
/// must be escaped in a path and in a query (`/`, space, `+`, `=`, `é`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_storage_fakes_answer_the_sink_alike() -> Result {
    let emulators = Emulators::shared().await;
    let fast = FastGcs::start()?;
    let reference = outcomes(&emulators.storage_url()).await?;
    let fast = outcomes(&fast.url()).await?;
    assert_eq!(fast, reference);

    let written = [Ok(Written::Created), Ok(Written::AlreadyExisted)];
    let failed = [Err(FailureKind::NameCollision), Err(FailureKind::BucketNotFound)];
    assert_eq!(reference.writes, [written, failed].concat());
    assert_eq!(reference.listing.len(), 2, "{:?}", reference.listing);
    assert_eq!(reference.listing[0].metadata["message_id"], "1");
    let gzipped = pubsub_gcs_worker::object::gzip(b"first")?;
    assert_eq!(reference.stored, gzipped, "the gzip body, as stored");
    Ok(())
}

/// What a 429 looks like to the pipeline: the storage client retries it (a create-only upload is
/// idempotent), so the write succeeds, late; the sink says that storage pushed back on the way,
/// and the pipeline settles the write permit as a push-back rather than as a slow answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_is_retried_by_the_client_and_reported_as_push_back() -> Result {
    let fast = FastGcs::start()?;
    let (gcs, bucket) = (Gcs::new(&fast.url(), PROJECT_ID), unique_name("throttled"));
    gcs.create_bucket(&bucket).await?;
    let vars = [
        ("PROJECT_ID", PROJECT_ID),
        ("STORAGE_EMULATOR_HOST", &fast.url()),
        ("SUBSCRIPTION_ID", "throttled"),
        ("BUCKET_NAME", &bucket),
    ];
    let config = Config::from_vars(vars.map(|(k, v)| (k.to_string(), v.to_string())))?;
    let sink = Sink::new(clients::storage(&config).await?, &bucket, Duration::from_secs(30));
    fast.throttle(1);
    let first = sink.attempt(&spec("1.txt", "1"), Bytes::from_static(b"1")).await;
    let second = sink.attempt(&spec("2.txt", "2"), Bytes::from_static(b"2")).await;
    assert!(matches!(first.result, Ok(Written::Created)) && !first.pushed_back, "{first:?}");
    assert!(matches!(second.result, Ok(Written::Created)) && second.pushed_back, "{second:?}");
    assert!(fast.throttled() >= 1, "no 429 answered");
    assert_eq!(gcs.list_objects(&bucket).await?.len(), 2);
    Ok(())
}

/// What the sink and the REST helper see of one fake.
#[derive(Debug, PartialEq)]
struct Outcomes {
    writes: Vec<std::result::Result<Written, FailureKind>>,
    /// The first object's bytes as downloaded.
    stored: Vec<u8>,
    /// Its resource's fields that both fakes keep.
    resource: Vec<(&'static str, Value)>,
    listing: Vec<ObjectInfo>,
}

async fn outcomes(url: &str) -> Result<Outcomes> {
    let (gcs, bucket) = (Gcs::new(url, PROJECT_ID), unique_name("alike"));
    gcs.create_bucket(&bucket).await?;
    let vars = [
        ("PROJECT_ID", PROJECT_ID),
        ("STORAGE_EMULATOR_HOST", url),
        ("SUBSCRIPTION_ID", "alike"),
        ("BUCKET_NAME", &bucket),
    ];
    let config = Config::from_vars(vars.map(|(k, v)| (k.to_string(), v.to_string())))?;
    let settings = ObjectSettings {
        storage_class: Some("NEARLINE".into()),
        cache_control: Some("no-store".into()),
        ..ObjectSettings::default()
    };
    let clients = clients::storage(&config).await?;
    let sink = |bucket: &str| {
        Sink::new(clients.clone(), bucket, Duration::from_secs(30)).with_settings(&settings)
    };
    let (sink, elsewhere) = (sink(&bucket), sink(&unique_name("missing")));

    let first = spec("dt=2026-12-07/a b+é/1.txt", "1");
    let taken = spec("dt=2026-12-07/a b+é/2.txt", "2");
    let other = [("message_id", "someone-else"), ("subscription", SUBSCRIPTION)];
    gcs.put_object(&bucket, &taken.name, b"not ours", &other).await?;
    let mut writes = Vec::new();
    for (sink, spec) in [(&sink, &first), (&sink, &first), (&sink, &taken), (&elsewhere, &first)] {
        let written = sink.write(spec, Bytes::from_static(b"first")).await;
        writes.push(written.map_err(|e| e.kind));
    }

    let stored = gcs.download(&bucket, &first.name).await?;
    let object = gcs.object(&bucket, &first.name).await?;
    assert_eq!(object["bucket"], bucket.as_str(), "{object}");
    let kept = ["name", "size", "metadata", "contentEncoding", "storageClass", "cacheControl"];
    let mut resource: Vec<_> = kept.into_iter().map(|k| (k, object[k].clone())).collect();
    let custom_time = Timestamp::try_from(object["customTime"].as_str().unwrap_or_default())?;
    resource.push(("customTime", Value::String(String::from(custom_time))));
    let listing = gcs.list_objects(&bucket).await?;
    Ok(Outcomes { writes, stored, resource, listing })
}

/// A gzipped text object of message `id`, with a custom time, as the worker describes one.
fn spec(name: &str, id: &str) -> ObjectSpec {
    let metadata = [("message_id", id), ("subscription", SUBSCRIPTION)];
    ObjectSpec {
        name: name.into(),
        content_type: TEXT.into(),
        metadata: metadata.into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        text: true,
        gzip: true,
        custom_time: Some(Timestamp::clamp(1_796_601_600, 123_000_000)),
    }
}
