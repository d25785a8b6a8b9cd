//! What the tests, the soak and the benchmark rely on the Pub/Sub emulator, as `testkit` starts
//! it (mended), to do as Pub/Sub does:
//! - with a retry policy, hand a nacked message back after its backoff, however the ack ids
//!   before it were settled. The jar alone stops doing so for good (docs/testing.md, "Messages
//!   the emulator never delivered again");
//! - lease a StreamingPull stream only what its client reads. The jar's pusher leases a stream
//!   100 messages each 50 ms whether or not its client reads (docs/testing.md, "The Pub/Sub
//!   emulator, mended").
//!
//! These tests fail on the jar alone (`PUBSUB_EMULATOR_BIN` set to its launcher runs it
//! unmended). They drive the emulator over REST, with no worker, and with the worker's Pub/Sub
//! client for the stream.

use crate::support::app::Result;
use crate::support::{Emulators, OutMessage, unique_name, wait_for};
use anyhow::Context;
use google_cloud_auth::credentials::anonymous::Builder as Anonymous;
use google_cloud_pubsub::client::Subscriber;
use pubsub_gcs_worker::clients::emulator_url;
use std::time::Duration;
use testkit::{DeliveryPolicy, PubSub, Received};

/// The retry policy's backoff, both ends: every redelivery after the second waits this long.
const BACKOFF: Duration = Duration::from_secs(10);

/// The subscription's ack deadline, the emulator's least.
const ACK_DEADLINE_SECS: i32 = 10;

/// A message acked after its lease ran out, while the emulator had it due for a backed-off
/// redelivery: later nacked messages still come back after their backoff.
#[tokio::test]
async fn a_message_acked_late_leaves_redelivery_going() -> Result {
    let sub = Subscription::new().await?;
    let late = sub.second_deliveries(&["late"]).await?;
    sub.shorten_leases(&late).await?;
    // A pull after its lease ran out: the emulator has it due after the backoff.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(sub.pubsub.pull(&sub.name, 10).await?.is_empty(), "back before the backoff");
    sub.pubsub.acknowledge(&sub.name, &ack_ids(&late)).await?;
    // Past the time the late one was due at: nothing to see but what follows.
    tokio::time::sleep(BACKOFF + Duration::from_secs(2)).await;
    sub.assert_nacked_messages_come_back("probe").await
}

