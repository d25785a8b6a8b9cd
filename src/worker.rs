//! The worker: builds the clients once, opens the subscription stream and runs the pipeline
//! until shutdown. `main` and the tests both go through [`Worker::build`] and
//! [`Worker::run_until_stopped`], so the tests run exactly what ships.

use crate::clients;
use crate::config::Config;
use crate::health::{Health, HealthServer};
use crate::pipeline::{Limits, Pipeline};
use crate::self_check;
use crate::sink::Sink;
use crate::stats::{Snapshot, Stats};
use anyhow::Context as _;
use google_cloud_pubsub::client::Subscriber;
use google_cloud_pubsub::subscriber::ShutdownBehavior;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::info;

/// A configured worker, ready to run.
pub struct Worker {
    config: Config,
    subscriber: Subscriber,
    pipeline: Arc<Pipeline>,
    stats: Arc<Stats>,
    health: Arc<Health>,
    health_server: Option<HealthServer>,
}

impl Worker {
    /// Creates the clients, runs the start-up check and binds the health endpoint. Nothing is
    /// pulled yet.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let subscriber = clients::subscriber(&config).await?;
        let storage = clients::storage(&config).await?;
        if config.startup_check {
            let control = clients::storage_control(&config).await?;
            self_check::check_bucket(&control, &config.bucket).await?;
        }
        let stats = Arc::new(Stats::default());
        let pipeline = Arc::new(Pipeline::new(
            Sink::new(storage, &config.bucket, config.write_timeout),
            stats.clone(),
            config.names.clone(),
            config.subscription.clone(),
            Limits {
                max_concurrent_writes: config.max_concurrent_writes,
                max_outstanding_messages: config.max_outstanding_messages,
                max_outstanding_bytes: config.max_outstanding_bytes,
            },
            config.shutdown_timeout,
        ));
        let health = Arc::new(Health::new(stats.clone(), config.liveness_stall));
        let health_server = match config.health_addr {
            Some(addr) => Some(
                HealthServer::bind(addr)
                    .await
                    .with_context(|| format!("the health endpoint could not listen on {addr}"))?,
            ),
            None => None,
        };
        Ok(Self { config, subscriber, pipeline, stats, health, health_server })
    }

    /// Where the health endpoint listens, if it was asked for (useful with port 0).
    pub fn health_addr(&self) -> Option<SocketAddr> {
        self.health_server.as_ref().and_then(|s| s.local_addr().ok())
    }

    /// The live counters, for callers that watch a running worker.
    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// Consumes the subscription until `shutdown` resolves (then drains) or the stream fails.
    pub async fn run_until_stopped(
        mut self,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<Snapshot> {
        let c = &self.config;
        info!(
            subscription = %c.subscription,
            bucket = %c.bucket,
            object_name = c.names.template(),
            max_outstanding_messages = c.max_outstanding_messages,
            max_outstanding_bytes = c.max_outstanding_bytes,
            max_concurrent_writes = c.max_concurrent_writes,
            max_lease_extension_secs = c.max_lease_extension.as_secs(),
            shutdown_timeout_secs = c.shutdown_timeout.as_secs(),
            pubsub_emulator = c.pubsub_emulator.as_deref().unwrap_or("none"),
            storage_emulator = c.storage_emulator.as_deref().unwrap_or("none"),
            health_endpoint = %self.health_addr().map_or("off".to_string(), |a| a.to_string()),
            startup_check = c.startup_check,
            version = env!("CARGO_PKG_VERSION"),
            "starting"
        );
        let stream = self
            .subscriber
            .subscribe(c.subscription.clone())
            .set_max_outstanding_messages(c.max_outstanding_messages)
            .set_max_outstanding_bytes(c.max_outstanding_bytes)
            .set_max_lease_extension(c.max_lease_extension)
            // Keep extending leases of messages being written after the stream is cancelled;
            // the drain decides when to give up on them.
            .set_shutdown_behavior(ShutdownBehavior::WaitForProcessing)
            .build();

        let background = CancellationToken::new();
        if let Some(server) = self.health_server.take() {
            tokio::spawn(server.serve(self.health.clone(), background.clone()));
        }
        // Clients built, bucket checked, stream configured: the startup probe may pass. The
        // stream itself connects on the first pull; a missing subscription ends the run.
        self.health.set_started();
        if let Some(period) = c.progress_interval {
            tokio::spawn(report_progress(self.stats.clone(), period, background.clone()));
        }
        let result = self.pipeline.clone().run(stream, shutdown).await;
        background.cancel();

        let summary = log_counters(&self.stats, "stopped");
        result?;
        Ok(summary)
    }
}

/// Logs the counters every `period` until `stop` is cancelled.
async fn report_progress(stats: Arc<Stats>, period: Duration, stop: CancellationToken) {
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        log_counters(&stats, "progress");
    }
}

/// One log line with every counter, as `progress` or the final `stopped` summary.
fn log_counters(stats: &Stats, message: &'static str) -> Snapshot {
    let s = stats.snapshot();
    info!(
        received = s.received,
        written = s.written,
        duplicates = s.duplicates,
        acked = s.acked,
        nacked = s.nacked,
        bytes_written = s.bytes_written,
        in_flight = s.in_flight,
        write_limit = stats.current_write_limit(),
        "{message}"
    );
    s
}
