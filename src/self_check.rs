//! The start-up check: may these credentials create objects in the bucket, and read one?
//!
//! The worker needs `storage.objects.create` for its create-only writes and `storage.objects.get`
//! to tell an existing object from a refusal when Cloud Storage answers a write with 403
//! ([`crate::sink`]); `deploy/setup` grants exactly these two through a custom role on the
//! bucket, which has no `storage.buckets.get`. So the check asks the bucket's
//! `testIamPermissions`, which any caller may use and which answers with the subset of the asked
//! permissions the caller holds. A worker that lacks one stops at start with one line naming the
//! bucket and the permission, instead of nacking messages into the dead-letter topic. Emulators
//! lack the API: `STARTUP_CHECK` turns it off (and `auto` does so whenever
//! `STORAGE_EMULATOR_HOST` is set). The subscription needs no check of its own: StreamingPull
//! fails at once, with the subscription's name, when it is missing or forbidden.
//!
//! With `KMS_KEY_NAME`, the check also writes an empty object with that key, a new one at each
//! start ([`check_kms_key`]): Cloud Storage uses the key as the bucket's service agent, whose grant on
//! the key no API lets the worker read, so only a write shows whether the key can be used.

use google_cloud_storage::client::{Storage, StorageControl};
use sha2::{Digest, Sha256};

/// The permissions the worker needs on its bucket.
pub const REQUIRED_PERMISSIONS: [&str; 2] = ["storage.objects.create", "storage.objects.get"];

/// Why the worker cannot start.
#[derive(Debug, thiserror::Error)]
pub enum SelfCheckError {
    #[error("bucket gs://{bucket} does not exist (BUCKET_NAME)")]
    BucketNotFound { bucket: String },
    #[error(
        "the worker's credentials lack {} on bucket gs://{bucket} (grant the worker's service \
         account the role deploy/setup creates, with storage.objects.create and \
         storage.objects.get, on the bucket)",
        .missing.join(" and ")
    )]
    MissingPermission { bucket: String, missing: Vec<&'static str> },
    #[error(
        "the start-up check of bucket gs://{bucket} failed (STARTUP_CHECK=off skips it): {source}"
    )]
    Failed { bucket: String, source: google_cloud_storage::Error },
    #[error(
        "objects cannot be encrypted with KMS key {key} (KMS_KEY_NAME) in bucket gs://{bucket}: \
         the key must exist, be enabled and be in the bucket's location, and the project's Cloud \
         Storage service agent needs roles/cloudkms.cryptoKeyEncrypterDecrypter on it (deploy/setup \
         grants it): {source}"
    )]
    KmsKey { key: String, bucket: String, source: google_cloud_storage::Error },
}

