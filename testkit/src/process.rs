//! What a process uses, from `/proc`: CPU time, memory, threads and open files. The tests check
//! bounds with it, the benchmark reports it: one reader, so both mean the same by each figure.

use anyhow::Context as _;
use std::time::Duration;

/// A process's resource use at one moment, from `/proc/PID/{stat,status,fd}`.
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
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let field = |name: &str| -> u64 {
            let line = status.lines().find_map(|l| l.strip_prefix(name));
            line.and_then(|v| v.split_whitespace().next()?.parse().ok()).unwrap_or(0)
        };
        Ok(Usage {
            cpu: cpu(pid)?,
            rss_kib: field("VmRSS:"),
            peak_rss_kib: field("VmHWM:"),
            rss_anon_kib: field("RssAnon:"),
            rss_file_kib: field("RssFile:"),
            threads: field("Threads:"),
            open_fds: std::fs::read_dir(format!("/proc/{pid}/fd"))?.count() as u64,
        })
    }
}

/// User plus system CPU time of a process so far: [`Usage::cpu`] alone, for frequent readings.
pub fn cpu(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name is in parentheses and may hold spaces; the fields after it do not.
    // utime and stime are fields 14 and 15 of the line, the 12th and 13th after the name.
    let fields: Vec<&str> =
        stat.rsplit_once(')').context("/proc/PID/stat")?.1.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<u64> {
        Ok(fields.get(i).context("/proc/PID/stat: too few fields")?.parse()?)
    };
    let ticks = ticks(11)? + ticks(12)?;
    // SAFETY: sysconf only reads a constant.
    let per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(Duration::from_millis(ticks * 1000 / per_sec))
}

#[cfg(test)]
mod tests {
    use super::*;

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
