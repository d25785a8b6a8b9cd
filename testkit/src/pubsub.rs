//! The Pub/Sub emulator's REST API (`/v1/projects/P/...` on its port). Tests drive the emulator
//! over REST, not with the `google-cloud-pubsub` crate, so that the harness shares no code path
//! (or bug) with the worker under test.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use futures::{StreamExt, TryStreamExt};
use serde_json::{Value, json};

use crate::rest::{http_client, send, url_encode};

/// A message to publish. `data` is arbitrary bytes (need not be UTF-8).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OutMessage {
    pub data: Vec<u8>,
    pub attributes: BTreeMap<String, String>,
    pub ordering_key: String,
}

impl OutMessage {
    pub fn new(data: impl Into<Vec<u8>>) -> Self {
        OutMessage { data: data.into(), ..OutMessage::default() }
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
    pub publish_time: String,
}

/// What becomes of a subscription's failed messages, as `deploy/setup` sets it: redelivery
/// after an exponential backoff between `min_backoff` and `max_backoff`, and after
/// `max_delivery_attempts` deliveries a move to `dead_letter_topic`.
#[derive(Clone, Debug)]
pub struct DeliveryPolicy {
    pub dead_letter_topic: String,
    pub max_delivery_attempts: i32,
    pub min_backoff: std::time::Duration,
    pub max_backoff: std::time::Duration,
}

/// What [`PubSub::create_subscription_with`] gives a subscription.
#[derive(Clone, Debug, Default)]
pub struct SubscriptionSettings {
    /// Keep acked messages this long (`retainAckedMessages`, `messageRetentionDuration`).
    pub retain_acked_for: Option<std::time::Duration>,
    /// Exactly-once delivery: acks confirmed on the stream, no redelivery of an acked message.
    pub exactly_once: bool,
}

/// Where [`PubSub::seek`] takes a subscription.
#[derive(Clone, Copy, Debug)]
pub enum SeekTo<'a> {
    /// An RFC 3339 time: messages published since then are delivered again.
    Time(&'a str),
    /// A snapshot's id ([`PubSub::create_snapshot`]).
    Snapshot(&'a str),
}

/// REST client for one emulator and project. Build one per test (`Emulators::pubsub()`).
#[derive(Clone)]
pub struct PubSub {
    http: reqwest::Client,
    base: String,
    project: String,
}

/// Publish request limits: the service takes at most 1000 messages and 10 MB per request; stay
/// under 9 MB of JSON (base64 grows data by 4/3). A larger single message is sent alone.
const MAX_BATCH_MESSAGES: usize = 1000;
const MAX_BATCH_BYTES: usize = 9_000_000;

impl PubSub {
    /// `host` is `127.0.0.1:PORT` (the `PUBSUB_EMULATOR_HOST` format).
    pub fn new(host: &str, project: &str) -> Self {
        PubSub { http: http_client(), base: format!("http://{host}/v1"), project: project.into() }
    }

    /// `projects/P/subscriptions/S`.
    pub fn subscription_path(&self, sub: &str) -> String {
        format!("projects/{}/subscriptions/{sub}", self.project)
    }

    fn url(&self, kind: &str, id: &str, verb: &str) -> String {
        format!("{}/projects/{}/{kind}/{}{verb}", self.base, self.project, url_encode(id))
    }

    pub async fn create_topic(&self, topic: &str) -> Result<()> {
        let request = self.http.put(self.url("topics", topic, "")).json(&json!({}));
        send(request, &format!("create topic {topic}")).await?;
        Ok(())
    }

    /// Creates a pull subscription. `dead_letter` is `(dead-letter topic, max delivery
    /// attempts)`; with it the emulator counts each message's delivery attempts.
    pub async fn create_subscription(
        &self,
        topic: &str,
        sub: &str,
        ack_deadline_secs: i32,
        dead_letter: Option<(&str, i32)>,
    ) -> Result<()> {
        let topic_path = |t: &str| format!("projects/{}/topics/{t}", self.project);
        let mut body =
            json!({ "topic": topic_path(topic), "ackDeadlineSeconds": ack_deadline_secs });
        if let Some((dead, attempts)) = dead_letter {
            body["deadLetterPolicy"] =
                json!({ "deadLetterTopic": topic_path(dead), "maxDeliveryAttempts": attempts });
        }
        let request = self.http.put(self.url("subscriptions", sub, "")).json(&body);
        send(request, &format!("create subscription {sub}")).await?;
        Ok(())
    }

    /// Creates a pull subscription with a dead-letter and a retry policy.
    pub async fn create_subscription_with_policy(
        &self,
        topic: &str,
        sub: &str,
        ack_deadline_secs: i32,
        policy: &DeliveryPolicy,
    ) -> Result<()> {
        let topic_path = |t: &str| format!("projects/{}/topics/{t}", self.project);
        let secs = |d: std::time::Duration| format!("{}s", d.as_secs());
        let body = json!({
            "topic": topic_path(topic),
            "ackDeadlineSeconds": ack_deadline_secs,
            "deadLetterPolicy": {
                "deadLetterTopic": topic_path(&policy.dead_letter_topic),
                "maxDeliveryAttempts": policy.max_delivery_attempts,
            },
            "retryPolicy": {
                "minimumBackoff": secs(policy.min_backoff),
                "maximumBackoff": secs(policy.max_backoff),
            },
        });
        let request = self.http.put(self.url("subscriptions", sub, "")).json(&body);
        send(request, &format!("create subscription {sub}")).await?;
        Ok(())
    }

    /// Creates a pull subscription with the settings `deploy/setup` may give it beyond its ack
    /// deadline: acked messages kept (`RETAIN_ACKED_FOR`), so that a [`PubSub::seek`] to a time
    /// can deliver them again, and exactly-once delivery (`EXACTLY_ONCE_DELIVERY`).
    pub async fn create_subscription_with(
        &self,
        topic: &str,
        sub: &str,
        ack_deadline_secs: i32,
        settings: &SubscriptionSettings,
    ) -> Result<()> {
        let mut body = json!({
            "topic": format!("projects/{}/topics/{topic}", self.project),
            "ackDeadlineSeconds": ack_deadline_secs,
            "enableExactlyOnceDelivery": settings.exactly_once,
        });
        if let Some(retention) = settings.retain_acked_for {
            body["retainAckedMessages"] = json!(true);
            body["messageRetentionDuration"] = json!(format!("{}s", retention.as_secs()));
        }
        let request = self.http.put(self.url("subscriptions", sub, "")).json(&body);
        send(request, &format!("create subscription {sub}")).await?;
        Ok(())
    }

    /// Takes the snapshot `snapshot` of `sub`, as `deploy/snapshot` does: the messages unacked now
    /// and every one published from now on.
    pub async fn create_snapshot(&self, snapshot: &str, sub: &str) -> Result<()> {
        let body = json!({ "subscription": self.subscription_path(sub) });
        let request = self.http.put(self.url("snapshots", snapshot, "")).json(&body);
        send(request, &format!("create snapshot {snapshot}")).await?;
        Ok(())
    }

    /// Seeks `sub`, as `deploy/replay` does: what was published since the time, or what the
    /// snapshot keeps, is delivered again; the rest is marked acked.
    pub async fn seek(&self, sub: &str, to: SeekTo<'_>) -> Result<()> {
        let body = match to {
            SeekTo::Time(time) => json!({ "time": time }),
            SeekTo::Snapshot(snapshot) => {
                json!({ "snapshot": format!("projects/{}/snapshots/{snapshot}", self.project) })
            }
        };
        let request = self.http.post(self.url("subscriptions", sub, ":seek")).json(&body);
        send(request, &format!("seek {sub} to {to:?}")).await?;
        Ok(())
    }

    pub async fn delete_subscription(&self, sub: &str) -> Result<()> {
        let request = self.http.delete(self.url("subscriptions", sub, ""));
        send(request, &format!("delete subscription {sub}")).await?;
        Ok(())
    }

    /// Publishes all messages in batches within the request limits, four batches at a time, and
    /// returns the message ids in the order of `msgs`.
    pub async fn publish(&self, topic: &str, msgs: &[OutMessage]) -> Result<Vec<String>> {
        let mut batches: Vec<&[OutMessage]> = Vec::new();
        let (mut start, mut bytes) = (0, 0);
        for (i, m) in msgs.iter().enumerate() {
            let size = m.data.len() * 4 / 3
                + m.attributes.iter().map(|(k, v)| k.len() + v.len() + 8).sum::<usize>()
                + 64;
            if i > start && (i - start >= MAX_BATCH_MESSAGES || bytes + size > MAX_BATCH_BYTES) {
                batches.push(&msgs[start..i]);
                (start, bytes) = (i, 0);
            }
            bytes += size;
        }
        batches.push(&msgs[start..]);
        let url = self.url("topics", topic, ":publish");
        let ids: Vec<Vec<String>> = futures::stream::iter(batches)
            .map(|batch| self.publish_batch(&url, batch))
            .buffered(4)
            .try_collect()
            .await?;
        Ok(ids.into_iter().flatten().collect())
    }

    async fn publish_batch(&self, url: &str, batch: &[OutMessage]) -> Result<Vec<String>> {
        let messages: Vec<Value> = batch
            .iter()
            .map(|m| {
                let mut message =
                    json!({ "data": B64.encode(&m.data), "attributes": m.attributes });
                if !m.ordering_key.is_empty() {
                    message["orderingKey"] = json!(m.ordering_key);
                }
                message
            })
            .collect();
        let what = format!("publish {} messages", batch.len());
        let request = self.http.post(url).json(&json!({ "messages": messages }));
        let answer: Value = send(request, &what).await?.json().await?;
        let ids = answer["messageIds"].as_array().with_context(|| format!("{what}: {answer}"))?;
        let ids: Vec<String> = ids.iter().filter_map(|id| Some(id.as_str()?.to_string())).collect();
        anyhow::ensure!(ids.len() == batch.len(), "{what}: got {} ids", ids.len());
        Ok(ids)
    }

    /// One pull that returns at once with at most `max` of the messages available now.
    pub async fn pull(&self, sub: &str, max: i32) -> Result<Vec<Received>> {
        let body = json!({ "returnImmediately": true, "maxMessages": max });
        let request = self.http.post(self.url("subscriptions", sub, ":pull")).json(&body);
        let answer: Value = send(request, &format!("pull {sub}")).await?.json().await?;
        let mut out = Vec::new();
        for received in answer["receivedMessages"].as_array().into_iter().flatten() {
            let m = &received["message"];
            let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
            out.push(Received {
                ack_id: text(&received["ackId"]),
                message_id: text(&m["messageId"]),
                data: B64.decode(m["data"].as_str().unwrap_or_default())?,
                attributes: m["attributes"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect(),
                publish_time: text(&m["publishTime"]),
            });
        }
        Ok(out)
    }

    /// Acks (`deadline`: `None`) or sets the ack deadline of leased messages (0: a nack).
    pub async fn settle(&self, sub: &str, ack_ids: &[String], deadline: Option<i32>) -> Result<()> {
        let (verb, body) = match deadline {
            None => (":acknowledge", json!({ "ackIds": ack_ids })),
            Some(secs) => {
                (":modifyAckDeadline", json!({ "ackIds": ack_ids, "ackDeadlineSeconds": secs }))
            }
        };
        if !ack_ids.is_empty() {
            send(self.http.post(self.url("subscriptions", sub, verb)).json(&body), verb).await?;
        }
        Ok(())
    }
}
