//! Object settings (`OBJECT_*`, `KMS_KEY_NAME`) on the stored objects, and the create-only
//! guarantee with all of them at once. fake-gcs-server takes the content type from the media part
//! (where the storage client sends none) and ignores the KMS key: those two are read from the
//! upload requests, which a recording proxy keeps.

use crate::support::app::{Fixture, Result, name_stamp, with_vars};
use crate::support::{HttpProxy, Latency, OutMessage, wait_for};
use google_cloud_wkt::Timestamp;
use pubsub_gcs_worker::clients;
use pubsub_gcs_worker::config::Config;
use pubsub_gcs_worker::self_check::{check_kms_key, kms_probe_name};
use std::io::Read as _;
use std::time::Duration;

const KEY: &str = "projects/p/locations/us/keyRings/r/cryptoKeys/k";

/// Every setting shows on each object, a gzip body inflates to the message's bytes exactly, and a
/// redelivery of a message written with them all lands on its object: no second object
/// (`PUBSUB_ENDPOINT` is set too, and the emulator wins over it). The redelivery is real: the
/// proxy holds every answer back past `WRITE_TIMEOUT_SECS`, so the first write stores the object,
/// times out and is nacked; then the proxy answers at once, and the redeliveries meet 412.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_object_setting_is_stored_and_a_redelivery_adds_no_object() -> Result {
    let fx = Fixture::new(true).await?;
    let proxy = HttpProxy::recording(fx.emulators.storage_addr()).await?;
    proxy.set_latency(Latency::fixed(Duration::from_secs(3)));
    let settings = [
        ("OBJECT_CONTENT_TYPE", "{attributes.type|application/json}"),
        ("OBJECT_COMPRESSION", "gzip"),
        ("OBJECT_STORAGE_CLASS", "NEARLINE"),
        ("OBJECT_CACHE_CONTROL", "no-store"),
        ("OBJECT_CUSTOM_TIME", "publish_time"),
        ("KMS_KEY_NAME", KEY),
        ("WRITE_TIMEOUT_SECS", "1"),
        // Nothing listens there: the messages arrive because the emulator variable wins.
        ("PUBSUB_ENDPOINT", "127.0.0.1:1"),
    ];
    let json = br#"{"event":"signup","user":42}"#.repeat(100);
    let messages = [
        OutMessage::new(json.clone()),
        OutMessage::new(vec![0xff, 0xfe, 0x00, 0x80]).attr("type", "image/png"),
        OutMessage::new("a,b\n").attr("type", "text/csv\r\nX-Injected: 1"),
        // Pub/Sub's most attributes, three of them keys that are not valid header names (Cloud
        // Storage sends them byte for byte, as the proxy does): the object's metadata must
        // still read back for the redelivery.
        (0..97)
            .fold(OutMessage::new("many"), |m, i| m.attr(format!("a{i:03}"), "v"))
            .attr("app/version", "1.2")
            .attr("a b", "spaced")
            .attr("k8s.io/name", "worker"),
    ];
    let published = fx.publish(&messages).await?;
    let worker = fx.start_worker(&proxy.url(), &settings).await?;
    fx.gcs.wait_for_objects(&fx.bucket, messages.len(), Duration::from_secs(60)).await?;
    proxy.set_latency(Latency::fixed(Duration::ZERO));
    wait_for(Duration::from_secs(90), "every redelivery to be acked", async || {
        Ok(worker.stats.snapshot().acked == messages.len() as u64)
    })
    .await?;
    let summary = worker.stop().await?;
    let n = messages.len() as u64;
    assert_eq!((summary.written, summary.duplicates, summary.acked), (0, n, n), "{summary:?}");

    let objects = fx.gcs.list_objects(&fx.bucket).await?;
    assert_eq!(objects.len(), messages.len(), "no second object: {objects:?}");
    let uploads = proxy.recorded_uploads();
    for object in &objects {
        let id = &object.metadata["message_id"];
        let sent = &published[id];
        let ext = if std::str::from_utf8(&sent.data).is_ok() { "txt.gz" } else { "bin.gz" };
        let stamp = name_stamp(&object.metadata["publish_time"]);
        assert_eq!(object.name, format!("message_{stamp}_{id}.{ext}"));

        let resource = fx.gcs.object(&fx.bucket, &object.name).await?;
        assert_eq!(resource["contentEncoding"], "gzip", "{resource}");
        assert_eq!(resource["storageClass"], "NEARLINE", "{resource}");
        assert_eq!(resource["cacheControl"], "no-store", "{resource}");
        let published_at = Timestamp::try_from(object.metadata["publish_time"].as_str())?;
        let custom_time = Timestamp::try_from(resource["customTime"].as_str().unwrap_or_default());
        assert_eq!(custom_time?, published_at, "{resource}");

        let stored = fx.gcs.download(&fx.bucket, &object.name).await?;
        assert_eq!(stored.len() as u64, object.size, "the size is the gzip body's");
        let mut inflated = Vec::new();
        flate2::read::GzDecoder::new(stored.as_slice()).read_to_end(&mut inflated)?;
        assert_eq!(inflated, sent.data, "{}", object.name);

        // Every upload of this object (first write and redelivery) carried the same settings.
        let sent_with: Vec<_> = uploads.iter().filter(|u| u["name"] == object.name).collect();
        assert_eq!(sent_with.len(), 2, "a write and a redelivery: {sent_with:?}");
        let content_type = match sent.attributes.get("type").map(String::as_str) {
            Some("image/png") => "image/png",
            // No attribute, or one that is not a media type: the fallback.
            _ => "application/json",
        };
        for upload in sent_with {
            assert_eq!(upload["contentType"], content_type, "{upload}");
            assert_eq!(upload["kmsKeyName"], KEY, "{upload}");
        }
    }
    Ok(())
}

