//! How many object writes run at once: a limit that follows storage latency.
//!
//! A worker's rate is about writes in flight / write latency, and Cloud Storage's latency varies
//! from a few to hundreds of milliseconds with region, object size and load; no fixed number is
//! right everywhere. So the limit adapts, in the manner of TCP congestion control and Vector's
//! adaptive request concurrency: while every write permit is in use and writes take no longer
//! than usual, the limit grows (doubling every other round trip at first, then by its square
//! root per round trip);
//! when writes queue - Cloud Storage, the network or this instance's CPU cannot keep up - or
//! storage pushes back (429, 503, timeouts), it shrinks. `MAX_CONCURRENT_WRITES` caps it; memory
//! follows what is in flight, not the cap.
//!
//! # Telling a queue from a long tail
//!
//! Cloud Storage's upload latency has a long tail: the 99th percentile is several times the
//! median, so any one write, and the mean of a few, says little. Both sides of the comparison
//! are therefore medians of many writes, which a tail cannot move:
//!
//! - the **baseline**, storage's latency without a queue, is the median of the writes begun
//!   while the limit was briefly held at a quarter ([`Phase::Probing`]: at start, then every
//!   [`PERIOD`]), counted until each of them has ended, so a slow write cannot hide by ending
//!   late; the lower of the last two probes is used;
//! - each round trip's **median**, over every write that ended in it, at least [`MIN_SAMPLES`]
//!   of them.
//!
//! A round whose median is more than [`TOLERANCE`] times the baseline shows a queue, and the
//! limit eases by [`EASE`]. Against a storage that serves at most R writes a second by queueing
//! the rest, latency grows with every write over what it serves, so the limit settles where
//! writes take about twice their unqueued time, about twice what it can serve at once, and
//! never climbs to the cap. Rounds with a mean in the tail no longer count as a queue, which
//! the earlier rule (the mean of a round against the quickest round lately) did, holding the
//! limit at its floor whenever latency had a long tail.

use rule::{Growth, Seen, Step, decide};
use samples::{Probe, Round, median};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// The limit's first value, and the lowest it goes.
const START: f64 = 8.0;
/// A round trip lasts at least this long, and at least the baseline.
const MIN_ROUND: Duration = Duration::from_millis(50);
/// A round's median counts once this many writes ended in it: the median of 16 draws from a
/// log-normal with sigma 1 is within a factor of 2 of the true one 98% of the time.
const MIN_SAMPLES: usize = 16;
/// How often the baseline is measured again, so storage that really got slower (or quicker)
/// becomes the new normal within two periods.
const PERIOD: Duration = Duration::from_secs(30);
/// A probe lasts until at least this many writes began in it (and at least a quarter-limit's
/// worth): enough for a median that the tail does not move.
const PROBE_SAMPLES: usize = 32;
/// A round median above this many baselines means writes are queueing.
const TOLERANCE: f64 = 2.0;
/// Slow start ends when a round's median is this many baselines: doubling overshoots by the time
/// a queue is twice the baseline, so it stops at the first sign of one (as TCP's HyStart does).
const SLOW_START_EXIT: f64 = 1.5;
/// The limit after a round that queued, as a share of what it was.
const EASE: f64 = 0.9;
/// The limit after storage pushed back (429, 503, a timeout), as a share of what it was.
const BACK_OFF: f64 = 0.5;

/// The write limit shared by a worker's message tasks.
#[derive(Debug)]
pub struct WriteLimit {
    state: Mutex<State>,
    freed: Notify,
    max: f64,
    /// Messages waiting for a permit now: none while the writes could take more.
    waiting: AtomicUsize,
}

#[derive(Debug)]
struct State {
    limit: f64,
    in_flight: usize,
    growth: Growth,
    phase: Phase,
    probe: Probe,
    /// The medians of the last probe and of the one before it; the lower one is the baseline.
    baselines: [Option<f32>; 2],
    period_started: Instant,
    /// When the limit last backed off: a push-back to a write begun before then was answered
    /// to the load that caused it, and does not count again.
    backed_off: Instant,
    round: Round,
}

