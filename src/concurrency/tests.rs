//! The limit against simulated storage, in paused time: long tails, a storage that queues, one
//! that pushes back.

use super::*;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use testkit::Latency;
use testkit::rand::SeedableRng as _;
use testkit::rand::rngs::StdRng;

/// Storage as these tests see it: each write takes a log-normal time (a median and a sigma, as
/// Cloud Storage's upload latency has a long tail); with `rate`, at most that many writes begin
/// per second and the rest wait their turn (a saturated bucket that queues, not refuses); with
/// `push_back_above`, a write that finds that many running is answered 429 at once.
#[derive(Clone, Copy, Debug)]
struct Storage {
    latency: Latency,
    rate: Option<f64>,
    push_back_above: Option<usize>,
}

impl Storage {
    fn new(median_ms: u64, sigma: f64) -> Self {
        let latency = Latency::new(Duration::from_millis(median_ms), sigma);
        Self { latency, rate: None, push_back_above: None }
    }

    fn mean(&self) -> Duration {
        self.latency.mean()
    }
}

/// What a run showed: the rate over its second half, the limit at its end and at its highest.
#[derive(Debug)]
struct Run {
    rate: f64,
    limit: usize,
    highest_limit: usize,
}

/// Drives `storage` with an endless backlog for `secs`, `max` writes at most.
async fn drive(max: usize, storage: Storage, secs: u64) -> Run {
    let limit = WriteLimit::new(max);
    let running = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let queue = Arc::new(Mutex::new(Instant::now()));
    let mut rng = StdRng::seed_from_u64(7);
    let start = Instant::now();
    let (half, end) = (start + Duration::from_secs(secs / 2), start + Duration::from_secs(secs));
    let (mut at_half, mut highest_limit) = (None, 0);
    while Instant::now() < end {
        let permit = limit.acquire().await;
        highest_limit = highest_limit.max(limit.current());
        if Instant::now() >= half {
            at_half.get_or_insert(done.load(Ordering::Relaxed));
        }
        let took = storage.latency.sample(&mut rng);
        let (running, done, queue) = (running.clone(), done.clone(), queue.clone());
        tokio::spawn(async move {
            let n = running.fetch_add(1, Ordering::Relaxed) + 1;
            if storage.push_back_above.is_some_and(|above| n > above) {
                tokio::time::sleep(Duration::from_millis(5)).await;
                running.fetch_sub(1, Ordering::Relaxed);
                return permit.settle(Outcome::PushedBack);
            }
            let begins = match storage.rate {
                Some(rate) => {
                    let mut next = queue.lock().unwrap();
                    let begins = (*next).max(Instant::now());
                    *next = begins + Duration::from_secs_f64(1.0 / rate);
                    begins
                }
                None => Instant::now(),
            };
            tokio::time::sleep_until(begins + took).await;
            running.fetch_sub(1, Ordering::Relaxed);
            done.fetch_add(1, Ordering::Relaxed);
            permit.settle(Outcome::Answered);
        });
    }
    let rate =
        (done.load(Ordering::Relaxed) - at_half.unwrap_or(0)) as f64 / (secs - secs / 2) as f64;
    Run { rate, limit: limit.current(), highest_limit }
}

