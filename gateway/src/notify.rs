//! systemd's service notifications (sd_notify(3)) and watchdog, written
//! out instead of linking libsystemd: the protocol is one datagram of
//! `KEY=VALUE` lines to the unix socket named by `$NOTIFY_SOCKET`.
//! Without that variable (not under systemd, or not `Type=notify`) every
//! call here does nothing.
//!
//! What the gateway says (OPERATIONS.md, "Install with systemd"):
//! - `READY=1` once the listeners accept and every core answers, and with
//!   NATS once the node is ready (`control::not_ready`), or at the latest
//!   after `nats.restore_deadline_ms` with a STATUS saying NATS is
//!   unreachable: the process serves (logins wait for NATS), and holding
//!   READY back would only make systemd kill and restart a node whose
//!   problem is elsewhere.
//! - `STATUS=` lines saying what the node does (starting, ready with its
//!   connection count, not ready and why, draining, reloading).
//! - `STOPPING=1` when a drain or a fast stop begins; `RELOADING=1` (with
//!   `MONOTONIC_USEC`, as `Type=notify-reload` wants) and `READY=1` around
//!   a SIGHUP reload.
//! - `WATCHDOG=1` at least every half `$WATCHDOG_USEC`, and only when
//!   every core has answered a snapshot request over its inbox: a core
//!   stuck in a loop (or a frozen process) stops the pings, and systemd
//!   restarts the node.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::control::{collect, not_ready, Shared};

/// The socket to systemd, when `$NOTIFY_SOCKET` names one.
struct Notifier {
    sock: UnixDatagram,
    addr: SocketAddr,
    /// One warning for failed sends, not one per watchdog tick.
    warned: AtomicBool,
}

static NOTIFIER: OnceLock<Option<Notifier>> = OnceLock::new();
/// READY=1 went out: a reload may say READY=1 again, a start may not yet.
static READY_SENT: AtomicBool = AtomicBool::new(false);

/// How often readiness is polled while starting.
const START_POLL: Duration = Duration::from_millis(100);
/// STATUS (and the watchdog check) at least this often once running.
const STATUS_EVERY: Duration = Duration::from_secs(5);
/// Longest wait for one core's snapshot.
const CORE_TIMEOUT: Duration = Duration::from_secs(2);

fn notifier() -> Option<&'static Notifier> {
    NOTIFIER
        .get_or_init(|| {
            let path = std::env::var_os("NOTIFY_SOCKET")?;
            match Notifier::connect(&path) {
                Ok(n) => Some(n),
                Err(e) => {
                    tracing::warn!(notify_socket = ?path, error = %e, "cannot use $NOTIFY_SOCKET: systemd will not hear READY=1 and times the start out; use Type=simple or fix the socket");
                    None
                }
            }
        })
        .as_ref()
}

impl Notifier {
    fn connect(path: &OsStr) -> io::Result<Notifier> {
        let bytes = path.as_bytes();
        let addr =
            match bytes.first() {
                Some(b'/') => SocketAddr::from_pathname(path)?,
                Some(b'@') => {
                    use std::os::linux::net::SocketAddrExt as _;
                    SocketAddr::from_abstract_name(&bytes[1..])?
                }
                _ => return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "not an absolute path or an @abstract name (vsock sockets are not supported)",
                )),
            };
        let sock = UnixDatagram::unbound()?;
        // Never block the control thread on a busy systemd: a lost
        // WATCHDOG=1 or STATUS is sent again at the next tick.
        sock.set_nonblocking(true)?;
        Ok(Notifier {
            sock,
            addr,
            warned: AtomicBool::new(false),
        })
    }
}

/// Whether `$NOTIFY_SOCKET` is set and usable.
pub fn enabled() -> bool {
    notifier().is_some()
}

/// Sends one notification (`KEY=VALUE` lines); nothing without systemd.
pub fn send(msg: &str) {
    let Some(n) = notifier() else { return };
    if let Err(e) = n.sock.send_to_addr(msg.as_bytes(), &n.addr) {
        if !n.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(error = %e, "sd_notify: a message to systemd failed (further failures are not logged)");
        }
    }
}

/// STATUS=, the one line `systemctl status` shows.
pub fn status(line: &str) {
    // A newline would end the value and start a bogus key.
    send(&format!("STATUS={}", line.replace('\n', " ")));
}

/// The watchdog interval systemd asks for (`$WATCHDOG_USEC`), when it is
/// meant for this process (`$WATCHDOG_PID`, if set, is ours).
pub fn watchdog_interval() -> Option<Duration> {
    if let Some(pid) = std::env::var_os("WATCHDOG_PID") {
        if pid.to_str().and_then(|p| p.parse::<u32>().ok()) != Some(std::process::id()) {
            return None;
        }
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// CLOCK_MONOTONIC in µs, as RELOADING=1 carries it.
fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the struct we pass.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) } != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

/// A drain or a fast stop begins (SIGTERM, SIGINT, `POST /drain`).
pub fn stopping(fast: bool) {
    let what = if fast {
        "stopping now: closing every connection"
    } else {
        "draining: GoAways spread over drain_spread_ms, exit when empty or at drain_deadline_ms"
    };
    send(&format!("STOPPING=1\nSTATUS={what}"));
}

