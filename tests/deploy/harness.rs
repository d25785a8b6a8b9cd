//! What the deploy tests share: a sandbox that runs the scripts with `DRY_RUN=1` and a stand-in
//! gcloud (`Sandbox`), what a run printed (`ScriptRun`), the real gcloud and its Python run
//! hermetically behind the network guard, the values the tests put in env files, and small
//! helpers.

use std::collections::BTreeSet;
use std::env;
use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;

/// The scripts in `deploy/`.
pub const SCRIPTS: [&str; 9] = [
    "setup",
    "deploy",
    "scale",
    "status",
    "teardown",
    "monitoring",
    "autoscale",
    "replay",
    "snapshot",
];
/// An object name template with every character deploy/deploy must pass on intact.
pub const TEMPLATE: &str =
    "dt={publish_time:%Y-%m-%d}/{attributes.task_type|unrouted}/{hash:2}/{message_id}.{ext}";
/// A Cloud KMS key for `KMS_KEY_NAME`.
pub const KMS_KEY: &str = "projects/keys/locations/us/keyRings/ring/cryptoKeys/key";
/// Env file lines that turn the metrics export on.
pub const METRICS: &str = "HEALTH_PORT=8080\nMETRICS_EXPORT=managed-prometheus";

// ---------------------------------------------------------------------------------------------
// Running the scripts and gcloud in a sandbox.

/// A temporary directory: HOME, TMPDIR and working directory of what runs in it, so the files the
/// scripts keep under DRY_RUN (generated configuration) go with it.
pub struct Sandbox(tempfile::TempDir);

impl Sandbox {
    /// With a stand-in gcloud for the scripts (GCLOUD): the real one, but the answers to their
    /// `--help` probes (which flags this gcloud has) are asked only once per test run.
    pub fn new() -> Sandbox {
        let sandbox = Sandbox(tempfile::tempdir().expect("temp dir"));
        let gcloud =
            "#!/bin/sh\nif [ -f \"$0 $*\" ]; then exec cat \"$0 $*\"; fi\nexec gcloud \"$@\"\n";
        executable(&sandbox.path().join("gcloud"), gcloud);
        for command in PROBED {
            let answer = format!("gcloud beta run worker-pools {command} --help");
            sandbox.write(&answer, help(&sandbox, command));
        }
        sandbox
    }

    pub fn path(&self) -> &Path {
        self.0.path()
    }

    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.path().join(name);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, contents).unwrap();
        path
    }

    /// `.env.example` with `extra` lines appended (later assignments win).
    pub fn env_file(&self, extra: &str) -> PathBuf {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!("{}.env", N.fetch_add(1, Ordering::SeqCst));
        self.write(&name, &format!("{}\n{extra}\n", read(".env.example")))
    }

    /// `deploy/ARGS` (words) with DRY_RUN=1, and `.env.example` plus `extra` as the env file.
    pub fn run(&self, extra: &str, args: &str) -> ScriptRun {
        let args: Vec<&str> = args.split_whitespace().collect();
        self.run_with(&self.env_file(extra), &args, &[])
    }

    /// `deploy/ARGS` run for real (no DRY_RUN) with `.env.example` as the env file and a stand-in
    /// gcloud that answers `gcloud pubsub subscriptions describe` with `settings` (as a `value()`
    /// format prints them) and fails any other command, so nothing reaches a project or the
    /// network.
    pub fn run_against(&self, settings: &str, args: &str) -> ScriptRun {
        let fake = format!(
            "#!/bin/sh\ncase \"$*\" in\n  'pubsub subscriptions describe '*) printf '%s\\n' '{settings}' ;;\n  \
             *) echo \"stand-in gcloud: $*\" >&2; exit 1 ;;\nesac\n"
        );
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!("describe-only-gcloud-{}", N.fetch_add(1, Ordering::SeqCst));
        let fake = self.write(&name, &fake);
        fs::set_permissions(&fake, fs::Permissions::from_mode(0o755)).unwrap();
        let fake = fake.to_str().unwrap();
        let args: Vec<&str> = args.split_whitespace().collect();
        self.run_with(&self.env_file(""), &args, &[("DRY_RUN", ""), ("GCLOUD", fake)])
    }

    /// `deploy/ARGS` with DRY_RUN=1, `env_file`, and `inherited` variables in its environment.
    pub fn run_with(
        &self,
        env_file: &Path,
        args: &[&str],
        inherited: &[(&str, &str)],
    ) -> ScriptRun {
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
pub fn network_guard() -> &'static (u16, AtomicUsize) {
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
pub fn hermetic<'a>(cmd: &'a mut Command, sandbox: &Sandbox) -> &'a mut Command {
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
        .envs(["GCE_METADATA_ROOT", "GCE_METADATA_HOST", "GCE_METADATA_IP"].map(|v| (v, &metadata)))
        .envs(["HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"].map(|v| (v, &proxy)))
        .current_dir(sandbox.path())
        .stdin(Stdio::null())
}

/// The worker-pools commands whose `--help` the scripts read.
const PROBED: [&str; 2] = ["deploy", "update"];

/// What `gcloud beta run worker-pools COMMAND --help` prints, asked once per test run.
pub fn help(sandbox: &Sandbox, command: &str) -> &'static str {
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
pub struct ScriptRun {
    pub name: String,
    pub out: Output,
    /// The printed commands ("+ " lines), each split into words by bash.
    pub commands: Vec<Vec<String>>,
}