/// The start-up check of `KMS_KEY_NAME` writes an empty object with the key, create-only, a new
/// one at each start, and reads none back: a restart passes even when objects written with an
/// older key version can no longer be read (that version disabled after a rotation), and a write
/// that fails stops the worker with the key named. (The emulator ignores keys: that Cloud
/// Storage refuses an unusable one is not testable here; the proxy answers 403 in its place.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kms_check_writes_with_the_key_at_each_start_and_reads_nothing_back() -> Result {
    let fx = Fixture::new(true).await?;
    let proxy = HttpProxy::recording(fx.emulators.storage_addr()).await?;
    let config = Config::from_vars(with_vars(fx.env(&proxy.url()), &[("KMS_KEY_NAME", KEY)]))?;
    let storage = clients::storage(&config).await?.storage;
    check_kms_key(&storage, &fx.bucket, KEY).await?;
    // The first start's probe no longer reads back, as once its key version is disabled.
    proxy.fail_reads(Some(hyper::StatusCode::FORBIDDEN));
    check_kms_key(&storage, &fx.bucket, KEY).await?;
    proxy.fail_reads(None);
    let objects = fx.gcs.list_objects(&fx.bucket).await?;
    let folder = kms_probe_name(KEY, "");
    assert_eq!(objects.len(), 2, "{objects:?}");
    assert!(objects.iter().all(|o| o.name.starts_with(&folder)), "{objects:?}");
    let uploads = proxy.recorded_uploads();
    assert_eq!(uploads.len(), 2, "{uploads:?}");
    assert!(uploads.iter().all(|u| u["kmsKeyName"] == KEY), "{uploads:?}");

    proxy.fail_uploads(Some(hyper::StatusCode::FORBIDDEN));
    let refused = check_kms_key(&storage, &fx.bucket, KEY).await;
    let error = refused.expect_err("a refused write fails the check").to_string();
    assert!(error.contains(KEY) && error.contains("KMS_KEY_NAME"), "{error}");
    proxy.fail_uploads(None);
    let missing = check_kms_key(&storage, "no-such-bucket-for-kms", KEY).await;
    let error = missing.expect_err("a failed write fails the check").to_string();
    assert!(error.contains(KEY) && error.contains("KMS_KEY_NAME"), "{error}");
    Ok(())
}
