//! The message pipeline: receive, write with bounded concurrency, ack or nack, drain.
//!
//! One loop per StreamingPull stream reads it as fast as messages arrive and spawns a task per
//! message; the task waits for a write permit, writes the object and then acks (or nacks on
//! failure). Reading eagerly matters: the client extends the lease of a message only once it has
//! been read, so a message left unread in the stream while every permit is busy would expire and
//! be redelivered. The permits cap the writes running at once; each stream's flow control (its
//! share of `MAX_OUTSTANDING_MESSAGES`/`_BYTES`, enforced by the service) caps how many messages
//! are leased, and one [`Budget`] of the whole size caps the messages held here, from every
//! stream together, even if the service sends more (the Pub/Sub emulator, unmended, ignores flow
//! control). On shutdown, or when a stream fails, every loop stops receiving, messages still
//! waiting for a permit are nacked at once, and [`Pipeline::drain`] gives in-flight writes the
//! shutdown budget, nacks whatever is still running when it runs out, and waits for every
//! stream's client to flush its acks.

mod backoff;
mod budget;
mod receivers;
mod settle;

use crate::concurrency::WriteLimit;
use crate::config::Config;
use crate::name::NameTemplate;
use crate::object::{ObjectSettings, ObjectSpec};
use crate::sink::Sink;
use crate::stats::{NackReason, Stats};
use crate::streams::PullStreams;
use crate::streams::demand::Demand;
use backoff::FailureBackoff;
use budget::{Budget, Held, held_bytes};
use bytes::Bytes;
use google_cloud_pubsub::model::Message;
use google_cloud_pubsub::subscriber::MessageStream;
use google_cloud_pubsub::subscriber::handler::Handler;
use receivers::{Receivers, Sampler};
use settle::{Delivery, Settlement};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::task::JoinError;
use tokio::time::{Instant, timeout_at};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

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

/// How a receive loop ended without failing.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    /// Its stream was closed: at shutdown, or as one more than the load needs.
    Closed,
    /// Its stream delivered nothing for `STREAM_IDLE_SECS`: it is to be opened again.
    Idle,
}

