//! Reads an existing object's custom metadata from the object resource of Cloud Storage's JSON
//! API (`objects.get`), not from the headers of a download.
//!
//! A download (`alt=media`) returns each metadata entry as an `x-goog-meta-KEY` header, and Cloud
//! Storage sends the key byte for byte. Pub/Sub accepts attribute keys that are not valid header
//! names (`app/version`, `a b`), and the worker stores attribute keys as metadata keys, so such an
//! object cannot be read back over HTTP/1.1 with headers: the client fails on the header and
//! the redelivery that needed the read would be nacked until it is dead-lettered. In the object
//! resource the metadata is a JSON map, whatever its keys, with no bound on how many entries
//! there are (a download's headers count against the HTTP client's 100). Reading the resource
//! also needs no decryption, so it works for objects written with a KMS key version that has
//! since been disabled.

use google_cloud_auth::credentials::{CacheableResource, Credentials};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use std::collections::HashMap;

/// What an object name keeps unescaped in a URL path segment: RFC 3986's unreserved characters.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// Reads object resources with the same credentials and endpoint as the storage client.
#[derive(Clone, Debug)]
pub struct MetadataReader {
    http: reqwest::Client,
    /// `https://storage.googleapis.com`, or the emulator's address.
    endpoint: String,
    credentials: Credentials,
}

/// Why an object's metadata could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The service answered with an HTTP error status.
    #[error("reading the object's metadata answered HTTP {status}: {body}")]
    Status { status: u16, body: String },
    /// No answer: the connection failed or broke.
    #[error("reading the object's metadata failed: {0}")]
    Transport(#[source] reqwest::Error),
    /// No access token could be had.
    #[error("no credentials to read the object's metadata: {0}")]
    Credentials(#[source] google_cloud_auth::errors::CredentialsError),
    /// The answer was not an object resource.
    #[error("the object resource could not be decoded: {0}")]
    Decode(#[source] serde_json::Error),
}

impl ReadError {
    /// The HTTP status, when the service answered with one.
    pub fn http_status(&self) -> Option<u16> {
        match self {
            ReadError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// The part of the object resource this reader asks for (`fields=metadata`).
#[derive(serde::Deserialize)]
struct Resource {
    #[serde(default)]
    metadata: HashMap<String, String>,
}

impl MetadataReader {
    /// A reader for `endpoint` (no trailing `/`) with `credentials`.
    pub fn new(endpoint: &str, credentials: Credentials) -> Result<Self, reqwest::Error> {
        // HTTP/1.1 as the storage client; the answers are small JSON documents.
        let http = reqwest::Client::builder().http1_only().build()?;
        let endpoint = endpoint.trim_end_matches('/').to_string();
        Ok(Self { http, endpoint, credentials })
    }

    /// The custom metadata of object `name` in `bucket` (empty when it has none).
    pub async fn metadata(
        &self,
        bucket: &str,
        name: &str,
    ) -> Result<HashMap<String, String>, ReadError> {
        let url = format!(
            "{}/storage/v1/b/{}/o/{}?fields=metadata",
            self.endpoint,
            utf8_percent_encode(bucket, SEGMENT),
            utf8_percent_encode(name, SEGMENT)
        );
        let headers = match self.credentials.headers(http::Extensions::new()).await {
            Ok(CacheableResource::New { data, .. }) => data,
            Ok(CacheableResource::NotModified) => http::HeaderMap::new(),
            Err(e) => return Err(ReadError::Credentials(e)),
        };
        let answer =
            self.http.get(url).headers(headers).send().await.map_err(ReadError::Transport)?;
        let status = answer.status();
        let body = answer.bytes().await.map_err(ReadError::Transport)?;
        if !status.is_success() {
            let body = String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned();
            return Err(ReadError::Status { status: status.as_u16(), body });
        }
        let resource: Resource = serde_json::from_slice(&body).map_err(ReadError::Decode)?;
        Ok(resource.metadata)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_names_are_one_path_segment() {
        let name = "dt=2026-12-07/a b/é?#%.txt";
        let encoded = utf8_percent_encode(name, SEGMENT).to_string();
        assert_eq!(encoded, "dt%3D2026-12-07%2Fa%20b%2F%C3%A9%3F%23%25.txt");
    }

    #[test]
    fn a_resource_without_metadata_has_none() {
        let resource: Resource = serde_json::from_str("{}").expect("decodes");
        assert!(resource.metadata.is_empty());
        let resource: Resource =
            serde_json::from_str(r#"{"metadata":{"app/version":"1","a b":"2"}}"#).expect("decodes");
        assert_eq!(resource.metadata["app/version"], "1");
        assert_eq!(resource.metadata["a b"], "2");
    }
}