/// Where [`check_kms_key`] writes at this start: outside any `OBJECT_PREFIX`, in a folder that
/// tools which read a bucket as a table (Spark, Hive, BigQuery external tables) skip, as its name
/// starts with `_`; a folder per key, named by a hash of the key, and an object per start, named
/// by `start` (e.g. the time and a random number). One empty object is left per start with a
/// key: a lifecycle rule on the prefix `_pubsub-gcs-worker/` can delete them.
pub fn kms_probe_name(key: &str, start: &str) -> String {
    let hash = Sha256::digest(key.as_bytes());
    let hex: String = hash[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("_pubsub-gcs-worker/kms-check-{hex}/{start}")
}

/// A name for this start's probe: the time in UTC and a random number, so that no start meets
/// an earlier start's probe.
fn start_name() -> String {
    use std::hash::{BuildHasher, RandomState};
    let now = time::OffsetDateTime::now_utc();
    let format = time::macros::format_description!(
        "[year][month][day]T[hour][minute][second].[subsecond digits:6]Z"
    );
    let stamp = now.format(format).unwrap_or_else(|_| now.unix_timestamp().to_string());
    format!("{stamp}-{:016x}", RandomState::new().hash_one(std::process::id()))
}

/// Creates an empty object with `key` under a name no earlier start used: created, the key can
/// be used now. Each start writes a new object and reads none back, because an object written
/// at an earlier start is encrypted with the key version that was primary then, and reading it
/// would fail once that version is disabled after a rotation, though writes with the new
/// primary version work. Any answer but success means the key cannot be used (or the bucket
/// refuses the write), and the worker stops instead of nacking every message.
pub async fn check_kms_key(
    storage: &Storage,
    bucket: &str,
    key: &str,
) -> Result<(), SelfCheckError> {
    let bucket_path = format!("projects/_/buckets/{bucket}");
    let mut attempts = 0;
    let result = loop {
        let written = storage
            .write_object(&bucket_path, kms_probe_name(key, &start_name()), "")
            .set_if_generation_match(0)
            .set_kms_key(key)
            .send_buffered()
            .await;
        attempts += 1;
        match written {
            // Someone took this start's name (a clock set back, a copy of the process): another.
            Err(e) if e.http_status_code() == Some(412) && attempts < 3 => continue,
            written => break written.map(drop),
        }
    };
    result.map_err(|source| SelfCheckError::KmsKey {
        key: key.to_string(),
        bucket: bucket.to_string(),
        source,
    })
}

/// Checks that the caller holds [`REQUIRED_PERMISSIONS`] on `bucket`.
pub async fn check_bucket(control: &StorageControl, bucket: &str) -> Result<(), SelfCheckError> {
    let response = control
        .test_iam_permissions()
        .set_resource(format!("projects/_/buckets/{bucket}"))
        .set_permissions(REQUIRED_PERMISSIONS)
        .send()
        .await;
    evaluate(bucket, response.map(|r| r.permissions))
}

/// Turns the answer of `testIamPermissions` into the check's verdict.
fn evaluate(
    bucket: &str,
    granted: Result<Vec<String>, google_cloud_storage::Error>,
) -> Result<(), SelfCheckError> {
    use google_cloud_gax::error::rpc::Code;
    let bucket = bucket.to_string();
    match granted {
        Ok(granted) => {
            let missing: Vec<&str> = REQUIRED_PERMISSIONS
                .into_iter()
                .filter(|p| !granted.iter().any(|g| g == p))
                .collect();
            match missing.is_empty() {
                true => Ok(()),
                false => Err(SelfCheckError::MissingPermission { bucket, missing }),
            }
        }
        Err(e)
            if e.http_status_code() == Some(404)
                || e.status().is_some_and(|s| s.code == Code::NotFound) =>
        {
            Err(SelfCheckError::BucketNotFound { bucket })
        }
        Err(e) if e.status().is_some_and(|s| s.code == Code::PermissionDenied) => {
            let missing = REQUIRED_PERMISSIONS.to_vec();
            Err(SelfCheckError::MissingPermission { bucket, missing })
        }
        Err(source) => Err(SelfCheckError::Failed { bucket, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use google_cloud_gax::error::rpc::{Code, Status};

    fn service_error(code: Code) -> google_cloud_storage::Error {
        google_cloud_storage::Error::service(Status::default().set_code(code).set_message("x"))
    }

    #[test]
    fn both_permissions_pass_and_a_missing_one_is_named() {
        let granted = |p: &[&str]| evaluate("b", Ok(p.iter().map(|p| p.to_string()).collect()));
        assert!(granted(&REQUIRED_PERMISSIONS).is_ok());
        let missing = granted(&["storage.objects.create"]).expect_err("missing").to_string();
        assert!(
            missing
                .starts_with("the worker's credentials lack storage.objects.get on bucket gs://b"),
            "{missing}"
        );
        let none = granted(&[]).expect_err("missing").to_string();
        assert!(none.contains("lack storage.objects.create and storage.objects.get"), "{none}");
    }

    #[test]
    fn an_unusable_kms_key_is_named_with_what_to_grant() {
        let body = r#"{"error":{"code":403,"message":"Permission denied on Cloud KMS key."}}"#;
        let source = google_cloud_storage::Error::http(403, Default::default(), body.into());
        let key = "projects/p/locations/us/keyRings/r/cryptoKeys/k".to_string();
        let e = SelfCheckError::KmsKey { key: key.clone(), bucket: "b".into(), source }.to_string();
        for part in [
            key.as_str(),
            "KMS_KEY_NAME",
            "gs://b",
            "cryptoKeyEncrypterDecrypter",
            "deploy/setup",
            "Permission denied on Cloud KMS key",
        ] {
            assert!(e.contains(part), "{part}: {e}");
        }
        let name = kms_probe_name(&key, "s");
        assert!(name.starts_with("_pubsub-gcs-worker/kms-check-") && name.len() == 47, "{name}");
        let other = "projects/p/locations/us/keyRings/r/cryptoKeys/other";
        assert_ne!(name, kms_probe_name(other, "s"));
        assert_ne!(start_name(), start_name(), "each start its own name");
    }

    #[test]
    fn each_failure_names_the_bucket_and_what_to_do() {
        let not_found =
            evaluate("b", Err(service_error(Code::NotFound))).expect_err("not found").to_string();
        assert_eq!(not_found, "bucket gs://b does not exist (BUCKET_NAME)");
        let other =
            evaluate("b", Err(service_error(Code::Unavailable))).expect_err("failed").to_string();
        assert!(other.contains("STARTUP_CHECK=off"), "{other}");
    }
}
