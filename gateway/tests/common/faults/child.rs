//! The gateway binary as a child process, with its own open-file limit.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::super::WAIT;
use super::{metric, try_metrics};

/// A gateway process (killed on drop), its log (stdout and stderr) in a file.
pub struct ChildGateway {
    child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub log: PathBuf,
}

impl ChildGateway {
    /// Starts `gateway --demo` on loopback with RLIMIT_NOFILE (soft) at
    /// `nofile` and the extra `args`; waits until /healthz answers.
    pub fn start(nofile: u64, args: &[&str]) -> ChildGateway {
        use std::os::unix::process::CommandExt;
        let port = super::super::nats::free_port();
        let admin_port = super::super::nats::free_port();
        let log =
            std::env::temp_dir().join(format!("gw-faults-child-{}-{port}.log", std::process::id()));
        let listen = format!("127.0.0.1:{port}");
        let admin_listen = format!("127.0.0.1:{admin_port}");
        let out = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_gateway"));
        cmd.args([
            "--demo",
            "--listen",
            &listen,
            "--admin-listen",
            &admin_listen,
        ])
        .args(args)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
        // SAFETY: only setrlimit (async-signal-safe) runs between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let mut r = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
                    return Err(io::Error::last_os_error());
                }
                r.rlim_cur = nofile.min(r.rlim_max);
                if libc::setrlimit(libc::RLIMIT_NOFILE, &r) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("spawn the gateway binary");
        let mut g = ChildGateway {
            child,
            addr: listen.parse().unwrap(),
            admin: admin_listen.parse().unwrap(),
            log,
        };
        let t = Instant::now();
        loop {
            if let Ok(Some(status)) = g.child.try_wait() {
                panic!("the gateway exited ({status}): {}", g.log_text());
            }
            if try_metrics(g.admin, Duration::from_millis(500)).is_some() {
                return g;
            }
            assert!(
                t.elapsed() < WAIT,
                "the gateway did not serve /metrics: {}",
                g.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Files the process has open now.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A metric from /metrics, or None while the admin server cannot answer.
    pub fn metric(&self, name: &str) -> Option<u64> {
        try_metrics(self.admin, Duration::from_secs(2)).map(|t| metric(&t, name))
    }
}

impl Drop for ChildGateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}
