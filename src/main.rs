//! The binary: configuration, logging, then the worker until SIGTERM or SIGINT.

use anyhow::Context as _;
use pubsub_gcs_worker::{Config, Worker, shutdown::Signals, telemetry};
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("pubsub-gcs-worker: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = telemetry::init(config.log_format, &config.log_filter) {
        eprintln!("pubsub-gcs-worker: {e:#}");
        return ExitCode::from(2);
    }
    match run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "worker stopped with an error");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    let signals = Signals::install().context("signal handlers could not be installed")?;
    let worker = Worker::build(config).await?;
    worker
        .run_until_stopped(signals.first_then_exit_on_second())
        .await?;
    Ok(())
}
