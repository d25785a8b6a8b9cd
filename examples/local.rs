//! Runs the worker locally against emulators it starts itself: `cargo run --example local`
//! (docs/testing.md). A topic, a subscription and a bucket, a few sample messages, the same
//! `Worker` the binary runs, and each object printed as it appears; lines typed on stdin are
//! published; `OBJECT_PREFIX` and `OBJECT_NAME` come from the environment. Ctrl-C drains it.

use anyhow::Context as _;
use pubsub_gcs_worker::Signals;
use pubsub_gcs_worker::config::Config;
use pubsub_gcs_worker::telemetry::{self, LogFormat};
use pubsub_gcs_worker::worker::Worker;
use std::collections::BTreeSet;
use std::time::Duration;
use testkit::process::with_vars;
use testkit::{Emulators, Gcs, OutMessage, PROJECT_ID, PubSub};

const TOPIC: &str = "local-topic";
const SUBSCRIPTION: &str = "local-subscription";
const BUCKET: &str = "local-bucket";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    eprintln!("starting the Pub/Sub emulator and fake-gcs-server (the first start takes a while)");
    let emulators = Emulators::start().await.context("the emulators could not be started")?;
    let (pubsub, gcs) = (emulators.pubsub(), emulators.gcs());
    pubsub.create_topic(TOPIC).await?;
    pubsub.create_subscription(TOPIC, SUBSCRIPTION, 10, None).await?;
    gcs.create_bucket(BUCKET).await?;

    let names = [("SUBSCRIPTION_ID", SUBSCRIPTION), ("BUCKET_NAME", BUCKET)];
    let mut env = with_vars(emulators.worker_env(), &names);
    env.push(("PROGRESS_INTERVAL_SECS".into(), "10".into()));
    // The naming settings, to try a template: OBJECT_NAME='{attributes.source}/{message_id}'.
    let naming =
        ["OBJECT_PREFIX", "OBJECT_NAME"].map(|k| Some((k.to_string(), std::env::var(k).ok()?)));
    env.extend(naming.into_iter().flatten());
    let config = Config::from_vars(env)?;
    telemetry::init(LogFormat::Text, "info")?;
    print_banner(&emulators);

    let samples = [
        "hello from pubsub-gcs-worker",
        "each message becomes one object",
        "named by publish time and message id",
        "and acked only after the object exists",
        "type a line and press Enter to publish it",
    ];
    let messages: Vec<OutMessage> =
        samples.iter().map(|s| OutMessage::new(*s).attr("source", "examples/local.rs")).collect();
    pubsub.publish(TOPIC, &messages).await?;

    let signals = Signals::install()?;
    let worker = Worker::build(config).await?;
    let watcher = tokio::spawn(print_new_objects(gcs));
    // A thread of its own: stdin is blocking, and it must not hold up the worker's runtime.
    let host = emulators.pubsub_addr().to_string();
    std::thread::spawn(move || publish_stdin_lines(&host));
    drop(pubsub);
    let summary = worker.run_until_stopped(signals.first_then_exit_on_second()).await;
    watcher.abort();
    let summary = summary?;
    eprintln!(
        "stopped: {} messages received, {} objects written; emulators stopped",
        summary.received, summary.written
    );
    Ok(())
}

fn print_banner(emulators: &Emulators) {
    let host = emulators.pubsub_addr().to_string();
    let project = PROJECT_ID;
    eprintln!(
        "\n  Pub/Sub emulator  {host}   topic {TOPIC}, subscription {SUBSCRIPTION}\
         \n  GCS emulator      {}   bucket {BUCKET}\
         \n\n  Publish from here: type a line and press Enter.\
         \n  Publish from another terminal:\
         \n    curl -s -X POST http://{host}/v1/projects/{project}/topics/{TOPIC}:publish \\\
         \n      -H 'content-type: application/json' \\\
         \n      -d \"{{\\\"messages\\\":[{{\\\"data\\\":\\\"$(printf 'hi there' | base64)\\\"}}]}}\"\
         \n  Stop: Ctrl-C.\n",
        emulators.storage_url()
    );
}

/// Prints every new object with its content, polling the bucket once a second.
async fn print_new_objects(gcs: Gcs) {
    let mut seen = BTreeSet::new();
    loop {
        if let Ok(objects) = gcs.list_objects(BUCKET).await {
            for object in objects {
                if !seen.insert(object.name.clone()) {
                    continue;
                }
                let body = gcs.download(BUCKET, &object.name).await.unwrap_or_default();
                let shown = match std::str::from_utf8(&body) {
                    Ok(text) => format!("{text:?}"),
                    Err(_) => format!("<{} bytes of binary data>", body.len()),
                };
                println!("gs://{BUCKET}/{}  {shown}", object.name);
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Publishes each line typed on stdin, until stdin closes.
fn publish_stdin_lines(host: &str) {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
        return;
    };
    let pubsub = PubSub::new(host, PROJECT_ID);
    for line in std::io::stdin().lines() {
        let Ok(line) = line else { return };
        if line.trim().is_empty() {
            continue;
        }
        if let Err(e) = runtime.block_on(pubsub.publish(TOPIC, &[OutMessage::new(line)])) {
            eprintln!("publish failed: {e:#}");
        }
    }
}
