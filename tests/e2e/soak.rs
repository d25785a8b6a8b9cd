//! The chaos soak, shortened: 3 minutes, 2 instances, the same machinery as
//! `cargo run --release --example chaos -- --minutes 60 --instances 3` (testkit's `Soak`).

use crate::support::app::{Result, figures, one_slow_test_at_a_time};
use testkit::Soak;

/// Workers killed and restarted at random while storage and the Pub/Sub connection fail: no
/// object doubled or corrupted, every acked message stored byte-exact, and after a drain that
/// waits out the retry policy's longest backoff, every published message stored or
/// dead-lettered with a reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "slow: a 3-minute chaos soak plus its drain (2.5 min without progress at most)"]
async fn chaos_soak_accounts_for_every_message() -> Result {
    let _turn = one_slow_test_at_a_time().await;
    let logs = tempfile::Builder::new().prefix("chaos-soak-").tempdir()?.keep();
    let soak = Soak::short(env!("CARGO_BIN_EXE_pubsub-gcs-worker").into(), logs);
    let report = soak.run().await?;
    figures("chaos soak", &format!("\n{}\nCHAOS {}", report.text, report.json));
    anyhow::ensure!(report.passed(), "the worker failed the soak:\n{}", report.text);
    Ok(())
}
