//! How many object writes run at once: a limit that follows storage latency.
//!
//! A worker's rate is about writes in flight / write latency, and Cloud Storage's latency varies
//! from a few to hundreds of milliseconds with region, object size and load; no fixed number is
//! right everywhere. So the limit adapts, in the manner of TCP congestion control and Vector's
//! adaptive request concurrency: while every write permit is in use and writes take no longer
//! than usual, the limit grows (doubling at first, then by its square root per round trip);
//! when writes take twice as long as the quickest seen lately - Cloud Storage, the network or
//! this instance's CPU is saturated - or storage pushes back (429, 503, timeouts), it shrinks.
//! `MAX_CONCURRENT_WRITES` caps it; memory follows what is in flight, not the cap.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// The limit's first value, and the lowest it goes.
const START: f64 = 8.0;
/// A round trip is over when the slower of the mean write time and this has passed.
const MIN_ROUND: Duration = Duration::from_millis(50);
/// "Lately": the quickest round trip is the least of this period and the one before.
const PERIOD: Duration = Duration::from_secs(30);

/// The write limit shared by a worker's message tasks.
#[derive(Debug)]
pub struct WriteLimit {
    state: Mutex<State>,
    freed: Notify,
    max: f64,
}

#[derive(Debug)]
struct State {
    limit: f64,
    in_flight: usize,
    /// Until the first sign of congestion, the limit doubles each round trip.
    slow_start: bool,
    /// The quickest round trip of this period and of the one before: the latency of storage
    /// without queueing. A queue that builds up cannot pass for the new normal, and storage that
    /// really got slower becomes it within two periods.
    quickest: [Option<Duration>; 2],
    period_started: Instant,
    /// Round trips left at a quarter of the limit.
    probing: u8,
    round: Round,
}

/// What happened since the round trip began.
#[derive(Debug)]
struct Round {
    started: Instant,
    writes: u32,
    total: Duration,
    /// Of those, the writes that also began in this round trip.
    clean: (u32, Duration),
    /// Every permit was in use at some point: more would have been used.
    full: bool,
    pushed_back: bool,
}

/// How a write ended, for the limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Answered (written, or found existing): its duration measures storage latency.
    Answered,
    /// Throttled, unavailable or timed out: storage asks for less.
    PushedBack,
    /// Any other failure (a missing bucket, no permission) says nothing about load.
    Failed,
}

/// One running write; dropping it frees the place.
#[derive(Debug)]
pub struct WritePermit {
    limit: Arc<WriteLimit>,
    started: Instant,
    settled: bool,
}

impl WriteLimit {
    pub fn new(max: usize) -> Arc<Self> {
        let max = (max as f64).max(1.0);
        let round = Round::new(Instant::now());
        let (quickest, period_started) = ([None; 2], Instant::now());
        let state = State {
            limit: START.min(max),
            in_flight: 0,
            slow_start: true,
            quickest,
            probing: 0,
            period_started,
            round,
        };
        Arc::new(Self { state: Mutex::new(state), freed: Notify::new(), max })
    }

    /// Waits for a place under the limit.
    pub async fn acquire(self: &Arc<Self>) -> WritePermit {
        loop {
            // Registered before the check, so a place freed in between is not missed.
            let freed = self.freed.notified();
            {
                let mut state = self.lock();
                let allowed = state.allowed();
                if state.in_flight < allowed {
                    state.in_flight += 1;
                    if state.in_flight >= allowed {
                        state.round.full = true;
                    }
                    return WritePermit {
                        limit: self.clone(),
                        started: Instant::now(),
                        settled: false,
                    };
                }
                state.round.full = true;
            }
            freed.await;
        }
    }

    /// The current limit, for metrics and logs.
    pub fn current(&self) -> usize {
        self.lock().limit as usize
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn settle(&self, started: Instant, outcome: Outcome) {
        let mut state = self.lock();
        state.in_flight = state.in_flight.saturating_sub(1);
        let round = &mut state.round;
        let took = started.elapsed();
        match outcome {
            Outcome::Answered => {
                (round.writes, round.total) = (round.writes + 1, round.total + took);
                if started >= round.started {
                    round.clean = (round.clean.0 + 1, round.clean.1 + took);
                }
            }
            Outcome::PushedBack => round.pushed_back = true,
            Outcome::Failed => {}
        }
        let before = state.limit;
        state.adjust(self.max);
        // A higher limit frees several places at once.
        if state.limit.floor() > before.floor() {
            self.freed.notify_waiters();
        }
        drop(state);
        self.freed.notify_one();
    }
}

impl State {
    fn allowed(&self) -> usize {
        let limit = self.limit.floor();
        (if self.probing > 0 { (limit / 4.0).max(limit.min(START)) } else { limit }) as usize
    }

