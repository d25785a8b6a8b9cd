//! The Pub/Sub emulator's REST API (`/v1/projects/P/...` on its port). Tests drive the emulator
//! over REST, not with the `google-cloud-pubsub` crate, so that the harness shares no code path
//! (or bug) with the worker under test.

use std::collections::BTreeMap;
use std::time::Duration;

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

/// What becomes of a subscription's failed messages, as `deploy/setup` sets it: after
/// `max_delivery_attempts` deliveries a move to `dead_letter_topic`, and with `backoff` each
/// redelivery after an exponential backoff between its two ends.
#[derive(Clone, Debug)]
pub struct DeliveryPolicy {
    pub dead_letter_topic: String,
    pub max_delivery_attempts: i32,
    pub backoff: Option<(Duration, Duration)>,
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

    /// Creates a pull subscription; with a `policy`, the emulator counts each message's delivery
    /// attempts.
    pub async fn create_subscription(
        &self,
        topic: &str,
        sub: &str,
        ack_deadline_secs: i32,
        policy: Option<&DeliveryPolicy>,
    ) -> Result<()> {
        let topic_path = |t: &str| format!("projects/{}/topics/{t}", self.project);
        let mut body =
            json!({ "topic": topic_path(topic), "ackDeadlineSeconds": ack_deadline_secs });
        if let Some(policy) = policy {
            let (dead, attempts) =
                (topic_path(&policy.dead_letter_topic), policy.max_delivery_attempts);
            body["deadLetterPolicy"] =
                json!({ "deadLetterTopic": dead, "maxDeliveryAttempts": attempts });
            if let Some((min, max)) = policy.backoff {
                let secs = |d: Duration| format!("{}s", d.as_secs());
                body["retryPolicy"] =
                    json!({ "minimumBackoff": secs(min), "maximumBackoff": secs(max) });
            }
        }
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
        let messages: Vec<Value> = (batch.iter())
            .map(|m| json!({ "data": B64.encode(&m.data), "attributes": m.attributes }))
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
        let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
        let received = answer["receivedMessages"].as_array().into_iter().flatten();
        (received.map(|r| {
            let m = &r["message"];
            let attributes = m["attributes"].as_object().into_iter().flatten();
            Ok(Received {
                ack_id: text(&r["ackId"]),
                message_id: text(&m["messageId"]),
                data: B64.decode(m["data"].as_str().unwrap_or_default())?,
                attributes: attributes.map(|(k, v)| (k.clone(), text(v))).collect(),
                publish_time: text(&m["publishTime"]),
            })
        }))
        .collect()
    }

    /// Every message the subscription holds now, acked (the dead letters so far, say).
    pub async fn pull_all(&self, sub: &str) -> Result<Vec<Received>> {
        let mut out = Vec::new();
        loop {
            let got = self.pull(sub, 500).await?;
            if got.is_empty() {
                return Ok(out);
            }
            let ack_ids: Vec<&str> = got.iter().map(|m| m.ack_id.as_str()).collect();
            self.acknowledge(sub, &ack_ids).await?;
            out.extend(got);
        }
    }

    /// Acknowledges leased messages.
    pub async fn acknowledge(&self, sub: &str, ack_ids: &[&str]) -> Result<()> {
        let request = self.http.post(self.url("subscriptions", sub, ":acknowledge"));
        send(request.json(&json!({ "ackIds": ack_ids })), "acknowledge").await?;
        Ok(())
    }

    /// Sets the ack deadline of leased messages to `secs` from now, in one request; 0 hands them
    /// back (a nack), and with a retry policy they come back after its backoff.
    pub async fn modify_ack_deadline(&self, sub: &str, ack_ids: &[&str], secs: i32) -> Result<()> {
        let body = json!({ "ackIds": ack_ids, "ackDeadlineSeconds": secs });
        let request = self.http.post(self.url("subscriptions", sub, ":modifyAckDeadline"));
        send(request.json(&body), "modify ack deadline").await?;
        Ok(())
    }

    /// Hands a leased message back for redelivery (its ack deadline set to 0).
    pub async fn nack(&self, sub: &str, ack_id: &str) -> Result<()> {
        self.modify_ack_deadline(sub, &[ack_id], 0).await
    }
}
