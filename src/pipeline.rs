//! The message pipeline: receive, write with bounded concurrency, ack or nack, drain.
//!
//! One loop per StreamingPull stream reads it as fast as messages arrive and spawns a task per
//! message; the task waits for a write permit, writes the object and then acks (or nacks on
//! failure). Reading eagerly matters: the client extends the lease of a message only once it has
//! been read, so a message left unread in the stream while every permit is busy would expire and
//! be redelivered. The permits cap the writes running at once; each stream's flow control (its
//! share of `MAX_OUTSTANDING_MESSAGES`/`_BYTES`, enforced by the service) caps how many messages
//! are leased, and one [`Budget`] of the whole size caps the messages held here, from every
//! stream together, even if the service sends more (the emulator ignores flow control). On
//! shutdown, or when a stream fails, every loop stops receiving, messages still waiting for a
//! permit are nacked at once, and [`Pipeline::drain`] gives in-flight writes the shutdown budget,
//! nacks whatever is still running when it runs out, and waits for every stream's client to
//! flush its acks.

use crate::concurrency::{Outcome, WriteLimit};
use crate::name::NameTemplate;
use crate::object::{ObjectSettings, ObjectSpec};
use crate::sink::{FailureKind, Sink, Written};
use crate::stats::{NackReason, Stats};
use google_cloud_pubsub::model::Message;
use google_cloud_pubsub::subscriber::handler::Handler;
use google_cloud_pubsub::subscriber::{MessageStream, ShutdownToken};
use std::future::Future;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::task::{JoinError, JoinSet};
use tokio::time::{Instant, sleep, timeout_at};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

/// Part of the shutdown budget kept for flushing acks and nacks after the writes.
const MAX_FLUSH_RESERVE: Duration = Duration::from_secs(2);

/// Why the pipeline stopped other than by a shutdown signal.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The stream failed with a permanent error (missing subscription, no permission, ...).
    #[error("the subscription stream failed: {0}")]
    Stream(#[source] google_cloud_pubsub::Error),
    /// The stream ended although nobody asked it to.
    #[error("the subscription stream ended unexpectedly")]
    StreamEnded,
    /// A receive loop panicked (a bug): the drain still runs.
    #[error("a receive loop stopped: {0}")]
    Receiver(#[source] JoinError),
}

/// Everything a message task needs, shared by all of them.
#[derive(Debug)]
pub struct Pipeline {
    sink: Sink,
    stats: Arc<Stats>,
    names: NameTemplate,
    objects: ObjectSettings,
    subscription: String,
    limits: Limits,
    shutdown_timeout: Duration,
    backoff: FailureBackoff,
}

/// How much work the pipeline takes on at once.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Object writes running at once (`MAX_CONCURRENT_WRITES`).
    pub max_concurrent_writes: usize,
    /// Messages held at once, waiting for a write or being written (`MAX_OUTSTANDING_MESSAGES`).
    pub max_outstanding_messages: i64,
    /// Bytes of messages held at once (`MAX_OUTSTANDING_BYTES`), as [`held_bytes`] counts them.
    pub max_outstanding_bytes: i64,
}

impl Pipeline {
    pub fn new(
        sink: Sink,
        stats: Arc<Stats>,
        names: NameTemplate,
        objects: ObjectSettings,
        subscription: String,
        limits: Limits,
        shutdown_timeout: Duration,
    ) -> Self {
        Self {
            sink,
            stats,
            names,
            objects,
            subscription,
            limits,
            shutdown_timeout,
            backoff: FailureBackoff::default(),
        }
    }

    /// Consumes `streams` until `shutdown` resolves or one of them fails, then drains.
    ///
    /// Each stream has its own receive loop (a task, so the streams' messages are decoded on every
    /// core); they all take from one [`Budget`] and one write limit. Returns only after in-flight
    /// messages were acked or nacked and every stream's acks flushed, or the shutdown budget ran
    /// out.
    pub async fn run(
        self: Arc<Self>,
        streams: Vec<MessageStream>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), PipelineError> {
        let flushes: Vec<ShutdownToken> =
            streams.iter().map(MessageStream::shutdown_token).collect();
        let run = Run {
            tasks: TaskTracker::new(),
            writes: WriteLimit::new(self.limits.max_concurrent_writes),
            budget: Budget::new(&self.limits),
            stopping: CancellationToken::new(),
            abandon: CancellationToken::new(),
        };
        self.stats.write_limit(run.writes.current());
        let mut receivers = JoinSet::new();
        for stream in streams {
            receivers.spawn(self.clone().receive(stream, run.clone()));
        }
        // A receive loop ends before the signal only when its stream failed: that ends them all.
        let mut result = tokio::select! {
            biased;
            () = shutdown => Ok(()),
            Some(ended) = receivers.join_next() => outcome(ended),
        };
        // The other loops stop and drop their streams, and messages that have not started their
        // write are nacked now, for redelivery at once.
        run.stopping.cancel();
        while let Some(ended) = receivers.join_next().await {
            result = result.and(outcome(ended));
        }
        self.drain(flushes, run).await;
        result
    }