/// With no queue, the limit reaches `max` within 15 s for every spread of latency around `median_ms`, and
/// the rate over the next 15 s is 90% of `max` / the mean latency.
async fn assert_a_long_tail_does_not_hold_the_limit_down(max: usize, median_ms: u64) {
    for sigma in [0.0, 0.5, 1.0] {
        let storage = Storage::new(median_ms, sigma);
        let run = drive(max, storage, 30).await;
        assert_eq!(run.limit, max, "{median_ms} ms, sigma {sigma}: {run:?}");
        let bound = max as f64 / storage.mean().as_secs_f64();
        assert!(
            run.rate > 0.9 * bound,
            "{median_ms} ms, sigma {sigma}: {:.0}/s of {bound:.0}/s, {run:?}",
            run.rate
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_long_tail_at_10_ms_does_not_hold_the_limit_down() {
    // 256, not 1,024: the same growth, a quarter of the simulated writes.
    assert_a_long_tail_does_not_hold_the_limit_down(256, 10).await;
}

#[tokio::test(start_paused = true)]
async fn a_long_tail_at_50_ms_does_not_hold_the_limit_down() {
    assert_a_long_tail_does_not_hold_the_limit_down(1024, 50).await;
}

#[tokio::test(start_paused = true)]
async fn a_long_tail_at_200_ms_does_not_hold_the_limit_down() {
    assert_a_long_tail_does_not_hold_the_limit_down(1024, 200).await;
}

#[tokio::test(start_paused = true)]
async fn a_storage_that_queues_keeps_the_limit_near_what_it_serves() {
    for (median, sigma, rate) in [(10, 0.0, 2_000.0), (50, 0.5, 2_000.0), (200, 1.0, 500.0)] {
        let storage = Storage { rate: Some(rate), ..Storage::new(median, sigma) };
        let run = drive(1024, storage, 60).await;
        assert!(run.rate > 0.9 * rate, "{median} ms, sigma {sigma}: {:.0}/s of {rate}/s", run.rate);
        // What it serves at once, by Little's law; writes queue beyond that, and the limit stops
        // where they take about twice as long. The highest of the whole run: slow start must not
        // overshoot either (each of its connections would stay open in the pool).
        let serves = rate * storage.mean().as_secs_f64();
        assert!(
            (run.highest_limit as f64) < 3.0 * serves,
            "{median} ms, sigma {sigma}: limit up to {} for {serves:.0} served at once",
            run.highest_limit
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_storage_that_pushes_back_keeps_the_limit_below_its_threshold() {
    for (median, sigma) in [(50, 0.0), (50, 1.0)] {
        let storage = Storage { push_back_above: Some(200), ..Storage::new(median, sigma) };
        let run = drive(1024, storage, 60).await;
        assert!(run.highest_limit < 400, "sigma {sigma}: {run:?}");
        let bound = 200.0 / storage.mean().as_secs_f64();
        assert!(run.rate > 0.5 * bound, "sigma {sigma}: {:.0}/s of {bound:.0}/s", run.rate);
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

/// The rule, case by case: a round (its median against a baseline of 10 ms, whether every
/// permit was used, push-back, a probe) and how the limit grows -> the step and what follows.
#[test]
fn the_rule_at_the_end_of_a_round() {
    use Growth::{Doubled, SlowStart, Steady};
    use Step::{BackOff, Double, Ease, Grow, Hold};
    let seen = |median_ms: f32, full: bool, pushed_back: bool, probing: bool| Seen {
        median: Some(median_ms / 1000.0),
        baseline: Some(0.010),
        full,
        pushed_back,
        probing,
    };
    let not_yet = Seen { baseline: None, ..seen(10.0, true, false, false) };
    let after_double = Doubled { slow_start: true };
    let cases = [
        // (what, seen, growth) -> (step, growth next)
        ("push-back wins over all", seen(50.0, true, true, false), SlowStart, (BackOff, Steady)),
        ("push-back during a probe", seen(10.0, true, true, true), Steady, (BackOff, Steady)),
        ("a queue eases", seen(25.0, true, false, false), Steady, (Ease, Steady)),
        ("a queue ends slow start", seen(25.0, true, false, false), SlowStart, (Ease, Steady)),
        ("slow start doubles", seen(10.0, true, false, false), SlowStart, (Double, after_double)),
        ("then waits a round", seen(10.0, true, false, false), after_double, (Hold, SlowStart)),
        (
            "a building queue: grow slowly",
            seen(16.0, true, false, false),
            SlowStart,
            (Grow, Steady),
        ),
        (
            "a building queue after a doubling waits, then grows slowly",
            seen(16.0, true, false, false),
            after_double,
            (Hold, Steady),
        ),
        ("steady grows by its root", seen(12.0, true, false, false), Steady, (Grow, Steady)),
        ("permits to spare: hold", seen(10.0, false, false, false), SlowStart, (Hold, SlowStart)),
        ("no baseline yet: hold", not_yet, SlowStart, (Hold, SlowStart)),
        ("a probe's round: hold", seen(30.0, true, false, true), SlowStart, (Hold, SlowStart)),
        ("the tail alone is no queue", seen(19.0, true, false, false), Steady, (Grow, Steady)),
    ];
    for (what, seen, growth, expected) in cases {
        assert_eq!(decide(seen, growth), expected, "{what}");
    }
}
