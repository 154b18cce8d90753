//! The standard `process_*` metrics (the names every Prometheus client
//! library uses) and `gateway_build_info`, read from /proc when scraped.
//! Counting open fds reads /proc/self/fd, one entry per connection: the
//! admin server runs it off the control plane's thread
//! (`spawn_blocking`), so a scrape of a million connections does not
//! hold up NATS.

use std::fmt::Write as _;

/// The process's figures at scrape time; None where /proc did not say.
#[derive(Debug, Default, Clone)]
pub struct Process {
    pub cpu_seconds: Option<f64>,
    pub open_fds: Option<u64>,
    pub max_fds: Option<u64>,
    pub resident_bytes: Option<u64>,
    pub virtual_bytes: Option<u64>,
    pub start_time_seconds: Option<f64>,
    pub threads: Option<u64>,
}

impl Process {
    /// Reads this process's figures (blocking: /proc reads).
    pub fn read() -> Process {
        let stat = std::fs::read_to_string("/proc/self/stat").ok();
        let fields = stat.as_deref().and_then(stat_fields);
        // SAFETY: sysconf has no preconditions.
        let (tck, page) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        let tck = (tck > 0).then_some(tck as f64);
        let page = u64::try_from(page).ok();
        // Fields after the command, counted from field 3 (state) as 0.
        let field = |n: usize| fields.as_ref().and_then(|f| f.get(n)?.parse::<u64>().ok());
        let cpu_seconds = match (field(11), field(12), tck) {
            (Some(u), Some(s), Some(t)) => Some((u + s) as f64 / t),
            _ => None,
        };
        let start_time_seconds = match (field(19), boot_time(), tck) {
            (Some(st), Some(boot), Some(t)) => Some(boot as f64 + st as f64 / t),
            _ => None,
        };
        Process {
            cpu_seconds,
            open_fds: std::fs::read_dir("/proc/self/fd")
                .ok()
                .map(|d| d.count() as u64),
            max_fds: max_fds(),
            resident_bytes: field(21).zip(page).map(|(p, s)| p * s),
            virtual_bytes: field(20),
            start_time_seconds,
            threads: field(17),
        }
    }

    /// Appends the figures in Prometheus text format.
    pub fn render(&self, out: &mut String) {
        let mut one = |name: &str, kind: &str, help: &str, v: Option<String>| {
            if let Some(v) = v {
                let _ = writeln!(
                    out,
                    "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
                );
            }
        };
        let int = |v: Option<u64>| v.map(|v| v.to_string());
        let float = |v: Option<f64>| v.map(|v| format!("{v:.3}"));
        one(
            "process_cpu_seconds_total",
            "counter",
            "User and system CPU time spent, seconds",
            float(self.cpu_seconds),
        );
        one(
            "process_open_fds",
            "gauge",
            "Open file descriptors",
            int(self.open_fds),
        );
        one(
            "process_max_fds",
            "gauge",
            "Limit of open file descriptors (RLIMIT_NOFILE)",
            int(self.max_fds),
        );
        one(
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory",
            int(self.resident_bytes),
        );
        one(
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory",
            int(self.virtual_bytes),
        );
        one(
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since the Unix epoch, seconds",
            float(self.start_time_seconds),
        );
        one(
            "process_threads",
            "gauge",
            "Threads of the process",
            int(self.threads),
        );
    }
}

/// The version and git revision this binary was built from.
pub fn render_build_info(out: &mut String) {
    let _ = writeln!(
        out,
        "# HELP gateway_build_info The gateway's version and the git revision it was built from (always 1)\n# TYPE gateway_build_info gauge\ngateway_build_info{{version=\"{}\",revision=\"{}\"}} 1",
        crate::VERSION,
        crate::REVISION,
    );
}

/// The fields of /proc/self/stat after the command (which may hold
/// spaces and parentheses: it ends at the last ')').
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().collect())
}

/// Boot time, seconds since the epoch (`btime` of /proc/stat).
fn boot_time() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

fn max_fds() -> Option<u64> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } == 0).then_some(r.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let p = Process::read();
        assert!(p.cpu_seconds.is_some_and(|c| c >= 0.0));
        assert!(p.open_fds.is_some_and(|n| n >= 3));
        assert!(p.max_fds.is_some_and(|n| n >= p.open_fds.unwrap_or(0)));
        assert!(p.resident_bytes.is_some_and(|r| r > 0));
        assert!(p
            .virtual_bytes
            .is_some_and(|v| v >= p.resident_bytes.unwrap_or(0)));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        // Started in the last day, not in the future (clock ticks round).
        assert!(p
            .start_time_seconds
            .is_some_and(|s| s > now - 86_400.0 && s < now + 2.0));
        let mut out = String::new();
        p.render(&mut out);
        assert!(out.contains("# TYPE process_cpu_seconds_total counter\n"));
        assert!(out.contains("\nprocess_open_fds "));
    }

    #[test]
    fn a_command_with_parentheses_and_spaces() {
        let f = stat_fields("42 (a (b) c) S 1 42 42 0 -1").unwrap_or_default();
        assert_eq!(f, ["S", "1", "42", "42", "0", "-1"]);
    }
}
