//! The chaos soak (docs/testing.md): worker processes killed (SIGTERM or SIGKILL) and restarted
//! at random while storage and the Pub/Sub connection fail in windows; then faults off, a drain
//! that waits out the retry policy's longest backoff plus an ack deadline without progress
//! ([`Soak::quiet`]), and an account: every published message stored (exactly one byte-exact
//! object) or dead-lettered, anything else a failure, with what the workers' JSON logs say of the
//! message (its `outcome` events). It runs the worker binary it is given and reads only the log
//! events the worker documents.

mod account;
mod chaos;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use rand::rngs::StdRng;
use rand::{Rng, RngExt, SeedableRng};
use serde_json::Value;
use tokio::sync::watch;
use tokio::time::{Instant, sleep};

use crate::{DeliveryPolicy, Emulators, HttpProxy, OutMessage, Proxy, PubSub, unique_name};
use chaos::{Ledger, Phase};

/// The subscription `deploy/setup` makes with `deploy/lib.sh`'s defaults.
const ACK_DEADLINE_SECS: i32 = 60;
const MAX_DELIVERY_ATTEMPTS: i32 = 5;
/// `deploy/setup`'s retry policy: a nacked (or expired) message waits 10 s to 600 s, growing
/// with its delivery attempt, before Pub/Sub delivers it again.
const SETUP_RETRY_BACKOFF: (Duration, Duration) =
    (Duration::from_secs(10), Duration::from_secs(600));
/// The attribute that names a message's sequence number, which its body is made from; dead
/// letters are matched to what was published by it.
const SEQ: &str = "soak_seq";

/// One soak's settings. [`Soak::hour`] and [`Soak::short`] give the timings of the example and
/// of the shortened test.
#[derive(Clone, Debug)]
pub struct Soak {
    /// The worker binary to run.
    pub worker_bin: PathBuf,
    /// How long messages are published and faults injected (the drain comes after).
    pub duration: Duration,
    pub instances: usize,
    /// Messages published per second.
    pub rate: u32,
    /// A worker process lives this long (uniform between the two) before it is killed.
    pub lifetime: (Duration, Duration),
    /// Calm between two storage faults.
    pub fault_gap: (Duration, Duration),
    /// Calm between two resets of every Pub/Sub connection.
    pub pubsub_gap: (Duration, Duration),
    /// How long a storage fault lasts.
    pub fault_window: (Duration, Duration),
    /// The subscription's retry policy, least and most a message waits before it is delivered
    /// again ([`Soak::quiet`] waits out the most).
    pub retry_backoff: (Duration, Duration),
    /// The drain ends after this long in any case.
    pub drain_limit: Duration,
    /// Where the workers' logs go (kept: they are the evidence of the account).
    pub log_dir: PathBuf,
    pub seed: u64,
}

impl Soak {
    /// The example's timings: processes live 1 to 8 min (with 3 instances, a kill every 90 s on
    /// average), storage faults last 3 s to 2 min with 10 s to 1 min between them, the Pub/Sub
    /// connections are reset every 1 to 6 min.
    pub fn hour(worker_bin: PathBuf, minutes: u64, instances: usize, log_dir: PathBuf) -> Soak {
        Soak {
            worker_bin,
            duration: Duration::from_secs(minutes * 60),
            instances,
            rate: 10,
            lifetime: (Duration::from_secs(60), Duration::from_secs(480)),
            fault_gap: (Duration::from_secs(10), Duration::from_secs(60)),
            pubsub_gap: (Duration::from_secs(60), Duration::from_secs(360)),
            fault_window: (Duration::from_secs(3), Duration::from_secs(120)),
            retry_backoff: SETUP_RETRY_BACKOFF,
            drain_limit: Duration::from_secs(45 * 60),
            log_dir,
            seed: rand::rng().random(),
        }
    }

    /// The shortened test's timings: everything happens several times in 3 minutes.
    pub fn short(worker_bin: PathBuf, log_dir: PathBuf) -> Soak {
        Soak {
            duration: Duration::from_secs(180),
            lifetime: (Duration::from_secs(10), Duration::from_secs(45)),
            fault_gap: (Duration::from_secs(5), Duration::from_secs(20)),
            pubsub_gap: (Duration::from_secs(10), Duration::from_secs(40)),
            fault_window: (Duration::from_secs(2), Duration::from_secs(25)),
            // A shorter maximum backoff than deploy/setup's, so the drain can wait it out in
            // minutes.
            retry_backoff: (Duration::from_secs(10), Duration::from_secs(60)),
            drain_limit: Duration::from_secs(10 * 60),
            ..Soak::hour(worker_bin, 3, 2, log_dir)
        }
    }

    /// How long the drain waits without progress before it gives up: a message whose lease
    /// expired (its worker killed) comes back after the ack deadline and the retry policy's
    /// backoff, which grows with each delivery up to its maximum; 30 s more for the emulator's
    /// redelivery rounds.
    pub fn quiet(&self) -> Duration {
        let ack_deadline = Duration::from_secs(ACK_DEADLINE_SECS as u64);
        self.retry_backoff.1 + ack_deadline + Duration::from_secs(30)
    }

