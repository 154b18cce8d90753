//! Test harness: an in-process gateway on port 0 and a blocking client that
//! speaks the wire protocol over a real socket.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use gateway::backend::embedded::Embedded;
use gateway::backend::{
    Backend, BackendFactory, BackendReply, LocalBoxFuture, SessionEvent, UpstreamRequest,
};
use gateway::config::{DEMO_KID, DEMO_SECRET};
use gateway::{Config, GatewayHandle};
use gw_proto::pb::{self, frame::Body, Frame};
use gw_proto::Decoded;

pub mod faults;
pub mod nats;
pub mod tls;

/// How long a test waits for an expected frame.
pub const WAIT: Duration = Duration::from_secs(10);

/// A config for tests: loopback, port 0, two cores, fast clocks.
/// The socket driver the tests run on: `GW_IO_DRIVER` (auto, uring or
/// epoll; `.ci/run` runs the suite on each), auto by default.
pub fn io_driver() -> gateway::config::IoDriver {
    use clap::ValueEnum;
    match std::env::var("GW_IO_DRIVER") {
        Ok(v) => gateway::config::IoDriver::from_str(&v, true)
            .unwrap_or_else(|e| panic!("GW_IO_DRIVER={v:?}: {e}")),
        Err(_) => Default::default(),
    }
}

pub fn test_config() -> Config {
    Config {
        io: gateway::config::IoConfig {
            driver: io_driver(),
            ..Default::default()
        },
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: "127.0.0.1:0".into(),
        cores: 2,
        demo: true,
        tick_ms: 10,
        auth_timeout_ms: 2_000,
        heartbeat_interval_min_ms: 50,
        ack_timeout_ms: 200,
        drain_deadline_ms: 2_000,
        drain_spread_ms: 0,
        goaway_retry_jitter_ms: 0,
        ..Config::default()
    }
}

/// Session events seen by the backend, as plain strings for assertions.
#[derive(Debug, Clone, PartialEq)]
pub enum Ev {
    Online {
        user: String,
        device: String,
        resume_seq: u64,
    },
    Offline {
        user: String,
        reason: gw_proto::CloseReason,
    },
    Undelivered {
        user: String,
        seqs: Vec<u64>,
        routes: Vec<String>,
    },
}

/// The embedded backend plus a log of every event.
#[derive(Clone, Default)]
pub struct Recorder(pub Arc<Mutex<Vec<Ev>>>);

struct RecordingBackend {
    inner: Embedded,
    log: Arc<Mutex<Vec<Ev>>>,
}

impl Backend for RecordingBackend {
    /// The embedded routes, plus `test.kick` {"user": "..."}: kicks a user.
    fn upstream(&self, req: UpstreamRequest) -> LocalBoxFuture<BackendReply> {
        if req.route == "test.kick" {
            let user = String::from_utf8_lossy(&req.payload).into_owned();
            let mut r = BackendReply::ok(bytes::Bytes::new());
            r.ops.push(gateway::backend::SessionOp::KickUser {
                user,
                message: "kicked by test".into(),
            });
            return Box::pin(std::future::ready(r));
        }
        if req.route == "test.burst" {
            // "<user> <n> [bytes]": n ack-required pushes to the user in one
            // reply, route "burst", payload the push's number (padded).
            let text = String::from_utf8_lossy(&req.payload).into_owned();
            let mut it = text.split_whitespace();
            let user = it.next().unwrap_or("").to_string();
            let n: usize = it.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            let pad: usize = it.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            let mut r = BackendReply::ok(bytes::Bytes::new());
            for i in 0..n {
                r.pushes.push(gateway::backend::PushOrder {
                    target: gateway::backend::Target::User(user.clone()),
                    route: "burst".into(),
                    payload: format!("{i:0pad$}").into(),
                    ack_required: true,
                    priority: pb::Priority::Normal,
                });
            }
            return Box::pin(std::future::ready(r));
        }
        self.inner.upstream(req)
    }
    fn event(&self, ev: SessionEvent) {
        Recorder::record_into(&self.log, &ev);
    }
}

impl BackendFactory for Recorder {
    fn for_core(&self, _core: usize) -> std::rc::Rc<dyn Backend> {
        std::rc::Rc::new(RecordingBackend {
            inner: Embedded,
            log: self.0.clone(),
        })
    }
}

impl Recorder {
    /// Records a session event (for backends of other tests that keep a
    /// `Recorder`'s log).
    pub fn record(&self, ev: &SessionEvent) {
        Self::record_into(&self.0, ev);
    }

    fn record_into(log: &Mutex<Vec<Ev>>, ev: &SessionEvent) {
        let e = match ev {
            SessionEvent::Online {
                user,
                device,
                resume_seq,
                ..
            } => Ev::Online {
                user: user.to_string(),
                device: device.to_string(),
                resume_seq: *resume_seq,
            },
            SessionEvent::Offline { user, reason, .. } => Ev::Offline {
                user: user.to_string(),
                reason: *reason,
            },
            SessionEvent::Undelivered { user, pushes, .. } => Ev::Undelivered {
                user: user.to_string(),
                seqs: pushes.iter().map(|p| p.seq).collect(),
                routes: pushes.iter().map(|p| p.route.clone()).collect(),
            },
        };
        log.lock().unwrap_or_else(PoisonError::into_inner).push(e);
    }

