//! The worker under test: a fresh [`Fixture`] (topic, subscription, bucket), the worker run in
//! this process ([`RunningWorker`], the same `Worker` that `main` runs) or as the real binary
//! with JSON logs ([`BinaryWorker`], on testkit's process helper), and the checks the tests share.

use anyhow::Context as _;
use pubsub_gcs_worker::config::Config;
use pubsub_gcs_worker::object::metadata_key;
use pubsub_gcs_worker::worker::Worker;
use pubsub_gcs_worker::{Snapshot, Stats};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use testkit::process::Process;
use testkit::{Emulators, Gcs, OutMessage, PubSub, unique_name, wait_for};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep};

pub type Result<T = ()> = anyhow::Result<T>;

/// The stream ack deadline the tests give the worker (the minimum Pub/Sub allows), so that a
/// message that is not acked comes back within seconds.
pub const LEASE_SECS: u64 = 10;

/// Generous limit for a worker to finish a set after a fault (emulator rounds included).
pub const SETTLE: Duration = Duration::from_secs(240);

/// A fresh topic, subscription and (optionally) bucket on a pair of emulators.
pub struct Fixture<'a> {
    pub emulators: &'a Emulators,
    pub pubsub: PubSub,
    pub gcs: Gcs,
    pub topic: String,
    pub subscription: String,
    pub bucket: String,
}

impl Fixture<'static> {
    /// A fixture on the emulators shared by the test process.
    pub async fn new(create_bucket: bool) -> Result<Self> {
        Fixture::on(Emulators::shared().await, create_bucket).await
    }
}

