//! The soak's faults: worker processes killed and restarted, storage failing in windows, the
//! Pub/Sub connection reset; and the [`Ledger`] of what was done when.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use hyper::StatusCode;
use rand::RngExt;
use rand::rngs::StdRng;
use tokio::sync::watch;
use tokio::time::{Instant, sleep};

use super::Soak;
use crate::process::Process;
use crate::{HttpProxy, Latency, Mode, Proxy};

/// Where the soak is: faults on, faults off (workers left running, restarted if they exit),
/// workers stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Chaos,
    Calm,
    Stop,
}

/// One worker process: which instance, its log, and when it ran (since the soak's start).
#[derive(Clone, Debug)]
pub struct Life {
    pub slot: usize,
    pub log: PathBuf,
    pub started: Duration,
    /// When it was killed or exited; `None` while it runs.
    pub ended: Option<Duration>,
    /// Whether its end was the soak's own final SIGTERM (its streams ended then too, but no
    /// message may be left on them: the backlog was drained).
    pub final_stop: bool,
}

/// What the soak did, when.
#[derive(Debug, Default)]
pub struct Ledger {
    /// Fault kind: (windows, total time).
    pub faults: BTreeMap<&'static str, (u64, Duration)>,
    /// Restart kind (`sigterm`, `sigkill`, `exited`, ...): count.
    pub restarts: BTreeMap<&'static str, u64>,
    pub lives: Vec<Life>,
    /// Per instance: the running process's pid, and the highest `VmHWM` seen, in KiB.
    pub pids: Vec<Option<u32>>,
    pub peak_rss_kib: Vec<u64>,
    /// Exits the soak did not cause, and SIGTERMs that did not end a process in time.
    pub surprises: Vec<String>,
}

impl Ledger {
    pub fn new(instances: usize) -> Ledger {
        let (pids, peak_rss_kib) = (vec![None; instances], vec![0; instances]);
        Ledger { pids, peak_rss_kib, ..Ledger::default() }
    }

    fn fault(&mut self, kind: &'static str, lasted: Duration) {
        let entry = self.faults.entry(kind).or_default();
        entry.0 += 1;
        entry.1 += lasted;
    }

    fn sample_rss(&mut self, slot: usize) {
        let usage = self.pids[slot].and_then(|pid| crate::process::Usage::of(pid).ok());
        if let Some(kib) = usage.map(|u| u.peak_rss_kib) {
            self.peak_rss_kib[slot] = self.peak_rss_kib[slot].max(kib);
        }
    }
}

/// Samples every running worker's peak RSS once a second until the soak stops.
pub async fn sample_rss(ledger: Arc<Mutex<Ledger>>, phase: watch::Receiver<Phase>) -> Result<()> {
    while *phase.borrow() != Phase::Stop {
        let instances = ledger.lock().unwrap().pids.len();
        (0..instances).for_each(|slot| ledger.lock().unwrap().sample_rss(slot));
        sleep(Duration::from_secs(1)).await;
    }
    Ok(())
}

/// Runs one instance: starts the worker, kills it at a random time with SIGTERM or SIGKILL,
/// starts it again; in the calm phase only restarts it if it exits; stops it with SIGTERM.
pub struct Supervisor {
    pub slot: usize,
    pub soak: Soak,
    pub env: Vec<(String, String)>,
    pub ledger: Arc<Mutex<Ledger>>,
    pub start: Instant,
    pub rng: StdRng,
}

impl Supervisor {
    pub async fn supervise(mut self, mut phase: watch::Receiver<Phase>) -> Result<()> {
        for life in 0.. {
            let mut child = self.spawn(life)?;
            let (min, max) = self.soak.lifetime;
            let kill_at = Instant::now() + self.rng.random_range(min..=max);
            let end = loop {
                let chaos = *phase.borrow_and_update() == Phase::Chaos;
                tokio::select! {
                    status = child.wait(Duration::MAX) => {
                        let status = status?;
                        self.note(|l| l.surprises.push(format!("instance {}: exited {status}", self.slot)));
                        break Some("exited");
                    }
                    () = tokio::time::sleep_until(kill_at), if chaos => {
                        let sigkill = self.rng.random_bool(0.5);
                        break Some(self.kill(&mut child, sigkill).await?);
                    }
                    changed = phase.changed() => {
                        if changed.is_err() || *phase.borrow() == Phase::Stop {
                            self.kill(&mut child, false).await?;
                            break None;
                        }
                    }
                }
            };
            let now = self.start.elapsed();
            let slot = self.slot;
            self.note(|l| {
                if let Some(life) = l.lives.iter_mut().rev().find(|l| l.slot == slot) {
                    life.ended = Some(now);
                    life.final_stop = end.is_none();
                }
                l.pids[slot] = None;
                if let Some(kind) = end {
                    *l.restarts.entry(kind).or_default() += 1;
                }
            });
            if end.is_none() {
                return Ok(());
            }
            sleep(Duration::from_millis(self.rng.random_range(500..3000))).await;
        }
        Ok(())
    }

