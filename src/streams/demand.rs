//! When to open another pull stream and when to close one: a pure rule over what each window of
//! a few seconds saw, so it is tested as a table, without a service or a clock.
//!
//! A stream that is not needed costs CPU and memory (about 15-30% more CPU and 14 MB with four
//! streams where one carried the load, docs/performance.md), and one stream carries about
//! 10 MB/s (some 40,000 messages of 256 B a second), so most subscriptions need one. A stream
//! is the limit only when the writes could take more and the receive loops wait for messages,
//! yet the rate stays where it is: then Pub/Sub may have more than the stream brings (its byte
//! cap, or its share of the flow control), or the publishers may be sending no more. A worker
//! short of CPU waits for no stream (its loops read what the streams already brought), and
//! another stream would only add work. Only trying tells the first two apart, as Vector's adaptive concurrency tries one more request: open one stream, and keep
//! it if the next window's rate grew as a stream more would carry, else close it and wait longer
//! before the next try.

/// How much more a window must carry with a stream more than it carried before, as a share of
/// what one of the streams carried: half a stream's worth. A stream at its cap adds a whole one
/// (k streams become k + 1); a publisher-bound topic adds nothing.
const GAIN: f64 = 0.5;

/// And the gain must stand out of chance: this many standard deviations of the count before, as
/// if arrivals were random (Poisson). A trickle of 3 messages a second counts 15 in a window,
/// give or take 4, and without this one window in ten would "gain" half again by chance.
const SIGMAS: f64 = 3.0;

/// With k streams, one is closed when the rate falls below this share of what k - 1 carried when
/// the k-th was opened: k - 1 would carry it again.
const IDLE_SHARE: f64 = 0.5;

/// Windows before the last whose rates, with the last one's, make the rate a trial must beat.
const RECENT: usize = 1;

/// The most windows between tries after tries that gained nothing (5 minutes of 5 s windows).
const MAX_WAIT: u32 = 60;

/// What one window saw, with the streams open during it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Window {
    /// Messages received per second.
    pub rate: f64,
    /// How long the window lasted, in seconds.
    pub seconds: f64,
    /// In most samples no message waited for a write permit and the held messages were well
    /// under `MAX_OUTSTANDING_*`: the writes would have taken more.
    pub room: bool,
    /// The receive loops waited for their streams for most of the window: messages came no
    /// faster than they were read.
    pub starved: bool,
}

/// What to do after a window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing changes.
    Hold,
    /// Open a stream, on trial for the next window.
    Open,
    /// The stream on trial carried more: it stays.
    Keep,
    /// Close the newest stream: the one on trial gained nothing, or the rate fell so that one
    /// stream fewer carries it.
    Close(Why),
}

/// Why a stream closes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    NoGain,
    Idle,
}

impl Why {
    pub fn as_str(self) -> &'static str {
        match self {
            Why::NoGain => "no_gain",
            Why::Idle => "idle",
        }
    }
}

/// The rule's state between windows.
#[derive(Clone, Debug)]
pub struct Demand {
    max: usize,
    /// `carried[i]`: messages per second that `i + 1` streams carried when stream `i + 2` was
    /// opened (and kept). Its length is the number of streams kept beyond the first.
    carried: Vec<f64>,
    /// The rate before the stream on trial was opened.
    trial: Option<f64>,
    /// The rates of the last windows with the streams open now, newest last: a backlog arrives
    /// in bursts (a response of many messages at a time), so one window's rate is rough.
    recent: Vec<f64>,
    /// Windows left before the next try, and the wait after the next failed one.
    wait: u32,
    backoff: u32,
}

impl Demand {
    /// One stream open, at most `max`.
    pub fn new(max: usize) -> Self {
        let recent = Vec::with_capacity(RECENT);
        Self { max: max.max(1), carried: Vec::new(), trial: None, recent, wait: 0, backoff: 1 }
    }

    /// Streams open now, the one on trial included.
    pub fn streams(&self) -> usize {
        1 + self.carried.len() + usize::from(self.trial.is_some())
    }

    /// The step after `window`.
    pub fn next(&mut self, window: Window) -> Step {
        let step = self.step(window);
        if step != Step::Hold {
            self.recent.clear();
        }
        if step != Step::Open {
            if self.recent.len() == RECENT {
                self.recent.remove(0);
            }
            self.recent.push(window.rate);
        }
        step
    }

    fn step(&mut self, window: Window) -> Step {
        if let Some(before) = self.trial.take() {
            let k = self.streams() as f64;
            let seconds = window.seconds.max(1e-3);
            let chance = SIGMAS * (before * seconds).sqrt() / seconds;
            let gain = (before * GAIN / k).max(chance);
            if before > 0.0 && window.rate >= before + gain {
                self.carried.push(before);
                (self.wait, self.backoff) = (0, 1);
                return Step::Keep;
            }
            self.back_off();
            return Step::Close(Why::NoGain);
        }
        if let Some(&fewer) = self.carried.last()
            && window.rate < fewer * IDLE_SHARE
        {
            self.carried.pop();
            // The load changed: a later rise is tried at once.
            (self.wait, self.backoff) = (0, 1);
            return Step::Close(Why::Idle);
        }
        if self.wait > 0 {
            self.wait -= 1;
            return Step::Hold;
        }
        if self.streams() < self.max && window.room && window.starved && window.rate > 0.0 {
            let recent = self.recent.iter().chain([&window.rate]);
            self.trial = Some(recent.sum::<f64>() / (self.recent.len() + 1) as f64);
            return Step::Open;
        }
        Step::Hold
    }

