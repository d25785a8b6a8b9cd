//! What the scripts accept and refuse before they run anything: `--help` and unknown arguments,
//! a missing env file or variable, scale's instance count, teardown and replays without
//! confirmation.

use crate::harness::{SCRIPTS, Sandbox, describe, executable, flag, hermetic, repo_root, text};
use std::process::Command;

#[test]
fn every_script_has_help_and_rejects_unknown_arguments() {
    let sandbox = Sandbox::new();
    let missing = sandbox.path().join("no-such.env");
    for script in SCRIPTS {
        for flag in ["--help", "-h"] {
            let run = sandbox.run_with(&missing, &[script, flag], &[]).ok();
            let usage = format!("Usage: deploy/{script}");
            assert!(text(&run.out.stdout).starts_with(&usage), "{}\n{run}", run.name);
            assert!(run.commands.is_empty());
        }
        sandbox.run("", &format!("{script} --no-such-option")).refused("");
    }
}

#[test]
fn a_missing_env_file_or_variable_is_reported() {
    let sandbox = Sandbox::new();
    let absent = sandbox.path().join("absent.env");
    sandbox.run_with(&absent, &["setup"], &[]).refused("cp .env.example .env");
    let partial = sandbox.write("partial.env", "PROJECT_ID=p\nBUCKET_NAME=b\n");
    sandbox.run_with(&partial, &["status"], &[]).refused("SUBSCRIPTION_ID");
}

#[test]
fn scale_takes_exactly_one_whole_number() {
    let sandbox = Sandbox::new();
    for bad in ["scale abc", "scale -1", "scale 1.5", "scale", "scale 1 2", "scale 3x"] {
        sandbox.run("SCALING_FLAG=--scaling", bad).refused("");
    }
    let run = sandbox.run("SCALING_FLAG=--scaling", "scale 007").ok();
    assert_eq!(flag(&run.commands[0], "--scaling"), Some("7"));
    sandbox.run("SCALING_FLAG=--scaling\nINSTANCES=two", "deploy").refused("INSTANCES");
}

/// Teardown and the replays change what a project holds or delivers: without `--yes` they ask on
/// a terminal, and without one they refuse before running anything.
#[test]
fn destructive_steps_refuse_without_yes_and_a_terminal() {
    let sandbox = Sandbox::new();
    let marker = sandbox.path().join("gcloud-was-run");
    let fake = sandbox.path().join("fake-gcloud");
    executable(
        &fake,
        &format!(
            "#!/bin/sh
touch '{}'
",
            marker.display()
        ),
    );
    for args in ["teardown", "replay --snapshot before-deploy", "replay --dead-letters"] {
        let args: Vec<&str> = args.split_whitespace().collect();
        let mut cmd = Command::new(repo_root().join("deploy").join(args[0]));
        let env_file = sandbox.env_file("");
        let out = hermetic(&mut cmd, &sandbox).args(&args[1..]);
        let out = out.env("ENV_FILE", env_file).env("GCLOUD", &fake).output().unwrap();
        assert!(!out.status.success(), "{args:?}: {}", describe(&out));
        assert!(text(&out.stderr).contains("--yes"), "{args:?}: {}", describe(&out));
        assert!(!marker.exists(), "deploy/{} ran gcloud without confirmation", args.join(" "));
    }
}
