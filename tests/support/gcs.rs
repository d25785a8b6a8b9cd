//! fake-gcs-server JSON API helper, for creating buckets and checking what the worker wrote.
//!
//! Caveat: fake-gcs-server does not keep the content type that the Rust storage client
//! sends in its multipart metadata (objects read back as `application/octet-stream` or
//! similar). To check content types, route the worker through a [`super::Proxy`] and
//! inspect [`super::Proxy::recorded_uploads`].

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::{check, http_client, url_encode};

/// One object as listed by the JSON API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    pub name: String,
    pub size: u64,
    pub content_type: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub generation: String,
}

/// REST client for one fake-gcs-server. Build one per test (`Emulators::gcs()`).
#[derive(Clone)]
pub struct Gcs {
    http: reqwest::Client,
    base: String,
    project: String,
}

impl Gcs {
    /// `base` is `http://127.0.0.1:PORT` (the `STORAGE_EMULATOR_HOST` format).
    pub fn new(base: &str, project: &str) -> Self {
        Gcs {
            http: http_client(),
            base: base.trim_end_matches('/').to_string(),
            project: project.to_string(),
        }
    }

    /// The bucket argument format of the Rust storage client: `projects/_/buckets/B`.
    pub fn bucket_path(bucket: &str) -> String {
        format!("projects/_/buckets/{bucket}")
    }

    pub async fn create_bucket(&self, bucket: &str) -> Result<()> {
        let what = format!("create bucket {bucket}");
        let r = self
            .http
            .post(format!(
                "{}/storage/v1/b?project={}",
                self.base,
                url_encode(&self.project)
            ))
            .json(&json!({ "name": bucket }))
            .send()
            .await;
        check(r.with_context(|| what.clone())?, &what).await?;
        Ok(())
    }

    /// Deletes every object, then the bucket (the API refuses to delete a non-empty one).
    pub async fn delete_bucket(&self, bucket: &str) -> Result<()> {
        for o in self.list_objects(bucket).await? {
            self.delete_object(bucket, &o.name).await?;
        }
        let what = format!("delete bucket {bucket}");
        let r = self
            .http
            .delete(format!("{}/storage/v1/b/{}", self.base, url_encode(bucket)))
            .send()
            .await;
        check(r.with_context(|| what.clone())?, &what).await?;
        Ok(())
    }

    /// All objects of the bucket (follows `nextPageToken`), in name order.
    pub async fn list_objects(&self, bucket: &str) -> Result<Vec<ObjectInfo>> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut url = format!(
                "{}/storage/v1/b/{}/o?maxResults=1000",
                self.base,
                url_encode(bucket)
            );
            if let Some(t) = &token {
                url.push_str(&format!("&pageToken={}", url_encode(t)));
            }
            let what = format!("list objects of {bucket}");
            let r = self.http.get(&url).send().await;
            let v: Value = check(r.with_context(|| what.clone())?, &what)
                .await?
                .json()
                .await?;
            for item in v["items"].as_array().map(Vec::as_slice).unwrap_or_default() {
                out.push(object_info(item)?);
            }
            match v["nextPageToken"].as_str() {
                Some(t) if !t.is_empty() => token = Some(t.to_string()),
                _ => break,
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// The object's bytes, exactly as stored.
    pub async fn download(&self, bucket: &str, name: &str) -> Result<Vec<u8>> {
        let what = format!("download gs://{bucket}/{name}");
        let r = self
            .http
            .get(format!(
                "{}/download/storage/v1/b/{}/o/{}?alt=media",
                self.base,
                url_encode(bucket),
                url_encode(name)
            ))
            .send()
            .await;
        Ok(check(r.with_context(|| what.clone())?, &what)
            .await?
            .bytes()
            .await?
            .to_vec())
    }

    /// Uploads (or overwrites) an object, e.g. to pre-create a name the worker will meet.
    pub async fn put_object(&self, bucket: &str, name: &str, bytes: &[u8]) -> Result<()> {
        let what = format!("upload gs://{bucket}/{name}");
        let r = self
            .http
            .post(format!(
                "{}/upload/storage/v1/b/{}/o?uploadType=media&name={}",
                self.base,
                url_encode(bucket),
                url_encode(name)
            ))
            .header("content-type", "application/octet-stream")
            .body(bytes.to_vec())
            .send()
            .await;
        check(r.with_context(|| what.clone())?, &what).await?;
        Ok(())
    }

    pub async fn delete_object(&self, bucket: &str, name: &str) -> Result<()> {
        let what = format!("delete gs://{bucket}/{name}");
        let r = self
            .http
            .delete(format!(
                "{}/storage/v1/b/{}/o/{}",
                self.base,
                url_encode(bucket),
                url_encode(name)
            ))
            .send()
            .await;
        check(r.with_context(|| what.clone())?, &what).await?;
        Ok(())
    }

    /// Polls the bucket until it holds at least `n` objects and returns the listing; errors
    /// after `timeout` with the count last seen (so a stuck worker fails the test with a
    /// number instead of hanging it). The poll interval grows with the listing time so that
    /// polling a large bucket does not starve the worker of CPU.
    pub async fn wait_for_objects(
        &self,
        bucket: &str,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<ObjectInfo>> {
        let deadline = Instant::now() + timeout;
        loop {
            let t = Instant::now();
            let objs = self.list_objects(bucket).await?;
            if objs.len() >= n {
                return Ok(objs);
            }
            if Instant::now() >= deadline {
                bail!(
                    "gs://{bucket}: {} objects after {timeout:?}, expected at least {n}",
                    objs.len()
                );
            }
            let pause = (t.elapsed() * 2).clamp(Duration::from_millis(100), Duration::from_secs(2));
            tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now()))).await;
        }
    }
}

fn object_info(item: &Value) -> Result<ObjectInfo> {
    let name = item["name"]
        .as_str()
        .context("object without name")?
        .to_string();
    // The JSON API sends int64 fields as strings.
    let size = match &item["size"] {
        Value::String(s) => s.parse().with_context(|| format!("size of {name}"))?,
        v => v.as_u64().unwrap_or(0),
    };
    let metadata = item["metadata"]
        .as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default();
    Ok(ObjectInfo {
        name,
        size,
        content_type: item["contentType"].as_str().map(str::to_string),
        metadata,
        generation: match &item["generation"] {
            Value::String(s) => s.clone(),
            v => v.to_string(),
        },
    })
}
