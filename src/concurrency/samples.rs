//! What the write limit measures: the writes of a probe, whose median is the baseline, and
//! those of a round trip, whose median is compared with it.

use tokio::time::Instant;

/// The writes of the latest probe.
#[derive(Debug)]
pub(super) struct Probe {
    /// Tags this probe's writes; a write of an earlier probe that ends late is not counted.
    pub(super) number: u32,
    /// Writes begun in this probe, and how many it takes.
    pub(super) begun: usize,
    pub(super) target: usize,
    /// Of those, how many have ended, and the seconds of those that were answered.
    pub(super) ended: usize,
    pub(super) seconds: Vec<f32>,
    /// Every write has ended and the median is in `baselines`.
    pub(super) measured: bool,
}

/// What happened since the round trip began.
#[derive(Debug)]
pub(super) struct Round {
    pub(super) started: Instant,
    /// The previous round's median, in seconds: a round lasts at least that long, so that the
    /// writes begun at a new limit have ended before the limit changes again.
    pub(super) previous: f32,
    /// Seconds taken by each write answered in this round.
    pub(super) seconds: Vec<f32>,
    /// Every permit was in use at some point: more would have been used.
    pub(super) full: bool,
    pub(super) pushed_back: bool,
}

impl Probe {
    pub(super) fn new(number: u32, target: usize) -> Self {
        let seconds = Vec::with_capacity(target);
        Self { number, begun: 0, target, ended: 0, seconds, measured: false }
    }

    /// Every write of the probe has begun and ended.
    pub(super) fn finished(&self) -> bool {
        self.begun >= self.target && self.ended >= self.begun
    }

    /// The median duration of the probe's writes, once it is known: every write has begun and
    /// more than half of those answered have ended. A write still running counts as slower
    /// than every ended one, which it nearly always is, since they all began within a round.
    pub(super) fn median(&mut self) -> Option<f32> {
        if self.begun < self.target {
            return None;
        }
        let failed = self.ended - self.seconds.len();
        let counted = self.begun - failed;
        let middle = counted / 2;
        if middle >= self.seconds.len() {
            return None;
        }
        let (_, m, _) = self.seconds.select_nth_unstable_by(middle, f32::total_cmp);
        Some(*m)
    }
}

/// The median of `seconds` (reordered), if it has any.
pub(super) fn median(seconds: &mut [f32]) -> Option<f32> {
    if seconds.is_empty() {
        return None;
    }
    let middle = seconds.len() / 2;
    let (_, m, _) = seconds.select_nth_unstable_by(middle, f32::total_cmp);
    Some(*m)
}

impl Round {
    pub(super) fn new(started: Instant) -> Self {
        Self { started, previous: 0.0, seconds: Vec::new(), full: false, pushed_back: false }
    }

    /// Begins the next round, keeping the samples' allocation.
    pub(super) fn restart(&mut self, started: Instant, previous: f32) {
        (self.started, self.previous) = (started, previous);
        self.seconds.clear();
        (self.full, self.pushed_back) = (false, false);
    }
}