    /// Reads one stream until `run.stopping` is cancelled or the stream fails, and spawns a task
    /// per message.
    async fn receive(
        self: Arc<Self>,
        mut stream: MessageStream,
        run: Run,
    ) -> Result<(), PipelineError> {
        // Returning drops the stream, which cancels it: the client stops pulling and closes the
        // gRPC call, while its lease loop keeps extending leases of the messages being written.
        loop {
            // Read as soon as the service sends: a read message is leased (its deadline is
            // extended) while it waits for a write permit; an unread one is not.
            let next = tokio::select! {
                biased;
                () = run.stopping.cancelled() => return Ok(()),
                next = stream.next() => next,
            };
            let (message, handler) = match next {
                Some(Ok(received)) => received,
                Some(Err(e)) => return Err(PipelineError::Stream(e)),
                None => return Err(PipelineError::StreamEnded),
            };
            self.stats.received(handler.delivery_attempt());
            debug!(
                message_id = %message.message_id,
                delivery_attempt = handler.delivery_attempt(),
                "message received"
            );
            let held = tokio::select! {
                biased;
                () = run.stopping.cancelled() => {
                    handler.nack();
                    self.stats.nacked(NackReason::Shutdown, None);
                    return Ok(());
                }
                held = run.budget.reserve(held_bytes(&message)) => held,
            };
            let permits = Permits { writes: run.writes.clone(), _held: held };
            let (stopping, abandon) = (run.stopping.clone(), run.abandon.clone());
            run.tasks.spawn(self.clone().handle(message, handler, permits, stopping, abandon));
        }
    }

    /// Waits for in-flight writes within the shutdown budget, nacks the rest, flushes.
    async fn drain(&self, flushes: Vec<ShutdownToken>, run: Run) {
        let deadline = Instant::now() + self.shutdown_timeout;
        let reserve = MAX_FLUSH_RESERVE.min(self.shutdown_timeout / 4);
        let tasks = run.tasks;
        tasks.close();
        info!(
            in_flight = tasks.len(),
            timeout_ms = self.shutdown_timeout.as_millis() as u64,
            "stopped receiving; finishing in-flight writes"
        );
        if timeout_at(deadline - reserve, tasks.wait()).await.is_err() {
            warn!(
                unfinished = tasks.len(),
                "shutdown budget spent; nacking unfinished writes so they are redelivered at once"
            );
            run.abandon.cancel();
            let _ = timeout_at(deadline, tasks.wait()).await;
        }
        // Every handler is now consumed, so each stream's client acks what was acked, nacks
        // anything it still leases (messages it had read but not handed out) and waits for those
        // RPCs. The streams flush at the same time, each in its own lease loop: waiting for one
        // after the other takes as long as the slowest.
        let flushed = async {
            for flush in &flushes {
                flush.shutdown().await;
            }
        };
        if timeout_at(deadline, flushed).await.is_err() {
            warn!(
                "acks were not confirmed within the shutdown budget; \
                 unconfirmed messages will be redelivered and land on their existing objects"
            );
        }
    }

