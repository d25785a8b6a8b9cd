//! `--compare-object-name TEMPLATE`: the worker with its default object names and with an
//! `OBJECT_NAME` template, on the same messages, runs interleaved. See the example's header.

use super::{Bench, WorkerRun, machine, round};
use serde_json::json;

pub async fn run(base: &Bench<'_>, template: &str, n: usize, pairs: usize) -> anyhow::Result<()> {
    let plain = base.tagged();
    let templated = plain.with(&[("OBJECT_NAME", template.to_string())])?;
    let (mut default_runs, mut template_runs) = (Vec::new(), Vec::new());
    for pair in 0..pairs {
        // Alternate which goes first, so that a drift of the machine meets both alike.
        let order = if pair % 2 == 0 { [false, true] } else { [true, false] };
        for with_template in order {
            let (bench, runs, label) = match with_template {
                true => (&templated, &mut template_runs, "template"),
                false => (&plain, &mut default_runs, "default"),
            };
            let run = bench.backlog_run(n, bench.budget(n)).await?;
            eprintln!(
                "pair {}/{pairs}, {label}: {:.0} msg/s (steady {:.0}), CPU {:.0} µs/msg (all {:.0}), \
                 peak RSS {:.1} MB, e.g. {}",
                pair + 1,
                run.phase.rates.overall,
                run.phase.rates.steady,
                run.steady_cpu_per_msg * 1e6,
                run.per_message(run.phase.client_cpu) * 1e6,
                run.peak_rss_kb as f64 / 1024.0,
                run.example.as_deref().map_or("?".into(), |p| p.display().to_string()),
            );
            runs.push(run);
        }
    }

    println!("\n{n} messages x {} B, {pairs} pair(s) of runs, {}", base.size, machine());
    println!("OBJECT_NAME={template}");
    println!("{:<34} {:>10} {:>10} {:>10}", "(medians)", "default", "template", "ratio");
    let metrics: [(&str, &str, Metric); 6] = [
        ("rate, msg/s", "rate", |r| r.phase.rates.overall),
        ("rate steady, msg/s", "rate_steady", |r| r.phase.rates.steady),
        ("worker CPU, µs/msg (steady)", "cpu_us_per_msg", |r| r.steady_cpu_per_msg * 1e6),
        ("worker CPU, µs/msg (all)", "cpu_us_per_msg_all", |r| {
            r.per_message(r.phase.client_cpu) * 1e6
        }),
        ("peak RSS, MB", "peak_rss_mb", |r| r.peak_rss_kb as f64 / 1024.0),
        ("fake-gcs-server CPU, µs/msg", "gcs_emulator_cpu_us_per_msg", |r| {
            r.per_message(r.phase.emulator_cpu.1) * 1e6
        }),
    ];
    let mut medians = serde_json::Map::new();
    for (name, key, metric) in metrics {
        let of = |runs: &[WorkerRun]| median(runs.iter().map(metric).collect());
        let (d, t) = (of(&default_runs), of(&template_runs));
        // The ratio of each pair, then the median: pairs ran back to back.
        let pairs = default_runs.iter().zip(&template_runs);
        let ratio = median(pairs.map(|(d, t)| metric(t) / metric(d)).collect());
        println!("{name:<34} {d:>10.1} {t:>10.1} {ratio:>10.3}");
        let values = json!({ "default": round(d), "template": round(t), "ratio": round(ratio) });
        medians.insert(key.to_string(), values);
    }
    let example = |runs: &[WorkerRun]| {
        runs.first().and_then(|r| r.example.as_ref()).map(|p| p.display().to_string())
    };
    println!(
        "names, e.g.: {} (default), {} (template)",
        example(&default_runs).unwrap_or_default(),
        example(&template_runs).unwrap_or_default()
    );
    let summary = json!({
        "messages": n,
        "size": base.size,
        "pairs": pairs,
        "machine": machine(),
        "object_name": template,
        "example_default": example(&default_runs),
        "example_template": example(&template_runs),
        "median": medians,
    });
    println!("COMPARE {summary}");
    Ok(())
}

/// One figure of a run.
type Metric = fn(&WorkerRun) -> f64;

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}
