//! Nothing lost, nothing duplicated: one kind of fault a file (`signals`, `storage`, `pubsub`,
//! `gone`, `unwritable`, `bad_input`), and what several of them use.
//!
//! Most tests run the real binary, publish a known set of messages, inject one fault and check
//! that every message has exactly one byte-exact object, that nothing remains to be delivered
//! (the counters stay put, nothing in flight, for longer than the stream ack deadline) and that
//! the worker never exited or panicked unless the test stopped it. A stream that ended leaves its
//! leased messages to the emulator until their ack deadline (10 s here) passes, so a restarted
//! worker completes the set only after some rounds: the tests wait with generous deadlines.

mod bad_input;
mod gone;
mod pubsub;
mod signals;
mod storage;
mod unwritable;

use crate::support::app::{BinaryWorker, Fixture, LEASE_SECS, Result};
use crate::support::unique_name;
use std::time::Duration;
use testkit::DeliveryPolicy;

/// How long a storage or Pub/Sub fault lasts.
const OUTAGE: Duration = Duration::from_secs(10);

/// Gives the fixture's subscription a dead-letter policy of `max_attempts` deliveries; returns
/// the subscription that keeps the dead letters.
async fn dead_letter_subscription(fx: &Fixture<'_>, max_attempts: i32) -> Result<String> {
    let (topic, sub, lease) =
        (unique_name("dead-letter"), unique_name("dl-sub"), LEASE_SECS as i32);
    fx.pubsub.create_topic(&topic).await?;
    fx.pubsub.create_subscription(&topic, &sub, lease, None).await?;
    fx.pubsub.delete_subscription(&fx.subscription).await?;
    let policy = DeliveryPolicy {
        dead_letter_topic: topic,
        max_delivery_attempts: max_attempts,
        backoff: None,
    };
    fx.pubsub.create_subscription(&fx.topic, &fx.subscription, lease, Some(&policy)).await?;
    Ok(sub)
}

/// The worker's ERROR lines.
fn error_lines(worker: &BinaryWorker) -> Vec<serde_json::Value> {
    worker.json_lines().into_iter().filter(|l| l["severity"] == "ERROR").collect()
}