/// Two messages nacked in one request (as a client batches its nacks), their leases running out
/// before their backoff does, so that each pull has the emulator schedule them once more: they
/// come back, and later nacked messages still come back after their backoff.
#[tokio::test]
async fn messages_nacked_together_leave_redelivery_going() -> Result {
    let sub = Subscription::new().await?;
    let pair = sub.second_deliveries(&["first", "second"]).await?;
    sub.shorten_leases(&pair).await?;
    sub.pubsub.modify_ack_deadline(&sub.name, &ack_ids(&pair), 0).await?;
    for _ in 0..3 {
        assert!(sub.pubsub.pull(&sub.name, 10).await?.is_empty(), "back before the backoff");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let back = sub.receive(&["first", "second"], BACKOFF * 2).await?;
    sub.pubsub.acknowledge(&sub.name, &ack_ids(&back)).await?;
    // The later times they are due at (the last pull's plus the backoff) come before the
    // probe's: nothing to see but what follows.
    tokio::time::sleep(Duration::from_secs(5)).await;
    sub.assert_nacked_messages_come_back("probe").await
}

/// A stream whose client reads one message and then nothing more (its flow control full, say)
/// holds only what its connection buffers: the rest of the backlog stays with the subscription,
/// for other streams and pulls, as Pub/Sub leases a stream only what its client's flow control
/// takes. The jar's pusher leases it 100 messages every 50 ms regardless, so within the 3 s
/// below the whole backlog, and a pull finds nothing until the leases run out.
#[tokio::test]
async fn a_stream_leases_only_what_its_client_reads() -> Result {
    const MESSAGES: usize = 800;
    let emulators = Emulators::shared().await;
    let pubsub = emulators.pubsub();
    let (topic, name) = (unique_name("topic"), unique_name("sub"));
    pubsub.create_topic(&topic).await?;
    pubsub.create_subscription(&topic, &name, 60, None).await?;
    // 64 KiB each, 50 MB in all: far more than a connection's HTTP/2 windows (a few MB).
    let body = vec![b'x'; 64 << 10];
    let messages: Vec<OutMessage> = (0..MESSAGES).map(|_| OutMessage::new(body.clone())).collect();
    pubsub.publish(&topic, &messages).await?;

    let subscriber = Subscriber::builder()
        .with_credentials(Anonymous::new().build())
        .with_endpoint(emulator_url(&emulators.pubsub_addr().to_string()))
        .build()
        .await?;
    let mut stream = subscriber.subscribe(pubsub.subscription_path(&name)).build();
    let first = tokio::time::timeout(Duration::from_secs(30), stream.next()).await;
    let (_, _handler) =
        first.context("no message on the stream in 30 s")?.context("no stream")??;
    // The stream is open and not read: what the emulator leases it meanwhile waits unread.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pulled = pubsub.pull_all(&name).await?.len();
    assert!(
        pulled >= MESSAGES / 2,
        "a pull found {pulled} of {MESSAGES} messages while one stream read a single one: the \
         emulator leased the rest to the stream unread (is it mended? docs/testing.md)"
    );
    drop(stream);
    Ok(())
}

/// A fresh topic and a subscription with a dead-letter policy and a retry policy of [`BACKOFF`].
struct Subscription {
    pubsub: PubSub,
    topic: String,
    name: String,
}

impl Subscription {
    async fn new() -> Result<Subscription> {
        let pubsub = Emulators::shared().await.pubsub();
        let (topic, dead_topic, name) =
            (unique_name("topic"), unique_name("dead-letter"), unique_name("sub"));
        pubsub.create_topic(&topic).await?;
        pubsub.create_topic(&dead_topic).await?;
        let policy = DeliveryPolicy {
            dead_letter_topic: dead_topic,
            max_delivery_attempts: 5,
            backoff: Some((BACKOFF, BACKOFF)),
        };
        pubsub.create_subscription(&topic, &name, ACK_DEADLINE_SECS, Some(&policy)).await?;
        Ok(Subscription { pubsub, topic, name })
    }

    /// Publishes one message per text, receives and nacks each once (the emulator hands a
    /// message nacked at its first delivery back at once, and backs off only from the second),
    /// and returns their second deliveries.
    async fn second_deliveries(&self, texts: &[&str]) -> Result<Vec<Received>> {
        let messages: Vec<OutMessage> = texts.iter().map(|t| OutMessage::new(*t)).collect();
        self.pubsub.publish(&self.topic, &messages).await?;
        let first = self.receive(texts, Duration::from_secs(10)).await?;
        self.pubsub.modify_ack_deadline(&self.name, &ack_ids(&first), 0).await?;
        self.receive(texts, Duration::from_secs(10)).await
    }

    /// Shortens the leases of `messages` to a second, much less than the backoff.
    async fn shorten_leases(&self, messages: &[Received]) -> Result {
        self.pubsub.modify_ack_deadline(&self.name, &ack_ids(messages), 1).await
    }

    /// A message nacked at its second delivery comes back within its backoff and a margin.
    async fn assert_nacked_messages_come_back(&self, text: &str) -> Result {
        let second = self.second_deliveries(&[text]).await?;
        self.pubsub.modify_ack_deadline(&self.name, &ack_ids(&second), 0).await?;
        let limit = BACKOFF + Duration::from_secs(10);
        let back = self.receive(&[text], limit).await.context(
            "a message nacked at its second delivery did not come back after its backoff: the \
             emulator's redelivery task died (docs/testing.md)",
        )?;
        self.pubsub.acknowledge(&self.name, &ack_ids(&back)).await
    }

    /// Pulls until a delivery of each text has come, within `limit`.
    async fn receive(&self, texts: &[&str], limit: Duration) -> Result<Vec<Received>> {
        let mut got: Vec<Received> = Vec::new();
        let what = format!("deliveries of {texts:?}");
        wait_for(limit, &what, async || {
            got.extend(self.pubsub.pull(&self.name, 10).await?);
            Ok(texts.iter().all(|t| got.iter().any(|m| m.data == t.as_bytes())))
        })
        .await?;
        Ok(got)
    }
}

fn ack_ids(messages: &[Received]) -> Vec<&str> {
    messages.iter().map(|m| m.ack_id.as_str()).collect()
}