/// A SIGHUP reload begins.
pub fn reloading() {
    send(&format!(
        "RELOADING=1\nMONOTONIC_USEC={}\nSTATUS=reloading the configuration",
        monotonic_usec()
    ));
}

/// A reload ended (`outcome` for STATUS). READY=1 only when the start had
/// said it already and no stop has begun since.
pub(crate) fn reloaded(shared: &Shared, outcome: &str) {
    let ready = READY_SENT.load(Ordering::SeqCst) && !shared.draining.load(Ordering::SeqCst);
    let ready = if ready { "READY=1\n" } else { "" };
    send(&format!(
        "{ready}STATUS=reload: {}",
        outcome.replace('\n', " ")
    ));
}

/// Reports to systemd for the life of the control plane: READY=1 when the
/// node is up (module docs), then STATUS and WATCHDOG=1. Runs on the
/// control-plane thread; returns at once without `$NOTIFY_SOCKET`.
pub(crate) async fn supervise(shared: Arc<Shared>) {
    if !enabled() {
        return;
    }
    let watchdog = watchdog_interval();
    let cores = shared.mesh.len();
    let nats = shared.cfg().nats.enabled();
    let nats_deadline = Duration::from_millis(shared.cfg().nats.restore_deadline_ms.into());
    if nats {
        // systemd's start timeout (90 s by default) must not run out while
        // NATS is awaited: ask for the NATS deadline and a margin.
        let usec = (nats_deadline + Duration::from_secs(30)).as_micros();
        send(&format!("EXTEND_TIMEOUT_USEC={usec}"));
    }
    let tick = watchdog.map_or(STATUS_EVERY, |w| (w / 2).min(STATUS_EVERY));
    let core_timeout = (tick / 2).min(CORE_TIMEOUT);
    let started = Instant::now();
    let mut last = String::new();
    let mut say = |line: String, extra: &str| {
        if line != last || !extra.is_empty() {
            send(&format!("{extra}STATUS={line}"));
            last = line;
        }
    };

    // Starting: until ready, or until the NATS deadline with every core up.
    loop {
        let t = Instant::now();
        let snaps = collect(&shared.mesh, core_timeout).await;
        let all = snaps.len() == cores;
        if all && watchdog.is_some() {
            send("WATCHDOG=1");
        }
        let conns = crate::metrics::total(&snaps).connections;
        match not_ready(&shared, snaps.len()) {
            // A stop came first: STOPPING=1 is out, READY=1 must not follow.
            _ if shared.draining.load(Ordering::SeqCst) => break,
            None => {
                say(running_line(&shared, None, conns), "READY=1\n");
                READY_SENT.store(true, Ordering::SeqCst);
                break;
            }
            Some(why) if all && nats && started.elapsed() >= nats_deadline => {
                tracing::warn!(why, "started without NATS: READY=1 to systemd, /readyz answers 503 until NATS is back");
                say(running_line(&shared, Some(&why), conns), "READY=1\n");
                READY_SENT.store(true, Ordering::SeqCst);
                break;
            }
            Some(why) => say(format!("starting: waiting until {why}"), ""),
        }
        tokio::time::sleep(START_POLL.saturating_sub(t.elapsed())).await;
    }

    // Running (and draining): the watchdog and what the node is doing.
    loop {
        let t = Instant::now();
        let snaps = collect(&shared.mesh, core_timeout).await;
        if snaps.len() == cores && watchdog.is_some() {
            send("WATCHDOG=1");
        }
        let conns = crate::metrics::total(&snaps).connections;
        let why = not_ready(&shared, snaps.len());
        say(running_line(&shared, why.as_deref(), conns), "");
        tokio::time::sleep(tick.saturating_sub(t.elapsed())).await;
    }
}

/// The STATUS line of a started node.
fn running_line(shared: &Shared, not_ready: Option<&str>, conns: u64) -> String {
    let cores = shared.mesh.len();
    match not_ready {
        _ if shared.draining.load(Ordering::SeqCst) => {
            format!("draining: {conns} connections left")
        }
        None => format!(
            "ready: {conns} connections, {cores} cores, clients on {}",
            shared.cfg().listen
        ),
        Some(why) if why.starts_with("NATS") => format!(
            "serving but not ready ({why}; NATS unreachable?): logins wait for NATS, /readyz answers 503; {conns} connections"
        ),
        Some(why) => format!("not ready: {why}; {conns} connections"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_socket_names_are_refused() {
        assert!(Notifier::connect(OsStr::new("relative/path")).is_err());
        assert!(Notifier::connect(OsStr::new("vsock:2:1234")).is_err());
        assert!(Notifier::connect(OsStr::new("@gateway-test-abstract")).is_ok());
    }

    #[test]
    fn a_datagram_reaches_the_socket() {
        let dir = std::env::temp_dir().join(format!("gw-notify-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let rx = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::connect(path.as_os_str()).unwrap();
        n.sock.send_to_addr(b"READY=1", &n.addr).unwrap();
        let mut buf = [0u8; 64];
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn monotonic_clock_moves() {
        let a = monotonic_usec();
        assert!(a > 0);
        assert!(monotonic_usec() >= a);
    }
}
