//! The benchmark's publisher beside a running worker (this process, over the emulator's REST
//! API): for streams on demand (`--publish`, at a set rate) and for backlogs larger than the
//! emulator should hold at once (topped up as the worker writes). The emulator keeps published
//! messages in memory, and those queued on a stream in direct memory, where it failed with
//! `OutOfMemoryError` past a few GB, and each of its pulls costs more the longer its backlog (with
//! one stream, 256 B: some 80,000 messages a second from a backlog of 20,000, 20,000 from 150,000
//! and 5,000 from 400,000): the publisher never runs more than [`AHEAD`] bytes or
//! [`AHEAD_MESSAGES`] messages ahead of what the worker has written.

use super::Bench;
use anyhow::Context as _;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use testkit::OutMessage;

/// Bytes published and not yet written above which the publisher waits.
pub const AHEAD: usize = 256 << 20;

/// Messages published and not yet written above which the publisher waits: about a second of
/// the worker's rate on this VM, more than twice the `MAX_OUTSTANDING_MESSAGES` it leases on
/// 2 cores. Each pull of the emulator costs more the longer its backlog, and on 2 cores that CPU
/// is the worker's: 256 B, fast fake, two runs each of 150,000 messages, alternating the
/// settings (2026-12-07 20:09-20:15 UTC), the worker wrote 14,299-17,688 msg/s with 10,000
/// ahead and 10,893-15,711 with 50,000.
const AHEAD_MESSAGES: usize = 10_000;

/// A backlog of at most this many messages is published before the worker starts; the rest
/// follows while it runs. Publishing the whole of a long cell first would add its own minutes to
/// every cell; this is some seconds of the worker's rate on this VM.
const FIRST: usize = 20_000;

/// How the publisher paces itself.
pub struct Pace {
    /// Messages a second; `None`: as fast as the emulator takes them.
    pub per_second: Option<f64>,
    /// Stop after this long, wherever the range is.
    pub seconds: Option<Duration>,
}

impl Bench<'_> {
    /// Messages published and not yet written at most: [`AHEAD`] bytes' worth, at most
    /// [`AHEAD_MESSAGES`].
    pub fn ahead(&self) -> usize {
        (AHEAD / self.size.max(1)).clamp(1, AHEAD_MESSAGES)
    }

    /// How much of a backlog of `n` is published before the worker starts.
    pub fn first(&self, n: usize) -> usize {
        n.min(FIRST).min(self.ahead())
    }

    /// Publishes messages `range` to `topic`, a batch every 10 ms (at a set rate, five to each of
    /// the emulator's 50 ms polls), or what is due after a slow call; nothing while
    /// [`Bench::ahead`] messages wait to be `written`.
    pub async fn feed(
        &self,
        topic: &str,
        range: Range<usize>,
        pace: Pace,
        written: &AtomicU64,
    ) -> anyhow::Result<()> {
        let (pubsub, start, ahead) = (self.emu.pubsub(), Instant::now(), self.ahead());
        // Batches of up to ~8 MB of JSON: under the emulator's 10 MB per request.
        let batch_max = ((6 << 20) / self.size.max(1)).clamp(1, 1000);
        let mut sent = range.start;
        let mut ticks = tokio::time::interval(Duration::from_millis(10));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        while sent < range.end && pace.seconds.is_none_or(|s| start.elapsed() < s) {
            ticks.tick().await;
            let due = pace.per_second.map_or(range.end, |per_second| {
                range.start + (start.elapsed().as_secs_f64() * per_second) as usize
            });
            let due = due.min(range.end).min(written.load(Ordering::Relaxed) as usize + ahead);
            let batch: Vec<OutMessage> =
                (sent..due.min(sent + batch_max)).map(|i| self.message(i)).collect();
            if batch.is_empty() {
                continue;
            }
            pubsub.publish(topic, &batch).await.context("publishing")?;
            sent += batch.len();
        }
        Ok(())
    }
}