    /// Writes one message and settles it: ack after the object exists, nack otherwise.
    async fn handle(
        self: Arc<Self>,
        mut message: Message,
        handler: Handler,
        permits: Permits,
        stopping: CancellationToken,
        abandon: CancellationToken,
    ) {
        let write = tokio::select! {
            biased;
            () = stopping.cancelled() => None,
            permit = permits.writes.acquire() => Some(permit),
        };
        let Some(write) = write else {
            handler.nack();
            self.stats.nacked(NackReason::Shutdown, None);
            debug!(message_id = %message.message_id, "write not started before shutdown; nacked");
            return;
        };
        let delivery_attempt = handler.delivery_attempt();
        let spec = ObjectSpec::for_message(
            &message,
            &self.names,
            &self.objects,
            &self.subscription,
            delivery_attempt,
        );
        // Binary data is normal for a protobuf or Avro topic: a line per message would flood the
        // log (86 million a day at 1,000 msg/s), so it is counted and logged at debug.
        if !spec.is_text() {
            self.stats.binary();
            debug!(
                message_id = %message.message_id,
                object = %spec.name,
                "message data is not valid UTF-8; storing the bytes unchanged"
            );
        }
        let data = std::mem::take(&mut message.data);
        let size = data.len();
        let started = Instant::now();
        let result = tokio::select! {
            biased;
            () = abandon.cancelled() => {
                handler.nack();
                self.stats.nacked(NackReason::Shutdown, None);
                debug!(message_id = %message.message_id, object = %spec.name, "write abandoned at shutdown; nacked");
                return;
            }
            result = self.sink.write(&spec, data) => result,
        };
        match result {
            Ok(written) => {
                handler.ack();
                write.settle(Outcome::Answered);
                self.stats.write_limit(permits.writes.current());
                self.backoff.success();
                match written {
                    Written::Created => {
                        self.stats.written(size, started.elapsed());
                        debug!(message_id = %message.message_id, delivery_attempt, object = %spec.name, "object written; acked");
                    }
                    Written::AlreadyExisted => {
                        self.stats.duplicate(started.elapsed());
                        debug!(
                            message_id = %message.message_id,
                            delivery_attempt,
                            object = %spec.name,
                            "object already exists from an earlier delivery; acked"
                        );
                    }
                }
            }
            Err(e) => {
                let took = started.elapsed();
                let delay = self.backoff.failure(delivery_attempt);
                // A collision is not retried into success: the nacks end in the dead-letter
                // topic, and the object, someone else's, is never touched.
                let what = match e.kind {
                    FailureKind::NameCollision => {
                        "an object of this name holds another message; leaving it untouched and nacking"
                    }
                    _ => "object write failed; nacking for redelivery",
                };
                error!(
                    message_id = %message.message_id,
                    delivery_attempt,
                    object = %spec.name,
                    reason = e.kind.as_str(),
                    error = %e,
                    retry_in_ms = delay.as_millis() as u64,
                    "{what}"
                );
                // Holding the message (and its write permit) for a moment before the nack keeps
                // a broken bucket from turning into a tight redelivery loop. On shutdown the
                // wait is pointless: nack at once, so the drain does not spend its budget here.
                tokio::select! {
                    () = stopping.cancelled() => {}
                    () = sleep(delay) => {}
                }
                handler.nack();
                let pushed_back = matches!(e.kind, FailureKind::Transient | FailureKind::Timeout);
                write.settle(if pushed_back { Outcome::PushedBack } else { Outcome::Failed });
                self.stats.write_limit(permits.writes.current());
                self.stats.nacked(NackReason::WriteFailed(e.kind), Some(took));
            }
        }
    }
}

/// A receive loop's result: a panic in one (a bug) ends the run as a failed stream does.
fn outcome(ended: Result<Result<(), PipelineError>, JoinError>) -> Result<(), PipelineError> {
    ended.unwrap_or_else(|e| Err(PipelineError::Receiver(e)))
}

/// What the receive loops and message tasks of one run share.
#[derive(Clone)]
struct Run {
    tasks: TaskTracker,
    writes: Arc<WriteLimit>,
    budget: Arc<Budget>,
    /// Cancelled on the signal or when a stream fails: the receive loops stop, and messages
    /// still waiting for a write permit (or for their failure backoff) are nacked.
    stopping: CancellationToken,
    /// Cancelled when the shutdown budget is spent: running writes are abandoned and nacked.
    abandon: CancellationToken,
}

/// What a message task holds: its share of the [`Budget`] for its whole life, and the write
/// permits to take one from.
struct Permits {
    writes: Arc<WriteLimit>,
    _held: Held,
}

/// The streams' flow control, held by the worker as well: the service stops sending on each
/// stream at its share of `MAX_OUTSTANDING_MESSAGES`/`_BYTES`, the emulator does not, and
/// reading stops here instead, on every stream at once. Unlike a semaphore it cannot be closed,
/// so a reservation cannot fail and drop a message.
struct Budget {
    /// Messages and bytes still free.
    free: Mutex<(u64, u64)>,
    released: Notify,
    max_bytes: u64,
}

/// What a message weighs in the [`Budget`]: its data, its attributes (keys and values, up to
/// 100 of them), its ordering key and its id, all of which the process holds. The service's
/// flow control counts "bytes worth of messages", whole messages (Google's Java client weighs
/// each by its serialized size), so the streams' shares of `MAX_OUTSTANDING_BYTES` need no
/// change and measure about as this budget does (it leaves out a few bytes of framing).
pub fn held_bytes(message: &Message) -> usize {
    let attributes: usize = message.attributes.iter().map(|(k, v)| k.len() + v.len()).sum();
    message.data.len() + attributes + message.ordering_key.len() + message.message_id.len()
}

