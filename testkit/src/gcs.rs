//! fake-gcs-server's JSON API: create buckets, and read back what the worker wrote (the content
//! type it sent, which fake-gcs-server drops, from a recording [`crate::HttpProxy`]).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::{Value, json};

use crate::rest::{http_client, send, url_encode};

/// One object as listed by the JSON API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    pub name: String,
    pub size: u64,
    pub metadata: BTreeMap<String, String>,
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
        Gcs { http: http_client(), base: base.into(), project: project.into() }
    }

    pub async fn create_bucket(&self, bucket: &str) -> Result<()> {
        let url = format!("{}/storage/v1/b?project={}", self.base, url_encode(&self.project));
        send(self.http.post(url).json(&json!({ "name": bucket })), &format!("create {bucket}"))
            .await?;
        Ok(())
    }

    /// All objects of the bucket (every page), in name order.
    pub async fn list_objects(&self, bucket: &str) -> Result<Vec<ObjectInfo>> {
        let mut out = Vec::new();
        let mut token = String::new();
        loop {
            let (b, t) = (url_encode(bucket), url_encode(&token));
            let url = format!("{}/storage/v1/b/{b}/o?maxResults=1000&pageToken={t}", self.base);
            let page: Value =
                send(self.http.get(url), &format!("list {bucket}")).await?.json().await?;
            for item in page["items"].as_array().into_iter().flatten() {
                out.push(object_info(item)?);
            }
            match page["nextPageToken"].as_str() {
                Some(t) if !t.is_empty() => token = t.to_string(),
                _ => break,
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// The object's bytes, exactly as stored: a gzipped object (`Content-Encoding: gzip`) comes
    /// gzipped, as for a client that accepts gzip.
    pub async fn download(&self, bucket: &str, name: &str) -> Result<Vec<u8>> {
        let (b, n) = (url_encode(bucket), url_encode(name));
        let url = format!("{}/download/storage/v1/b/{b}/o/{n}?alt=media", self.base);
        let what = format!("download gs://{bucket}/{name}");
        let request = self.http.get(url).header("accept-encoding", "gzip");
        Ok(send(request, &what).await?.bytes().await?.to_vec())
    }

    /// The object's resource as the JSON API gives it (`storageClass`, `contentEncoding`,
    /// `customTime`, `cacheControl`, ...).
    pub async fn object(&self, bucket: &str, name: &str) -> Result<Value> {
        let (b, n) = (url_encode(bucket), url_encode(name));
        let url = format!("{}/storage/v1/b/{b}/o/{n}", self.base);
        Ok(send(self.http.get(url), &format!("get gs://{bucket}/{name}")).await?.json().await?)
    }

    /// Uploads (or overwrites) an object with custom metadata, e.g. one as an earlier delivery
    /// of a message wrote it (`message_id`, `subscription`), or one of someone else's.
    pub async fn put_object(
        &self,
        bucket: &str,
        name: &str,
        bytes: &[u8],
        metadata: &[(&str, &str)],
    ) -> Result<()> {
        let (b, n) = (url_encode(bucket), url_encode(name));
        let url = format!("{}/upload/storage/v1/b/{b}/o?uploadType=media&name={n}", self.base);
        send(self.http.post(url).body(bytes.to_vec()), &format!("upload gs://{bucket}/{name}"))
            .await?;
        let metadata: BTreeMap<&str, &str> = metadata.iter().copied().collect();
        let patch = self.http.patch(format!("{}/storage/v1/b/{b}/o/{n}", self.base));
        send(patch.json(&json!({ "metadata": metadata })), &format!("patch gs://{bucket}/{name}"))
            .await?;
        Ok(())
    }

    /// Deletes an object, as a lifecycle rule or a person would.
    pub async fn delete_object(&self, bucket: &str, name: &str) -> Result<()> {
        let (b, n) = (url_encode(bucket), url_encode(name));
        let url = format!("{}/storage/v1/b/{b}/o/{n}", self.base);
        send(self.http.delete(url), &format!("delete gs://{bucket}/{name}")).await?;
        Ok(())
    }

    /// Polls the bucket until it holds at least `n` objects and returns the listing. The pause
    /// grows with the listing time, so that polling a large bucket does not starve the worker of
    /// CPU.
    pub async fn wait_for_objects(
        &self,
        bucket: &str,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<ObjectInfo>> {
        let (mut objects, what) = (Vec::new(), format!("{n} objects in gs://{bucket}"));
        let waited = crate::wait_for(timeout, &what, async || {
            let started = Instant::now();
            objects = self.list_objects(bucket).await?;
            if objects.len() < n {
                tokio::time::sleep((started.elapsed() * 2).min(Duration::from_secs(2))).await;
            }
            Ok(objects.len() >= n)
        });
        waited.await.with_context(|| format!("{} objects seen", objects.len()))?;
        Ok(objects)
    }
}

fn object_info(item: &Value) -> Result<ObjectInfo> {
    let name = item["name"].as_str().context("object without name")?.to_string();
    // The JSON API sends int64 fields as strings.
    let size = item["size"].as_str().and_then(|s| s.parse().ok()).context("object size")?;
    let metadata = item["metadata"].as_object().into_iter().flatten();
    let metadata = metadata.map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().into()));
    Ok(ObjectInfo { name, size, metadata: metadata.collect() })
}
