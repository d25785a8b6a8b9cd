//! Pub/Sub emulator REST helper (`/v1/projects/P/...` on the emulator's port).
//!
//! Tests drive the emulator over REST, not with the `google-cloud-pubsub` crate, so that
//! the harness does not share code paths (or bugs) with the worker under test.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use futures::{StreamExt, TryStreamExt};
use serde_json::{Value, json};

use super::{check, http_client, url_encode};

/// A message to publish. `data` is arbitrary bytes (need not be UTF-8).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OutMessage {
    pub data: Vec<u8>,
    pub attributes: BTreeMap<String, String>,
}

impl OutMessage {
    pub fn new(data: impl Into<Vec<u8>>) -> Self {
        OutMessage {
            data: data.into(),
            attributes: BTreeMap::new(),
        }
    }

    pub fn attr(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.attributes.insert(k.into(), v.into());
        self
    }
}

/// A message returned by [`PubSub::pull`].
#[derive(Clone, Debug)]
pub struct Received {
    pub ack_id: String,
    pub message_id: String,
    pub data: Vec<u8>,
    pub attributes: BTreeMap<String, String>,
    /// Set by the emulator when the subscription has a dead-letter policy (1 on the first
    /// delivery), `None` otherwise.
    pub delivery_attempt: Option<i32>,
    pub publish_time: String,
}

/// REST client for one emulator and project. Build one per test (`Emulators::pubsub()`).
#[derive(Clone)]
pub struct PubSub {
    http: reqwest::Client,
    base: String,
    project: String,
}

/// Publish request limits. The real service takes at most 1000 messages and 10 MB per
/// request; we stay under 9 MB of JSON (base64 grows data by 4/3). A single message larger
/// than that (up to the 10 MB message limit) is sent alone: the emulator accepts it.
const MAX_BATCH_MESSAGES: usize = 1000;
const MAX_BATCH_BYTES: usize = 9_000_000;
/// Batches in flight at once; order of the returned ids is kept.
const PUBLISH_CONCURRENCY: usize = 4;

impl PubSub {
    /// `host` is `127.0.0.1:PORT` (the `PUBSUB_EMULATOR_HOST` format).
    pub fn new(host: &str, project: &str) -> Self {
        PubSub {
            http: http_client(),
            base: format!("http://{host}/v1"),
            project: project.to_string(),
        }
    }

    pub fn project(&self) -> &str {
        &self.project
    }

    /// `projects/P/topics/T`; a full path is returned unchanged.
    pub fn topic_path(&self, topic: &str) -> String {
        full_path(&self.project, "topics", topic)
    }

    /// `projects/P/subscriptions/S`; a full path is returned unchanged.
    pub fn subscription_path(&self, sub: &str) -> String {
        full_path(&self.project, "subscriptions", sub)
    }

    fn url(&self, path: &str) -> String {
        // Path segments are ids ([a-z0-9-._~+%]); encode only what could break the URL.
        let encoded: Vec<String> = path.split('/').map(url_encode).collect();
        format!("{}/{}", self.base, encoded.join("/"))
    }

    pub async fn create_topic(&self, topic: &str) -> Result<()> {
        let path = self.topic_path(topic);
        let r = self.http.put(self.url(&path)).json(&json!({})).send().await;
        check(
            r.with_context(|| format!("create topic {path}"))?,
            &format!("create topic {path}"),
        )
        .await?;
        Ok(())
    }

    /// Creates a pull subscription. `dead_letter` is `(dead-letter topic, max delivery
    /// attempts)`; with it the emulator counts `delivery_attempt` per message.
    pub async fn create_subscription(
        &self,
        topic: &str,
        sub: &str,
        ack_deadline_secs: i32,
        dead_letter: Option<(&str, i32)>,
    ) -> Result<()> {
        let path = self.subscription_path(sub);
        let mut body = json!({
            "topic": self.topic_path(topic),
            "ackDeadlineSeconds": ack_deadline_secs,
        });
        if let Some((dl_topic, max_attempts)) = dead_letter {
            body["deadLetterPolicy"] = json!({
                "deadLetterTopic": self.topic_path(dl_topic),
                "maxDeliveryAttempts": max_attempts,
            });
        }
        let what = format!("create subscription {path}");
        let r = self.http.put(self.url(&path)).json(&body).send().await;
        check(r.with_context(|| what.clone())?, &what).await?;
        Ok(())
    }

    /// Publishes all messages, in batches within the request limits, and returns the
    /// message ids in the order of `msgs`.
    pub async fn publish(&self, topic: &str, msgs: &[OutMessage]) -> Result<Vec<String>> {
        let path = self.topic_path(topic);
        let url = format!("{}:publish", self.url(&path));
        let mut batches: Vec<&[OutMessage]> = Vec::new();
        let (mut start, mut bytes) = (0, 0);
        for (i, m) in msgs.iter().enumerate() {
            let size = m.data.len().div_ceil(3) * 4
                + m.attributes
                    .iter()
                    .map(|(k, v)| k.len() + v.len() + 8)
                    .sum::<usize>()
                + 64;
            if i > start && (i - start >= MAX_BATCH_MESSAGES || bytes + size > MAX_BATCH_BYTES) {
                batches.push(&msgs[start..i]);
                start = i;
                bytes = 0;
            }
            bytes += size;
        }
        if start < msgs.len() {
            batches.push(&msgs[start..]);
        }
        let ids: Vec<Vec<String>> = futures::stream::iter(batches)
            .map(|batch| self.publish_batch(&url, batch))
            .buffered(PUBLISH_CONCURRENCY)
            .try_collect()
            .await?;
        Ok(ids.into_iter().flatten().collect())
    }

