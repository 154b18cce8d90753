//! Hostile clients: slowloris in the auth, TLS and WebSocket handshakes,
//! and a flood of garbage connections while real clients are served.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use gateway::Config;
use gw_proto::pb::{self, frame::Body, Frame};
use gw_proto::ErrorCode;
use prost::Message as _;

use crate::common::faults::{connz, init_log, write_frame, FaultBackend, FrameReader};
use crate::common::tls::{tls_client_config, tls_config, tls_connect};
use crate::common::{self, test_config, Client, WAIT};
use crate::{auth_body, echo, echo_reply, ping_pong, sum_counter};

// ===========================================================================
// Slowloris.

enum LorisConn {
    Raw(TcpStream),
    Tls(Box<common::tls::TlsStream>),
}

/// A connection that sends its handshake one byte per tick.
struct Loris {
    kind: &'static str,
    conn: LorisConn,
    bytes: Vec<u8>,
    sent: usize,
    opened: Instant,
    closed_after: Option<Duration>,
}

impl Loris {
    fn new(kind: &'static str, conn: LorisConn, bytes: Vec<u8>) -> Loris {
        let sock = match &conn {
            LorisConn::Raw(s) => s,
            LorisConn::Tls(t) => &t.sock,
        };
        sock.set_nonblocking(true).unwrap();
        Loris {
            kind,
            conn,
            bytes,
            sent: 0,
            opened: Instant::now(),
            closed_after: None,
        }
    }

    /// Sends the next byte, then looks for the server's close.
    fn step(&mut self) {
        if self.sent < self.bytes.len() {
            let b = &self.bytes[self.sent..self.sent + 1];
            let r = match &mut self.conn {
                LorisConn::Raw(s) => s.write(b).map(|_| ()),
                // Inside TLS: one record per byte.
                LorisConn::Tls(t) => t.conn.writer().write_all(b).and_then(|_| {
                    while t.conn.wants_write() {
                        t.conn.write_tls(&mut t.sock)?;
                    }
                    Ok(())
                }),
            };
            match r {
                Ok(()) => self.sent += 1,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => self.closed_after = Some(self.opened.elapsed()),
            }
        }
        let sock = match &mut self.conn {
            LorisConn::Raw(s) => s,
            LorisConn::Tls(t) => &mut t.sock,
        };
        let mut buf = [0u8; 4096];
        loop {
            match sock.read(&mut buf) {
                Ok(0) => break self.closed_after = Some(self.opened.elapsed()),
                Ok(_) => continue, // AuthError, an HTTP answer, a TLS alert or ticket
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => break self.closed_after = Some(self.opened.elapsed()),
            }
        }
    }
}

fn ws_login(addr: SocketAddr, user: &str) -> tungstenite::WebSocket<TcpStream> {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let req =
        tungstenite::client::IntoClientRequest::into_client_request(format!("ws://{addr}/ws"))
            .unwrap();
    let (mut ws, _) = tungstenite::client(req, s).expect("WebSocket upgrade");
    ws_send(&mut ws, auth_body(user));
    assert!(matches!(ws_recv(&mut ws), Body::AuthOk(_)));
    ws
}

fn ws_send(ws: &mut tungstenite::WebSocket<TcpStream>, body: Body) {
    let bytes = Frame { body: Some(body) }.encode_to_vec();
    ws.send(tungstenite::Message::Binary(bytes.into())).unwrap();
}

fn ws_recv(ws: &mut tungstenite::WebSocket<TcpStream>) -> Body {
    loop {
        if let tungstenite::Message::Binary(b) = ws.read().unwrap() {
            return Frame::decode(&b[..]).unwrap().body.unwrap();
        }
    }
}

