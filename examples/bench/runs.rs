//! The default mode: `--runs` runs of both ceilings, the worker on a backlog and a busy
//! shutdown, then min/median/max of every figure and `BENCH {json}`. See the example's header.

use super::{Args, Bench, Phase, WorkerRun, fakes_text, load_average, machine};
use super::{round, stopped_summary, terminate};
use anyhow::Context as _;
use serde_json::{Value, json};
use std::time::Instant;

pub async fn run(
    bench: &Bench<'_>,
    args: &Args,
    messages: usize,
    binary_size: u64,
    overrides: &[(String, String)],
) -> anyhow::Result<()> {
    let mut runs = Vec::new();
    for run in 1..=args.runs {
        let r = bench.run(messages).await?;
        eprintln!("run {run}/{}: {}", args.runs, brief(&r));
        runs.push(r);
    }
    report(args, messages, binary_size, overrides, &runs);
    Ok(())
}

impl Bench<'_> {
    /// One run: both ceilings, the worker on a backlog, then a busy shutdown.
    async fn run(&self, n: usize) -> anyhow::Result<Run> {
        let load_before = load_average();
        let pubsub = self.pubsub_ceiling(n).await?;
        // The storage ceiling is measured in two halves, before and after the worker, so that
        // a change of load on the machine during the run affects both sides alike.
        let storage_before = self.storage_ceiling(n / 2).await?;

        let (topic, sub) = self.fresh_subscription(n).await?;
        let (bucket, watch) = self.fresh_bucket().await?;
        let worker = self.measure_worker(&sub, &bucket, &watch, n, self.budget(n)).await?;
        let storage = storage_before.combine(self.storage_ceiling(n - n / 2).await?);

        // Busy shutdown: a second process on a fresh backlog gets SIGTERM mid-stream.
        let busy_n = (n / 4).max(1000);
        self.publish(&topic, n, busy_n).await?;
        let before = watch.count();
        let log_b = self.emu.log_dir().join(format!("{bucket}.busy.log"));
        let started_b = Instant::now();
        let mut child_b = self.spawn_worker(&sub, &bucket, &log_b)?;
        let pid_b = child_b.id().context("worker pid")?;
        watch
            .wait_for(before + busy_n / 4, started_b + self.budget(busy_n), &mut child_b)
            .await
            .with_context(|| format!("busy worker log: {}", log_b.display()))?;
        let busy_exit = terminate(&mut child_b, pid_b).await?;
        let busy_summary = stopped_summary(&log_b);
        drop(watch);
        self.drop_subscription(&sub).await;

        Ok(Run {
            pubsub,
            storage,
            worker,
            busy_exit_s: busy_exit,
            busy_in_flight: busy_summary.get("in_flight").and_then(Value::as_u64),
            busy_nacked: busy_summary.get("nacked").and_then(Value::as_u64),
            load: [load_before, load_average()],
        })
    }
}

struct Run {
    pubsub: Phase,
    storage: Phase,
    worker: WorkerRun,
    busy_exit_s: f64,
    busy_in_flight: Option<u64>,
    busy_nacked: Option<u64>,
    load: [f64; 2],
}

impl Run {
    fn ceiling(&self) -> f64 {
        self.pubsub.rates.overall.min(self.storage.rates.overall)
    }

    fn ceiling_steady(&self) -> f64 {
        self.pubsub.rates.steady.min(self.storage.rates.steady)
    }

