//! Fault injection for `tests/faults.rs`: a backend that records every
//! undelivered push with its payload and can stall on demand, network
//! namespaces that make a client vanish without a FIN, the gateway binary
//! as a child process under a low open-file limit, frames over any stream
//! (TLS), and small readers for /connz, /metrics and a JetStream stream.
#![allow(dead_code)]

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use gateway::backend::{
    Backend, BackendFactory, BackendReply, LocalBoxFuture, PushOrder, SessionEvent, Target,
    UndeliveredReason, UpstreamRequest,
};
use gateway::{Config, GatewayHandle};
use gw_proto::pb::{frame::Body, Frame};
use gw_proto::{CloseReason, Decoded, ErrorCode};

use super::nats::Nats;
use super::WAIT;

/// Route of the ack-required pushes the fault backend sends.
pub const PUSH_ROUTE: &str = "fault.push";

/// What the fault backend was told by the gateway, payloads included.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Online {
        conn_id: u64,
        user: String,
    },
    Offline {
        conn_id: u64,
        user: String,
        reason: CloseReason,
    },
    Undelivered {
        conn_id: u64,
        user: String,
        seq: u64,
        payload: String,
        reason: UndeliveredReason,
    },
}

/// A backend for fault tests (one shared state for every core). Routes:
/// - `echo`: the payload back;
/// - `push` `"<conn_id> <text>"`: an ack-required push of `text` to that
///   connection (so a push to a connection already gone is reported
///   NO_CONNECTION: every push is accounted for);
/// - `fill` `"<conn_id> <bytes>"`: a push of that many bytes, no ack;
/// - `work`: the payload back, but only once the backend is not stalled.
///   Each `work` future alive is counted (`live`, `peak`), so a test sees
///   how much work a stalled backend was made to hold.
#[derive(Clone, Default)]
pub struct FaultBackend {
    events: Arc<Mutex<Vec<Event>>>,
    stalled: Arc<AtomicBool>,
    live: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
}

struct CoreBackend(FaultBackend);