impl<'a> Fixture<'a> {
    /// A fixture on `emulators`, e.g. a private pair that the test stops and restarts.
    pub async fn on(emulators: &'a Emulators, create_bucket: bool) -> Result<Fixture<'a>> {
        init_test_logs();
        let fx = Fixture {
            emulators,
            pubsub: emulators.pubsub(),
            gcs: emulators.gcs(),
            topic: unique_name("topic"),
            subscription: unique_name("sub"),
            bucket: unique_name("bucket"),
        };
        fx.create_topic_and_subscription().await?;
        if create_bucket {
            fx.gcs.create_bucket(&fx.bucket).await?;
        }
        Ok(fx)
    }

    /// Creates the topic and the subscription (again, after a Pub/Sub emulator restart).
    pub async fn create_topic_and_subscription(&self) -> Result {
        self.pubsub.create_topic(&self.topic).await?;
        let lease = LEASE_SECS as i32;
        self.pubsub.create_subscription(&self.topic, &self.subscription, lease, None).await
    }

    /// The worker's environment, with storage reached at `storage_url`.
    pub fn env(&self, storage_url: &str) -> Vec<(String, String)> {
        let lease = LEASE_SECS.to_string();
        let fixture = [
            ("STORAGE_EMULATOR_HOST", storage_url),
            ("SUBSCRIPTION_ID", &self.subscription),
            ("BUCKET_NAME", &self.bucket),
            ("MAX_LEASE_EXTENSION_SECS", &lease),
            ("PROGRESS_INTERVAL_SECS", "0"),
        ];
        with_vars(self.emulators.worker_env(), &fixture)
    }

    /// The environment for the real binary: JSON logs with a line per settled message, and the
    /// counters on a progress line every second (what [`BinaryWorker::counters`] reads).
    pub fn binary_env(&self, storage_url: &str) -> Vec<(String, String)> {
        let binary = [
            ("LOG_FORMAT", "json"),
            ("RUST_LOG", "info,pubsub_gcs_worker=debug"),
            ("MAX_OUTSTANDING_MESSAGES", "200"),
            ("PROGRESS_INTERVAL_SECS", "1"),
        ];
        with_vars(self.env(storage_url), &binary)
    }

    /// Runs the worker in this process, as `main` would, until [`RunningWorker::stop`].
    pub async fn start_worker(
        &self,
        storage_url: &str,
        extra: &[(&str, &str)],
    ) -> Result<RunningWorker> {
        let config = Config::from_vars(with_vars(self.env(storage_url), extra))?;
        let worker = Worker::build(config).await?;
        let (stats, health) = (worker.stats(), worker.health_addr());
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn(worker.run_until_stopped(async {
            let _ = stopped.await;
        }));
        Ok(RunningWorker { stats, health, stop, handle })
    }

    /// Publishes `messages` and returns what each id was sent with.
    pub async fn publish(&self, messages: &[OutMessage]) -> Result<BTreeMap<String, OutMessage>> {
        let ids = self.pubsub.publish(&self.topic, messages).await?;
        Ok(ids.into_iter().zip(messages.iter().cloned()).collect())
    }

    /// Checks that the bucket holds exactly one object per published message and no other, with
    /// the message's size and attributes (one named like a key of the worker's own stored as
    /// `attribute_{name}`, those past Cloud Storage's 8 KiB of metadata left out and counted in
    /// `attributes_omitted`); compares the bodies of every `every`-th object.
    pub async fn assert_exactly_once(
        &self,
        published: &BTreeMap<String, OutMessage>,
        every: usize,
    ) -> Result {
        let objects = self.gcs.list_objects(&self.bucket).await?;
        let mut by_id: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for o in &objects {
            let id = o.metadata.get("message_id").context(format!("{} has no id", o.name))?;
            by_id.entry(id).or_default().push(&o.name);
        }
        let twice: Vec<_> = by_id.iter().filter(|(_, names)| names.len() > 1).take(3).collect();
        anyhow::ensure!(twice.is_empty(), "messages with several objects, e.g. {twice:?}");
        let stray: Vec<_> = by_id.keys().filter(|id| !published.contains_key(**id)).collect();
        anyhow::ensure!(stray.is_empty(), "objects of unknown messages: {stray:?}");
        let missing: Vec<_> =
            published.keys().filter(|id| !by_id.contains_key(id.as_str())).collect();
        let (missing, sent) = (missing.len(), published.len());
        anyhow::ensure!(missing == 0, "{missing} of {sent} messages have no object");
        for o in &objects {
            let sent = &published[&o.metadata["message_id"]];
            let (size, name) = (sent.data.len() as u64, &o.name);
            anyhow::ensure!(o.size == size, "{name}: {} bytes, sent {size}", o.size);
            let mut missing = 0;
            for (key, value) in &sent.attributes {
                match o.metadata.get(metadata_key(key).as_ref()) {
                    Some(v) => {
                        anyhow::ensure!(v == value, "{name}: {key:?} is {v:?}, sent {value:?}")
                    }
                    None => missing += 1,
                }
            }
            let omitted: usize =
                o.metadata.get("attributes_omitted").map_or(Ok(0), |n| n.parse())?;
            anyhow::ensure!(missing == omitted, "{name}: {missing} missing, {omitted} omitted");
        }
        use futures::{StreamExt as _, TryStreamExt as _};
        futures::stream::iter(objects.iter().step_by(every.max(1)))
            .map(|o| async move {
                let body = self.gcs.download(&self.bucket, &o.name).await?;
                let sent = &published[&o.metadata["message_id"]].data;
                anyhow::ensure!(&body == sent, "body of {}", o.name);
                Ok(())
            })
            .buffer_unordered(8)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    /// The message ids of the bucket's objects.
    pub async fn object_ids(&self) -> Result<BTreeSet<String>> {
        let objects = self.gcs.list_objects(&self.bucket).await?;
        Ok(objects.into_iter().filter_map(|o| o.metadata.get("message_id").cloned()).collect())
    }

    /// Waits until every published message has an object and `worker` has settled, then checks
    /// exactly one byte-exact object per message. The worker must still be running.
    pub async fn settle(
        &self,
        worker: &mut BinaryWorker,
        published: &BTreeMap<String, OutMessage>,
    ) -> Result<Snapshot> {
        self.gcs.wait_for_objects(&self.bucket, published.len(), SETTLE).await?;
        let end = worker.wait_quiet(SETTLE).await?;
        self.assert_exactly_once(published, 1).await?;
        worker.assert_running()?;
        Ok(end)
    }
}

/// A worker running inside the test process.
pub struct RunningWorker {
    pub stats: Arc<Stats>,
    /// The health endpoint's address, when the test asked for one with `HEALTH_PORT`.
    pub health: Option<std::net::SocketAddr>,
    stop: oneshot::Sender<()>,
    handle: JoinHandle<anyhow::Result<Snapshot>>,
}

impl RunningWorker {
    /// Signals shutdown and returns the final counters.
    pub async fn stop(self) -> Result<Snapshot> {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(15), self.handle).await??
    }
}

/// The real binary, with its JSON log in a file: testkit's [`Process`] (signal, wait, log,
/// usage), plus what is about the worker: its counters and when it is quiet.
pub struct BinaryWorker {
    process: Process,
    /// The stream ack deadline it was given: how long an un-acked message takes to come back.
    lease: Duration,
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for BinaryWorker {
    type Target = Process;
    fn deref(&self) -> &Process {
        &self.process
    }
}

impl std::ops::DerefMut for BinaryWorker {
    fn deref_mut(&mut self) -> &mut Process {
        &mut self.process
    }
}

impl BinaryWorker {
    pub fn spawn(env: &[(String, String)], name: &str) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let bin = Path::new(env!("CARGO_BIN_EXE_pubsub-gcs-worker"));
        let process = Process::spawn(bin, env, dir.path().join(format!("{name}.log")))?;
        let lease = env.iter().rev().find(|(k, _)| k == "MAX_LEASE_EXTENSION_SECS");
        let lease = lease.and_then(|(_, v)| v.parse().ok()).unwrap_or(60);
        Ok(Self { process, lease: Duration::from_secs(lease), _dir: dir })
    }

