//! The start-up check: may these credentials create objects in the bucket?
//!
//! The least-privilege role `roles/storage.objectCreator` has no `storage.buckets.get`, so the
//! check asks the bucket's `testIamPermissions`, which any caller may use and which answers with
//! the subset of the asked permissions the caller holds. A worker that cannot write then stops
//! at start with one line naming the bucket and the permission, instead of nacking every message
//! into the dead-letter topic. Emulators lack the API: `STARTUP_CHECK` turns it off (and `auto`
//! does so whenever `STORAGE_EMULATOR_HOST` is set). The subscription needs no check of its own:
//! StreamingPull fails at once, with the subscription's name, when it is missing or forbidden.

use google_cloud_storage::client::StorageControl;

/// The permission a create-only write needs.
pub const REQUIRED_PERMISSION: &str = "storage.objects.create";

/// Why the worker cannot start.
#[derive(Debug, thiserror::Error)]
pub enum SelfCheckError {
    #[error("bucket gs://{bucket} does not exist (BUCKET_NAME)")]
    BucketNotFound { bucket: String },
    #[error(
        "the worker's credentials lack {REQUIRED_PERMISSION} on bucket gs://{bucket} \
         (grant roles/storage.objectCreator on the bucket to the worker's service account)"
    )]
    MissingPermission { bucket: String },
    #[error(
        "the start-up check of bucket gs://{bucket} failed (STARTUP_CHECK=off skips it): {source}"
    )]
    Failed { bucket: String, source: google_cloud_storage::Error },
}

/// Checks that the caller holds [`REQUIRED_PERMISSION`] on `bucket`.
pub async fn check_bucket(control: &StorageControl, bucket: &str) -> Result<(), SelfCheckError> {
    let response = control
        .test_iam_permissions()
        .set_resource(format!("projects/_/buckets/{bucket}"))
        .set_permissions([REQUIRED_PERMISSION])
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
        Ok(granted) if granted.iter().any(|p| p == REQUIRED_PERMISSION) => Ok(()),
        Ok(_) => Err(SelfCheckError::MissingPermission { bucket }),
        Err(e)
            if e.http_status_code() == Some(404)
                || e.status().is_some_and(|s| s.code == Code::NotFound) =>
        {
            Err(SelfCheckError::BucketNotFound { bucket })
        }
        Err(e) if e.status().is_some_and(|s| s.code == Code::PermissionDenied) => {
            Err(SelfCheckError::MissingPermission { bucket })
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
    fn granted_permission_passes() {
        assert!(evaluate("b", Ok(vec![REQUIRED_PERMISSION.to_string()])).is_ok());
    }

    #[test]
    fn each_failure_names_the_bucket_and_what_to_do() {
        let missing = evaluate("b", Ok(vec![])).expect_err("missing").to_string();
        assert!(missing.contains("storage.objects.create on bucket gs://b"), "{missing}");
        assert!(missing.contains("roles/storage.objectCreator"), "{missing}");

        let not_found =
            evaluate("b", Err(service_error(Code::NotFound))).expect_err("not found").to_string();
        assert_eq!(not_found, "bucket gs://b does not exist (BUCKET_NAME)");

        let other =
            evaluate("b", Err(service_error(Code::Unavailable))).expect_err("failed").to_string();
        assert!(other.contains("STARTUP_CHECK=off"), "{other}");
    }
}