    /// At the end of a round trip: grow, shrink or hold the limit.
    fn adjust(&mut self, max: f64) {
        let now = Instant::now();
        let mean = (self.round.writes > 0).then(|| self.round.total / self.round.writes);
        let elapsed = now - self.round.started;
        if elapsed < mean.unwrap_or_default().max(MIN_ROUND)
            || (mean.is_none() && !self.round.pushed_back)
        {
            return;
        }
        // Each period begins with two round trips at a quarter of the limit: the first drains
        // any queue, the second shows how long a write takes without one (counting only the
        // writes it began). So does the first load, before the limit ever shrank.
        let clean = (self.round.clean.0 > 0).then(|| self.round.clean.1 / self.round.clean.0);
        if self.probing == 1 || self.slow_start {
            let quickest = &mut self.quickest[1];
            *quickest = clean.or(mean).min(*quickest).or(*quickest).or(clean.or(mean));
        }
        if now - self.period_started >= PERIOD {
            (self.quickest, self.period_started, self.probing) = ([self.quickest[1], None], now, 3);
        }
        if self.probing > 0 {
            self.probing -= 1;
            self.round = Round::new(now);
            return;
        }
        let quickest = self.quickest.iter().flatten().min().map_or(0.0, Duration::as_secs_f64);
        // Writes that take twice as long as the quickest mean a queue: storage, the network or
        // this instance's CPU cannot keep up with more.
        let congested = mean.is_some_and(|m| m.as_secs_f64() > 2.0 * quickest);
        if self.round.pushed_back || congested {
            let factor = if self.round.pushed_back { 0.5 } else { 0.9 };
            self.limit = (self.limit * factor).max(START.min(max));
            self.slow_start = false;
        } else if self.round.full {
            let grown =
                if self.slow_start { self.limit * 2.0 } else { self.limit + self.limit.sqrt() };
            self.limit = grown.min(max);
        }
        self.round = Round::new(now);
    }
}

impl Round {
    fn new(started: Instant) -> Self {
        let (writes, total, clean) = (0, Duration::ZERO, (0, Duration::ZERO));
        Self { started, writes, total, clean, full: false, pushed_back: false }
    }
}

impl WritePermit {
    /// Reports how the write ended; the time since the permit was taken is its duration.
    pub fn settle(mut self, outcome: Outcome) {
        self.settled = true;
        self.limit.settle(self.started, outcome);
    }
}

impl Drop for WritePermit {
    fn drop(&mut self) {
        // Abandoned at shutdown: the place is free, and the write says nothing about latency.
        if !self.settled {
            self.limit.settle(self.started, Outcome::Failed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

    /// A storage that answers in `latency` (give or take `jitter`, a share of it) while at most
    /// `capacity` writes run, and queues the rest: its rate tops out at `capacity / latency`.
    /// Drives it for `secs` with an endless backlog; returns the writes per second over the last
    /// half, and the final limit.
    async fn drive(
        max: usize,
        latency: u64,
        jitter: f64,
        capacity: usize,
        secs: u64,
    ) -> (f64, usize) {
        let latency = Duration::from_millis(latency);
        let limit = WriteLimit::new(max);
        let (running, done) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicU64::new(0)));
        let (end, half) = (
            Instant::now() + Duration::from_secs(secs),
            Instant::now() + Duration::from_secs(secs / 2),
        );
        let mut at_half = None;
        while Instant::now() < end {
            let permit = limit.acquire().await;
            if at_half.is_none() && Instant::now() >= half {
                at_half = Some(done.load(Ordering::Relaxed));
            }
            let (running, done) = (running.clone(), done.clone());
            tokio::spawn(async move {
                let n = running.fetch_add(1, Ordering::Relaxed) + 1;
                let queued = (n as f64 / capacity as f64).max(1.0);
                let spread = (n.wrapping_mul(2_654_435_761) % 1000) as f64 / 500.0 - 1.0;
                tokio::time::sleep(latency.mul_f64(queued * (1.0 + jitter * spread))).await;
                running.fetch_sub(1, Ordering::Relaxed);
                done.fetch_add(1, Ordering::Relaxed);
                permit.settle(Outcome::Answered);
            });
        }
        let rate =
            (done.load(Ordering::Relaxed) - at_half.unwrap_or(0)) as f64 / (secs - secs / 2) as f64;
        (rate, limit.current())
    }

    #[tokio::test(start_paused = true)]
    async fn with_steady_latency_the_limit_grows_to_the_cap() {
        for (max, latency, jitter) in [(256, 10, 0.0), (1024, 50, 0.0), (1024, 200, 0.5)] {
            let (rate, limit) = drive(max, latency, jitter, usize::MAX, 30).await;
            assert_eq!(limit, max, "{latency} ms");
            let bound = max as f64 * 1000.0 / latency as f64;
            assert!(rate > 0.9 * bound, "{latency} ms: {rate:.0}/s of {bound:.0}/s");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_saturated_storage_keeps_the_limit_near_what_it_can_serve() {
        for (latency, jitter, capacity) in [(10, 0.0, 20), (50, 0.5, 100), (200, 0.0, 300)] {
            let (rate, limit) = drive(1024, latency, jitter, capacity, 120).await;
            let bound = capacity as f64 * 1000.0 / latency as f64;
            assert!(rate > 0.9 * bound, "{latency} ms: {rate:.0}/s of {bound:.0}/s");
            // Writes queue until they take twice as long: about twice what storage serves.
            assert!(limit <= capacity * 5 / 2, "{latency} ms: limit {limit} for {capacity} places");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn push_back_halves_the_limit_and_the_cap_holds() {
        let limit = WriteLimit::new(100);
        for _ in 0..40 {
            let permits = futures::future::join_all((0..limit.current()).map(|_| limit.acquire()));
            let permits = permits.await;
            tokio::time::sleep(MIN_ROUND).await;
            permits.into_iter().for_each(|p| p.settle(Outcome::Answered));
        }
        assert_eq!(limit.current(), 100, "capped");
        let permit = limit.acquire().await;
        tokio::time::sleep(MIN_ROUND).await;
        permit.settle(Outcome::PushedBack);
        assert_eq!(limit.current(), 50);
    }
}