    /// The stream on trial could not be opened: as a try that gained nothing.
    pub fn open_failed(&mut self) {
        if self.trial.take().is_some() {
            self.back_off();
        }
    }

    fn back_off(&mut self) {
        self.backoff = (self.backoff * 2).min(MAX_WAIT);
        self.wait = self.backoff;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn busy(rate: f64) -> Window {
        Window { rate, seconds: 5.0, room: true, starved: true }
    }

    /// Each row: the windows in order and the step after each, from one stream of at most 4.
    #[test]
    fn the_rule_as_a_table() {
        let write_bound = |rate| Window { rate, seconds: 5.0, room: false, starved: true };
        let cpu_bound = |rate| Window { rate, seconds: 5.0, room: true, starved: false };
        #[rustfmt::skip]
        let cases: &[(&str, &[(Window, Step)])] = &[
            ("writes bound: never a try", &[
                (write_bound(5000.0), Step::Hold), (write_bound(5000.0), Step::Hold)]),
            ("short of CPU, the loops seldom wait: never a try", &[
                (cpu_bound(15000.0), Step::Hold), (cpu_bound(15000.0), Step::Hold)]),
            ("nothing arrives: never a try", &[(busy(0.0), Step::Hold), (busy(0.0), Step::Hold)]),
            ("capped streams: grow to the maximum, then hold", &[
                (busy(30.0), Step::Open), (busy(60.0), Step::Keep), (busy(60.0), Step::Open),
                (busy(90.0), Step::Keep), (busy(90.0), Step::Open), (busy(120.0), Step::Keep),
                (busy(120.0), Step::Hold)]),
            ("a gain of half a stream is kept", &[
                (busy(100.0), Step::Open), (busy(150.0), Step::Keep)]),
            ("less is not kept", &[(busy(100.0), Step::Open), (busy(149.0), Step::Close(Why::NoGain))]),
            ("a trickle's chance is no gain: 3 to 5 a second", &[
                (busy(3.0), Step::Open), (busy(5.0), Step::Close(Why::NoGain)),
                (busy(3.0), Step::Hold), (busy(3.0), Step::Hold), (busy(3.0), Step::Open),
                (busy(5.4), Step::Keep)]),
            ("publisher bound: the waits double, 2, 4, 8 windows", &[
                (busy(500.0), Step::Open), (busy(500.0), Step::Close(Why::NoGain)),
                (busy(500.0), Step::Hold), (busy(500.0), Step::Hold), (busy(500.0), Step::Open),
                (busy(510.0), Step::Close(Why::NoGain)),
                (busy(500.0), Step::Hold), (busy(500.0), Step::Hold), (busy(500.0), Step::Hold),
                (busy(500.0), Step::Hold), (busy(500.0), Step::Open)]),
            ("bursts: a try must beat the mean of the last two windows", &[
                (write_bound(20.0), Step::Hold), (write_bound(40.0), Step::Hold), (busy(20.0), Step::Open),
                (busy(40.0), Step::Close(Why::NoGain))]),
            ("idle: streams close one a window, down to one", &[
                (busy(30.0), Step::Open), (busy(60.0), Step::Keep), (busy(60.0), Step::Open),
                (busy(90.0), Step::Keep), (busy(0.0), Step::Close(Why::Idle)),
                (busy(0.0), Step::Close(Why::Idle)), (busy(0.0), Step::Hold)]),
            ("a dip that k - 1 streams would not carry keeps them", &[
                (busy(30.0), Step::Open), (busy(60.0), Step::Keep),
                (write_bound(16.0), Step::Hold)]),
        ];
        for (name, windows) in cases {
            let mut demand = Demand::new(4);
            for (i, (window, step)) in windows.iter().enumerate() {
                assert_eq!(demand.next(*window), *step, "{name}: window {i} ({window:?})");
                assert!((1..=4).contains(&demand.streams()), "{name}");
            }
        }
    }

    #[test]
    fn the_wait_after_failed_tries_doubles_up_to_five_minutes() {
        let mut demand = Demand::new(2);
        let mut waits = vec![];
        assert_eq!(demand.next(busy(100.0)), Step::Open);
        for _ in 0..8 {
            assert_eq!(demand.next(busy(100.0)), Step::Close(Why::NoGain));
            let mut held = 0;
            while demand.next(busy(100.0)) == Step::Hold {
                held += 1;
            }
            waits.push(held);
        }
        assert_eq!(waits, [2, 4, 8, 16, 32, 60, 60, 60]);
    }

    #[test]
    fn one_stream_at_most_never_opens_another() {
        let mut demand = Demand::new(1);
        for _ in 0..10 {
            assert_eq!(demand.next(busy(1000.0)), Step::Hold);
        }
    }
}