impl ScriptRun {
    /// The printed gcloud commands.
    pub fn gcloud(&self) -> Vec<Vec<String>> {
        assert!(!self.commands.is_empty(), "{} printed no command", self.name);
        self.commands.iter().filter(|c| c[0] == "gcloud").cloned().collect()
    }

    /// The printed commands that start with `prefix`.
    pub fn all(&self, prefix: &str) -> Vec<Vec<String>> {
        let prefix = words(prefix);
        self.commands.iter().filter(|c| c.starts_with(&prefix)).cloned().collect()
    }

    /// The first printed command that starts with `prefix`.
    pub fn find(&self, prefix: &str) -> Vec<String> {
        let found = self.all(prefix).into_iter().next();
        found.unwrap_or_else(|| panic!("{} runs no `{prefix}`\n{self}", self.name))
    }

    /// The value of `--flag=VALUE` in the first printed command that starts with `prefix`.
    pub fn value(&self, prefix: &str, name: &str) -> String {
        let command = self.find(prefix);
        let value = flag(&command, name);
        value.unwrap_or_else(|| panic!("`{prefix}` has no {name}")).to_string()
    }

    pub fn stderr(&self) -> String {
        text(&self.out.stderr)
    }

    /// The commands a run printed on stderr ("+ " lines): those it ran, or suggests.
    pub fn stderr_commands(&self) -> Vec<Vec<String>> {
        let stderr = self.stderr();
        shell_words(stderr.lines().filter_map(|line| line.strip_prefix("+ ")))
    }

    pub fn ok(self) -> Self {
        assert!(self.out.status.success(), "{} failed\n{self}", self.name);
        self
    }

    /// Asserts that the script failed before printing any command, saying `why` on stderr.
    pub fn refused(&self, why: &str) {
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

/// The real gcloud with `args`, in the sandbox's hermetic environment.
pub fn gcloud<S: AsRef<std::ffi::OsStr>>(sandbox: &Sandbox, args: &[S]) -> Output {
    let mut cmd = Command::new("gcloud");
    let out = hermetic(&mut cmd, sandbox).args(args).output();
    out.expect("the Google Cloud CLI (gcloud, with the beta and alpha components) on PATH")
}

/// The files of `root` that `gcloud builds submit` uploads (by `.gcloudignore`).
pub fn uploaded(sandbox: &Sandbox, root: &Path) -> BTreeSet<String> {
    let out =
        gcloud(sandbox, &["meta".as_ref(), "list-files-for-upload".as_ref(), root.as_os_str()]);
    assert!(out.status.success(), "{}", describe(&out));
    text(&out.stdout).lines().map(String::from).collect()
}

/// The value of `--flag=VALUE` in a command.
pub fn flag<'a>(command: &'a [String], flag: &str) -> Option<&'a str> {
    let prefix = format!("{flag}=");
    command.iter().find_map(|w| w.strip_prefix(&prefix))
}

/// The IAM grants a run prints, as "principal scope role": the principal by its account name, the
/// scope by the command group it binds on.
pub fn grants(run: &ScriptRun) -> BTreeSet<String> {
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

/// Runs Python code with the installed gcloud's interpreter and libraries, started as bin/gcloud
/// starts it, in the sandbox; the SDK's directory is `sys.argv[1]`, `args` follow.
pub fn gcloud_python(sandbox: &Sandbox, code: &str, args: &[&str]) -> String {
    let out = gcloud_python_output(sandbox, code, args);
    assert!(out.status.success(), "python:\n{}", describe(&out));
    text(&out.stdout)
}

/// [`gcloud_python`] that may fail: the process's output, whatever its exit status.
pub fn gcloud_python_output(sandbox: &Sandbox, code: &str, args: &[&str]) -> Output {
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
pub const YAML_TO_JSON: &str = "import json; from googlecloudsdk.core import yaml\n\
                            print(json.dumps(yaml.load_path(sys.argv[2])))";
// ---------------------------------------------------------------------------------------------
// Small helpers.

/// Writes `contents` to the file `path`, executable.
pub fn executable(path: &Path, contents: &str) {
    fs::write(path, contents).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn read(rel: &str) -> String {
    let path = repo_root().join(rel);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub fn words(s: &str) -> Vec<String> {
    s.split_whitespace().map(String::from).collect()
}

pub fn describe(out: &Output) -> String {
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    format!("exit: {:?}\n--- stdout\n{stdout}\n--- stderr\n{stderr}", out.status.code())
}

/// Runs `items` through `f` on four threads, a quarter each; results in input order.
pub fn parallel_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let quarters = items.chunks(items.len().div_ceil(4).max(1));
    thread::scope(|scope| {
        let f = &f;
        let threads: Vec<_> =
            quarters.map(|q| scope.spawn(move || q.iter().map(f).collect::<Vec<R>>())).collect();
        threads.into_iter().flat_map(|t| t.join().unwrap()).collect()
    })
}

/// The strings as a set.
pub fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// The JSON file at `path`.
pub fn json(path: &str) -> serde_json::Value {
    serde_json::from_str(&fs::read_to_string(path).unwrap()).expect(path)
}