    fn spawn(&self, life: u64) -> Result<Process> {
        let log = self.soak.log_dir.join(format!("worker-{}-{life:03}.log", self.slot));
        let child = Process::spawn(&self.soak.worker_bin, &self.env, log.clone())?;
        let (slot, started) = (self.slot, self.start.elapsed());
        self.note(|l| {
            l.pids[slot] = Some(child.pid());
            l.lives.push(Life { slot, log, started, ended: None, final_stop: false });
        });
        Ok(child)
    }

    /// Kills the worker; what kind of restart that makes. A SIGTERM that does not end the
    /// process within 30 s (its shutdown budget is 8 s) is followed by a SIGKILL and noted.
    async fn kill(&self, child: &mut Process, sigkill: bool) -> Result<&'static str> {
        let slot = self.slot;
        self.note(|l| l.sample_rss(slot));
        child.signal(if sigkill { libc::SIGKILL } else { libc::SIGTERM });
        match child.wait(Duration::from_secs(30)).await {
            Ok(status) => {
                if !sigkill && !status.success() {
                    self.note(|l| l.surprises.push(format!("instance {slot}: SIGTERM, {status}")));
                }
                Ok(if sigkill { "sigkill" } else { "sigterm" })
            }
            Err(_) => {
                child.signal(libc::SIGKILL);
                child.wait(Duration::from_secs(10)).await?;
                self.note(|l| l.surprises.push(format!("instance {slot}: SIGTERM ignored 30 s")));
                Ok("sigterm_then_sigkill")
            }
        }
    }

    fn note(&self, f: impl FnOnce(&mut Ledger)) {
        f(&mut self.ledger.lock().unwrap());
    }
}

/// The storage faults, one at a time, and the Pub/Sub connection resets.
pub struct Faults<'a> {
    pub soak: Soak,
    pub http: &'a HttpProxy,
    pub storage: &'a Proxy,
    pub pubsub: &'a Proxy,
    pub ledger: Arc<Mutex<Ledger>>,
    pub start: Instant,
}

const STORAGE_FAULTS: [&str; 8] = [
    "throttle_429",
    "unavailable_503",
    "forbidden_403",
    "hang",
    "reset",
    "refuse",
    "latency_spike",
    "latency_spike",
];

impl Faults<'_> {
    /// Storage faults in windows until the chaos phase ends. Throughout, a create-only write of
    /// an existing object gets 403 instead of 412, as Cloud Storage answers a caller that may
    /// not read objects.
    pub async fn storage(&self, mut phase: watch::Receiver<Phase>, mut rng: StdRng) {
        self.http.forbid_existing(true);
        self.clear();
        let end = self.start + self.soak.duration;
        while Instant::now() < end {
            let (min, max) = self.soak.fault_gap;
            if !calm_for(&mut phase, rng.random_range(min..=max).min(end - Instant::now())).await {
                break;
            }
            let kind = STORAGE_FAULTS[rng.random_range(0..STORAGE_FAULTS.len())];
            match kind {
                "throttle_429" => self.http.throttle(2),
                "unavailable_503" => self.http.fail_uploads(Some(StatusCode::SERVICE_UNAVAILABLE)),
                "forbidden_403" => self.http.fail_uploads(Some(StatusCode::FORBIDDEN)),
                "hang" => self.storage.set_mode(Mode::Hang),
                "reset" => self.storage.set_mode(Mode::Reset),
                "refuse" => self.storage.set_mode(Mode::Refuse),
                _ => self.http.set_latency(Latency::new(Duration::from_secs(2), 0.8)),
            }
            let (min, max) = self.soak.fault_window;
            let window =
                rng.random_range(min..=max).min(end.saturating_duration_since(Instant::now()));
            let began = Instant::now();
            calm_for(&mut phase, window).await;
            self.clear();
            self.ledger.lock().unwrap().fault(kind, began.elapsed());
        }
    }

    /// Resets every Pub/Sub connection (for a second) now and then until the chaos phase ends.
    pub async fn pubsub(&self, mut phase: watch::Receiver<Phase>, mut rng: StdRng) {
        let end = self.start + self.soak.duration;
        let (min, max) = self.soak.pubsub_gap;
        while Instant::now() < end {
            let gap = rng.random_range(min..=max).min(end - Instant::now());
            if !calm_for(&mut phase, gap).await || Instant::now() >= end {
                break;
            }
            self.pubsub.set_mode(Mode::Reset);
            self.ledger.lock().unwrap().fault("pubsub_reset", Duration::from_secs(1));
            sleep(Duration::from_secs(1)).await;
            self.pubsub.set_mode(Mode::Pass);
        }
    }

    /// Every fault off.
    pub fn clear(&self) {
        self.http.throttle(0);
        self.http.fail_uploads(None);
        // Normal storage latency: tens of milliseconds with a tail.
        self.http.set_latency(Latency::new(Duration::from_millis(30), 0.5));
        self.storage.set_mode(Mode::Pass);
        self.pubsub.set_mode(Mode::Pass);
    }
}

/// Waits `limit` unless the chaos phase ends first; whether it is still on.
async fn calm_for(phase: &mut watch::Receiver<Phase>, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if *phase.borrow_and_update() != Phase::Chaos {
            return false;
        }
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => return true,
            changed = phase.changed() => if changed.is_err() { return false },
        }
    }
}
