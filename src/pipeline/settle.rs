//! How a delivery is settled: the one place that acks (only a message whose object exists) or
//! nacks, after the wait a failure asks for.

use super::backoff::FailureBackoff;
use super::{Pipeline, Run};
use crate::concurrency::{Outcome, WritePermit};
use crate::sink::{FailureKind, WriteError, Written};
use crate::stats::NackReason;
use google_cloud_pubsub::subscriber::handler::Handler;
use std::time::Duration;
use tokio::time::sleep;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};

/// How one delivery ended: the value [`Pipeline::settle`] acks or nacks on.
#[derive(Debug)]
pub(super) enum Settlement {
    /// The object exists: created by this delivery, or found from an earlier one.
    /// `pushed_back`: storage answered some attempt 429 or 503 before the client's retry went
    /// through, so the write's time is mostly the client's waits, not storage latency.
    Stored { written: Written, size: usize, took: Duration, pushed_back: bool },
    /// The write failed: no object of this message's is known to exist.
    Failed { error: WriteError, took: Duration },
    /// Shutdown came first, before the write began or while it ran.
    Abandoned,
}

/// Who a settlement is for: the message (its id, its object once named) and its handler.
pub(super) struct Delivery<'a> {
    pub(super) handler: Handler,
    pub(super) message_id: &'a str,
    pub(super) object: &'a str,
    pub(super) attempt: Option<i32>,
}

impl Pipeline {
    /// Acks or nacks the delivery, settles its write permit, counts, and logs one event with
    /// stable fields (`outcome`, `reason`, `message_id`, `object`). **A message is acked here,
    /// and only when its object exists**; every other settlement is a nack, for redelivery.
    pub(super) async fn settle(
        &self,
        delivery: Delivery<'_>,
        settlement: Settlement,
        write: Option<WritePermit>,
        run: &Run,
    ) {
        let Delivery { handler, message_id, object, attempt } = delivery;
        match settlement {
            Settlement::Stored { written, size, took, pushed_back } => {
                if let Some(write) = write {
                    write.settle(if pushed_back { Outcome::PushedBack } else { Outcome::Answered });
                }
                self.backoff.success();
                let reason = match written {
                    Written::Created => {
                        self.stats.written(size, took);
                        "written"
                    }
                    Written::AlreadyExisted => {
                        self.stats.duplicate(took);
                        "already_written"
                    }
                };
                debug!(
                    message_id,
                    delivery_attempt = attempt,
                    object,
                    outcome = "acked",
                    reason,
                    "acked"
                );
                self.ack(handler, message_id, object).await;
            }
            Settlement::Failed { error, took } => {
                let kind = error.kind;
                let nack = Nack { message_id, object, attempt, error };
                self.fail(handler, nack, write, &run.stopping).await;
                self.stats.nacked(NackReason::WriteFailed(kind), Some(took));
            }
            Settlement::Abandoned => {
                handler.nack();
                self.stats.nacked(NackReason::Shutdown, None);
                let reason = "shutdown";
                debug!(message_id, object, outcome = "nacked", reason, "nacked at shutdown");
            }
        }
        self.stats.write_limit(run.writes.current());
    }

    /// Acks a message whose object exists. On a subscription with exactly-once delivery the ack
    /// is confirmed (within the drain's budget at shutdown, since the task waits for it): an ack
    /// the service refuses (its lease had expired) is counted and logged, and the message, which
    /// comes back, meets its object.
    async fn ack(&self, handler: Handler, message_id: &str, object: &str) {
        let Handler::ExactlyOnce(handler) = handler else {
            return handler.ack();
        };
        if let Err(e) = handler.confirmed_ack().await {
            self.stats.ack_failed();
            let error = e.to_string();
            warn!(message_id, object, outcome = "ack_failed", error, "the ack was not confirmed");
        }
    }

    /// A failed write: logged once, then nacked after a wait. A failure of this one message (a
    /// name collision, a name or object the bucket refuses) says nothing of the others: its
    /// write permit goes back at once, it waits by its own delivery attempt, and the worker-wide
    /// backoff does not grow, so a trickle of such messages never holds up the healthy ones. A
    /// failure of the bucket (an outage, throttling, a hung connection, a revoked permission)
    /// is everyone's: the message keeps its permit while it waits, and the waits grow with the
    /// failures in a row, so the worker slows down instead of spinning messages through a
    /// broken bucket. Shutdown cuts either wait short, so the drain does not spend its budget
    /// here.
    async fn fail(
        &self,
        handler: Handler,
        nack: Nack<'_>,
        write: Option<WritePermit>,
        stopping: &CancellationToken,
    ) {
        let Nack { message_id, object, attempt, error } = nack;
        let (delay, held) = match error.kind.is_bucket_wide() {
            true => (self.backoff.failure(attempt), write),
            false => {
                if let Some(write) = write {
                    write.settle(Outcome::Failed);
                }
                (FailureBackoff::for_message(attempt), None)
            }
        };
        // A collision is not retried into success: the nacks end in the dead-letter topic, and
        // the object, someone else's, is never touched.
        let what = match error.kind {
            FailureKind::NameCollision => {
                "an object of this name holds another message; leaving it untouched and nacking"
            }
            _ => "object write failed; nacking for redelivery",
        };
        error!(
            message_id,
            delivery_attempt = attempt,
            object,
            outcome = "nacked",
            reason = error.kind.as_str(),
            error = %error,
            retry_in_ms = delay.as_millis() as u64,
            "{what}"
        );
        tokio::select! {
            () = stopping.cancelled() => {}
            () = sleep(delay) => {}
        }
        handler.nack();
        if let Some(write) = held {
            let pushed_back = matches!(error.kind, FailureKind::Transient | FailureKind::Timeout);
            write.settle(if pushed_back { Outcome::PushedBack } else { Outcome::Failed });
        }
    }
}

/// A failed write, as [`Pipeline::fail`] logs and nacks it.
struct Nack<'a> {
    message_id: &'a str,
    object: &'a str,
    attempt: Option<i32>,
    error: WriteError,
}