    /// Runs the soak and returns its report; an error only when the soak itself could not run.
    /// Whether the worker passed is [`SoakReport::passed`].
    pub async fn run(&self) -> Result<SoakReport> {
        std::fs::create_dir_all(&self.log_dir)?;
        let emulators = Emulators::start().await?;
        let (pubsub, gcs) = (emulators.pubsub(), emulators.gcs());
        let (topic, sub, bucket) =
            (unique_name("soak"), unique_name("soak-sub"), unique_name("soak"));
        let (dead_topic, dead_sub) = (unique_name("soak-dead"), unique_name("soak-dead-sub"));
        pubsub.create_topic(&topic).await?;
        pubsub.create_topic(&dead_topic).await?;
        pubsub.create_subscription(&dead_topic, &dead_sub, ACK_DEADLINE_SECS, None).await?;
        let policy = DeliveryPolicy {
            dead_letter_topic: dead_topic.clone(),
            max_delivery_attempts: MAX_DELIVERY_ATTEMPTS,
            backoff: Some(self.retry_backoff),
        };
        pubsub.create_subscription(&topic, &sub, ACK_DEADLINE_SECS, Some(&policy)).await?;
        gcs.create_bucket(&bucket).await?;

        // Storage: worker -> TCP faults -> HTTP faults -> fake-gcs-server. Pub/Sub: worker ->
        // TCP resets -> emulator.
        let http = HttpProxy::start(emulators.storage_addr()).await?;
        let storage = Proxy::start(http.addr()).await?;
        let pubsub_proxy = Proxy::start(emulators.pubsub_addr()).await?;
        let env = vec![
            ("PROJECT_ID".to_string(), crate::PROJECT_ID.to_string()),
            ("PUBSUB_EMULATOR_HOST".into(), pubsub_proxy.addr().to_string()),
            ("STORAGE_EMULATOR_HOST".into(), storage.url()),
            ("SUBSCRIPTION_ID".into(), sub.clone()),
            ("BUCKET_NAME".into(), bucket.clone()),
            ("LOG_FORMAT".into(), "json".into()),
            ("RUST_LOG".into(), "info,pubsub_gcs_worker=debug".into()),
        ];

        let start = Instant::now();
        let ledger = Arc::new(Mutex::new(Ledger::new(self.instances)));
        let (phase, phase_rx) = watch::channel(Phase::Chaos);
        let mut rng = StdRng::seed_from_u64(self.seed);
        let mut tasks = tokio::task::JoinSet::new();
        for slot in 0..self.instances {
            let run = chaos::Supervisor {
                slot,
                soak: self.clone(),
                env: env.clone(),
                ledger: ledger.clone(),
                start,
                rng: StdRng::seed_from_u64(rng.random()),
            };
            tasks.spawn(run.supervise(phase_rx.clone()));
        }
        tasks.spawn(chaos::sample_rss(ledger.clone(), phase_rx.clone()));
        let faults = chaos::Faults {
            soak: self.clone(),
            http: &http,
            storage: &storage,
            pubsub: &pubsub_proxy,
            ledger: ledger.clone(),
            start,
        };
        let published = Arc::new(Mutex::new(Vec::new()));
        // A publisher that gives up ends the chaos at once: the soak has failed to run.
        let publisher = async {
            let result =
                publish(&pubsub, &topic, self.rate, start + self.duration, start, &published).await;
            if result.is_err() {
                phase.send_replace(Phase::Stop);
            }
            result
        };
        let (published_result, (), ()) = tokio::join!(
            publisher,
            faults.storage(phase_rx.clone(), StdRng::seed_from_u64(rng.random())),
            faults.pubsub(phase_rx.clone(), StdRng::seed_from_u64(rng.random())),
        );
        published_result?;
        phase.send_replace(Phase::Calm);
        faults.clear();
        eprintln!("[soak] {:?}: publishing stopped, faults off; draining", start.elapsed());

        let published = std::mem::take(&mut *published.lock().unwrap());
        let drained_at = Instant::now();
        let mut dead = Vec::new();
        let (mut last, mut progress) = (0, Instant::now());
        loop {
            dead.extend(pubsub.pull_all(&dead_sub).await?);
            let stored = account::stored_ids(&gcs.list_objects(&bucket).await?);
            let dead_seqs: std::collections::BTreeSet<&String> =
                dead.iter().filter_map(|m| m.attributes.get(SEQ)).collect();
            let settled = published
                .iter()
                .filter(|p: &&Published| {
                    stored.contains(&p.id) || dead_seqs.contains(&p.seq.to_string())
                })
                .count();
            if settled != last {
                (last, progress) = (settled, Instant::now());
            }
            if settled == published.len()
                || progress.elapsed() > self.quiet()
                || drained_at.elapsed() > self.drain_limit
            {
                break;
            }
            sleep(Duration::from_secs(5)).await;
        }
        phase.send_replace(Phase::Stop);
        while let Some(ended) = tasks.join_next().await {
            ended??;
        }
        dead.extend(pubsub.pull_all(&dead_sub).await?);
        let elapsed = start.elapsed();
        eprintln!("[soak] {elapsed:?}: drained in {:?}; accounting", drained_at.elapsed());
        let objects = gcs.list_objects(&bucket).await?;
        let ledger = std::mem::replace(&mut *ledger.lock().unwrap(), Ledger::new(0));
        let input = account::Input { published, objects, dead, ledger, elapsed };
        // The emulator's own log goes with the workers' logs: a message the workers nacked and
        // the emulator never delivered again is explained there, or not at all.
        let kept = self.log_dir.join("pubsub-emulator.log");
        let _ = std::fs::copy(emulators.log_dir().join("pubsub-emulator.log"), kept);
        account::account(self, input, &gcs, &bucket).await
    }
}