    /// Fails if the worker exited or logged a panic: the faults in these tests must not stop it.
    pub fn assert_running(&mut self) -> Result {
        if let Some(status) = self.exited()? {
            anyhow::bail!("the worker exited ({status}); log:\n{}", self.log_tail());
        }
        self.assert_no_panic()
    }

    pub fn assert_no_panic(&self) -> Result {
        let panicked = self.log().contains("panicked");
        anyhow::ensure!(!panicked, "the worker panicked:\n{}", self.log_tail());
        Ok(())
    }

    /// The counters of the last `progress` (or final `stopped`) line.
    pub fn counters(&self) -> Snapshot {
        let lines = self.json_lines();
        let last = lines.iter().rev().find(|l| l["event"] == "progress" || l["event"] == "stopped");
        let n = |k: &str| last.and_then(|l| l[k].as_u64()).unwrap_or(0);
        Snapshot {
            received: n("received"),
            written: n("written"),
            duplicates: n("duplicates"),
            acked: n("acked"),
            nacked: n("nacked"),
            bytes_written: n("bytes_written"),
            in_flight: n("in_flight"),
        }
    }

    /// Waits until nothing is in flight and the counters have stayed put for longer than the
    /// lease: an un-acked message (a lost ack included) would have come back by then.
    pub async fn wait_quiet(&mut self, limit: Duration) -> Result<Snapshot> {
        let quiet = self.lease + Duration::from_secs(3);
        let (mut last, mut since) = (self.counters(), Instant::now());
        let settled = wait_for(limit + self.lease, "the worker to settle", async || {
            sleep(Duration::from_secs(1)).await;
            self.assert_running()?;
            let now = self.counters();
            if now != last || now.in_flight > 0 {
                (last, since) = (now, Instant::now());
            }
            Ok(since.elapsed() > quiet)
        });
        settled.await.with_context(|| format!("{last:?}"))?;
        Ok(last)
    }
}

/// The ids of messages the worker logged as acked (written or already existing), by the
/// event's `outcome` field.
pub fn settled_message_ids(lines: &[Value]) -> BTreeSet<String> {
    let acked = lines.iter().filter(|l| l["outcome"] == "acked");
    acked.filter_map(|l| Some(l["message_id"].as_str()?.to_string())).collect()
}

/// The first line of the lifecycle event `event`.
pub fn find_event<'a>(lines: &'a [Value], event: &str) -> &'a Value {
    let line = lines.iter().find(|l| l["event"] == event);
    line.unwrap_or_else(|| panic!("no event {event:?} in {lines:#?}"))
}

/// Messages number `range`: mixed sizes (empty to 100 KiB), some invalid UTF-8, some with
/// attributes.
pub fn sample_messages(range: std::ops::Range<usize>) -> Vec<OutMessage> {
    let message = |i: usize| {
        let data: Vec<u8> = match i % 6 {
            0 => Vec::new(),
            1 => format!("message {i}").into_bytes(),
            2 => format!("{i:05} ünïcödé ✓ ").repeat(60).into_bytes(),
            3 => format!("{i:05} ").repeat(16 * 1024 / 6).into_bytes(),
            4 => format!("{i:05}\n").repeat(100 * 1024 / 6).into_bytes(),
            _ => [0xff, 0xfe, 0x00, (i % 256) as u8]
                .into_iter()
                .chain((0..300).map(|b| (b * 7 + i) as u8))
                .collect(),
        };
        match i % 3 {
            0 => OutMessage::new(data)
                .attr("index", i.to_string())
                .attr("origin", "tests/e2e")
                .attr("note", "ünïcödé, spaces & symbols =/?"),
            _ => OutMessage::new(data),
        }
    };
    range.map(message).collect()
}

/// `2026-11-23T18:44:40.854Z` (a publish time as Pub/Sub prints it) -> `20261123_184440_854000`.
pub fn name_stamp(rfc3339: &str) -> String {
    use time::format_description::well_known::Rfc3339;
    let stamp = time::macros::format_description!(
        "[year][month][day]_[hour][minute][second]_[subsecond digits:6]"
    );
    let t = time::OffsetDateTime::parse(rfc3339, &Rfc3339).expect(rfc3339);
    t.format(&stamp).expect("a stamp")
}

pub use testkit::process::with_vars;

/// Held by each slow test for its whole run: together they starve each other (and the shared
/// emulators) on two cores, so they take turns.
pub async fn one_slow_test_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    TURN.lock().await
}

/// Prints a measured figure (`cargo test -- --nocapture` shows them).
pub fn figures(test: &str, text: &str) {
    println!("[figures] {test}: {text}");
}

/// Worker logs for debugging a test: `TEST_LOG=1 cargo test` (filter with `RUST_LOG`).
fn init_test_logs() {
    if std::env::var_os("TEST_LOG").is_some() {
        let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
        let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
    }
}