/// Counts one `work` future alive until it is dropped (answered, or
/// dropped by the gateway at `upstream_timeout_ms`).
struct Alive(Arc<AtomicUsize>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn conn_and_rest(payload: &[u8]) -> Option<(u64, String)> {
    let s = std::str::from_utf8(payload).ok()?;
    let (id, rest) = s.split_once(' ')?;
    Some((id.parse().ok()?, rest.to_string()))
}

impl Backend for CoreBackend {
    fn upstream(&self, req: UpstreamRequest) -> LocalBoxFuture<BackendReply> {
        let b = &self.0;
        let reply = match req.route.as_str() {
            "echo" => BackendReply::ok(req.payload),
            "push" | "fill" => match conn_and_rest(&req.payload) {
                Some((conn_id, rest)) => {
                    let (payload, ack_required) = if req.route == "push" {
                        (Bytes::from(rest), true)
                    } else {
                        let n: usize = rest.parse().unwrap_or(0);
                        (Bytes::from(vec![b'f'; n]), false)
                    };
                    let mut r = BackendReply::ok(Bytes::new());
                    r.pushes.push(PushOrder {
                        target: Target::Conn(conn_id),
                        route: PUSH_ROUTE.into(),
                        payload,
                        ack_required,
                        priority: gw_proto::pb::Priority::Normal,
                    });
                    r
                }
                None => BackendReply::error(ErrorCode::BadRequest, "want \"<conn_id> <text>\""),
            },
            "work" => {
                let n = b.live.fetch_add(1, Ordering::SeqCst) + 1;
                b.peak.fetch_max(n, Ordering::SeqCst);
                let alive = Alive(b.live.clone());
                let stalled = b.stalled.clone();
                return Box::pin(async move {
                    let _alive = alive;
                    while stalled.load(Ordering::SeqCst) {
                        glommio::timer::sleep(Duration::from_millis(5)).await;
                    }
                    BackendReply::ok(req.payload)
                });
            }
            _ => BackendReply::error(ErrorCode::UnknownRoute, "no such route"),
        };
        Box::pin(std::future::ready(reply))
    }

    fn event(&self, ev: SessionEvent) {
        let mut log = self.0.events.lock().unwrap();
        match ev {
            SessionEvent::Online { conn_id, user, .. } => log.push(Event::Online {
                conn_id,
                user: user.to_string(),
            }),
            SessionEvent::Offline {
                conn_id,
                user,
                reason,
                ..
            } => log.push(Event::Offline {
                conn_id,
                user: user.to_string(),
                reason,
            }),
            SessionEvent::Undelivered {
                conn_id,
                user,
                pushes,
                ..
            } => {
                for p in pushes {
                    log.push(Event::Undelivered {
                        conn_id,
                        user: user.to_string(),
                        seq: p.seq,
                        payload: String::from_utf8_lossy(&p.payload).into_owned(),
                        reason: p.reason,
                    });
                }
            }
        }
    }
}

impl BackendFactory for FaultBackend {
    fn for_core(&self, _core: usize) -> Rc<dyn Backend> {
        Rc::new(CoreBackend(self.clone()))
    }
}

impl FaultBackend {
    /// Starts an in-process gateway served by this backend.
    pub fn start(&self, cfg: Config) -> GatewayHandle {
        gateway::start(cfg, Arc::new(self.clone()), false).expect("gateway starts")
    }
    pub fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap().clone()
    }
    pub fn stall(&self, on: bool) {
        self.stalled.store(on, Ordering::SeqCst);
    }
    /// `work` futures alive now.
    pub fn live(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }
    /// Most `work` futures ever alive at once.
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }
    /// The close reason of a connection, once it went offline.
    pub fn offline(&self, conn_id: u64) -> Option<CloseReason> {
        self.events().iter().find_map(|e| match e {
            Event::Offline {
                conn_id: c, reason, ..
            } if *c == conn_id => Some(*reason),
            _ => None,
        })
    }
    /// Every undelivered push reported: (payload, conn_id, reason).
    pub fn undelivered(&self) -> Vec<(String, u64, UndeliveredReason)> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                Event::Undelivered {
                    payload,
                    conn_id,
                    reason,
                    ..
                } => Some((payload, conn_id, reason)),
                _ => None,
            })
            .collect()
    }
    /// Waits (up to WAIT) until `pred` holds.
    pub fn wait_for(&self, what: &str, pred: impl Fn(&FaultBackend) -> bool) {
        let t = Instant::now();
        while !pred(self) {
            assert!(
                t.elapsed() < WAIT,
                "timed out waiting for {what}; events: {:?}",
                self.events()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// RUST_LOG=debug shows the gateway's log in failing tests.
pub fn init_log() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// True when a client read error is a timeout rather than a close.
pub fn timed_out(e: &anyhow::Error) -> bool {
    e.to_string().contains("timed out")
        || e.downcast_ref::<io::Error>().is_some_and(|io| {
            matches!(
                io.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            )
        })
}

// ---------------------------------------------------------------------------
// Frames over any byte stream (TLS, a socket made in another namespace).

pub fn write_frame(w: &mut impl Write, body: Body) -> io::Result<()> {
    w.write_all(&gw_proto::encode(&Frame { body: Some(body) }))?;
    w.flush()
}

/// Reads whole frames from any stream.
#[derive(Default)]
pub struct FrameReader {
    buf: Vec<u8>,
}

impl FrameReader {
    pub fn read(&mut self, r: &mut impl Read) -> io::Result<Body> {
        loop {
            match gw_proto::decode(&self.buf, 1 << 24) {
                Ok(Decoded::Frame(f, used)) => {
                    self.buf.drain(..used);
                    return f
                        .body
                        .ok_or_else(|| io::Error::other("frame without a body"));
                }
                Ok(_) => {}
                Err(e) => return Err(io::Error::other(format!("bad frame: {e}"))),
            }
            let mut tmp = [0u8; 16384];
            let n = r.read(&mut tmp)?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&tmp[..n]);
        }
    }
}

// ---------------------------------------------------------------------------
// Admin readers.

/// `/connz?<query>` as JSON.
pub fn connz(admin: SocketAddr, query: &str) -> serde_json::Value {
    let (status, body) = super::http_get(admin, &format!("/connz?{query}"));
    assert_eq!(status, 200, "/connz?{query}: {body}");
    serde_json::from_str(&body).expect("/connz JSON")
}

/// The sum over cores of a Prometheus sample (`gateway_accept_errors_total`
/// sums every `{core=..}` line), from a /metrics text.
pub fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// /metrics, or None when the admin server does not answer within `wait`.
pub fn try_metrics(admin: SocketAddr, wait: Duration) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&admin, wait).ok()?;
    s.set_read_timeout(Some(wait)).ok()?;
    s.set_write_timeout(Some(wait)).ok()?;
    write!(s, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.starts_with("HTTP/1.1 200")
        .then(|| out.split("\r\n\r\n").nth(1).unwrap_or("").to_string())
}

// ---------------------------------------------------------------------------
// TLS.

/// A test config with a self-signed certificate for localhost; returns the
/// config and the certificate to trust.
pub fn tls_config() -> (Config, rustls::pki_types::CertificateDer<'static>) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "gw-faults-tls-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    let mut cfg = super::test_config();
    cfg.tls.cert_file = cert.display().to_string();
    cfg.tls.key_file = key.display().to_string();
    (cfg, ck.cert.der().clone())
}

pub fn tls_client_config(
    ca: &rustls::pki_types::CertificateDer<'static>,
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

pub type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A TLS connection with the handshake done.
pub fn tls_connect(addr: SocketAddr, cfg: Arc<rustls::ClientConfig>) -> TlsStream {
    let sock = TcpStream::connect(addr).unwrap();
    sock.set_nodelay(true).unwrap();
    sock.set_read_timeout(Some(WAIT)).unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(cfg, name).unwrap();
    let mut s = rustls::StreamOwned::new(conn, sock);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock).expect("TLS handshake");
    }
    s
}