/// 40 connections each of four kinds send their opening one byte every
/// 20 ms: an Auth frame (plain), a TLS ClientHello, a WebSocket upgrade, and
/// a WebSocket upgrade inside a finished TLS handshake (one record per
/// byte). Bytes keep arriving, but the auth deadline (500 ms here) counts
/// from accept: every one is closed as AUTH_TIMEOUT before it finishes its
/// handshake. Meanwhile plain, TLS and WebSocket clients log in and are
/// served.
#[test]
fn slowloris_in_auth_tls_and_websocket_handshakes_is_cut_at_the_auth_deadline() {
    init_log();
    let (mut cfg, ca) = tls_config();
    cfg.auth_timeout_ms = 500;
    let cert_dir = std::path::Path::new(&cfg.tls.cert_file)
        .parent()
        .unwrap()
        .to_path_buf();
    let gw = FaultBackend::default().start(cfg);
    let addr = gw.local_addr;
    let tls = tls_client_config(&ca, &[&rustls::version::TLS13]);
    let auth = gw_proto::encode(&Frame {
        body: Some(auth_body("loris")),
    });
    let hello = {
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut c = rustls::ClientConnection::new(tls.clone(), name).unwrap();
        let mut v = Vec::new();
        c.write_tls(&mut v).unwrap();
        v
    };
    let upgrade = b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
        Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        .to_vec();
    const PER_KIND: usize = 40;
    let mut lorises = Vec::new();
    for _ in 0..PER_KIND {
        let raw = || LorisConn::Raw(TcpStream::connect(addr).unwrap());
        lorises.push(Loris::new("auth", raw(), auth.to_vec()));
        lorises.push(Loris::new("tls", raw(), hello.clone()));
        lorises.push(Loris::new("ws", raw(), upgrade.clone()));
        let t = tls_connect(addr, tls.clone());
        lorises.push(Loris::new(
            "wss",
            LorisConn::Tls(Box::new(t)),
            upgrade.clone(),
        ));
    }
    let driver = std::thread::spawn(move || {
        let t = Instant::now();
        while lorises.iter().any(|l| l.closed_after.is_none()) && t.elapsed() < WAIT {
            for l in lorises.iter_mut().filter(|l| l.closed_after.is_none()) {
                l.step();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        lorises
    });

    // Real clients meanwhile, on each transport.
    let (mut plain, _) = Client::login(addr, "plain");
    assert_eq!(plain.call(1, "echo", "x").status, 0);
    let mut t = tls_connect(addr, tls.clone());
    let mut r = FrameReader::default();
    write_frame(&mut t, auth_body("tls")).unwrap();
    assert!(matches!(r.read(&mut t).unwrap(), Body::AuthOk(_)));
    write_frame(&mut t, echo(1)).unwrap();
    assert!(echo_reply(&r.read(&mut t).unwrap(), 1));
    let mut ws = ws_login(addr, "ws");
    ws_send(&mut ws, echo(1));
    assert!(echo_reply(&ws_recv(&mut ws), 1));

    let lorises = driver.join().unwrap();
    let mut by_kind: BTreeMap<&str, (usize, Duration)> = BTreeMap::new();
    for l in &lorises {
        let after = l
            .closed_after
            .unwrap_or_else(|| panic!("a {} slowloris was never closed", l.kind));
        assert!(
            l.sent < l.bytes.len(),
            "a {} slowloris finished its handshake ({} bytes) before being closed",
            l.kind,
            l.sent
        );
        let e = by_kind.entry(l.kind).or_default();
        e.0 += 1;
        e.1 = e.1.max(after);
    }
    eprintln!("slowloris: closed (count, latest close after connect) {by_kind:?}");
    common::eventually("every slowloris counted as AUTH_TIMEOUT", || {
        common::closes(&gw, "AUTH_TIMEOUT") == (4 * PER_KIND) as u64
    });
    // The real clients are still served.
    assert_eq!(plain.call(2, "echo", "x").status, 0);
    write_frame(&mut t, echo(2)).unwrap();
    assert!(echo_reply(&r.read(&mut t).unwrap(), 2));
    ws_send(&mut ws, echo(2));
    assert!(echo_reply(&ws_recv(&mut ws), 2));
    gw.shutdown(false);
    let _ = std::fs::remove_dir_all(cert_dir);
}

// ===========================================================================
// A flood of garbage connections.

fn connections(gw: &gateway::GatewayHandle) -> u64 {
    gw.snapshots().iter().map(|s| s.connections).sum()
}

fn xorshift(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

/// One garbage connection of kind `kind % 9`: Err when it could not
/// connect, the socket when it is one that stays open, silent.
fn garbage(
    addr: SocketAddr,
    kind: usize,
    seed: &mut u64,
    auth: &[u8],
) -> std::io::Result<Option<TcpStream>> {
    let mut s = TcpStream::connect(addr)?;
    let junk: Vec<u8> = (0..64).map(|_| xorshift(seed) as u8).collect();
    let _ = match kind % 9 {
        0 => s.write_all(&junk),
        1 => Ok(()), // connect, close
        2 => socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO)), // reset
        3 => return Ok(Some(s)), // silent
        4 => s.write_all(b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n"),
        5 => s.write_all(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3]),
        6 => s.write_all(&gw_proto::encode(&Frame {
            body: Some(Body::Ping(pb::Ping::default())),
        })),
        7 => s.write_all(&gw_proto::encode(&Frame {
            body: Some(Body::Auth(pb::Auth {
                protocol_version: gw_proto::PROTOCOL_VERSION,
                token: "not.a.token".into(),
                ..Default::default()
            })),
        })),
        _ => s.write_all(&auth[..auth.len() / 2]),
    };
    Ok(None)
}

/// 3,200 garbage connections (random bytes, connect-and-close, resets,
/// silence, stray HTTP, huge length prefixes, frames before Auth, bad
/// tokens, half frames) from four threads, while six real clients loop on
/// requests and pings: every real request is answered OK, no real client is
/// closed, and every garbage connection is closed (the silent ones at the
/// auth deadline).
#[test]
fn a_garbage_flood_leaves_real_clients_served() {
    init_log();
    let fb = FaultBackend::default();
    let mut cfg = Config {
        auth_timeout_ms: 1_000,
        ..test_config()
    };
    // No accept-rate limit (it has its own tests): every garbage
    // connection reaches the protocol and must be closed by it.
    cfg.overload.accept_rate_per_core_per_s = 0;
    let gw = fb.start(cfg);
    let addr = gw.local_addr;
    const REAL: usize = 6;
    const FLOODERS: usize = 4;
    const PER_FLOODER: usize = 800;
    let stop = Arc::new(AtomicBool::new(false));
    // A real client sends a request every 10 ms and waits for its answer;
    // a BUSY (overload control) is retried after its retry_after_ms.
    type Real = (u64, u64, Vec<Duration>, Client);
    let real: Vec<JoinHandle<Real>> = (0..REAL)
        .map(|i| {
            let (mut c, _) = Client::login(addr, &format!("real{i}"));
            let stop = stop.clone();
            std::thread::spawn(move || {
                let (mut lat, mut corr, mut busy) = (Vec::new(), 0, 0);
                while !stop.load(Ordering::SeqCst) {
                    corr += 1;
                    let t = Instant::now();
                    loop {
                        let r = c.call(corr, "echo", "x");
                        if r.status == 0 {
                            break;
                        }
                        assert_eq!(r.status, ErrorCode::Busy as u32, "{r:?}");
                        assert!(t.elapsed() < WAIT, "a real request never served");
                        busy += 1;
                        std::thread::sleep(Duration::from_millis(r.retry_after_ms.into()));
                    }
                    lat.push(t.elapsed());
                    if corr % 8 == 0 {
                        ping_pong(&mut c);
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                (corr, busy, lat, c)
            })
        })
        .collect();
    let auth = gw_proto::encode(&Frame {
        body: Some(auth_body("half")),
    });
    let t_flood = Instant::now();
    let flooders: Vec<JoinHandle<(Vec<TcpStream>, usize)>> = (0..FLOODERS)
        .map(|f| {
            let auth = auth.clone();
            std::thread::spawn(move || {
                let mut seed = 0x9E37_79B9_7F4A_7C15u64 ^ (f as u64 + 1);
                let (mut held, mut refused) = (Vec::new(), 0);
                for i in 0..PER_FLOODER {
                    match garbage(addr, i + f, &mut seed, &auth) {
                        Ok(Some(s)) => held.push(s),
                        Ok(None) => {}
                        Err(_) => refused += 1,
                    }
                }
                (held, refused)
            })
        })
        .collect();
    let mut held = Vec::new();
    let mut refused = 0;
    for f in flooders {
        let (h, r) = f.join().unwrap();
        held.extend(h);
        refused += r;
    }
    let flood_time = t_flood.elapsed();
    // The silent ones are closed at the auth deadline.
    for s in held.iter_mut() {
        s.set_read_timeout(Some(WAIT)).unwrap();
        let mut buf = [0u8; 256];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => continue,
            }
        }
    }
    stop.store(true, Ordering::SeqCst);
    let (mut requests, mut busy) = (0, 0);
    let mut lat: Vec<Duration> = Vec::new();
    let mut clients = Vec::new();
    for r in real {
        let (n, b, l, c) = r.join().expect("a real client failed during the flood");
        requests += n;
        busy += b;
        lat.extend(l);
        clients.push(c);
    }
    lat.sort();
    let t = Instant::now();
    while connections(&gw) != REAL as u64 {
        if t.elapsed() > WAIT {
            let z = connz(gw.admin_addr.unwrap(), "authed=false&limit=20");
            panic!("{} connections left: {z}", connections(&gw));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        !fb.events()
            .iter()
            .any(|e| matches!(e, common::faults::Event::Offline { .. })),
        "a real client was closed"
    );
    // Every garbage connection was accepted and closed; only the silent
    // ones waited for the auth deadline (the others ended on what they
    // sent, or on their FIN or reset).
    let accepts = sum_counter(&gw, |c| c.accepts);
    assert_eq!(accepts, (REAL + FLOODERS * PER_FLOODER - refused) as u64);
    let (_, stats) = common::http_get(gw.admin_addr.unwrap(), "/stats");
    let closes = serde_json::from_str::<serde_json::Value>(&stats).unwrap()["closes"].clone();
    let closed: u64 = closes
        .as_object()
        .unwrap()
        .values()
        .filter_map(|v| v.as_u64())
        .sum();
    assert_eq!(closed, accepts - REAL as u64, "{closes}");
    assert_eq!(closes["AUTH_TIMEOUT"], held.len() as u64, "{closes}");
    eprintln!(
        "garbage flood: {} connections in {flood_time:?} ({} held silent, {refused} not connected); \
         {requests} real requests all answered ({busy} BUSY answers retried), latency p50 {:?} \
         p99 {:?} max {:?}; closes {closes}",
        FLOODERS * PER_FLOODER,
        held.len(),
        lat[lat.len() / 2],
        lat[lat.len() * 99 / 100],
        lat[lat.len() - 1],
    );
    assert!(requests > REAL as u64);
    for (i, c) in clients.iter_mut().enumerate() {
        assert_eq!(c.call(1_000_000 + i as u64, "echo", "after").status, 0);
    }
    gw.shutdown(false);
}
