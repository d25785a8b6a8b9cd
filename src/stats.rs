//! Counters for the progress line, the final summary and the tests.
//!
//! Plain relaxed atomics: each counter is exact on its own, and a snapshot taken while messages
//! are moving may be a few messages apart between counters, which is fine for a progress line.

use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters, shared by the pipeline's tasks.
#[derive(Debug, Default)]
pub struct Stats {
    received: AtomicU64,
    written: AtomicU64,
    duplicates: AtomicU64,
    acked: AtomicU64,
    nacked: AtomicU64,
    bytes_written: AtomicU64,
}

/// A copy of the counters at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Snapshot {
    /// Messages delivered to the worker (redeliveries count again).
    pub received: u64,
    /// Objects created.
    pub written: u64,
    /// Messages whose object already existed (an earlier delivery wrote it); acked.
    pub duplicates: u64,
    /// Messages acked: `written + duplicates`.
    pub acked: u64,
    /// Messages nacked: failed writes and writes abandoned at shutdown.
    pub nacked: u64,
    /// Bytes of message data in created objects.
    pub bytes_written: u64,
    /// Messages received and not yet acked or nacked.
    pub in_flight: u64,
}

impl Stats {
    pub fn received(&self) {
        self.received.fetch_add(1, Ordering::Relaxed);
    }

    pub fn written(&self, bytes: usize) {
        self.written.fetch_add(1, Ordering::Relaxed);
        self.bytes_written
            .fetch_add(bytes as u64, Ordering::Relaxed);
        self.acked.fetch_add(1, Ordering::Relaxed);
    }

    pub fn duplicate(&self) {
        self.duplicates.fetch_add(1, Ordering::Relaxed);
        self.acked.fetch_add(1, Ordering::Relaxed);
    }

    pub fn nacked(&self) {
        self.nacked.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Snapshot {
        let received = self.received.load(Ordering::Relaxed);
        let acked = self.acked.load(Ordering::Relaxed);
        let nacked = self.nacked.load(Ordering::Relaxed);
        Snapshot {
            received,
            written: self.written.load(Ordering::Relaxed),
            duplicates: self.duplicates.load(Ordering::Relaxed),
            acked,
            nacked,
            bytes_written: self.bytes_written.load(Ordering::Relaxed),
            in_flight: received.saturating_sub(acked + nacked),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_are_writes_plus_duplicates_and_in_flight_is_the_rest() {
        let stats = Stats::default();
        for _ in 0..5 {
            stats.received();
        }
        stats.written(10);
        stats.written(5);
        stats.duplicate();
        stats.nacked();
        let s = stats.snapshot();
        assert_eq!(
            s,
            Snapshot {
                received: 5,
                written: 2,
                duplicates: 1,
                acked: 3,
                nacked: 1,
                bytes_written: 15,
                in_flight: 1,
            }
        );
    }
}
