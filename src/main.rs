//! The binary: configuration, logging, then the worker until SIGTERM or SIGINT.

use pubsub_gcs_worker::Signals;
use pubsub_gcs_worker::config::Config;
use pubsub_gcs_worker::telemetry;
use pubsub_gcs_worker::worker::Worker;
use std::process::ExitCode;
use std::time::Duration;

/// jemalloc: a message costs 11% fewer instructions than with the system allocator (callgrind),
/// and with one arena for all threads its peak RSS is lower too (docs/performance.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read before `main`: one arena (by default four per core), which the
/// runtime's few threads share through their thread caches.
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: Option<&'static std::ffi::c_char> =
    // SAFETY: the pointer is to the first byte of a static, NUL-terminated string.
    Some(unsafe { &*c"narenas:1".as_ptr() });

/// How long the runtime may wait, after the worker returned, for blocking tasks (a stuck DNS
/// lookup, say) before the process exits anyway: the drain has already used the budget.
const RUNTIME_SHUTDOWN_GRACE: Duration = Duration::from_millis(200);

fn main() -> ExitCode {
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
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("pubsub-gcs-worker: the async runtime could not start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(run(config));
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN_GRACE);
    code
}

async fn run(config: Config) -> ExitCode {
    let mut signals = match Signals::install() {
        Ok(signals) => signals,
        Err(e) => {
            return failed(anyhow::anyhow!("signal handlers could not be installed: {e}"));
        }
    };
    // Start-up (clients, the bucket check) can take a while against a slow endpoint; a signal
    // then means "never mind", not "wait until it is done".
    let worker = tokio::select! {
        worker = Worker::build(config) => worker,
        name = signals.recv() => {
            tracing::info!(signal = name, "shutdown signal received during start-up; exiting");
            return ExitCode::SUCCESS;
        }
    };
    let result = match worker {
        Ok(worker) => worker.run_until_stopped(signals.first_then_exit_on_second()).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => failed(e),
    }
}

/// Logs the error chain once, where it is handled, and picks the exit code.
fn failed(e: anyhow::Error) -> ExitCode {
    tracing::error!(error = format!("{e:#}"), event = "failed", "worker stopped with an error");
    ExitCode::FAILURE
}