    async fn publish_batch(&self, url: &str, batch: &[OutMessage]) -> Result<Vec<String>> {
        let messages: Vec<Value> = batch
            .iter()
            .map(|m| json!({ "data": B64.encode(&m.data), "attributes": m.attributes }))
            .collect();
        let what = format!("publish {} messages to {url}", batch.len());
        let r = self
            .http
            .post(url)
            .json(&json!({ "messages": messages }))
            .send()
            .await;
        let v: Value = check(r.with_context(|| what.clone())?, &what)
            .await?
            .json()
            .await?;
        let ids: Vec<String> = v["messageIds"]
            .as_array()
            .with_context(|| format!("{what}: no messageIds in {v}"))?
            .iter()
            .filter_map(|id| id.as_str().map(str::to_string))
            .collect();
        anyhow::ensure!(ids.len() == batch.len(), "{what}: got {} ids", ids.len());
        Ok(ids)
    }

    /// One synchronous pull with `returnImmediately`: returns at most `max` messages that
    /// are available now, possibly fewer (the emulator caps a response by size; a 10 MB
    /// message comes alone), possibly none. Loop for more.
    pub async fn pull(&self, sub: &str, max: i32) -> Result<Vec<Received>> {
        let path = self.subscription_path(sub);
        let what = format!("pull {path}");
        let r = self
            .http
            .post(format!("{}:pull", self.url(&path)))
            .json(&json!({ "returnImmediately": true, "maxMessages": max }))
            .send()
            .await;
        let v: Value = check(r.with_context(|| what.clone())?, &what)
            .await?
            .json()
            .await?;
        let mut out = Vec::new();
        for rm in v["receivedMessages"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            let m = &rm["message"];
            let data = B64
                .decode(m["data"].as_str().unwrap_or_default())
                .with_context(|| format!("{what}: bad base64"))?;
            let attributes = m["attributes"]
                .as_object()
                .map(|o| {
                    o.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                        .collect()
                })
                .unwrap_or_default();
            out.push(Received {
                ack_id: rm["ackId"].as_str().unwrap_or_default().to_string(),
                message_id: m["messageId"].as_str().unwrap_or_default().to_string(),
                data,
                attributes,
                delivery_attempt: rm["deliveryAttempt"].as_i64().map(|n| n as i32),
                publish_time: m["publishTime"].as_str().unwrap_or_default().to_string(),
            });
        }
        Ok(out)
    }

    pub async fn ack(&self, sub: &str, ack_ids: &[String]) -> Result<()> {
        if ack_ids.is_empty() {
            return Ok(());
        }
        let path = self.subscription_path(sub);
        let what = format!("acknowledge {} on {path}", ack_ids.len());
        let r = self
            .http
            .post(format!("{}:acknowledge", self.url(&path)))
            .json(&json!({ "ackIds": ack_ids }))
            .send()
            .await;
        check(r.with_context(|| what.clone())?, &what).await?;
        Ok(())
    }

    /// Sets the ack deadline of leased messages; 0 is a nack (redeliver at once).
    pub async fn modify_ack_deadline(
        &self,
        sub: &str,
        ack_ids: &[String],
        secs: i32,
    ) -> Result<()> {
        if ack_ids.is_empty() {
            return Ok(());
        }
        let path = self.subscription_path(sub);
        let what = format!("modifyAckDeadline on {path}");
        let r = self
            .http
            .post(format!("{}:modifyAckDeadline", self.url(&path)))
            .json(&json!({ "ackIds": ack_ids, "ackDeadlineSeconds": secs }))
            .send()
            .await;
        check(r.with_context(|| what.clone())?, &what).await?;
        Ok(())
    }

    pub async fn delete_subscription(&self, sub: &str) -> Result<()> {
        let path = self.subscription_path(sub);
        let what = format!("delete {path}");
        let r = self.http.delete(self.url(&path)).send().await;
        check(r.with_context(|| what.clone())?, &what).await?;
        Ok(())
    }

    pub async fn delete_topic(&self, topic: &str) -> Result<()> {
        let path = self.topic_path(topic);
        let what = format!("delete {path}");
        let r = self.http.delete(self.url(&path)).send().await;
        check(r.with_context(|| what.clone())?, &what).await?;
        Ok(())
    }
}

fn full_path(project: &str, kind: &str, id: &str) -> String {
    if id.starts_with("projects/") {
        id.to_string()
    } else {
        format!("projects/{project}/{kind}/{id}")
    }
}
