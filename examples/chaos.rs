//! The chaos soak (`testkit`'s `Soak`, docs/testing.md): worker processes killed and restarted
//! while storage and Pub/Sub fail, then an account of every published message.
//!
//! ```text
//! cargo run --release --example chaos -- --minutes 60 --instances 3 [--rate 10] [--seed N]
//! ```
//!
//! Prints a report and one `CHAOS {json}` line; exits non-zero if the worker failed the soak.
//! The workers' logs, the evidence of the account, are kept in a directory the report names.

use clap::Parser;
use std::process::ExitCode;
use testkit::Soak;
use testkit::process::build_worker;

#[derive(Parser)]
struct Args {
    /// Minutes of chaos (the drain comes after)
    #[arg(long, default_value_t = 60)]
    minutes: u64,
    /// Worker processes at once
    #[arg(long, default_value_t = 3)]
    instances: usize,
    /// Messages published per second [default: 10]
    #[arg(long)]
    rate: Option<u32>,
    /// The seed of a run, to repeat its choices [default: a random one]
    #[arg(long)]
    seed: Option<u64>,
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let Args { minutes, instances, rate, seed } = Args::parse();
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let logs = std::env::temp_dir().join(format!("pubsub-gcs-worker-chaos-{stamp}"));
    let mut soak = Soak::hour(build_worker(!cfg!(debug_assertions))?, minutes, instances, logs);
    soak.rate = rate.unwrap_or(soak.rate);
    soak.seed = seed.unwrap_or(soak.seed);
    eprintln!("chaos: {minutes} min, {instances} instances, seed {}", soak.seed);
    let report = soak.run().await?;
    println!("{}", report.text);
    println!("CHAOS {}", report.json);
    Ok(if report.passed() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