/// What the soak found: [`SoakReport::text`] for people, [`SoakReport::json`] for tools.
#[derive(Clone, Debug)]
pub struct SoakReport {
    pub json: Value,
    pub text: String,
    /// Why the worker failed the soak; empty when it passed.
    pub failures: Vec<String>,
}

impl SoakReport {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// A message the publisher sent: its id, its sequence number (its body and attributes follow
/// from it) and when, since the soak's start. `retried`: an earlier attempt to publish it failed
/// without an answer, so the emulator may also hold a copy under an id never learnt.
#[derive(Clone, Debug)]
struct Published {
    id: String,
    seq: u64,
    at: Duration,
    retried: bool,
}

/// How long the publisher goes on retrying one batch before the soak gives up.
const PUBLISH_PATIENCE: Duration = Duration::from_secs(600);

/// Publishes `rate` messages a second, a batch every 100 ms, until `until`. A failed publish is
/// retried (the emulator stalls now and then under an hour of resets); its messages are marked
/// `retried`, since the failed attempt may have published them too.
async fn publish(
    pubsub: &PubSub,
    topic: &str,
    rate: u32,
    until: Instant,
    start: Instant,
    out: &Mutex<Vec<Published>>,
) -> Result<()> {
    let mut seq = 0u64;
    while Instant::now() < until {
        let due = (start.elapsed().as_secs_f64() * f64::from(rate)) as u64;
        let messages: Vec<OutMessage> = (seq..due).map(message).collect();
        if !messages.is_empty() {
            let at = start.elapsed();
            let (mut retried, mut delay) = (false, Duration::from_secs(1));
            let ids = loop {
                match pubsub.publish(topic, &messages).await {
                    Ok(ids) => break ids,
                    Err(e) if start.elapsed() < at + PUBLISH_PATIENCE => {
                        let now = start.elapsed();
                        eprintln!("[soak] {now:?}: {e:#}; retrying messages {seq}..{due}");
                        retried = true;
                        sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(30));
                    }
                    Err(e) => return Err(e.context(format!("publish messages {seq}..{due}"))),
                }
            };
            let published = ids.into_iter().zip(seq..due);
            out.lock().unwrap().extend(published.map(|(id, seq)| Published {
                id,
                seq,
                at,
                retried,
            }));
            seq = due;
        }
        sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Message `seq`: its body ([`body`]), its sequence number as an attribute, and for one in ten
/// forty more attributes.
fn message(seq: u64) -> OutMessage {
    let mut m = OutMessage::new(body(seq)).attr(SEQ, seq.to_string());
    if seq % 10 == 3 {
        for i in 0..40 {
            m = m.attr(format!("attr_{i:02}"), format!("value {seq}/{i}"));
        }
    }
    m
}

/// The body of message `seq`, made again from `seq` for the byte-for-byte comparison: one in a
/// hundred is large (100 to 600 KB of random bytes), fifteen are small and binary (not UTF-8),
/// the rest JSON text.
fn body(seq: u64) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(seq.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let text = format!(r#"{{"seq":{seq},"text":"soak message {seq}, ünïcödé"}}"#);
    let len = match seq % 100 {
        0 => rng.random_range(100_000..600_000),
        1..=15 => rng.random_range(1..4096),
        _ => return text.into_bytes(),
    };
    let mut bytes = vec![0u8; len];
    rng.fill_bytes(&mut bytes);
    // 0xFF never occurs in UTF-8.
    bytes[0] = 0xFF;
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The comparison makes each body again from its sequence number: the same every time, and
    /// of every kind the issue asks for.
    #[test]
    fn bodies_are_reproducible_and_of_every_kind() {
        for seq in [0, 1, 3, 15, 16, 99, 100, 1234] {
            assert_eq!(body(seq), body(seq), "body {seq}");
        }
        assert_ne!(body(1), body(2));
        let large = body(100);
        assert!((100_000..600_000).contains(&large.len()), "{}", large.len());
        assert!(std::str::from_utf8(&body(7)).is_err(), "small binary");
        let text = String::from_utf8(body(42)).expect("text");
        assert!(text.contains("\"seq\":42"), "{text}");
        assert_eq!(message(13).attributes.len(), 41);
        assert_eq!(message(14).attributes[SEQ], "14");
    }
}