/// Whether the baseline is being measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Writes are held to a quarter of the limit, so none of them queues, and each write begun
    /// now is tagged with the probe's number: its duration goes into the baseline.
    Probing,
    /// Writes run up to the limit, which each round trip adjusts.
    Running,
}

/// How a write ended, for the limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Answered (written, or found existing): its duration measures storage latency.
    Answered,
    /// Throttled, unavailable or timed out: storage asks for less. Also a write that the
    /// storage client retried after a 429 or 503 into success: its time is mostly the client's
    /// waits, which say nothing of latency (`crate::sink::retries`).
    PushedBack,
    /// Any other failure (a missing bucket, no permission) says nothing about load.
    Failed,
}

/// One running write; dropping it frees the place.
#[derive(Debug)]
pub struct WritePermit {
    limit: Arc<WriteLimit>,
    started: Instant,
    /// The probe this write was begun in, if any.
    probe: Option<u32>,
    settled: bool,
}

impl WriteLimit {
    pub fn new(max: usize) -> Arc<Self> {
        let max = (max as f64).max(1.0);
        let now = Instant::now();
        let state = State {
            limit: START.min(max),
            in_flight: 0,
            growth: Growth::SlowStart,
            // The first load is a probe: the limit is at its start, so nothing queues.
            phase: Phase::Probing,
            probe: Probe::new(0, PROBE_SAMPLES),
            baselines: [None; 2],
            period_started: now,
            backed_off: now,
            round: Round::new(now),
        };
        Arc::new(Self { state: Mutex::new(state), freed: Notify::new(), max, waiting: 0.into() })
    }

    /// Waits for a place under the limit.
    pub async fn acquire(self: &Arc<Self>) -> WritePermit {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        // Counts down however the wait ends, a cancelled one included.
        let _waiting = Waiting(&self.waiting);
        loop {
            if let Some(permit) = self.try_acquire() {
                return permit;
            }
            // In the queue before the second look, so that a place freed in between wakes it
            // (a notification it no longer needs passes to the next waiter when it is dropped).
            let mut freed = std::pin::pin!(self.freed.notified());
            freed.as_mut().enable();
            if let Some(permit) = self.try_acquire() {
                return permit;
            }
            freed.await;
        }
    }

    /// A place under the limit, if one is free now.
    fn try_acquire(self: &Arc<Self>) -> Option<WritePermit> {
        let mut state = self.lock();
        let (allowed, free) = (state.allowed(), state.free());
        if free == 0 {
            state.round.full = true;
            return None;
        }
        state.in_flight += 1;
        if state.in_flight >= allowed {
            state.round.full = true;
        }
        let probe = state.begin_write();
        // The probe's last write lets the limit's other three quarters in.
        let opened = (state.free() + 1).saturating_sub(free);
        drop(state);
        self.wake(opened);
        Some(WritePermit { limit: self.clone(), started: Instant::now(), probe, settled: false })
    }

    /// Wakes a waiter for each of `places` that opened: when the limit binds, thousands of
    /// messages wait, and waking them all for a few places (as each rise of the limit did) ran
    /// thousands of tasks only to find the places taken.
    fn wake(&self, places: usize) {
        for _ in 0..places.min(self.waiting()) {
            self.freed.notify_one();
        }
    }

