//! The worker: builds the clients once, opens the subscription's pull streams and runs the
//! pipeline until shutdown. `main` and the tests both go through [`Worker::build`] and
//! [`Worker::run_until_stopped`], so the tests run exactly what ships.

use crate::clients;
use crate::config::Config;
use crate::health::{Health, HealthServer};
use crate::pipeline::Pipeline;
use crate::self_check;
use crate::sink::Sink;
use crate::stats::{Snapshot, Stats};
use crate::streams::PullStreams;
use anyhow::Context as _;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::info;

/// A configured worker, ready to run.
pub struct Worker {
    config: Config,
    /// The subscription's streams, opened by the pipeline as the load needs them.
    streams: Option<PullStreams>,
    pipeline: Arc<Pipeline>,
    stats: Arc<Stats>,
    health: Arc<Health>,
    health_server: Option<HealthServer>,
}

impl Worker {
    /// Creates the clients, runs the start-up check and binds the health endpoint. Nothing is
    /// pulled yet.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let streams = Some(PullStreams::new(&config).await?);
        let storage = clients::storage(&config).await?;
        if config.startup_check {
            let control = clients::storage_control(&config).await?;
            self_check::check_bucket(&control, &config.bucket).await?;
            if let Some(key) = &config.objects.kms_key {
                self_check::check_kms_key(&storage.storage, &config.bucket, key).await?;
            }
        }
        let stats = Arc::new(Stats::default());
        let sink =
            Sink::new(storage, &config.bucket, config.write_timeout).with_settings(&config.objects);
        let pipeline = Arc::new(Pipeline::new(sink, stats.clone(), &config));
        let health = Arc::new(Health::new(stats.clone(), config.liveness_stall));
        let health_server = match config.health_addr {
            Some(addr) => Some(
                HealthServer::bind(addr)
                    .await
                    .with_context(|| format!("the health endpoint could not listen on {addr}"))?,
            ),
            None => None,
        };
        Ok(Self { config, streams, pipeline, stats, health, health_server })
    }

    /// Where the health endpoint listens, if it was asked for (useful with port 0).
    pub fn health_addr(&self) -> Option<SocketAddr> {
        self.health_server.as_ref().and_then(|s| s.local_addr().ok())
    }

    /// The live counters, for callers that watch a running worker.
    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// Consumes the subscription until `shutdown` resolves (then drains) or a stream fails.
    pub async fn run_until_stopped(
        mut self,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<Snapshot> {
        let c = &self.config;
        info!(
            subscription = %c.subscription,
            bucket = %c.bucket,
            object_name = c.names.template(),
            object_content_type = ?c.objects.content_type,
            object_compression = if c.objects.gzip { "gzip" } else { "none" },
            object_storage_class = c.objects.storage_class.as_deref().unwrap_or("bucket default"),
            object_cache_control = c.objects.cache_control.as_deref().unwrap_or("none"),
            object_custom_time = if c.objects.custom_time { "publish_time" } else { "none" },
            kms_key = c.objects.kms_key.as_deref().unwrap_or("none"),
            pubsub_endpoint = c.pubsub_endpoint.as_deref().unwrap_or("global"),
            max_outstanding_messages = c.max_outstanding_messages,
            max_outstanding_bytes = c.max_outstanding_bytes,
            max_concurrent_writes = c.max_concurrent_writes,
            max_pull_streams = c.pull_streams,
            max_lease_extension_secs = c.max_lease_extension.as_secs(),
            shutdown_timeout_secs = c.shutdown_timeout.as_secs(),
            pubsub_emulator = c.pubsub_emulator.as_deref().unwrap_or("none"),
            storage_emulator = c.storage_emulator.as_deref().unwrap_or("none"),
            health_endpoint = %self.health_addr().map_or("off".to_string(), |a| a.to_string()),
            startup_check = c.startup_check,
            version = env!("CARGO_PKG_VERSION"),
            event = "starting",
            "starting"
        );
        let streams = self.streams.take().context("a worker runs once")?;

        let background = CancellationToken::new();
        if let Some(server) = self.health_server.take() {
            tokio::spawn(server.serve(self.health.clone(), background.clone()));
        }
        // Clients built, bucket checked: the startup probe may pass. The first stream connects
        // on its first pull; a missing subscription ends the run.
        self.health.set_started();
        if let Some(period) = c.progress_interval {
            tokio::spawn(report_progress(self.stats.clone(), period, background.clone()));
        }
        let result = self.pipeline.clone().run(streams, shutdown).await;
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
        event = message,
        "{message}"
    );
    s
}