// ---------------------------------------------------------------------------
// Network namespaces: a client behind a veth pair whose link the test cuts,
// so the client vanishes without a FIN or a reset.

/// Whether fault tests that need root and iproute2 must run (CI=true) or
/// may be skipped here with a message.
fn required() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A network namespace with one veth pair to the test's namespace:
/// `host_ip` on this side, `inner_ip` inside. Deleted on drop.
pub struct Netns {
    pub name: String,
    inner_dev: String,
    host_dev: String,
    pub host_ip: Ipv4Addr,
    pub inner_ip: Ipv4Addr,
}

impl Netns {
    /// Makes one, or says why it cannot and returns None (the caller skips
    /// its test); under CI=true, cannot is a failure.
    pub fn create(test: &str) -> Option<Netns> {
        match Self::try_create() {
            Ok(n) => Some(n),
            Err(why) if required() => {
                panic!("{test}: needs root and iproute2 (network namespaces): {why}")
            }
            Err(why) => {
                eprintln!(
                    "SKIPPED {test}: needs root and iproute2 to make a network namespace: {why} \
                     (under CI=true this fails instead)"
                );
                None
            }
        }
    }

    fn try_create() -> Result<Netns, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not running as root".into());
        }
        ip(&["-V"]).map_err(|e| format!("iproute2 missing ({e})"))?;
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst) as u32;
        let pid = std::process::id();
        // A /30 in 198.18.0.0/15 (reserved for benchmarks, RFC 2544).
        let block = (pid.wrapping_mul(8).wrapping_add(n)) % (1 << 15);
        let base = u32::from(Ipv4Addr::new(198, 18, 0, 0)) + block * 4;
        let ns = Netns {
            name: format!("gwfault-{pid}-{n}"),
            inner_dev: format!("gf{}c{n}", pid % 1_000_000),
            host_dev: format!("gf{}h{n}", pid % 1_000_000),
            host_ip: Ipv4Addr::from(base + 1),
            inner_ip: Ipv4Addr::from(base + 2),
        };
        ip(&["netns", "add", &ns.name])?;
        // From here on, drop cleans up.
        let host = format!("{}/30", ns.host_ip);
        let inner = format!("{}/30", ns.inner_ip);
        ip(&[
            "link",
            "add",
            &ns.host_dev,
            "type",
            "veth",
            "peer",
            "name",
            &ns.inner_dev,
        ])?;
        ip(&["link", "set", &ns.inner_dev, "netns", &ns.name])?;
        ip(&["addr", "add", &host, "dev", &ns.host_dev])?;
        ip(&["link", "set", &ns.host_dev, "up"])?;
        ip(&["-n", &ns.name, "addr", "add", &inner, "dev", &ns.inner_dev])?;
        ip(&["-n", &ns.name, "link", "set", &ns.inner_dev, "up"])?;
        ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A TCP connection to `addr` made from inside the namespace.
    pub fn connect(&self, addr: SocketAddr) -> TcpStream {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || -> io::Result<TcpStream> {
            let f = std::fs::File::open(&path)?;
            // SAFETY: setns on this (short-lived) thread only; the socket
            // made next belongs to the namespace and outlives the thread.
            if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            let t = Instant::now();
            loop {
                // The veth link may take a moment to come up.
                match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                    Ok(s) => return Ok(s),
                    Err(e) if t.elapsed() > WAIT => return Err(e),
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        })
        .join()
        .expect("netns connect thread")
        .expect("connect from inside the namespace")
    }

    /// Cuts the link: from now on, packets either way are dropped; nothing
    /// (no FIN, no reset) reaches the other side.
    pub fn cut(&self) {
        ip(&["-n", &self.name, "link", "set", &self.inner_dev, "down"]).expect("link down");
    }

    pub fn host_addr(&self, port: u16) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(self.host_ip, port))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
        // Deleting the namespace deletes the pair; this is for the case
        // where it was never moved in.
        let _ = ip(&["link", "del", &self.host_dev]);
    }
}

