//! The write limit's rule: what one round trip saw -> what to do with the limit. Pure, so a
//! table of cases pins it (`tests.rs`).

#[cfg(doc)]
use super::{BACK_OFF, EASE};
use super::{SLOW_START_EXIT, TOLERANCE};

/// How the limit grows while storage keeps up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Growth {
    /// Until the first sign of congestion, the limit doubles each round trip it could use more.
    SlowStart,
    /// The limit just doubled: most writes that end in this round began before, at half of it,
    /// so this round cannot tell whether the new limit queues; the limit waits for the next.
    /// `slow_start`: whether slow start goes on afterwards.
    Doubled { slow_start: bool },
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
/// - a round median over [`TOLERANCE`] baselines means writes queue: ease;
/// - a round median over [`SLOW_START_EXIT`] baselines ends slow start (the queue is building);
/// - a round that used every permit, with a baseline known and not just after a doubling, grows
///   the limit: doubling in slow start, by its square root after;
/// - otherwise the limit holds.
///
/// Rounds during a probe change nothing but a back-off: their medians are of a quarter-limit.
pub(super) fn decide(seen: Seen, growth: Growth) -> (Step, Growth) {
    let over = |factor: f64| matches!((seen.median, seen.baseline), (Some(m), Some(b)) if m > factor as f32 * b);
    let running = !seen.probing;
    let growth = match growth {
        _ if !(running && over(SLOW_START_EXIT)) => growth,
        Growth::SlowStart | Growth::Steady => Growth::Steady,
        Growth::Doubled { .. } => Growth::Doubled { slow_start: false },
    };
    if seen.pushed_back {
        return (Step::BackOff, Growth::Steady);
    }
    if running && over(TOLERANCE) {
        return (Step::Ease, Growth::Steady);
    }
    let may_grow = seen.full && running && seen.baseline.is_some();
    match growth {
        Growth::SlowStart if may_grow => (Step::Double, Growth::Doubled { slow_start: true }),
        Growth::Steady if may_grow => (Step::Grow, Growth::Steady),
        Growth::Doubled { slow_start: true } => (Step::Hold, Growth::SlowStart),
        Growth::Doubled { slow_start: false } => (Step::Hold, Growth::Steady),
        growth => (Step::Hold, growth),
    }
}
