//! Measuring the worker from outside: objects as they appear in fake-gcs-server's directory
//! (inotify), and CPU time and memory of processes from `/proc`.

use anyhow::{Context as _, bail};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Timestamps objects as fake-gcs-server creates them: its filesystem backend writes a
/// temporary `.name123` file and renames it to the object's name, so every `IN_MOVED_TO` of a
/// name without a leading dot is one object (names of the worker's objects never start with
/// a dot, and the worker's default prefix is empty, so they all land in this directory).
pub struct ObjectWatch {
    times: Arc<Mutex<Vec<Instant>>>,
    error: Arc<Mutex<Option<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ObjectWatch {
    pub fn start(dir: &Path) -> anyhow::Result<Self> {
        use std::os::unix::ffi::OsStrExt as _;
        // SAFETY: plain syscalls; the fd is owned by the thread below, which closes it.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            bail!("inotify_init1: {}", std::io::Error::last_os_error());
        }
        let path = std::ffi::CString::new(dir.as_os_str().as_bytes())?;
        // SAFETY: `path` is a valid C string for the duration of the call.
        if unsafe { libc::inotify_add_watch(fd, path.as_ptr(), libc::IN_MOVED_TO) } < 0 {
            let e = std::io::Error::last_os_error();
            // SAFETY: closing the fd we opened.
            unsafe { libc::close(fd) };
            bail!("inotify_add_watch {}: {e}", dir.display());
        }
        let times = Arc::new(Mutex::new(Vec::new()));
        let error = Arc::new(Mutex::new(None));
        let stop = Arc::new(AtomicBool::new(false));
        let (t, e, s) = (times.clone(), error.clone(), stop.clone());
        let thread = std::thread::spawn(move || watch_loop(fd, &t, &e, &s));
        Ok(Self { times, error, stop, thread: Some(thread) })
    }

    pub fn count(&self) -> usize {
        self.times.lock().expect("lock").len()
    }

    pub fn times(&self) -> Vec<Instant> {
        self.times.lock().expect("lock").clone()
    }

    /// Waits until `n` objects exist; fails at `deadline` or when the worker exits.
    pub async fn wait_for(
        &self,
        n: usize,
        deadline: Instant,
        child: &mut tokio::process::Child,
    ) -> anyhow::Result<()> {
        loop {
            if let Some(e) = self.error.lock().expect("lock").clone() {
                bail!("watching the bucket failed: {e}");
            }
            let count = self.count();
            if count >= n {
                return Ok(());
            }
            if let Some(status) = child.try_wait()? {
                bail!("the worker exited ({status}) after {count} of {n} objects");
            }
            if Instant::now() > deadline {
                bail!("{count} of {n} objects by the deadline");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for ObjectWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn watch_loop(
    fd: libc::c_int,
    times: &Mutex<Vec<Instant>>,
    error: &Mutex<Option<String>>,
    stop: &AtomicBool,
) {
    const HEADER: usize = std::mem::size_of::<libc::inotify_event>();
    let mut buf = vec![0u8; 256 * 1024];
    while !stop.load(Ordering::Relaxed) {
        let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, 50) };
        // SAFETY: `buf` is writable for its length.
        let len = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if len <= 0 {
            continue;
        }
        let now = Instant::now();
        let mut at = 0;
        let mut found = 0;
        while at + HEADER <= len as usize {
            // SAFETY: the kernel wrote a whole event at `at`; read_unaligned copes with the
            // byte buffer's alignment.
            let event: libc::inotify_event =
                unsafe { std::ptr::read_unaligned(buf[at..].as_ptr().cast()) };
            let name = &buf[at + HEADER..at + HEADER + event.len as usize];
            if event.mask & libc::IN_Q_OVERFLOW != 0 {
                *error.lock().expect("lock") = Some("inotify queue overflow".into());
            } else if event.mask & libc::IN_MOVED_TO != 0 && name.first() != Some(&b'.') {
                found += 1;
            }
            at += HEADER + event.len as usize;
        }
        times.lock().expect("lock").extend((0..found).map(|_| now));
    }
    // SAFETY: closing the fd this thread owns.
    unsafe { libc::close(fd) };
}

/// CPU seconds (user + system) of a process, from `/proc/PID/stat`.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the `(comm)`, which may contain spaces: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').context("/proc/PID/stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks / hz)
}

pub fn own_cpu() -> f64 {
    cpu_seconds(std::process::id()).unwrap_or(0.0)
}

pub fn status_field(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("{field} in /proc/{pid}/status"))
}

/// Peak resident set size in KiB.
pub fn vm_hwm_kb(pid: u32) -> anyhow::Result<u64> {
    status_field(pid, "VmHWM:")
}

pub fn threads(pid: u32) -> anyhow::Result<u64> {
    status_field(pid, "Threads:")
}

/// CPU seconds used by the emulators (children of this process named `java`, the Pub/Sub
/// emulator, and `fake-gcs-server`), sampled at the start of a phase.
pub struct EmulatorCpu {
    at_start: (f64, f64),
}

impl EmulatorCpu {
    pub fn now() -> Self {
        Self { at_start: emulator_cpu() }
    }

    pub fn since(&self) -> (f64, f64) {
        let now = emulator_cpu();
        (now.0 - self.at_start.0, now.1 - self.at_start.1)
    }
}

fn emulator_cpu() -> (f64, f64) {
    let me = std::process::id().to_string();
    let (mut pubsub, mut gcs) = (0.0, 0.0);
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return (0.0, 0.0);
    };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let comm = head.split_once('(').map_or("", |(_, c)| c);
        let ppid = rest.split_whitespace().nth(1).unwrap_or("");
        if ppid != me {
            continue;
        }
        let cpu = cpu_seconds(pid).unwrap_or(0.0);
        match comm {
            "java" => pubsub += cpu,
            "fake-gcs-server" => gcs += cpu,
            _ => {}
        }
    }
    (pubsub, gcs)
}

pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                Some(l.strip_prefix("model name")?.split_once(':')?.1.trim().to_string())
            })
        })
        .unwrap_or_default()
}
