//! Memory figures from `/proc`: resident set of processes (`VmRSS`) and the
//! kernel's slab (`Slab`, `SUnreclaim` of `/proc/meminfo`).

use std::fs;

/// Value of a `Key:   123 kB` line, in bytes.
fn kb_field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(key)?.strip_prefix(':')?;
        let kb: u64 = rest.split_whitespace().next()?.parse().ok()?;
        Some(kb * 1024)
    })
}

/// `VmRSS` of a process in bytes; `None` when it is gone or unreadable.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    kb_field(&text, "VmRSS")
}

/// `VmRSS` of this process in bytes.
pub fn self_rss_bytes() -> Option<u64> {
    let text = fs::read_to_string("/proc/self/status").ok()?;
    kb_field(&text, "VmRSS")
}

/// Kernel slab memory, bytes.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Slab {
    /// `Slab:` (reclaimable and not).
    pub slab_bytes: u64,
    /// `SUnreclaim:` (socket and TCP structures live here).
    pub sunreclaim_bytes: u64,
}

/// Reads `/proc/meminfo`; zeros when unreadable.
pub fn slab() -> Slab {
    let text = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    Slab {
        slab_bytes: kb_field(&text, "Slab").unwrap_or(0),
        sunreclaim_bytes: kb_field(&text, "SUnreclaim").unwrap_or(0),
    }
}

/// CPU time of a process (all threads, user + system) in clock ticks;
/// `None` when it is gone or unreadable.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces and parens):
    // state is field 3, utime 14 and stime 15.
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Clock ticks per second (`_SC_CLK_TCK`).
pub fn clk_tck() -> u64 {
    // SAFETY: sysconf has no memory effects.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// Open file descriptors of this process.
pub fn self_fd_count() -> usize {
    fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Soft RLIMIT_NOFILE of this process (the gateway's own reading).
pub use gateway::listener::nofile_limit;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kb_fields() {
        let t = "Name:\tx\nVmRSS:\t    1234 kB\nSlab:  10 kB\n";
        assert_eq!(kb_field(t, "VmRSS"), Some(1234 * 1024));
        assert_eq!(kb_field(t, "Slab"), Some(10 * 1024));
        assert_eq!(kb_field(t, "VmHWM"), None);
        assert!(self_rss_bytes().is_some_and(|b| b > 0));
        assert!(cpu_ticks(std::process::id()).is_some());
        assert!(clk_tck() > 0);
    }
}
