//! Resources that are gone: the subscription deleted while the worker runs or missing at start
//! (it exits), the bucket missing (it backs off and recovers once the bucket exists).

use super::error_lines;
use crate::support::app::{BinaryWorker, Fixture, Result, SETTLE};
use crate::support::app::{find_event, sample_messages, settled_message_ids};
use crate::support::wait_for;
use std::collections::BTreeSet;
use std::time::Duration;
use tokio::time::{Instant, sleep};

/// The subscription is deleted while the worker runs: the stream fails with NOT_FOUND, which
/// is permanent. The worker finishes its in-flight writes, logs one clear ERROR line and exits
/// 1 at once (Cloud Run restarts it; an operator must recreate the subscription). A worker
/// started on the missing subscription does the same, not a retry loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_deleted_subscription_exits_non_zero_with_a_clear_error() -> Result {
    const N: usize = 1000;
    let fx = Fixture::new(true).await?;
    let mut worker =
        BinaryWorker::spawn(&fx.binary_env(&fx.emulators.storage_url()), "deleted-subscription")?;
    let published = fx.publish(&sample_messages(0..N)).await?;
    fx.gcs.wait_for_objects(&fx.bucket, N / 5, SETTLE).await?;

    fx.pubsub.delete_subscription(&fx.subscription).await?;
    let status = worker.wait(Duration::from_secs(30)).await?;
    assert_eq!(status.code(), Some(1), "{}", worker.log_tail());
    worker.assert_no_panic()?;
    let lines = worker.json_lines();
    let error = find_event(&lines, "failed");
    let text = error["error"].as_str().unwrap_or_default().to_lowercase();
    assert!(text.contains("subscription") && text.contains("not_found"), "{error}");
    let errors = error_lines(&worker);
    assert_eq!(errors.len(), 1, "one ERROR line: {errors:#?}");

    // Whatever was written is one object per message, and whatever was acked was written.
    let objects = fx.gcs.list_objects(&fx.bucket).await?;
    let ids: BTreeSet<&String> =
        objects.iter().filter_map(|o| o.metadata.get("message_id")).collect();
    assert_eq!(ids.len(), objects.len(), "a message has two objects");
    assert!(ids.iter().all(|id| published.contains_key(*id)));
    let settled = settled_message_ids(&lines);
    assert!(settled.iter().all(|id| ids.contains(id)));

    let env = fx.binary_env(&fx.emulators.storage_url());
    let mut restarted = BinaryWorker::spawn(&env, "missing-subscription")?;
    let status = restarted.wait(Duration::from_secs(60)).await?;
    assert_eq!(status.code(), Some(1), "{}", restarted.log_tail());
    let error = find_event(&restarted.json_lines(), "failed").clone();
    assert_eq!(error["severity"], "ERROR");
    let text = error["error"].as_str().unwrap_or_default().to_lowercase();
    assert!(text.contains("subscription") && text.contains("not found"), "{error}");
    Ok(())
}

/// The bucket does not exist: every write fails with 404 and is nacked after a backoff that
/// grows to 10 s. The worker keeps running (an operator may create the bucket or fix IAM, and
/// the worker recovers without a restart), logs one ERROR line per failed delivery, and uses
/// almost no CPU; once the bucket exists, every message is written exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_bucket_backs_off_without_spinning_and_recovers_when_created() -> Result {
    const N: usize = 20;
    const WINDOW: Duration = Duration::from_secs(20);
    let fx = Fixture::new(false).await?;
    let mut worker =
        BinaryWorker::spawn(&fx.binary_env(&fx.emulators.storage_url()), "missing-bucket")?;
    let published = fx.publish(&sample_messages(0..N)).await?;
    wait_for(Duration::from_secs(60), "every message to fail once", async || {
        Ok(worker.counters().nacked >= N as u64)
    })
    .await?;

    let errors_before = error_lines(&worker).len();
    let cpu_before = worker.usage()?.cpu;
    let started = Instant::now();
    sleep(WINDOW).await;
    let cpu = worker.usage()?.cpu - cpu_before;
    let window = started.elapsed();
    worker.assert_running()?;
    let errors = error_lines(&worker);
    let in_window = errors.len() - errors_before;
    assert!(cpu < window / 4, "{cpu:?} of CPU in {window:?}");
    // At most one failure per message per backoff period (10 s), plus the one in progress.
    let most = N * (WINDOW.as_secs() as usize / 10 + 2);
    assert!(in_window <= most, "{in_window} ERROR lines in {window:?}");
    let error = errors.last().cloned().unwrap_or_default();
    assert_eq!(error["reason"], "bucket_not_found", "{error}");
    assert_eq!(error["outcome"], "nacked", "{error}");

    fx.gcs.create_bucket(&fx.bucket).await?;
    fx.settle(&mut worker, &published).await?;
    Ok(())
}