    /// Every figure of the run, by name.
    fn metrics(&self) -> Vec<(&'static str, f64)> {
        let (w, mb) = (&self.worker.phase, |kb: u64| kb as f64 / 1024.0);
        vec![
            ("worker_msgs_per_s", w.rates.overall),
            ("worker_steady_msgs_per_s", w.rates.steady),
            ("pubsub_ceiling_msgs_per_s", self.pubsub.rates.overall),
            ("pubsub_ceiling_steady", self.pubsub.rates.steady),
            ("gcs_ceiling_msgs_per_s", self.storage.rates.overall),
            ("gcs_ceiling_steady", self.storage.rates.steady),
            ("ratio", w.rates.overall / self.ceiling()),
            ("ratio_steady", w.rates.steady / self.ceiling_steady()),
            ("peak_rss_mb", mb(self.worker.peak_rss_kb)),
            ("idle_rss_anon_mb", mb(self.worker.rss_anon_kb)),
            ("idle_rss_file_mb", mb(self.worker.rss_file_kb)),
            ("worker_cpu_s", w.client_cpu),
            ("worker_first_object_s", w.rates.first),
            ("idle_exit_s", self.worker.idle_exit_s),
            ("busy_exit_s", self.busy_exit_s),
            ("threads", self.worker.threads as f64),
            ("pubsub_emulator_cpu_s_worker", w.emulator_cpu.0),
            ("gcs_emulator_cpu_s_worker", w.emulator_cpu.1),
            ("pubsub_emulator_cpu_s_ceiling", self.pubsub.emulator_cpu.0),
            ("gcs_emulator_cpu_s_ceiling", self.storage.emulator_cpu.1),
            ("pubsub_ceiling_client_cpu_s", self.pubsub.client_cpu),
            ("gcs_ceiling_client_cpu_s", self.storage.client_cpu),
            ("load_1m", self.load[0].max(self.load[1])),
        ]
    }
}

fn brief(r: &Run) -> String {
    let w = &r.worker;
    format!(
        "worker {:.0} msg/s (steady {:.0}); ceilings pubsub {:.0}, gcs {:.0} msg/s; ratio {:.2}; \
         peak RSS {:.1} MB; CPU {:.2} s; exit idle {:.3} s, busy {:.3} s \
         (in flight {}, nacked {}); load {:.2}",
        w.phase.rates.overall,
        w.phase.rates.steady,
        r.pubsub.rates.overall,
        r.storage.rates.overall,
        w.phase.rates.overall / r.ceiling(),
        w.peak_rss_kb as f64 / 1024.0,
        w.phase.client_cpu,
        w.idle_exit_s,
        r.busy_exit_s,
        r.busy_in_flight.map_or("?".into(), |v| v.to_string()),
        r.busy_nacked.map_or("?".into(), |v| v.to_string()),
        r.load[0].max(r.load[1]),
    )
}

fn report(
    args: &Args,
    messages: usize,
    binary_size: u64,
    overrides: &[(String, String)],
    runs: &[Run],
) {
    let names: Vec<&str> = runs[0].metrics().iter().map(|(k, _)| *k).collect();
    println!(
        "\n{messages} messages x {} B, {} run(s), {}{}",
        args.size,
        runs.len(),
        machine(),
        fakes_text(args, ", "),
    );
    if let Some(template) = &args.object_name {
        println!("OBJECT_NAME={template}");
    }
    println!("{:<32} {:>10} {:>10} {:>10}", "", "min", "median", "max");
    let mut medians = serde_json::Map::new();
    for (i, name) in names.iter().enumerate() {
        let mut values: Vec<f64> = runs.iter().map(|r| r.metrics()[i].1).collect();
        values.sort_by(f64::total_cmp);
        let median = values[values.len() / 2];
        println!(
            "{name:<32} {:>10} {:>10} {:>10}",
            fmt(values[0]),
            fmt(median),
            fmt(values[values.len() - 1])
        );
        medians.insert(name.to_string(), json!(round(median)));
    }
    let mut summary = json!({
        "messages": messages,
        "size": args.size,
        "runs": runs.len(),
        "binary_mb": (binary_size as f64 / 1e5).round() / 10.0,
        "overrides": overrides.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
        "median": medians,
    });
    if let Some(latency) = &args.latency {
        summary["latency_ms"] = json!(round(latency.median().as_secs_f64() * 1000.0));
        summary["sigma"] = json!(latency.sigma());
        summary["mean_latency_ms"] = json!(round(latency.mean().as_secs_f64() * 1000.0));
    }
    if let Some(rate) = args.pubsub_cap {
        summary["pubsub_cap_mbps"] = json!(rate as f64 / 1e6);
    }
    if args.tls {
        summary["tls"] = json!(true);
    }
    if let Some(template) = &args.object_name {
        summary["object_name"] = json!(template);
    }
    println!("BENCH {summary}");
}
fn fmt(v: f64) -> String {
    if v >= 100.0 { format!("{v:.0}") } else { format!("{v:.3}") }
}