/// One message's share of the [`Budget`], returned when dropped.
struct Held {
    budget: Arc<Budget>,
    bytes: u64,
}

impl Budget {
    fn new(limits: &Limits) -> Arc<Self> {
        let max_bytes = limits.max_outstanding_bytes.max(1) as u64;
        let free = (limits.max_outstanding_messages.max(1) as u64, max_bytes);
        Arc::new(Self { free: Mutex::new(free), released: Notify::new(), max_bytes })
    }

    /// Waits until a message of `size` bytes fits; one larger than the whole budget waits for
    /// all of it.
    async fn reserve(self: &Arc<Self>, size: usize) -> Held {
        let bytes = (size as u64).clamp(1, self.max_bytes);
        loop {
            // Registered before the check, so a release in between is not missed.
            let released = self.released.notified();
            {
                let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
                if free.0 >= 1 && free.1 >= bytes {
                    *free = (free.0 - 1, free.1 - bytes);
                    return Held { budget: self.clone(), bytes };
                }
            }
            released.await;
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut free = self.budget.free.lock().unwrap_or_else(|e| e.into_inner());
        *free = (free.0 + 1, free.1 + self.bytes);
        // Every receive loop may be waiting, each for a message of its own size: wake them all,
        // so that one whose message fits is not left waiting behind one whose message does not.
        self.budget.released.notify_waiters();
    }
}

/// Delay before nacking a failed write: grows with consecutive failures across the worker (the
/// bucket is down for everyone) and with the message's own delivery attempt when the
/// subscription reports it; resets on the first success.
#[derive(Debug, Default)]
struct FailureBackoff {
    consecutive: AtomicU32,
}

impl FailureBackoff {
    const BASE: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(10);

    fn failure(&self, delivery_attempt: Option<i32>) -> Duration {
        let consecutive = self.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
        let attempt = delivery_attempt.unwrap_or(1).max(1) as u32;
        Self::delay(consecutive.max(attempt))
    }

    fn success(&self) {
        self.consecutive.store(0, Ordering::Relaxed);
    }

    fn delay(n: u32) -> Duration {
        Self::BASE.saturating_mul(1u32 << (n.clamp(1, 16) - 1)).min(Self::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_backoff_doubles_up_to_the_cap_and_resets_on_success() {
        let b = FailureBackoff::default();
        assert_eq!(b.failure(None), Duration::from_millis(100));
        assert_eq!(b.failure(None), Duration::from_millis(200));
        assert_eq!(b.failure(None), Duration::from_millis(400));
        for _ in 0..20 {
            b.failure(None);
        }
        assert_eq!(b.failure(None), Duration::from_secs(10));
        b.success();
        assert_eq!(b.failure(None), Duration::from_millis(100));
    }

    #[test]
    fn a_message_weighs_its_data_attributes_ordering_key_and_id() {
        let attributes = (0..100).map(|i| (format!("k{i:02}"), "v".repeat(1000)));
        let message = Message::new()
            .set_message_id("1234")
            .set_data(bytes::Bytes::from_static(b"12345"))
            .set_ordering_key("key")
            .set_attributes(attributes);
        assert_eq!(held_bytes(&message), 5 + 100 * (3 + 1000) + 3 + 4);
    }

    /// Attributes take room in the budget: a message of a few data bytes with 600 bytes of
    /// attributes leaves no room for a second one under a 1,000-byte budget until it is done.
    #[tokio::test(start_paused = true)]
    async fn the_budget_holds_attributes_as_well_as_data() {
        let limits = Limits {
            max_concurrent_writes: 1,
            max_outstanding_messages: 10,
            max_outstanding_bytes: 1000,
        };
        let budget = Budget::new(&limits);
        let message = Message::new()
            .set_data(bytes::Bytes::from_static(b"x"))
            .set_attributes([("a", "v".repeat(600))]);
        let first = budget.reserve(held_bytes(&message)).await;
        let second =
            tokio::time::timeout(Duration::from_secs(1), budget.reserve(held_bytes(&message)));
        assert!(second.await.is_err(), "two such messages fit in 1,000 bytes");
        drop(first);
        let again =
            tokio::time::timeout(Duration::from_secs(1), budget.reserve(held_bytes(&message)));
        assert!(again.await.is_ok(), "the first one's bytes were returned");
    }

    #[test]
    fn failure_backoff_follows_the_delivery_attempt() {
        let b = FailureBackoff::default();
        assert_eq!(b.failure(Some(4)), Duration::from_millis(800));
        b.success();
        assert_eq!(b.failure(Some(1000)), Duration::from_secs(10));
    }
}