    pub fn events(&self) -> Vec<Ev> {
        self.0.lock().unwrap().clone()
    }
    /// Waits until `pred` holds for the event log.
    pub fn wait_for(&self, what: &str, pred: impl Fn(&[Ev]) -> bool) -> Vec<Ev> {
        let t = Instant::now();
        loop {
            let evs = self.events();
            if pred(&evs) {
                return evs;
            }
            assert!(
                t.elapsed() < WAIT,
                "timed out waiting for {what}; events: {evs:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Starts a gateway with the recording backend.
pub fn start(cfg: Config) -> (GatewayHandle, Recorder) {
    let rec = Recorder::default();
    let h = gateway::start(cfg, Arc::new(rec.clone()), false).expect("gateway starts");
    (h, rec)
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A demo-key token for `sub` expiring `ttl_s` from now (negative = past).
pub fn token(sub: &str, ttl_s: i64) -> String {
    let exp = unix_now() as i64 + ttl_s;
    let claims = serde_json::json!({"sub": sub, "exp": exp});
    gateway::auth::sign_hs256(DEMO_SECRET.as_bytes(), Some(DEMO_KID), &claims)
}

pub struct Client {
    pub s: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        Client::try_connect(addr).expect("connect")
    }

    pub fn try_connect(addr: SocketAddr) -> std::io::Result<Client> {
        let s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(WAIT))?;
        Ok(Client { s, buf: Vec::new() })
    }

    pub fn send(&mut self, body: Body) {
        let bytes = gw_proto::encode(&Frame { body: Some(body) });
        self.s.write_all(&bytes).expect("send");
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).expect("send raw");
    }

    /// Next frame, or an error on timeout / close.
    pub fn recv(&mut self) -> anyhow::Result<Body> {
        self.recv_within(WAIT)
    }

    pub fn recv_within(&mut self, wait: Duration) -> anyhow::Result<Body> {
        let deadline = Instant::now() + wait;
        loop {
            if let Decoded::Frame(f, used) = gw_proto::decode(&self.buf, 1 << 24)? {
                self.buf.drain(..used);
                return f.body.context("frame without body");
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("timed out");
            }
            self.s.set_read_timeout(Some(left))?;
            let mut tmp = [0u8; 65536];
            let n = self.s.read(&mut tmp)?;
            if n == 0 {
                bail!("connection closed by the server");
            }
            self.buf.extend_from_slice(&tmp[..n]);
        }
    }

    /// Skips frames until `pick` returns Some.
    pub fn recv_until<T>(&mut self, what: &str, mut pick: impl FnMut(&Body) -> Option<T>) -> T {
        loop {
            let b = self
                .recv()
                .unwrap_or_else(|e| panic!("waiting for {what}: {e}"));
            if let Some(t) = pick(&b) {
                return t;
            }
        }
    }

    /// True when the server closes the connection (EOF or reset) within WAIT;
    /// frames before the close are returned.
    pub fn read_to_close(&mut self) -> (bool, Vec<Body>) {
        let mut got = Vec::new();
        loop {
            match self.recv() {
                Ok(b) => got.push(b),
                Err(e) => {
                    let closed = !e.to_string().contains("timed out")
                        && !e.downcast_ref::<std::io::Error>().is_some_and(|io| {
                            matches!(
                                io.kind(),
                                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                            )
                        });
                    return (closed, got);
                }
            }
        }
    }

    pub fn auth_with(&mut self, token: String, device: &str) -> Body {
        self.try_auth(token, device).expect("auth answer")
    }

    /// Sends Auth; the first frame back, or an error (closed, reset, timeout).
    pub fn try_auth(&mut self, token: String, device: &str) -> anyhow::Result<Body> {
        let bytes = gw_proto::encode(&Frame {
            body: Some(Body::Auth(pb::Auth {
                protocol_version: gw_proto::PROTOCOL_VERSION,
                token,
                device_id: device.into(),
                ..Default::default()
            })),
        });
        self.s.write_all(&bytes)?;
        self.recv()
    }

    /// Authenticates as `user` and returns AuthOk.
    pub fn login(addr: SocketAddr, user: &str) -> (Client, pb::AuthOk) {
        let mut c = Client::connect(addr);
        match c.auth_with(token(user, 600), "dev1") {
            Body::AuthOk(ok) => (c, ok),
            other => panic!("expected AuthOk, got {other:?}"),
        }
    }

    pub fn upstream(&mut self, corr: u64, route: &str, payload: &str) {
        self.send(Body::Upstream(pb::Upstream {
            correlation_id: corr,
            route: route.into(),
            client_msg_id: format!("m{corr}"),
            payload: payload.as_bytes().to_vec().into(),
            ..Default::default()
        }));
    }

    /// Sends an upstream and returns its reply (skipping other frames).
    pub fn call(&mut self, corr: u64, route: &str, payload: &str) -> pb::UpstreamReply {
        self.upstream(corr, route, payload);
        self.recv_until("upstream reply", |b| match b {
            Body::UpstreamReply(r) if r.correlation_id == corr => Some(r.clone()),
            _ => None,
        })
    }
}

/// Waits until `f` is true.
pub fn eventually(what: &str, f: impl Fn() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < WAIT, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A request with no body on the admin server; returns (status, body).
pub fn http_request(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    http_request_with(addr, method, path, &[])
}

/// A request with extra header lines ("Name: value").
pub fn http_request_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[&str],
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let extra: String = headers.iter().map(|h| format!("{h}\r\n")).collect();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n{extra}\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

/// GET on the admin server; returns (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http_request(addr, "GET", path)
}

/// Closes with `reason` (e.g. "TLS_FAILED") so far, from /stats.
pub fn closes(gw: &GatewayHandle, reason: &str) -> u64 {
    let (_, body) = http_get(gw.admin_addr.unwrap(), "/stats");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["closes"][reason].as_u64().unwrap_or(0)
}

/// A port nothing listens on right now (the OS picks it; another process
/// could take it before the caller binds it, which tests accept), and not
/// handed out before in this test process: two tests running at once
/// never get the same one (the gateways listen with SO_REUSEPORT, so a
/// shared port would split one test's requests between their gateways).
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(PoisonError::into_inner);
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}