// ---------------------------------------------------------------------------
// The gateway binary as a child process, with its own open-file limit.

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
        let port = super::nats::free_port();
        let admin_port = super::nats::free_port();
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

// ---------------------------------------------------------------------------
// JetStream, through its request API (the test client has no JetStream
// feature): a stream that keeps what the gateway publishes on a subject,
// whoever listens, across NATS restarts.

fn js_call(nats: &Nats, subject: &str, body: serde_json::Value) -> serde_json::Value {
    let m = nats
        .request(subject, &[], body.to_string().as_bytes())
        .unwrap_or_else(|e| panic!("{subject}: {e}"));
    let v: serde_json::Value = serde_json::from_slice(&m.payload).expect("JetStream API JSON");
    assert!(v.get("error").is_none(), "{subject}: {v}");
    v
}

/// Creates a file-backed stream `name` on `subject`.
pub fn js_stream(nats: &Nats, name: &str, subject: &str) {
    js_call(
        nats,
        &format!("$JS.API.STREAM.CREATE.{name}"),
        serde_json::json!({"name": name, "subjects": [subject], "storage": "file"}),
    );
}

/// The payloads stored in stream `name` with sequence numbers from `from`
/// on; returns them and the next sequence number to ask for.
pub fn js_read(nats: &Nats, name: &str, from: u64) -> (Vec<Vec<u8>>, u64) {
    use base64::Engine as _;
    let info = js_call(
        nats,
        &format!("$JS.API.STREAM.INFO.{name}"),
        serde_json::json!({}),
    );
    let last = info["state"]["last_seq"].as_u64().unwrap_or(0);
    let mut out = Vec::new();
    for seq in from..=last {
        let v = js_call(
            nats,
            &format!("$JS.API.STREAM.MSG.GET.{name}"),
            serde_json::json!({ "seq": seq }),
        );
        let data = v["message"]["data"].as_str().unwrap_or("");
        out.push(
            base64::engine::general_purpose::STANDARD
                .decode(data)
                .expect("base64 message data"),
        );
    }
    (out, last.max(from.saturating_sub(1)) + 1)
}
