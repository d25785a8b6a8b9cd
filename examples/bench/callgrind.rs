//! `--callgrind`: the worker's instructions per message, a figure that stays put on a busy
//! machine. The release worker runs under `valgrind --tool=callgrind` on a backlog of N messages,
//! then on one of 2N, writing to FastGcs; each run ends with SIGTERM once every object is written
//! and the acks had 2 s to flush. What the second run executes more, over N, is what a message
//! costs: start-up, shutdown and each client's fixed costs cancel out. Work driven by the clock
//! does not quite (lease extensions; the polls of `/metrics`, here once a second), as valgrind
//! slows the worker some 50 times and the 2N run lasts longer. Both profiles stay in
//! `target/callgrind/` for `callgrind_annotate`.

use super::{Bench, Worker};
use anyhow::{Context as _, ensure};
use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use testkit::process::Process;

/// Functions listed, by marginal cost per message, inclusive and exclusive.
const TOP: usize = 25;

pub async fn run(bench: &Bench<'_>, n: usize) -> anyhow::Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target").join("callgrind");
    std::fs::create_dir_all(&dir)?;
    let mut profiles = Vec::new();
    for count in [n, 2 * n] {
        let out = dir.join(format!("callgrind.{count}.out"));
        let took = profile(bench, count, &out).await?;
        eprintln!("callgrind: {count} messages in {took:.0?} under valgrind: {}", out.display());
        profiles.push(out);
    }
    let [small, large] = [&profiles[0], &profiles[1]].map(|out| Costs::of(out, false));
    let (small, large) = (small?, large?);
    let per_message = (large.total - small.total) as f64 / n as f64;
    println!("\ninstructions per message: {per_message:.0}");
    println!("  ({} Ir for {} messages, {} Ir for {n})", large.total, 2 * n, small.total);
    for inclusive in [true, false] {
        let (small, large) =
            (Costs::of(&profiles[0], inclusive)?, Costs::of(&profiles[1], inclusive)?);
        let kind = if inclusive { "inclusive" } else { "exclusive" };
        println!("\ntop {TOP} functions by marginal Ir per message, {kind}:");
        for (name, ir) in large.marginal(&small, n).into_iter().take(TOP) {
            println!("{ir:>10.0} {:>5.1}%  {name}", ir / per_message * 100.0);
        }
    }
    println!(
        "CALLGRIND {}",
        serde_json::json!({ "messages": n, "ir_per_message": per_message.round() })
    );
    Ok(())
}

/// Runs the worker under callgrind on a fresh backlog of `n` messages until every object is
/// written, writing the profile to `out`; the time it took.
async fn profile(bench: &Bench<'_>, n: usize, out: &Path) -> anyhow::Result<Duration> {
    let fresh = bench.fresh(0, n).await?;
    let log = bench.emu.log_dir().join(format!("{}.callgrind.log", fresh.name));
    let args: Vec<OsString> = vec![
        "--tool=callgrind".into(),
        // A `--worker` wrapper script that sets variables and execs the worker is followed.
        "--trace-children=yes".into(),
        format!("--callgrind-out-file={}", out.display()).into(),
        bench.bin.into(),
    ];
    let mut env = Worker::env(bench, &fresh.name);
    env.push(("PROGRESS_INTERVAL_SECS".into(), "0".into()));
    let process = Process::spawn_with_args(Path::new("valgrind"), &args, &env, log)?;
    let mut worker = Worker::watch(process, (Duration::from_millis(500), Duration::from_secs(1)));
    let start = Instant::now();
    let deadline = start + Duration::from_secs(300) + Duration::from_millis(50) * n as u32;
    worker.wait_for(n, deadline).await?;
    let took = start.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    worker.process.terminate(Duration::from_secs(120)).await?;
    let log = worker.process.log_path().display();
    let [received, written] = ["received", "written"].map(|key| worker.stopped(key));
    ensure!(written == Some(n as u64), "{written:?} of {n} objects written: {log}");
    // A redelivery would be a second, dearer path (the object exists) in the figure.
    ensure!(received == Some(n as u64), "{received:?} received for {n} messages: {log}");
    Ok(took)
}

/// A profile's instructions, in all and by function.
struct Costs {
    total: u64,
    functions: HashMap<String, u64>,
}

impl Costs {
    /// What `callgrind_annotate` makes of `profile`, every function listed.
    fn of(profile: &PathBuf, inclusive: bool) -> anyhow::Result<Self> {
        let output = Command::new("callgrind_annotate")
            .args(["--threshold=100", "--auto=no", "--show-percs=no"])
            .arg(format!("--inclusive={}", if inclusive { "yes" } else { "no" }))
            .arg(profile)
            .output()
            .context("running callgrind_annotate")?;
        ensure!(output.status.success(), "callgrind_annotate: {}", output.status);
        let text = String::from_utf8_lossy(&output.stdout);
        let (mut total, mut functions) = (None, HashMap::new());
        for line in text.lines() {
            let Some((count, name)) = line.trim().split_once(' ') else { continue };
            let Ok(count) = count.replace(',', "").parse::<u64>() else { continue };
            let name = name.trim();
            if name == "PROGRAM TOTALS" {
                total = Some(count);
            } else {
                *functions.entry(name.to_string()).or_default() += count;
            }
        }
        let total = total.context("no PROGRAM TOTALS in callgrind_annotate's output")?;
        Ok(Self { total, functions })
    }

    /// Per function, what this profile has more than `base`, over `n` messages; dearest first.
    fn marginal(&self, base: &Costs, n: usize) -> Vec<(&str, f64)> {
        let mut costs: Vec<(&str, f64)> = (self.functions.iter())
            .map(|(name, &ir)| {
                let before = base.functions.get(name).copied().unwrap_or(0);
                (name.as_str(), (ir as f64 - before as f64) / n as f64)
            })
            .collect();
        costs.sort_by(|a, b| b.1.total_cmp(&a.1));
        costs
    }
}