/// `future`'s output, or `None` if `limit` passes first (no limit: it waits).
async fn within<T>(limit: Option<Duration>, future: impl Future<Output = T>) -> Option<T> {
    match limit {
        Some(limit) => tokio::time::timeout(limit, future).await.ok(),
        None => Some(future.await),
    }
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
struct Limits {
    /// Object writes running at once (`MAX_CONCURRENT_WRITES`).
    max_concurrent_writes: usize,
    /// Messages held at once, waiting for a write or being written (`MAX_OUTSTANDING_MESSAGES`).
    max_outstanding_messages: i64,
    /// Bytes of messages held at once (`MAX_OUTSTANDING_BYTES`), as [`held_bytes`] counts them.
    max_outstanding_bytes: i64,
}

impl Pipeline {
    /// The pipeline `config` describes, writing through `sink` and counting in `stats`.
    pub fn new(sink: Sink, stats: Arc<Stats>, config: &Config) -> Self {
        Self {
            sink,
            stats,
            names: config.names.clone(),
            objects: config.objects.clone(),
            subscription: config.subscription.clone(),
            limits: Limits {
                max_concurrent_writes: config.max_concurrent_writes,
                max_outstanding_messages: config.max_outstanding_messages,
                max_outstanding_bytes: config.max_outstanding_bytes,
            },
            shutdown_timeout: config.shutdown_timeout,
            backoff: FailureBackoff::default(),
        }
    }

    /// Consumes the subscription until `shutdown` resolves or a stream fails, then drains.
    ///
    /// Each open stream has its own receive loop (a task, so the streams' messages are decoded
    /// on every core); they all take from one [`Budget`] and one write limit. One stream is
    /// opened at start and more as the load needs them ([`receivers`]). Returns only after
    /// in-flight messages were acked or nacked and every stream's acks flushed, or the shutdown
    /// budget ran out.
    pub async fn run(
        self: Arc<Self>,
        streams: PullStreams,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), PipelineError> {
        let run = Run {
            tasks: TaskTracker::new(),
            writes: WriteLimit::new(self.limits.max_concurrent_writes),
            budget: Budget::new(&self.limits),
            stopping: CancellationToken::new(),
            abandon: CancellationToken::new(),
            waited: Arc::new(AtomicU64::new(0)),
        };
        self.stats.write_limit(run.writes.current());
        let mut receivers = Receivers::new(streams, self.clone(), run.clone());
        let mut result = receivers.open().await;
        if result.is_ok() {
            result = self.pull(&mut receivers, &run, shutdown).await;
        }
        // The loops stop and drop their streams, and messages that have not started their write
        // are nacked now, for redelivery at once.
        run.stopping.cancel();
        let (stopped, flushes) = receivers.stop().await;
        self.drain(flushes, run).await;
        result.and(stopped)
    }

    /// Runs until `shutdown` resolves or a stream fails, opening and closing streams as the
    /// load asks.
    async fn pull(
        &self,
        receivers: &mut Receivers,
        run: &Run,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), PipelineError> {
        tokio::pin!(shutdown);
        let mut demand = Demand::new(receivers.max());
        let waited = || run.waited.load(Ordering::Relaxed);
        let mut sampler = Sampler::new(self.stats.received_total(), waited());
        let mut samples = tokio::time::interval(receivers::SAMPLE);
        samples.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = &mut shutdown => return Ok(()),
                failed = receivers.failed() => return Err(failed),
                _ = samples.tick() => {
                    if let Some(window) = sampler.sample(self, run, receivers.open_now()) {
                        receivers.follow(&mut demand, window).await;
                    }
                }
            }
        }
    }

    /// Reads one stream until `close` is cancelled (by `run.stopping` or to close this stream
    /// alone) or the stream fails, and spawns a task per message.
    async fn receive(
        self: Arc<Self>,
        mut stream: MessageStream,
        close: CancellationToken,
        idle: Option<Duration>,
        run: Run,
    ) -> Result<Ended, PipelineError> {
        // Returning drops the stream, which cancels it: the client stops pulling and closes the
        // gRPC call, while its lease loop keeps extending leases of the messages being written.
        loop {
            // Read as soon as the service sends: a read message is leased (its deadline is
            // extended) while it waits for a write permit; an unread one is not.
            let waiting = Instant::now();
            let next = tokio::select! {
                biased;
                () = close.cancelled() => return Ok(Ended::Closed),
                next = within(idle, stream.next()) => next,
            };
            // About 50 ns a message, against some 50 µs of CPU to write it.
            let waited = waiting.elapsed().as_nanos().try_into().unwrap_or(u64::MAX);
            run.waited.fetch_add(waited, Ordering::Relaxed);
            let Some(next) = next else { return Ok(Ended::Idle) };
            let (mut message, handler) = match next {
                Some(Ok(received)) => received,
                Some(Err(e)) => return Err(PipelineError::Stream(e)),
                None => return Err(PipelineError::StreamEnded),
            };
            self.stats.received(handler.delivery_attempt());
            // The gRPC decoder hands out the data as a slice of the buffer the whole response was
            // read into (many messages): one message held keeps all of it alive. Copied, the
            // memory held is what the budget counts: on 150,000 messages of 256 B the peak RSS
            // fell from 72-75 to 31-34 MB, for no CPU that showed (docs/performance.md).
            message.data = Bytes::copy_from_slice(&message.data);
            debug!(
                message_id = %message.message_id,
                delivery_attempt = handler.delivery_attempt(),
                outcome = "received",
                "message received"
            );
            let held = tokio::select! {
                biased;
                () = run.stopping.cancelled() => {
                    handler.nack();
                    self.stats.nacked(NackReason::Shutdown, None);
                    debug!(message_id = %message.message_id, outcome = "nacked", reason = "shutdown", "not held before shutdown; nacked");
                    return Ok(Ended::Closed);
                }
                held = run.budget.reserve(held_bytes(&message)) => held,
            };
            run.tasks.spawn(self.clone().handle(message, handler, held, run.clone()));
        }
    }

    /// Waits for in-flight writes within the shutdown budget, nacks the rest, flushes.
    async fn drain(&self, flushes: TaskTracker, run: Run) {
        let deadline = Instant::now() + self.shutdown_timeout;
        let reserve = MAX_FLUSH_RESERVE.min(self.shutdown_timeout / 4);
        let tasks = run.tasks;
        tasks.close();
        info!(
            in_flight = tasks.len(),
            timeout_ms = self.shutdown_timeout.as_millis() as u64,
            event = "draining",
            "stopped receiving; finishing in-flight writes"
        );
        if timeout_at(deadline - reserve, tasks.wait()).await.is_err() {
            warn!(
                unfinished = tasks.len(),
                event = "budget_spent",
                "shutdown budget spent; nacking unfinished writes so they are redelivered at once"
            );
            run.abandon.cancel();
            let _ = timeout_at(deadline, tasks.wait()).await;
        }
        // Every handler is now consumed, so each stream's flush (begun when the loops stopped) can
        // finish; they run at the same time, so this waits as long as the slowest.
        if timeout_at(deadline, flushes.wait()).await.is_err() {
            warn!(
                "acks were not confirmed within the shutdown budget; \
                 unconfirmed messages will be redelivered and land on their existing objects"
            );
        }
    }

    /// Writes one message and settles it. `_held` is its share of the budget, for its whole
    /// life.
    async fn handle(
        self: Arc<Self>,
        mut message: Message,
        handler: Handler,
        _held: Held,
        run: Run,
    ) {
        let attempt = handler.delivery_attempt();
        let write = tokio::select! {
            biased;
            () = run.stopping.cancelled() => None,
            permit = run.writes.acquire() => Some(permit),
        };
        let Some(write) = write else {
            let delivery =
                Delivery { handler, message_id: &message.message_id, object: "", attempt };
            return self.settle(delivery, Settlement::Abandoned, None, &run).await;
        };
        let (names, objects) = (&self.names, &self.objects);
        let spec = ObjectSpec::for_message(&message, names, objects, &self.subscription, attempt);
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
        let settlement = tokio::select! {
            biased;
            () = run.abandon.cancelled() => Settlement::Abandoned,
            settlement = self.process(&spec, data) => settlement,
        };
        let delivery =
            Delivery { handler, message_id: &message.message_id, object: &spec.name, attempt };
        self.settle(delivery, settlement, Some(write), &run).await;
    }

    /// The write, the only effect a message has before it is settled.
    async fn process(&self, spec: &ObjectSpec, data: Bytes) -> Settlement {
        let (size, started) = (data.len(), Instant::now());
        let attempted = self.sink.attempt(spec, data).await;
        let took = started.elapsed();
        match attempted.result {
            Ok(written) => {
                Settlement::Stored { written, size, took, pushed_back: attempted.pushed_back }
            }
            Err(error) => Settlement::Failed { error, took },
        }
    }
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
    /// Nanoseconds the receive loops spent waiting for their streams, all together: a loop that
    /// seldom waits reads what its stream has already brought, and another stream would not
    /// make it read faster ([`Demand`]).
    waited: Arc<AtomicU64>,
}
