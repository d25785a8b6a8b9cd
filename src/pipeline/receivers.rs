//! The receive loops, one per open pull stream: the first opened at start, more opened and
//! closed as [`Demand`] says after each window of [`SAMPLES`] samples.

use super::{Ended, Pipeline, PipelineError, Run};
use crate::streams::PullStreams;
use crate::streams::demand::{Demand, Step, Window};
use google_cloud_pubsub::subscriber::{MessageStream, ShutdownToken};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::task::{JoinError, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

/// How often the pipeline is sampled.
pub(super) const SAMPLE: Duration = Duration::from_millis(500);
/// Samples in a window: 5 s, long enough for a new stream to connect and carry its share.
const SAMPLES: u32 = 10;
/// Samples of a window that must have found room for the writes for it to count as having room.
const MOST: u32 = SAMPLES * 4 / 5;
/// Held messages above this share of `MAX_OUTSTANDING_*` leave no room: the flow control binds,
/// and another stream would bring nothing.
const FULL: f64 = 0.9;
/// A window in which the receive loops waited for their streams at least this share of the time
/// (each loop of its own) is starved: the messages came no faster than they were read. Measured
/// on 256 B messages with the worker short of CPU, the loops waited 2-3% of a steady window; in
/// a run's first windows, while the backlog began to flow, 12-98%. A loop's wait counts in the
/// window in which it ends.
const STARVED: f64 = 0.5;

/// The open streams' receive loops, and the flushes of every stream opened.
pub(super) struct Receivers {
    streams: PullStreams,
    pipeline: Arc<Pipeline>,
    run: Run,
    /// Each loop's stream id and how it ended.
    loops: JoinSet<(u64, Result<Ended, PipelineError>)>,
    /// The open streams, oldest first.
    open: Vec<Open>,
    /// A task per closed stream, waiting for its client to flush its acks and nacks once its
    /// messages are settled.
    flushes: TaskTracker,
    /// Streams opened so far: the next one's id.
    opened: u64,
}

/// An open stream: its id, its loop's close token and its client's flush.
struct Open {
    id: u64,
    close: CancellationToken,
    flush: ShutdownToken,
}

impl Receivers {
    pub(super) fn new(streams: PullStreams, pipeline: Arc<Pipeline>, run: Run) -> Self {
        let (loops, open, flushes) = (JoinSet::new(), Vec::new(), TaskTracker::new());
        Self { streams, pipeline, run, loops, open, flushes, opened: 0 }
    }

    /// Opens a stream and starts its receive loop.
    pub(super) async fn open(&mut self) -> Result<(), PipelineError> {
        let stream = self.streams.open(self.open.len()).await.map_err(PipelineError::Stream)?;
        let open = self.start(stream);
        self.open.push(open);
        self.pipeline.stats.pull_streams(self.open.len(), true);
        Ok(())
    }

    /// Starts a receive loop on `stream`.
    fn start(&mut self, stream: MessageStream) -> Open {
        let (id, close) = (self.opened, self.run.stopping.child_token());
        self.opened += 1;
        let flush = stream.shutdown_token();
        let idle = self.streams.idle();
        let receive = self.pipeline.clone().receive(stream, close.clone(), idle, self.run.clone());
        self.loops.spawn(async move { (id, receive.await) });
        Open { id, close, flush }
    }

    /// Opens the stream `id`, whose loop ended idle, again on a new client, in its place (and
    /// with its share of the flow control); the old client flushes as a closed one does. The
    /// state changes only once the new stream is made, so a shutdown meanwhile leaves the old
    /// one to [`Receivers::stop`].
    async fn reopen(&mut self, id: u64) -> Result<(), PipelineError> {
        let Some(index) = self.open.iter().position(|o| o.id == id) else { return Ok(()) };
        let stream = self.streams.open(index).await.map_err(PipelineError::Stream)?;
        let open = self.start(stream);
        let old = std::mem::replace(&mut self.open[index], open);
        self.flushes.spawn(async move { old.flush.shutdown().await });
        self.pipeline.stats.pull_streams(self.open.len(), true);
        let idle_secs = self.streams.idle().map_or(0, |d| d.as_secs());
        // At debug: an idle subscription does this every period; the metric counts it.
        debug!(
            streams = self.open.len(),
            idle_secs,
            event = "stream_reopened",
            "a pull stream delivered nothing for {idle_secs} s: opened again on a new connection"
        );
        Ok(())
    }

    /// Stops the newest stream's loop, unless it is the only one; its messages are settled as
    /// any others.
    fn close_newest(&mut self) {
        if self.open.len() > 1
            && let Some(Open { close, flush, .. }) = self.open.pop()
        {
            close.cancel();
            self.flushes.spawn(async move { flush.shutdown().await });
            self.pipeline.stats.pull_streams(self.open.len(), false);
        }
    }

    /// Waits until a loop ends unasked: its stream failed or ended. A closed stream's loop
    /// ending is no news; an idle one's stream is opened again.
    pub(super) async fn failed(&mut self) -> PipelineError {
        loop {
            match self.loops.join_next().await {
                None => std::future::pending().await,
                Some(Ok((_, Ok(Ended::Closed)))) => continue,
                Some(Ok((id, Ok(Ended::Idle)))) => {
                    if let Err(e) = self.reopen(id).await {
                        return e;
                    }
                }
                Some(Ok((_, Err(e)))) => return e,
                Some(Err(panic)) => return PipelineError::Receiver(panic),
            }
        }
    }

    /// After `run.stopping` is cancelled: waits for every loop to end (each drops its stream).
    /// Returns the first failure, if any, and the flushes for the drain to wait for.
    pub(super) async fn stop(mut self) -> (Result<(), PipelineError>, TaskTracker) {
        let mut result = Ok(());
        while let Some(ended) = self.loops.join_next().await {
            result = result.and(outcome(ended));
        }
        // Each stream's client acks what was acked, nacks anything it still leases (messages it
        // had read but not handed out) and waits for those RPCs once every handler is consumed.
        // The streams flush at the same time, each in its own lease loop.
        for Open { flush, .. } in self.open.drain(..) {
            self.flushes.spawn(async move { flush.shutdown().await });
        }
        self.flushes.close();
        (result, self.flushes)
    }

    /// Takes the step `demand` decides after a window.
    pub(super) async fn follow(&mut self, demand: &mut Demand, window: Window) {
        let step = demand.next(window);
        let rate = window.rate.round() as u64;
        let (room, starved, streams) = (window.room, window.starved, self.open.len());
        debug!(rate, room, starved, streams, ?step, event = "window", "pull streams: a window");
        match step {
            Step::Hold => return,
            Step::Open => {
                if let Err(e) = self.open().await {
                    warn!(error = %e, event = "stream_failed", "another pull stream could not be opened");
                    demand.open_failed();
                    return;
                }
            }
            Step::Keep => {}
            Step::Close(_) => self.close_newest(),
        }
        let (event, reason) = match step {
            Step::Open => ("stream_opened", "trial"),
            Step::Keep => ("stream_kept", "gain"),
            Step::Close(why) => ("stream_closed", why.as_str()),
            Step::Hold => unreachable!("returned above"),
        };
        info!(streams = self.open.len(), rate, reason, event, "pull streams: {event}");
    }

    pub(super) fn max(&self) -> usize {
        self.streams.max()
    }

    /// Streams open now.
    pub(super) fn open_now(&self) -> usize {
        self.open.len()
    }
}

/// A receive loop's result: a panic in one (a bug) ends the run as a failed stream does.
fn outcome(
    ended: Result<(u64, Result<Ended, PipelineError>), JoinError>,
) -> Result<(), PipelineError> {
    ended.map_err(PipelineError::Receiver).and_then(|(_, ended)| ended.map(drop))
}

/// Samples the pipeline and makes a [`Window`] of every [`SAMPLES`] samples.
pub(super) struct Sampler {
    started: Instant,
    /// Messages received since start when the window began.
    first: u64,
    /// The receive loops' wait for their streams, in all, when the window began.
    waited: u64,
    samples: u32,
    room: u32,
}

impl Sampler {
    pub(super) fn new(received: u64, waited: u64) -> Self {
        Self { started: Instant::now(), first: received, waited, samples: 0, room: 0 }
    }

    /// One sample of `pipeline` and `run`, with `streams` open; a window after every
    /// [`SAMPLES`].
    pub(super) fn sample(
        &mut self,
        pipeline: &Pipeline,
        run: &Run,
        streams: usize,
    ) -> Option<Window> {
        let received = pipeline.stats.received_total();
        self.samples += 1;
        self.room += u32::from(run.writes.waiting() == 0 && run.budget.fill() < FULL);
        if self.samples < SAMPLES {
            return None;
        }
        let seconds = self.started.elapsed().as_secs_f64().max(1e-3);
        let total = received - self.first;
        let waited = run.waited.load(Ordering::Relaxed);
        let per_stream = (waited - self.waited) as f64 / 1e9 / seconds / streams.max(1) as f64;
        let window = Window {
            rate: total as f64 / seconds,
            seconds,
            room: self.room >= MOST,
            starved: per_stream >= STARVED,
        };
        *self = Self::new(received, waited);
        Some(window)
    }
}