    /// Messages waiting for a permit now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// The current limit, for metrics and logs.
    pub fn current(&self) -> usize {
        self.lock().limit as usize
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn settle(&self, permit: &WritePermit, outcome: Outcome) {
        let mut state = self.lock();
        let free = state.free();
        state.in_flight = state.in_flight.saturating_sub(1);
        let seconds = permit.started.elapsed().as_secs_f32();
        if permit.probe == Some(state.probe.number) {
            state.probe.ended += 1;
            if outcome == Outcome::Answered {
                state.probe.seconds.push(seconds);
            }
        }
        match outcome {
            Outcome::Answered => state.round.seconds.push(seconds),
            Outcome::PushedBack if permit.started >= state.backed_off => {
                state.round.pushed_back = true;
            }
            Outcome::PushedBack | Outcome::Failed => {}
        }
        state.adjust(self.max);
        // This write's place, unless the limit fell below the writes in flight, and as many
        // more as a higher limit opened (a probe ends in `try_acquire`).
        let opened = state.free().saturating_sub(free);
        drop(state);
        self.wake(opened);
    }
}

impl State {
    /// How many writes may run now: the limit, or a quarter of it while probing.
    fn allowed(&self) -> usize {
        let limit = self.limit.floor();
        let allowed = match self.phase {
            Phase::Probing => (limit / 4.0).max(limit.min(START)),
            Phase::Running => limit,
        };
        allowed as usize
    }

    /// Places under the limit no write holds.
    fn free(&self) -> usize {
        self.allowed().saturating_sub(self.in_flight)
    }

    /// Counts a write that begins now; returns its probe's number while probing.
    fn begin_write(&mut self) -> Option<u32> {
        if self.phase != Phase::Probing {
            return None;
        }
        self.probe.begun += 1;
        if self.probe.begun >= self.probe.target {
            self.phase = Phase::Running;
        }
        Some(self.probe.number)
    }

    /// At the end of a round trip: grow, shrink or hold the limit.
    fn adjust(&mut self, max: f64) {
        let now = Instant::now();
        let length = MIN_ROUND.as_secs_f32().max(self.baseline().unwrap_or(0.0));
        let length = length.max(self.round.previous);
        let round = &mut self.round;
        if (now - round.started).as_secs_f32() < length
            || (round.seconds.len() < MIN_SAMPLES && !round.pushed_back)
        {
            return;
        }
        if !self.probe.measured {
            if let Some(median) = self.probe.median() {
                self.baselines[1] = Some(median);
            }
            self.probe.measured = self.probe.finished();
        }
        let baseline = self.baseline();
        if self.phase == Phase::Running
            && self.probe.measured
            && now - self.period_started >= PERIOD
        {
            self.start_probe(now);
        }
        let median = median(&mut self.round.seconds);
        let seen = Seen {
            median,
            baseline,
            full: self.round.full,
            pushed_back: self.round.pushed_back,
            probing: self.phase == Phase::Probing,
        };
        let (step, growth) = decide(seen, self.growth);
        self.growth = growth;
        let floor = START.min(max);
        self.limit = match step {
            Step::BackOff => {
                self.backed_off = now;
                (self.limit * BACK_OFF).max(floor)
            }
            Step::Ease => (self.limit * EASE).max(floor),
            Step::Double => (self.limit * 2.0).min(max),
            Step::Grow => (self.limit + self.limit.sqrt()).min(max),
            Step::Hold => self.limit,
        };
        self.round.restart(now, median.unwrap_or(0.0));
    }

    /// Storage's latency without a queue, in seconds: the lower median of the last two probes.
    fn baseline(&self) -> Option<f32> {
        self.baselines.iter().flatten().copied().reduce(f32::min)
    }

    /// Holds the writes to a quarter of the limit until enough of them have begun.
    fn start_probe(&mut self, now: Instant) {
        self.phase = Phase::Probing;
        self.period_started = now;
        self.baselines = [self.baselines[1], None];
        let quarter = (self.limit / 4.0) as usize;
        self.probe = Probe::new(self.probe.number.wrapping_add(1), PROBE_SAMPLES.max(quarter));
    }
}

impl WritePermit {
    /// Reports how the write ended; the time since the permit was taken is its duration.
    pub fn settle(mut self, outcome: Outcome) {
        self.settled = true;
        self.limit.clone().settle(&self, outcome);
    }
}

impl Drop for WritePermit {
    fn drop(&mut self) {
        // Abandoned at shutdown: the place is free, and the write says nothing about latency.
        if !self.settled {
            self.limit.clone().settle(self, Outcome::Failed);
        }
    }
}

mod rule;
mod samples;
#[cfg(test)]
mod tests;

/// Counts one waiter down when dropped.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
