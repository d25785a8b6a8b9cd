//! The sink: writes one message to one Cloud Storage object, create-only.
//!
//! The write carries `ifGenerationMatch=0`, so it succeeds only if no object of that name exists.
//! Because the name is a function of the message ([`crate::object`]), a precondition failure means
//! an earlier delivery may already have stored this message. The sink reads that object's
//! metadata (with [`MetadataReader`], from the JSON object resource, whatever its keys): when it
//! names this message (its `message_id` and `subscription`), the write is reported as
//! [`Written::AlreadyExisted`] and the caller acks, which is how redelivery never duplicates
//! data; when it names another message, or none, the write fails with
//! [`FailureKind::NameCollision`] and the object is left as it is.

mod metadata;
pub(crate) mod retries;

use crate::clients::StorageClients;
use crate::object::{ObjectSettings, ObjectSpec};
use bytes::Bytes;
use google_cloud_storage::client::Storage;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

pub use metadata::{MetadataReader, ReadError};

/// What a successful write did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Written {
    /// The object was created by this write.
    Created,
    /// The object already existed and its metadata names this message: a previous delivery of
    /// the same message wrote it.
    AlreadyExisted,
}

/// Why a write failed, in the terms the pipeline and the logs need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// The bucket does not exist (HTTP 404). Needs an operator; redelivery succeeds once fixed.
    BucketNotFound,
    /// Credentials lack `storage.objects.create` on the bucket (HTTP 401/403).
    PermissionDenied,
    /// The service refused the request for good (another 4xx): the same write will fail again.
    Rejected,
    /// Network trouble, throttling or 5xx, after the client's own retries.
    Transient,
    /// The write, retries included, took longer than `WRITE_TIMEOUT_SECS` (a hung connection).
    Timeout,
    /// An object of this name exists and its metadata names another message (or none): two
    /// sources share the bucket's names, or someone else created the object. It is never
    /// touched; the message must not be acked in its place.
    NameCollision,
}

impl FailureKind {
    /// Whether the failure is the bucket's, so every write would meet it now (an outage,
    /// throttling, a hung connection, a missing bucket or permission), rather than this
    /// message's alone (its name is taken by another object, or the bucket refuses this name or
    /// object).
    pub fn is_bucket_wide(self) -> bool {
        match self {
            FailureKind::BucketNotFound
            | FailureKind::PermissionDenied
            | FailureKind::Transient
            | FailureKind::Timeout => true,
            FailureKind::Rejected | FailureKind::NameCollision => false,
        }
    }

    /// A stable name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::BucketNotFound => "bucket_not_found",
            FailureKind::PermissionDenied => "permission_denied",
            FailureKind::Rejected => "rejected",
            FailureKind::Transient => "transient",
            FailureKind::Timeout => "timeout",
            FailureKind::NameCollision => "name_collision",
        }
    }
}

/// A failed write; the message must be nacked.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", .kind.as_str())]
pub struct WriteError {
    pub kind: FailureKind,
    source: Cause,
}

/// What a [`WriteError`] comes from.
#[derive(Debug, thiserror::Error)]
enum Cause {
    #[error(transparent)]
    Storage(#[from] google_cloud_storage::Error),
    /// The existing object's metadata could not be read.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The existing object's metadata, as found: `Debug`-quoted in the message, since anyone
    /// who can create objects chose it.
    #[error("the existing object is message {message_id:?} of subscription {subscription:?}")]
    Collision { message_id: Option<String>, subscription: Option<String> },
}

impl WriteError {
    fn storage(e: google_cloud_storage::Error) -> Self {
        Self { kind: classify(&e), source: Cause::Storage(e) }
    }
}

/// How a write ended, and whether storage pushed back on the way: a 429 or 503 answered to an
/// attempt that the client then retried, into success or not.
#[derive(Debug)]
pub struct Attempted {
    pub result: Result<Written, WriteError>,
    pub pushed_back: bool,
}

/// Writes objects into one bucket through one shared storage client.
#[derive(Clone, Debug)]
pub struct Sink {
    client: Storage,
    /// Reads an existing object's metadata when a write meets one.
    metadata: MetadataReader,
    /// The bucket's name, for the metadata reader.
    bucket: String,
    /// The bucket in the form the client wants: `projects/_/buckets/NAME`.
    bucket_path: String,
    /// Bound on one write, retries included. The client's retry policy stops starting attempts
    /// after a time limit, but has no per-attempt timeout: a connection that hangs would hold
    /// the message (and a write permit) until its lease ran out.
    write_timeout: Duration,
    /// Storage class, cache control and encryption key of every object.
    settings: ObjectSettings,
}

impl Sink {
    pub fn new(clients: StorageClients, bucket: &str, write_timeout: Duration) -> Self {
        Self {
            client: clients.storage,
            metadata: clients.metadata,
            bucket: bucket.to_string(),
            bucket_path: format!("projects/_/buckets/{bucket}"),
            write_timeout,
            settings: ObjectSettings::default(),
        }
    }

