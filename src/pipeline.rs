//! The message pipeline: receive, write with bounded concurrency, ack or nack, drain.
//!
//! One loop reads the StreamingPull stream as fast as messages arrive and spawns a task per
//! message; the task waits for a write permit, writes the object and then acks (or nacks on
//! failure). Reading eagerly matters: the client extends the lease of a message only once it has
//! been read, so a message left unread in the stream while every permit is busy would expire and
//! be redelivered. The permits cap the writes running at once; the stream's flow control
//! (`MAX_OUTSTANDING_MESSAGES`/`_BYTES`, enforced by the service) caps how many messages are
//! leased, and a [`Budget`] of the same size caps the messages held here even if the service
//! sends more (the emulator ignores flow control). On shutdown the loop stops receiving, messages still waiting for a permit
//! are nacked at once, and [`Pipeline::drain`] gives in-flight writes the shutdown budget, nacks
//! whatever is still running when it runs out, and waits for the client to flush acks.

use crate::concurrency::{Outcome, WriteLimit};
use crate::name::NameTemplate;
use crate::object::ObjectSpec;
use crate::sink::{FailureKind, Sink, Written};
use crate::stats::{NackReason, Stats};
use google_cloud_pubsub::model::Message;
use google_cloud_pubsub::subscriber::MessageStream;
use google_cloud_pubsub::subscriber::handler::Handler;
use std::future::Future;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio::sync::Notify;
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
}

/// Everything a message task needs, shared by all of them.
#[derive(Debug)]
pub struct Pipeline {
    sink: Sink,
    stats: Arc<Stats>,
    names: NameTemplate,
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
    /// Bytes of message data held at once (`MAX_OUTSTANDING_BYTES`).
    pub max_outstanding_bytes: i64,
}

impl Pipeline {
    pub fn new(
        sink: Sink,
        stats: Arc<Stats>,
        names: NameTemplate,
        subscription: String,
        limits: Limits,
        shutdown_timeout: Duration,
    ) -> Self {
        Self {
            sink,
            stats,
            names,
            subscription,
            limits,
            shutdown_timeout,
            backoff: FailureBackoff::default(),
        }
    }

    /// Consumes `stream` until `shutdown` resolves or the stream fails, then drains.
    ///
    /// Returns only after in-flight messages were acked or nacked and the acks flushed, or the
    /// shutdown budget ran out.
    pub async fn run(
        self: Arc<Self>,
        mut stream: MessageStream,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), PipelineError> {
        let flush = stream.shutdown_token();
        let tasks = TaskTracker::new();
        let abandon = CancellationToken::new();
        let stopping = CancellationToken::new();
        let writes = WriteLimit::new(self.limits.max_concurrent_writes);
        self.stats.write_limit(writes.current());
        let budget = Budget::new(&self.limits);
        tokio::pin!(shutdown);

        let result = loop {
            // Read as soon as the service sends: a read message is leased (its deadline is
            // extended) while it waits for a write permit; an unread one is not.
            let next = tokio::select! {
                biased;
                () = &mut shutdown => break Ok(()),
                next = stream.next() => next,
            };
            let (message, handler) = match next {
                Some(Ok(received)) => received,
                Some(Err(e)) => break Err(PipelineError::Stream(e)),
                None => break Err(PipelineError::StreamEnded),
            };
            self.stats.received(handler.delivery_attempt());
            let held = tokio::select! {
                biased;
                () = &mut shutdown => {
                    handler.nack();
                    self.stats.nacked(NackReason::Shutdown, None);
                    break Ok(());
                }
                held = budget.reserve(message.data.len()) => held,
            };
            tasks.spawn(self.clone().handle(
                message,
                handler,
                Permits { writes: writes.clone(), _held: held },
                stopping.clone(),
                abandon.clone(),
            ));
        };
        // Messages that have not started their write are nacked now, for redelivery at once.
        stopping.cancel();
        // Dropping the stream cancels it: the client stops pulling and closes the gRPC call,
        // while the lease loop keeps extending leases of the messages still being written.
        drop(stream);
        self.drain(flush, tasks, abandon).await;
        result
    }

    /// Waits for in-flight writes within the shutdown budget, nacks the rest, flushes.
    async fn drain(
        &self,
        flush: google_cloud_pubsub::subscriber::ShutdownToken,
        tasks: TaskTracker,
        abandon: CancellationToken,
    ) {
        let deadline = Instant::now() + self.shutdown_timeout;
        let reserve = MAX_FLUSH_RESERVE.min(self.shutdown_timeout / 4);
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
            abandon.cancel();
            let _ = timeout_at(deadline, tasks.wait()).await;
        }
        // Every handler is now consumed, so the client acks what was acked, nacks anything it
        // still leases (messages it had read but not handed out) and waits for those RPCs.
        if timeout_at(deadline, flush.shutdown()).await.is_err() {
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
        let spec =
            ObjectSpec::for_message(&message, &self.names, &self.subscription, delivery_attempt);
        if !spec.is_text() {
            warn!(
                message_id = %message.message_id,
                object = %spec.name,
                "message data is not valid UTF-8; storing the bytes unchanged as application/octet-stream"
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
                error!(
                    message_id = %message.message_id,
                    delivery_attempt,
                    object = %spec.name,
                    reason = e.kind.as_str(),
                    error = %e,
                    retry_in_ms = delay.as_millis() as u64,
                    "object write failed; nacking for redelivery"
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

/// What a message task holds: its share of the [`Budget`] for its whole life, and the write
/// permits to take one from.
struct Permits {
    writes: Arc<WriteLimit>,
    _held: Held,
}

/// The stream's flow control, held by the worker as well: the service stops sending at
/// `MAX_OUTSTANDING_MESSAGES`/`_BYTES`, the emulator does not, and reading stops here instead.
/// Unlike a semaphore it cannot be closed, so a reservation cannot fail and drop a message.
struct Budget {
    /// Messages and bytes still free.
    free: Mutex<(u64, u64)>,
    released: Notify,
    max_bytes: u64,
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
        // Only the receive loop waits on the budget.
        self.budget.released.notify_one();
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
    fn failure_backoff_follows_the_delivery_attempt() {
        let b = FailureBackoff::default();
        assert_eq!(b.failure(Some(4)), Duration::from_millis(800));
        b.success();
        assert_eq!(b.failure(Some(1000)), Duration::from_secs(10));
    }
}
