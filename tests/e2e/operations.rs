//! Operating the worker: the health probes, the start-up check, and storage over TLS (`/metrics`:
//! `worker.rs`).

use crate::support::app::{BinaryWorker, Fixture, Result, find_event, with_vars};
use crate::support::{LoopbackCa, Mode, OutMessage, Proxy, TlsFront, get, wait_for};
use std::time::Duration;

/// The health endpoint on a free loopback port.
pub const HEALTH: [(&str, &str); 2] = [("HEALTH_PORT", "0"), ("HEALTH_HOST", "127.0.0.1")];

/// The liveness probe fails while storage hangs with messages in flight, and passes again once
/// storage recovers and the messages are written; the startup probe passes once running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn liveness_fails_while_storage_hangs_and_recovers_with_it() -> Result {
    const N: usize = 10;
    let fx = Fixture::new(true).await?;
    let proxy = Proxy::start(fx.emulators.storage_addr()).await?;
    proxy.set_mode(Mode::Hang);
    let extra = [("LIVENESS_STALL_SECS", "2"), HEALTH[0], HEALTH[1]];
    let worker = fx.start_worker(&proxy.url(), &extra).await?;
    let base = format!("http://{}", worker.health.expect("health endpoint asked for"));
    let http = reqwest::Client::new();
    wait_for_status(&http, &format!("{base}/healthz/startup"), 200).await?;
    assert_eq!(get(&http, &format!("{base}/healthz/live")).await?.0, 200, "idle is live");

    let messages: Vec<OutMessage> = (0..N).map(|i| OutMessage::new(format!("m{i}"))).collect();
    fx.pubsub.publish(&fx.topic, &messages).await?;
    let (_, reason) = wait_for_status(&http, &format!("{base}/healthz/live"), 503).await?;
    assert!(reason.contains("in flight"), "{reason}");

    proxy.set_mode(Mode::Pass);
    fx.gcs.wait_for_objects(&fx.bucket, N, Duration::from_secs(120)).await?;
    wait_for_status(&http, &format!("{base}/healthz/live"), 200).await?;
    let summary = worker.stop().await?;
    assert_eq!(summary.acked, N as u64, "{summary:?}");
    Ok(())
}

/// With the start-up check forced on against an emulator that lacks the API, the binary stops
/// at start with one error line that names the bucket and how to skip the check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_startup_check_stops_the_worker_with_one_clear_line() -> Result {
    let fx = Fixture::new(true).await?;
    let env = with_vars(fx.binary_env(&fx.emulators.storage_url()), &[("STARTUP_CHECK", "on")]);
    let mut worker = BinaryWorker::spawn(&env, "startup-check")?;
    let status = worker.wait(Duration::from_secs(60)).await?;
    assert_eq!(status.code(), Some(1), "log:\n{}", worker.log());
    let lines = worker.json_lines();
    let error = find_event(&lines, "failed");
    let text = error["error"].as_str().unwrap_or_default();
    let clear = text.contains(&format!("gs://{}", fx.bucket)) && text.contains("STARTUP_CHECK=off");
    assert!(clear, "{error}");
    let started = lines.iter().any(|l| l["event"] == "starting");
    assert!(!started, "nothing consumed before the check passed");
    Ok(())
}

/// Storage reached over TLS, as Cloud Storage always is: the binary trusts an authority that
/// only `SSL_CERT_FILE` names (the clients' own root store honours it; the worker has no TLS
/// setting of its own), and a message becomes its one object through the TLS front. The front's
/// certificate names `localhost` too: a client that trusts that authority alone reaches it so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_over_tls_trusts_the_authority_of_ssl_cert_file() -> Result {
    let fx = Fixture::new(true).await?;
    let ca = LoopbackCa::new()?;
    let front = TlsFront::start(fx.emulators.storage_addr(), &ca).await?;
    let ca_file = ca.file().to_string_lossy().into_owned();
    let env = with_vars(fx.binary_env(&front.url()), &[("SSL_CERT_FILE", &ca_file)]);
    let mut worker = BinaryWorker::spawn(&env, "tls")?;
    let published = fx.publish(&[OutMessage::new("over TLS").attr("via", "https")]).await?;
    fx.gcs.wait_for_objects(&fx.bucket, 1, Duration::from_secs(60)).await?;
    fx.assert_exactly_once(&published, 1).await?;
    assert!(front.connections() > 0, "the write went through the front");
    worker.assert_running()?;
    let only_ca = reqwest::Certificate::from_pem(&std::fs::read(ca.file())?)?;
    let http = reqwest::Client::builder().tls_certs_only([only_ca]).build()?;
    let bucket = format!("https://localhost:{}/storage/v1/b/{}", front.addr().port(), fx.bucket);
    assert_eq!(get(&http, &bucket).await?.0, 200, "the front by name");
    Ok(())
}

/// Polls `url` until it answers `want`; returns the answer.
async fn wait_for_status(http: &reqwest::Client, url: &str, want: u16) -> Result<(u16, String)> {
    let mut answer = (0, String::new());
    wait_for(Duration::from_secs(60), &format!("{url} to answer {want}"), async || {
        answer = get(http, url).await?;
        Ok(answer.0 == want)
    })
    .await?;
    Ok(answer)
}
