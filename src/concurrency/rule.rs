//! The write limit's rule: what one round trip saw -> what to do with the limit. Pure, so a
//! table of cases pins it (`tests.rs`).

#[cfg(doc)]
use super::{BACK_OFF, EASE};
use super::{SLOW_START_EXIT, TOLERANCE};

/// How the limit grows while storage keeps up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Growth {
    /// Until congestion shows, the limit doubles each round trip it could use more.
    SlowStart,
    /// Slow start after one round whose median was over [`SLOW_START_EXIT`] baselines: the limit
    /// holds for a round; a second such round in a row ends slow start, a round under it goes
    /// on with it. With a long tail one round's median is over 1.5 baselines by chance about
    /// one round in ten (16 writes at sigma 1, against a baseline that is itself a median), so
    /// a single round ended slow start within its first dozen rounds most of the time, and the
    /// limit then took tens of seconds to grow by its root (30 s at 200 ms, sigma 1, in the
    /// benchmark's sweep); a queue that is building shows in the next round too.
    Suspect,
    /// The limit just doubled: most writes that end in this round began before, at half of it,
    /// so this round cannot tell whether the new limit queues; the limit waits for the next.
    Doubled,
    /// After the first sign of congestion: the limit grows by its square root per round trip.
    Steady,
}

/// What one round trip saw, as [`decide`] needs it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Seen {
    /// The median duration of the writes answered in the round, in seconds.
    pub(super) median: Option<f32>,
    /// Storage's latency without a queue, in seconds, once a probe has measured it.
    pub(super) baseline: Option<f32>,
    /// Every permit was in use at some point: more would have been used.
    pub(super) full: bool,
    /// Storage pushed back (429, 503, a timeout) on a write begun since the last back-off.
    pub(super) pushed_back: bool,
    /// The round ran while a probe held the limit to a quarter: its medians say nothing of the
    /// limit's own load.
    pub(super) probing: bool,
}

/// What to do with the limit at the end of a round trip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// Halve it ([`BACK_OFF`]): storage pushed back.
    BackOff,
    /// Take a tenth off ([`EASE`]): writes queue.
    Ease,
    /// Double it: slow start, and more would have been used.
    Double,
    /// Add its square root: more would have been used, and writes do not queue.
    Grow,
    /// Leave it.
    Hold,
}

/// The rule, as a pure function of the round and how the limit grows; returns the step and how
/// the limit grows next. In the manner of Vector's `manage_limit`:
///
/// - push-back from storage (429, 503, timeouts) triggers a back-off, whatever else was seen;
/// - in slow start, a round median over [`SLOW_START_EXIT`] baselines holds the limit for a
///   round, and a second in a row ends slow start (a queue is building; one alone may be the
///   tail's chance);
/// - otherwise a round median over [`TOLERANCE`] baselines means writes queue: ease;
/// - a round that used every permit, with a baseline known and not just after a doubling, grows
///   the limit: doubling in slow start, by its square root after;
/// - otherwise the limit holds.
///
/// Rounds during a probe change nothing but a back-off: their medians are of a quarter-limit.
pub(super) fn decide(seen: Seen, growth: Growth) -> (Step, Growth) {
    let over = |factor: f64| matches!((seen.median, seen.baseline), (Some(m), Some(b)) if m > factor as f32 * b);
    let running = !seen.probing;
    if seen.pushed_back {
        return (Step::BackOff, Growth::Steady);
    }
    // A sign of a queue building (in slow start, even a queue: the median of a few writes is
    // twice the baseline by chance too, early), and a round that says something of the limit's
    // own load.
    let sign = running && over(SLOW_START_EXIT);
    if sign && matches!(growth, Growth::SlowStart | Growth::Doubled) {
        return (Step::Hold, Growth::Suspect);
    }
    if running && over(TOLERANCE) {
        return (Step::Ease, Growth::Steady);
    }
    let judged = running && seen.median.is_some() && seen.baseline.is_some();
    let growth = match growth {
        Growth::Suspect if sign => Growth::Steady,
        Growth::Suspect if judged => Growth::SlowStart,
        growth => growth,
    };
    let may_grow = seen.full && running && seen.baseline.is_some();
    match growth {
        Growth::SlowStart if may_grow => (Step::Double, Growth::Doubled),
        Growth::Steady if may_grow => (Step::Grow, Growth::Steady),
        Growth::Doubled => (Step::Hold, Growth::SlowStart),
        growth => (Step::Hold, growth),
    }
}
