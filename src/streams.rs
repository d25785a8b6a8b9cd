//! The subscription's StreamingPull streams: one at start, more as the load needs them, up to
//! `PULL_STREAMS` (`demand` says when), each on a client and connection of its own.

pub(crate) mod demand;

use crate::clients::PubsubClients;
use crate::config::Config;
use google_cloud_pubsub::client::Subscriber;
use google_cloud_pubsub::subscriber::{MessageStream, ShutdownBehavior};
use std::time::Duration;

/// Opens the subscription's streams with the worker's lease settings and flow control.
#[derive(Debug)]
pub struct PullStreams {
    clients: PubsubClients,
    /// The first stream's client, built at start so that a client that cannot be built stops
    /// the start, not the first pull.
    first: Option<Subscriber>,
    subscription: String,
    max: usize,
    idle: Option<Duration>,
    max_outstanding: (i64, i64),
    max_lease_extension: Duration,
}

impl PullStreams {
    pub async fn new(config: &Config) -> anyhow::Result<Self> {
        let clients = PubsubClients::new(config)?;
        let first = clients.subscriber().await.map_err(anyhow::Error::new);
        let first = first.map_err(|e| e.context("the Pub/Sub client could not be created"))?;
        Ok(Self {
            clients,
            first: Some(first),
            subscription: config.subscription.clone(),
            max: config.pull_streams.max(1),
            idle: config.stream_idle,
            max_outstanding: (config.max_outstanding_messages, config.max_outstanding_bytes),
            max_lease_extension: config.max_lease_extension,
        })
    }

    /// `PULL_STREAMS`: the most streams open at once.
    pub fn max(&self) -> usize {
        self.max
    }

    /// `STREAM_IDLE_SECS`: a stream that delivers nothing for this long is opened again on a
    /// new client. The client only learns that its connection is gone from a reset or a close:
    /// a connection dropped silently on the way (a NAT or a proxy forgetting it) leaves the
    /// stream waiting for ever, and a client can also be left unable to reconnect after an
    /// outage (seen against the emulator restarted mid-stream, about one run in ten). An idle
    /// subscription pays one new stream per period.
    pub fn idle(&self) -> Option<Duration> {
        self.idle
    }

    /// Opens a stream on a client (and so a connection) of its own.
    ///
    /// The first stream (`index` 0) may lease the whole of `MAX_OUTSTANDING_MESSAGES`/`_BYTES`,
    /// so that one stream alone keeps every write busy, as one stream did before streams were
    /// opened on demand. Each further stream leases its share of the total over `PULL_STREAMS`
    /// (rounded up): with every stream open the service leases the process less than twice the
    /// total, and the pipeline holds no more than the total whatever the streams lease.
    pub async fn open(&mut self, index: usize) -> google_cloud_pubsub::Result<MessageStream> {
        let subscriber = match self.first.take() {
            Some(first) => first,
            None => self.clients.subscriber().await.map_err(google_cloud_pubsub::Error::io)?,
        };
        let (messages, bytes) = match index {
            0 => self.max_outstanding,
            _ => (share(self.max_outstanding.0, self.max), share(self.max_outstanding.1, self.max)),
        };
        Ok(subscriber
            .subscribe(&self.subscription)
            .set_max_outstanding_messages(messages)
            .set_max_outstanding_bytes(bytes)
            .set_max_lease_extension(self.max_lease_extension)
            // Keep extending leases of messages being written after the stream is cancelled;
            // the drain decides when to give up on them.
            .set_shutdown_behavior(ShutdownBehavior::WaitForProcessing)
            .build())
    }
}

/// One stream's share of a flow-control `total` (at least 1), rounded up.
fn share(total: i64, streams: usize) -> i64 {
    (total.max(1) as u64).div_ceil(streams.max(1) as u64) as i64
}

#[cfg(test)]
mod tests {
    use super::share;

    #[test]
    fn a_share_of_the_flow_control_rounds_up() {
        assert_eq!(share(2000, 4), 500);
        assert_eq!(share(2000, 3), 667);
        assert_eq!(share(3, 8), 1, "each stream may lease a message");
        assert_eq!(share(i64::MAX, 1), i64::MAX);
        for (total, n) in [(1, 1), (7, 2), (100 << 20, 6), (999_999, 32)] {
            let together = share(total, n) * n as i64;
            assert!(total <= together && together < total + n as i64, "{total} over {n}");
        }
    }
}