    /// Writes objects with `settings`' storage class, cache control and KMS key (the content
    /// type, encoding and custom time come with each [`ObjectSpec`]).
    pub fn with_settings(mut self, settings: &ObjectSettings) -> Self {
        self.settings = settings.clone();
        self
    }

    /// Creates the object described by `spec` with `data` as its body, unless it exists.
    ///
    /// `data` is the message's own buffer (`Bytes` is reference-counted), so no copy is made.
    pub async fn write(&self, spec: &ObjectSpec, data: Bytes) -> Result<Written, WriteError> {
        self.attempt(spec, data).await.result
    }

    /// [`Sink::write`], telling whether storage pushed back on the way, which the client's
    /// retries hide from the result (`sink::retries`).
    pub async fn attempt(&self, spec: &ObjectSpec, data: Bytes) -> Attempted {
        let data = match spec.gzip {
            true => gzipped(data).await,
            false => Ok(data),
        };
        let policies = retries::Policies::new(self.write_timeout);
        let attempts = policies.attempts.clone();
        let result = match data {
            Ok(data) => self.create(spec, data, policies).await,
            Err(e) => Err(e),
        };
        Attempted { result, pushed_back: attempts.pushed_back() }
    }

    async fn create(
        &self,
        spec: &ObjectSpec,
        data: Bytes,
        policies: retries::Policies,
    ) -> Result<Written, WriteError> {
        // Boxed: the client's upload future is about 32 KB. Inline, it would make every message
        // task that large from the moment it is spawned (and be copied on each move); boxed,
        // those bytes are allocated only while the write runs, and made in place.
        let attempt = boxed(|| async {
            let mut write = self
                .client
                .write_object(&self.bucket_path, &spec.name, data)
                .with_retry_policy(policies.retry)
                .with_backoff_policy(policies.backoff)
                .set_if_generation_match(0)
                .set_content_type(&spec.content_type)
                .set_metadata(spec.metadata.iter().map(|(k, v)| (k.as_str(), v.as_str())));
            // Each setting is sent only when set: unset, the bucket's defaults apply as before.
            if spec.gzip {
                write = write.set_content_encoding("gzip");
            }
            if let Some(time) = spec.custom_time {
                write = write.set_custom_time(time);
            }
            let stored = &self.settings;
            if let Some(class) = &stored.storage_class {
                write = write.set_storage_class(class);
            }
            if let Some(cache_control) = &stored.cache_control {
                write = write.set_cache_control(cache_control);
            }
            if let Some(key) = &stored.kms_key {
                write = write.set_kms_key(key);
            }
            let created = write
                // Below the client's resumable threshold (16 MiB; Pub/Sub messages are at most
                // 10 MB) this is a single multipart upload.
                .send_buffered()
                .await;
            match created {
                Ok(_) => Ok(Written::Created),
                Err(e) if is_precondition_failure(&e) => self.existing(spec).await,
                // Cloud Storage may answer 403 instead of 412 when the caller may create objects
                // but not read them; with `storage.objects.get`, a read of this one name tells
                // "already written" from "forbidden".
                Err(e) if is_forbidden(&e) => match self.existing(spec).await {
                    Err(WriteError { source: Cause::Read(_), .. }) => Err(WriteError::storage(e)),
                    found => found,
                },
                Err(e) => Err(WriteError::storage(e)),
            }
        });
        let Ok(result) = tokio::time::timeout(self.write_timeout, attempt).await else {
            let message = format!("no answer within {:?} (WRITE_TIMEOUT_SECS)", self.write_timeout);
            let source = google_cloud_storage::Error::timeout(message);
            return Err(WriteError { kind: FailureKind::Timeout, source: source.into() });
        };
        result
    }

