//! Nothing lost, nothing duplicated: fault injection and bad input.
//!
//! Each test runs the real binary (JSON logs, counters on a progress line every second, CPU and
//! memory read from `/proc`), publishes a known set of messages, injects ONE fault and checks:
//! every message has exactly one byte-exact object; nothing remains to be delivered (the
//! counters stay put, with nothing in flight, for longer than the stream ack deadline); the
//! worker never exited or panicked unless the test stopped it.
//!
//! A stream that ended leaves its leased messages to the emulator until their ack deadline
//! (10 s here) passes (and the unmended jar 0.8.20 never closed a stream a client cancelled:
//! `testkit` mends it). A restarted worker therefore completes the set only after some 10 s
//! rounds: the tests wait with generous deadlines, never with fixed sleeps.
//!
//! One file per kind of fault: the process stopped by a signal (`signals`), storage failing or
//! slow (`storage`), Pub/Sub restarted or cut off (`pubsub`), the subscription or the bucket gone
//! (`gone`), messages that can never be written (`unwritable`) and input that is hard to store
//! (`bad_input`). What several of them use is here.

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
