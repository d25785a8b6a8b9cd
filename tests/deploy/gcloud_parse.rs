//! The main check: every command of every script passes the real gcloud's argument parsing, run
//! in one gcloud process by tests/gcloud_parse.py, and gcloud reaches no network.

use crate::harness::{KMS_KEY, METRICS, Sandbox, ScriptRun, TEMPLATE};
use crate::harness::{describe, flag, gcloud, gcloud_python_output, help, network_guard};
use crate::harness::{parallel_map, text, words};
use std::sync::atomic::Ordering;

/// Every distinct gcloud command the scripts print, and bad ones, through the real gcloud's
/// argument parsing in one process; the first good and the first bad one also each in a gcloud
/// process of its own, which must end the same way, word for word.
#[test]
fn dry_run_commands_pass_gcloud_argument_parsing() {
    let sandbox = Sandbox::new();
    let exists = format!("{METRICS}\nDRY_RUN_EXISTS=1");
    let kms = format!("KMS_KEY_NAME={KMS_KEY}");
    let invocations = [
        (METRICS, "setup"),
        (&kms, "setup"),
        (&exists, "setup"),
        ("", "deploy"),
        (&format!("OBJECT_NAME='{TEMPLATE}'"), "deploy"),
        (METRICS, "deploy"),
        (&exists, "deploy"),
        ("", "scale 3"),
        ("", "status"),
        (METRICS, "monitoring"),
        (&exists, "monitoring"),
        ("", "autoscale"),
        ("", "autoscale off"),
        (METRICS, "teardown --yes"),
        ("", "teardown --yes --purge-bucket"),
        ("EXACTLY_ONCE_DELIVERY=true", "setup"),
        ("RETAIN_ACKED_FOR=", "setup"),
        ("", "replay --since 2h"),
        ("", "replay --snapshot before-deploy"),
        ("", "replay --dead-letters"),
        ("", "snapshot before-deploy"),
    ];
    let runs = parallel_map(&invocations, |(extra, args)| sandbox.run(extra, args).ok());
    // What deploy/replay suggests for a subscription that keeps no acked messages.
    let suggested = sandbox.run_against("604800s\t", "replay --since 1h --yes").stderr_commands();
    let mut argvs: Vec<Vec<String>> = Vec::new();
    for command in runs.iter().flat_map(ScriptRun::gcloud).chain(suggested) {
        if !argvs.contains(&command) {
            argvs.push(command);
        }
    }
    let parsed = argvs.len();

    // Negative controls. The instance-count flag is the one this gcloud lists, so the other one
    // must be rejected; and a bogus flag must be rejected.
    let scale = runs.iter().find(|r| r.name == "deploy/scale 3").unwrap().commands[0].clone();
    let other = ["--instances", "--scaling"].into_iter().find(|f| flag(&scale, f).is_none());
    if let Some(other) = other.filter(|f| !help(&sandbox, "update").contains(f)) {
        let forced = sandbox.run(&format!("SCALING_FLAG={other}"), "scale 2").ok();
        argvs.push(forced.commands[0].clone());
    }
    argvs.push([&scale[..], &words("--no-such-flag-for-tests=1")].concat());

    let before = network_guard().1.load(Ordering::SeqCst);
    let ended = gcloud_each(&sandbox, &argvs);
    let mut failures: Vec<String> = (0..argvs.len())
        .filter(|&i| ended[i].verdict() != Some(i < parsed))
        .map(|i| format!("{:?} should parse: {}\n{:?}", argvs[i], i < parsed, ended[i]))
        .collect();
    let alone = [0, parsed];
    let ended_alone = parallel_map(&alone, |&i| gcloud_alone(&sandbox, &argvs[i]));
    for (&i, ended_alone) in alone.iter().zip(ended_alone) {
        if ended[i] != ended_alone {
            let argv = &argvs[i];
            failures.push(format!("{argv:?}\nin process: {:?}\nalone: {ended_alone:?}", ended[i]));
        }
    }
    assert!(failures.is_empty(), "gcloud argument checks failed:\n{}", failures.join("\n"));
    let after = network_guard().1.load(Ordering::SeqCst);
    assert_eq!(after, before, "gcloud tried to reach the network");
    let (rejected, alone) = (argvs.len() - parsed, alone.len());
    eprintln!(
        "{parsed} distinct gcloud commands parsed; {rejected} bad ones rejected; {alone} alone"
    );
}

/// What gcloud says when it has parsed the arguments and needs credentials to go on.
const AUTH_STOP: &str = "You do not currently have an active account selected";
/// What gcloud says when it rejects the arguments themselves.
const PARSE_ERRORS: [&str; 7] = [
    "unrecognized arguments",
    "Invalid value",
    "argument ",
    "Invalid choice",
    "must be one of",
    "Failed to load YAML",
    "Failed to parse YAML",
];

/// How a gcloud command line ended.
#[derive(Debug, PartialEq, serde::Deserialize)]
struct Ended {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Ended {
    /// `Some(true)` when gcloud accepted the arguments and stopped at authentication,
    /// `Some(false)` when it rejected them, `None` for anything else.
    fn verdict(&self) -> Option<bool> {
        if self.code != Some(0) && self.stderr.contains(AUTH_STOP) {
            Some(true)
        } else if self.code == Some(2) || PARSE_ERRORS.iter().any(|p| self.stderr.contains(p)) {
            Some(false)
        } else {
            None
        }
    }
}

/// `argv` (starting with "gcloud") run by a gcloud process of its own.
fn gcloud_alone(sandbox: &Sandbox, argv: &[String]) -> Ended {
    let out = gcloud(sandbox, &argv[1..]);
    Ended { code: out.status.code(), stdout: text(&out.stdout), stderr: text(&out.stderr) }
}

/// Each `argv` (starting with "gcloud") run by the real gcloud CLI, all in one gcloud process
/// (tests/gcloud_parse.py), or each in a process of its own if that cannot load this gcloud.
fn gcloud_each(sandbox: &Sandbox, argvs: &[Vec<String>]) -> Vec<Ended> {
    let args: Vec<&[String]> = argvs.iter().map(|argv| &argv[1..]).collect();
    let args = sandbox.write("gcloud-commands.json", &serde_json::to_string(&args).unwrap());
    let code = include_str!("../gcloud_parse.py");
    let out = gcloud_python_output(sandbox, code, &[args.to_str().unwrap()]);
    if out.status.success() {
        return serde_json::from_slice(&out.stdout).expect("gcloud_parse.py prints JSON");
    }
    eprintln!("gcloud_parse.py failed: one gcloud process per command (slow)\n{}", describe(&out));
    parallel_map(argvs, |argv| gcloud_alone(sandbox, argv))
}
