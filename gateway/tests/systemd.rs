//! The binary under a stand-in for systemd: the test binds a unix datagram
//! socket and passes it as `$NOTIFY_SOCKET` (with `$WATCHDOG_USEC`), as
//! systemd does for `Type=notify` units (sd_notify(3)). READY=1 comes once
//! the listeners accept logins, WATCHDOG=1 keeps coming, SIGTERM says
//! STOPPING=1, SIGHUP says RELOADING=1 then READY=1, and with NATS
//! unreachable READY=1 comes at `nats.restore_deadline_ms` with a STATUS
//! that says so. The live run under a real systemd is systemd/live_test.sh.

mod common;

use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, http_get, Client, WAIT};
use gw_proto::pb::frame::Body;
use gw_proto::CloseReason;

/// The socket systemd would listen on, and what arrived on it.
struct FakeSystemd {
    sock: UnixDatagram,
    dir: PathBuf,
    seen: Vec<String>,
}

impl FakeSystemd {
    fn new(name: &str) -> FakeSystemd {
        let dir = std::env::temp_dir().join(format!("gw-sd-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let sock = UnixDatagram::bind(dir.join("notify")).unwrap();
        FakeSystemd {
            sock,
            dir,
            seen: Vec::new(),
        }
    }

    fn path(&self) -> PathBuf {
        self.dir.join("notify")
    }

    /// The next message, if one comes within `wait`.
    fn recv(&mut self, wait: Duration) -> Option<String> {
        self.sock.set_read_timeout(Some(wait)).unwrap();
        let mut buf = [0u8; 4096];
        let n = self.sock.recv(&mut buf).ok()?;
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        self.seen.push(msg.clone());
        Some(msg)
    }

    /// Waits for a message with `line` as one of its lines.
    fn until(&mut self, line: &str) -> String {
        let t = Instant::now();
        while t.elapsed() < WAIT {
            if let Some(m) = self.recv(WAIT.saturating_sub(t.elapsed())) {
                if m.lines().any(|l| l == line) {
                    return m;
                }
            }
        }
        panic!("no {line} within {WAIT:?}; got {:?}", self.seen);
    }
}

impl Drop for FakeSystemd {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The gateway binary on `port` and `admin`, talking to `sd`.
fn spawn(sd: &FakeSystemd, port: u16, admin: u16, extra: &[&str]) -> Proc {
    Proc(
        Command::new(env!("CARGO_BIN_EXE_gateway"))
            .args(["--demo", "--cores", "2"])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
            .args(["--drain-spread-ms", "200", "--drain-deadline-ms", "3000"])
            .args(extra)
            .env("NOTIFY_SOCKET", sd.path())
            // 400 ms: WATCHDOG=1 at least every 200 ms.
            .env("WATCHDOG_USEC", "400000")
            .env_remove("WATCHDOG_PID")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("gateway binary starts"),
    )
}

fn signal(p: &Proc, sig: i32) {
    // SAFETY: a signal to our own child process.
    assert_eq!(unsafe { libc::kill(p.0.id() as i32, sig) }, 0);
}

fn status_of(msg: &str) -> &str {
    msg.lines()
        .find_map(|l| l.strip_prefix("STATUS="))
        .unwrap_or("")
}

#[test]
fn ready_after_the_listeners_accept_then_watchdog_then_stopping() {
    let mut sd = FakeSystemd::new("ready");
    let (port, admin_port) = (free_port(), free_port());
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let gw = spawn(&sd, port, admin_port, &[]);

    let ready = sd.until("READY=1");
    assert!(
        status_of(&ready).starts_with("ready:"),
        "READY=1 with {ready:?}"
    );
    // At READY=1 the client port serves logins and the admin port says ready.
    let mut c = Client::try_connect(addr).expect("the client port accepts at READY=1");
    match c.try_auth(common::token("alice", 600), "d") {
        Ok(Body::AuthOk(_)) => {}
        other => panic!("login right after READY=1: {other:?}"),
    }
    assert_eq!(http_get(admin, "/readyz").0, 200);
    assert!(
        status_of(&sd.seen[0]).starts_with("starting"),
        "the first message says the node is starting: {:?}",
        sd.seen
    );

    // The watchdog is fed while the cores answer: at least every 200 ms.
    let t = Instant::now();
    let mut pings = 0;
    let mut longest = Duration::ZERO;
    let mut last = Instant::now();
    while t.elapsed() < Duration::from_millis(1500) {
        if let Some(m) = sd.recv(Duration::from_millis(500)) {
            if m == "WATCHDOG=1" {
                pings += 1;
                longest = longest.max(last.elapsed());
                last = Instant::now();
            }
        }
    }
    assert!(pings >= 5, "{pings} WATCHDOG=1 in 1.5 s: {:?}", sd.seen);
    assert!(
        longest < Duration::from_millis(400),
        "{longest:?} between two pings"
    );

    // SIGTERM: STOPPING=1 at once, the client gets its GoAway, exit 0.
    signal(&gw, libc::SIGTERM);
    let stopping = sd.until("STOPPING=1");
    assert!(status_of(&stopping).starts_with("draining"), "{stopping:?}");
    let g = c.recv_until("GoAway", |b| match b {
        Body::GoAway(g) => Some(g.clone()),
        _ => None,
    });
    assert_eq!(g.reason, CloseReason::Drain as i32);
    drop(c);
    let mut gw = gw;
    let t = Instant::now();
    let status = loop {
        if let Some(s) = gw.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            t.elapsed() < WAIT,
            "the gateway did not exit after its drain"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    // Nothing claims readiness after the stop began.
    let after = sd.seen.iter().skip_while(|m| !m.contains("STOPPING=1"));
    assert!(
        after.clone().all(|m| !m.lines().any(|l| l == "READY=1")),
        "{:?}",
        sd.seen
    );
}

#[test]
fn sighup_says_reloading_then_ready() {
    let mut sd = FakeSystemd::new("reload");
    let gw = spawn(&sd, free_port(), free_port(), &[]);
    sd.until("READY=1");
    signal(&gw, libc::SIGHUP);
    let reloading = sd.until("RELOADING=1");
    let usec = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .and_then(|v| v.parse::<u64>().ok());
    assert!(
        usec.is_some_and(|u| u > 0),
        "RELOADING=1 carries MONOTONIC_USEC: {reloading:?}"
    );
    // The same command line and no file: nothing changed, and it says so.
    let ready = sd.until("READY=1");
    assert!(
        status_of(&ready).starts_with("reload: no setting changed"),
        "{ready:?}"
    );
}

#[test]
fn nats_unreachable_ready_at_the_restore_deadline_and_says_so() {
    let mut sd = FakeSystemd::new("nats");
    // A port nothing listens on.
    let nats = format!("nats://127.0.0.1:{}", free_port());
    let admin_port = free_port();
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let t = Instant::now();
    let _gw = spawn(
        &sd,
        free_port(),
        admin_port,
        &[
            "--nats-urls",
            &nats,
            "--nats-restore-deadline-ms",
            "1500",
            "--nats-connect-timeout-ms",
            "200",
        ],
    );
    let ready = sd.until("READY=1");
    assert!(
        t.elapsed() >= Duration::from_millis(1500),
        "READY=1 before the restore deadline: {:?}",
        sd.seen
    );
    assert!(status_of(&ready).contains("NATS"), "{ready:?}");
    assert!(
        sd.seen
            .iter()
            .any(|m| m.starts_with("EXTEND_TIMEOUT_USEC=")),
        "the start timeout is extended for NATS: {:?}",
        sd.seen
    );
    assert!(
        sd.seen
            .iter()
            .any(|m| status_of(m).starts_with("starting: waiting until NATS")),
        "{:?}",
        sd.seen
    );
    let (code, body) = http_get(admin, "/readyz");
    assert_eq!(code, 503, "{body}");
}