    /// The object of this name exists: is it this message's? Only its metadata is read. A
    /// failed read is a transient failure, as the object may be gone by then (a redelivery then
    /// writes it).
    async fn existing(&self, spec: &ObjectSpec) -> Result<Written, WriteError> {
        let found = match self.metadata.metadata(&self.bucket, &spec.name).await {
            Ok(found) => found,
            Err(e) => {
                let kind = match e.http_status() {
                    Some(401 | 403) => FailureKind::PermissionDenied,
                    _ => FailureKind::Transient,
                };
                return Err(WriteError { kind, source: Cause::Read(e) });
            }
        };
        if same_message(&found, spec) {
            return Ok(Written::AlreadyExisted);
        }
        let [message_id, subscription] =
            ["message_id", "subscription"].map(|key| found.get(key).cloned());
        let source = Cause::Collision { message_id, subscription };
        Err(WriteError { kind: FailureKind::NameCollision, source })
    }
}

/// The future `make` returns, made straight in its heap slot. `Box::pin(future)` makes it on the
/// stack and then copies all of it, which for the storage client's upload future (32 KB) was an
/// eighth of the worker's instructions per message (callgrind).
fn boxed<F: Future>(make: impl FnOnce() -> F) -> Pin<Box<F>> {
    Box::into_pin(Box::write(Box::new_uninit(), make()))
}

/// Whether an existing object's metadata names the message `spec` describes: its id (unique
/// per topic only) and its subscription (which belongs to one topic) must both match.
fn same_message(found: &HashMap<String, String>, spec: &ObjectSpec) -> bool {
    ["message_id", "subscription"].iter().all(|key| {
        let ours = spec.metadata.get(*key);
        ours.is_some() && found.get(*key) == ours
    })
}

/// `data` gzipped, on a blocking thread: a 10 MB message takes tens of milliseconds of CPU,
/// which must not stall the runtime's other tasks. Deterministic (flate2's default level, no
/// name or time in the header), although nothing relies on it: the name alone makes a
/// redelivery land on the existing object.
async fn gzipped(data: Bytes) -> Result<Bytes, WriteError> {
    let failed = |e: String| WriteError {
        kind: FailureKind::Rejected,
        source: google_cloud_storage::Error::io(format!("gzip failed: {e}")).into(),
    };
    match tokio::task::spawn_blocking(move || crate::object::gzip(&data)).await {
        Ok(Ok(body)) => Ok(Bytes::from(body)),
        Ok(Err(e)) => Err(failed(e.to_string())),
        Err(e) => Err(failed(e.to_string())),
    }
}

/// Only a precondition failure proves the object exists: HTTP 412 on the JSON API (whatever
/// status name its body carries), or `FAILED_PRECONDITION` on gRPC, which has no HTTP status.
/// Any other error with a `FAILED_PRECONDITION` body must not be mistaken for it, or a message
/// would be acked without its object.
fn is_precondition_failure(e: &google_cloud_storage::Error) -> bool {
    use google_cloud_gax::error::rpc::Code;
    match e.http_status_code() {
        Some(code) => code == 412,
        None => e.status().is_some_and(|s| s.code == Code::FailedPrecondition),
    }
}

fn is_forbidden(e: &google_cloud_storage::Error) -> bool {
    use google_cloud_gax::error::rpc::Code;
    e.http_status_code() == Some(403)
        || e.status().is_some_and(|s| s.code == Code::PermissionDenied)
}

fn classify(e: &google_cloud_storage::Error) -> FailureKind {
    use google_cloud_gax::error::rpc::Code;
    match (e.http_status_code(), e.status().map(|s| s.code)) {
        (Some(404), _) | (_, Some(Code::NotFound)) => FailureKind::BucketNotFound,
        (Some(401 | 403), _) | (_, Some(Code::PermissionDenied | Code::Unauthenticated)) => {
            FailureKind::PermissionDenied
        }
        (Some(408 | 429), _) => FailureKind::Transient,
        (Some(code), _) if (400..500).contains(&code) => FailureKind::Rejected,
        _ => FailureKind::Transient,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use google_cloud_gax::error::rpc::{Code, Status};
    use google_cloud_storage::Error;

    fn http(code: u16, status: &str) -> Error {
        let body = format!(r#"{{"error":{{"code":{code},"message":"m","status":"{status}"}}}}"#);
        Error::http(code, Default::default(), Bytes::from(body))
    }

    fn grpc(code: Code) -> Error {
        Error::service(Status::default().set_code(code).set_message("m"))
    }

    #[test]
    fn only_a_412_or_a_grpc_failed_precondition_means_already_written() {
        assert!(is_precondition_failure(&http(412, "FAILED_PRECONDITION")));
        assert!(is_precondition_failure(&grpc(Code::FailedPrecondition)));
        assert!(!is_precondition_failure(&http(400, "FAILED_PRECONDITION")));
        assert!(!is_precondition_failure(&http(409, "ABORTED")));
        assert!(!is_precondition_failure(&http(503, "UNAVAILABLE")));
    }

    #[test]
    fn only_a_403_or_a_grpc_permission_denied_asks_whether_the_object_exists() {
        assert!(is_forbidden(&http(403, "PERMISSION_DENIED")));
        assert!(is_forbidden(&grpc(Code::PermissionDenied)));
        assert!(!is_forbidden(&http(401, "UNAUTHENTICATED")));
        assert!(!is_forbidden(&http(404, "NOT_FOUND")));
    }

    #[test]
    fn an_existing_object_is_this_message_s_only_if_id_and_subscription_match() {
        let metadata = [("message_id", "42"), ("subscription", "projects/p/subscriptions/s")];
        let spec = ObjectSpec {
            name: "42.txt".into(),
            content_type: crate::object::TEXT.into(),
            metadata: metadata.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            text: true,
            gzip: false,
            custom_time: None,
        };
        let found = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
        };
        let extra = [metadata[0], metadata[1], ("delivery_attempt", "3")];
        assert!(same_message(&found(&extra), &spec));
        let other_id = [("message_id", "43"), metadata[1]];
        let other_subscription = [metadata[0], ("subscription", "projects/q/subscriptions/s")];
        for other in [&other_id[..], &other_subscription, &metadata[..1], &[]] {
            assert!(!same_message(&found(other), &spec), "{other:?}");
        }
    }

    #[test]
    fn failures_are_classified_for_logs_and_metrics() {
        assert_eq!(classify(&http(404, "NOT_FOUND")), FailureKind::BucketNotFound);
        assert_eq!(classify(&grpc(Code::NotFound)), FailureKind::BucketNotFound);
        assert_eq!(classify(&http(403, "PERMISSION_DENIED")), FailureKind::PermissionDenied);
        assert_eq!(classify(&http(401, "UNAUTHENTICATED")), FailureKind::PermissionDenied);
        assert_eq!(classify(&http(400, "INVALID_ARGUMENT")), FailureKind::Rejected);
        assert_eq!(classify(&http(429, "RESOURCE_EXHAUSTED")), FailureKind::Transient);
        assert_eq!(classify(&http(503, "UNAVAILABLE")), FailureKind::Transient);
        assert_eq!(classify(&grpc(Code::Unavailable)), FailureKind::Transient);
        assert_eq!(classify(&Error::io("connection reset")), FailureKind::Transient);
    }
}
