//! Measuring the worker from outside: objects as they appear in fake-gcs-server's directory
//! (inotify), and CPU time and memory of processes from `/proc`.

use anyhow::{Context as _, bail};
use std::collections::{HashMap, HashSet};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Timestamps objects as fake-gcs-server creates them. Its filesystem backend writes each object
/// to a temporary file in the system's temporary directory and renames it to the object's name
/// below the bucket's directory; a name with `/` becomes nested directories (the object
/// `dt=2025-01-01/unrouted/ab/1.txt` is that path below the bucket's directory). So every
/// `IN_MOVED_TO` of a name without a leading dot is one object (its own files, such as the probe
/// it renames next to the target first, start with a dot, as no name of the worker's does).
///
/// New directories are watched as they appear and then scanned, since an object may land in
/// one before its watch exists; objects are kept by path, so one seen twice counts once.
pub struct ObjectWatch {
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Default)]
struct Seen {
    /// When each object appeared.
    times: Vec<Instant>,
    /// The first object's path below the bucket's directory, which is its name.
    first: Option<PathBuf>,
    error: Option<String>,
}

impl ObjectWatch {
    pub fn start(dir: &Path) -> anyhow::Result<Self> {
        // SAFETY: plain syscall; the fd is owned by `Tree`, which closes it.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            bail!("inotify_init1: {}", std::io::Error::last_os_error());
        }
        let mut tree =
            Tree { fd, root: dir.to_path_buf(), dirs: HashMap::new(), objects: HashSet::new() };
        let seen = Arc::new(Mutex::new(Seen::default()));
        let mut found = Vec::new();
        tree.add(dir, &mut found).with_context(|| format!("watching {}", dir.display()))?;
        tree.record(&seen, found);
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || tree.run(&s, &st));
        Ok(Self { seen, stop, thread: Some(thread) })
    }

    pub fn count(&self) -> usize {
        self.seen.lock().expect("lock").times.len()
    }

    pub fn times(&self) -> Vec<Instant> {
        self.seen.lock().expect("lock").times.clone()
    }

    /// The name of the first object seen, e.g. to show what a template made of it.
    pub fn first(&self) -> Option<PathBuf> {
        self.seen.lock().expect("lock").first.clone()
    }

    /// Waits until `n` objects exist; fails at `deadline` or when the worker exits.
    pub async fn wait_for(
        &self,
        n: usize,
        deadline: Instant,
        child: &mut tokio::process::Child,
    ) -> anyhow::Result<()> {
        loop {
            if let Some(e) = self.seen.lock().expect("lock").error.clone() {
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

/// The watched directories of one bucket and the objects found in them.
struct Tree {
    fd: libc::c_int,
    root: PathBuf,
    /// Watch descriptor to directory.
    dirs: HashMap<libc::c_int, PathBuf>,
    objects: HashSet<PathBuf>,
}

impl Tree {
    /// Watches `dir`, then adds what is already in it to `found`: its objects, and the same for
    /// each directory below.
    fn add(&mut self, dir: &Path, found: &mut Vec<PathBuf>) -> anyhow::Result<()> {
        let path = std::ffi::CString::new(dir.as_os_str().as_bytes())?;
        let mask = libc::IN_MOVED_TO | libc::IN_CREATE | libc::IN_ONLYDIR;
        // SAFETY: `path` is a valid C string for the duration of the call.
        let wd = unsafe { libc::inotify_add_watch(self.fd, path.as_ptr(), mask) };
        if wd < 0 {
            bail!("inotify_add_watch {}: {}", dir.display(), std::io::Error::last_os_error());
        }
        self.dirs.insert(wd, dir.to_path_buf());
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_name().as_bytes().first() == Some(&b'.') {
                continue;
            }
            if entry.file_type()?.is_dir() {
                self.add(&entry.path(), found)?;
            } else {
                found.push(entry.path());
            }
        }
        Ok(())
    }

    /// Timestamps the objects in `found` not seen before.
    fn record(&mut self, seen: &Mutex<Seen>, found: Vec<PathBuf>) {
        let now = Instant::now();
        let mut seen = seen.lock().expect("lock");
        for path in found {
            if seen.first.is_none() {
                seen.first = path.strip_prefix(&self.root).ok().map(Path::to_path_buf);
            }
            if self.objects.insert(path) {
                seen.times.push(now);
            }
        }
    }

    /// Reads events until `stop`, then closes the inotify fd.
    fn run(mut self, seen: &Mutex<Seen>, stop: &AtomicBool) {
        let mut buf = vec![0u8; 256 * 1024];
        while !stop.load(Ordering::Relaxed) {
            let mut pfd = libc::pollfd { fd: self.fd, events: libc::POLLIN, revents: 0 };
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut pfd, 1, 50) };
            // SAFETY: `buf` is writable for its length.
            let len = unsafe { libc::read(self.fd, buf.as_mut_ptr().cast(), buf.len()) };
            if len <= 0 {
                continue;
            }
            if let Err(e) = self.events(&buf[..len as usize], seen) {
                seen.lock().expect("lock").error = Some(format!("{e:#}"));
            }
        }
    }

    fn events(&mut self, buf: &[u8], seen: &Mutex<Seen>) -> anyhow::Result<()> {
        const HEADER: usize = std::mem::size_of::<libc::inotify_event>();
        let mut found = Vec::new();
        let mut at = 0;
        while at + HEADER <= buf.len() {
            // SAFETY: the kernel wrote a whole event at `at`; read_unaligned copes with the
            // byte buffer's alignment.
            let event: libc::inotify_event =
                unsafe { std::ptr::read_unaligned(buf[at..].as_ptr().cast()) };
            // The name is padded with NULs.
            let name = &buf[at + HEADER..at + HEADER + event.len as usize];
            let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
            at += HEADER + event.len as usize;
            if event.mask & libc::IN_Q_OVERFLOW != 0 {
                bail!("inotify queue overflow");
            }
            let Some(dir) = self.dirs.get(&event.wd) else { continue };
            if name.is_empty() || name[0] == b'.' {
                continue;
            }
            let path = dir.join(std::ffi::OsStr::from_bytes(name));
            if event.mask & libc::IN_ISDIR != 0 {
                self.add(&path, &mut found)?;
            } else if event.mask & libc::IN_MOVED_TO != 0 {
                found.push(path);
            }
        }
        self.record(seen, found);
        Ok(())
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        // SAFETY: closing the fd this value owns.
        unsafe { libc::close(self.fd) };
    }
}

/// CPU seconds (user + system) of a process, from `/proc/PID/stat`.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the `(comm)`, which may contain spaces: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').context("/proc/PID/stat")?.1;
    let mut fields = rest.split_whitespace().skip(11);
    let mut ticks = || -> anyhow::Result<f64> {
        Ok(fields.next().context("/proc/PID/stat: too few fields")?.parse()?)
    };
    let ticks = ticks()? + ticks()?;
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
