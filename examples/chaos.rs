//! The chaos soak: worker processes killed with SIGTERM or SIGKILL and restarted at
//! random, while storage throttles (429), fails (503), refuses (403), hangs, resets connections
//! and slows down in windows, and the Pub/Sub connection is reset now and then; then faults off,
//! the backlog drained, and an account of every published message (see `testkit`'s `Soak`).
//!
//! ```text
//! cargo run --release --example chaos -- --minutes 60 --instances 3 [--rate 10] [--seed N]
//! ```
//!
//! Prints a report and one `CHAOS {json}` line; exits non-zero if the worker failed the soak.
//! The workers' logs, the evidence of the account, are kept in a directory the report names.

use std::process::ExitCode;

use anyhow::{Context, bail};
use testkit::Soak;
use testkit::process::build_worker;

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let mut args = std::env::args().skip(1);
    let (mut minutes, mut instances, mut rate, mut seed) = (60, 3, None, None);
    while let Some(flag) = args.next() {
        let value = args.next().with_context(|| format!("{flag} needs a value"))?;
        let number = || value.parse::<u64>().with_context(|| format!("{flag} {value:?}"));
        match flag.as_str() {
            "--minutes" => minutes = number()?,
            "--instances" => instances = number()? as usize,
            "--rate" => rate = Some(number()? as u32),
            "--seed" => seed = Some(number()?),
            _ => bail!("unknown flag {flag}; use --minutes, --instances, --rate, --seed"),
        }
    }
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
