//! Half-open clients: ones that stop reading, and ones that vanish without
//! a FIN (a veth link cut in a network namespace). And the other way round:
//! a last frame and its FIN in one segment.

use std::collections::HashMap;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gateway::backend::UndeliveredReason;
use gateway::Config;
use gw_proto::pb::{self, frame::Body, Frame};
use gw_proto::CloseReason;

use crate::common::faults::{connz, init_log, write_frame, FaultBackend, FrameReader, Netns};
use crate::common::{self, test_config, Client, WAIT};
use crate::{auth_body, ping_pong};

/// A client under test: authenticated, heartbeat set, then left alone.
struct Victim {
    name: &'static str,
    conn_id: u64,
    sock: TcpStream,
    /// Gets 8 KB no-ack fillers as well as ack-required pushes.
    flood: bool,
}

/// Authenticates on `sock` and asks for a `heartbeat_ms` interval (idle
/// timeout 3×); reads the answers, then nothing more.
fn victim(name: &'static str, mut sock: TcpStream, heartbeat_ms: u32, flood: bool) -> Victim {
    sock.set_read_timeout(Some(WAIT)).unwrap();
    sock.set_nodelay(true).unwrap();
    let mut r = FrameReader::default();
    write_frame(&mut sock, auth_body(name)).unwrap();
    let Body::AuthOk(ok) = r.read(&mut sock).unwrap() else {
        panic!("{name}: no AuthOk")
    };
    write_frame(
        &mut sock,
        Body::Ping(pb::Ping {
            heartbeat_interval_ms: heartbeat_ms,
        }),
    )
    .unwrap();
    assert!(matches!(r.read(&mut sock).unwrap(), Body::Pong(_)));
    Victim {
        name,
        conn_id: ok.conn_id,
        sock,
        flood,
    }
}

/// A socket with a 4 KB receive buffer (set before connecting), so that a
/// client that does not read fills up quickly.
fn small_window_socket(addr: SocketAddr) -> TcpStream {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.set_recv_buffer_size(4096).unwrap();
    s.connect(&addr.into()).unwrap();
    s.into()
}

struct Pushed {
    /// Ack-required push ids sent to each victim (by conn id).
    ids: HashMap<u64, Vec<String>>,
    /// Largest outbound queue seen on a victim, bytes.
    max_queued: u64,
    /// When each victim was seen closed, from the start.
    closed_after: HashMap<u64, Duration>,
}

/// Pushes to the victims until the gateway has closed every one: each gets
/// ack-required pushes (quiet ones five in all), flooded ones 8 KB no-ack
/// fillers too. Samples their outbound queues meanwhile.
fn push_until_closed(
    pusher: &mut Client,
    fb: &FaultBackend,
    admin: SocketAddr,
    victims: &[Victim],
) -> Pushed {
    let mut p = Pushed {
        ids: HashMap::new(),
        max_queued: 0,
        closed_after: HashMap::new(),
    };
    let mut corr = 1000;
    let t = Instant::now();
    loop {
        let open: Vec<&Victim> = victims
            .iter()
            .filter(|v| {
                if fb.offline(v.conn_id).is_none() {
                    return true;
                }
                p.closed_after.entry(v.conn_id).or_insert(t.elapsed());
                false
            })
            .collect();
        if open.is_empty() {
            return p;
        }
        assert!(
            t.elapsed() < WAIT,
            "not closed: {:?}",
            open.iter().map(|v| v.name).collect::<Vec<_>>()
        );
        for v in &open {
            let ids = p.ids.entry(v.conn_id).or_default();
            if v.flood || ids.len() < 5 {
                corr += 1;
                let id = format!("{}-{}", v.name, ids.len());
                let r = pusher.call(corr, "push", &format!("{} {id}", v.conn_id));
                assert_eq!(r.status, 0);
                ids.push(id);
            }
            if v.flood {
                corr += 1;
                assert_eq!(
                    pusher
                        .call(corr, "fill", &format!("{} 8000", v.conn_id))
                        .status,
                    0
                );
            }
            let z = connz(admin, &format!("conn={}", v.conn_id));
            if let Some(q) = z["connections"][0]["queued_bytes"].as_u64() {
                p.max_queued = p.max_queued.max(q);
            }
        }
        if !open.iter().any(|v| v.flood) {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Every ack-required push sent to a victim is reported undelivered exactly
/// once (they never ack).
fn assert_all_reported(fb: &FaultBackend, pushed: &Pushed) {
    let mut count: HashMap<String, usize> = HashMap::new();
    for (payload, _, reason) in fb.undelivered() {
        assert!(
            matches!(
                reason,
                UndeliveredReason::ConnectionClosed(_) | UndeliveredReason::NoConnection
            ),
            "{payload}: {reason:?}"
        );
        *count.entry(payload).or_default() += 1;
    }
    for (conn, ids) in &pushed.ids {
        for id in ids {
            assert_eq!(
                count.get(id).copied().unwrap_or(0),
                1,
                "push {id} to {conn} must be reported exactly once"
            );
        }
    }
}

/// Three clients stop reading, with 4 KB receive windows: `quiet` also
/// stops sending and gets five pushes; `deaf` stops sending and is flooded;
/// `pinger` is flooded but keeps sending pings, so it is alive. Each is
/// closed (quiet and deaf at the idle timeout or as slow consumers, pinger
/// as a slow consumer), no outbound queue exceeds `outbound_bytes_max`
/// meanwhile, and every ack-required push to them is reported undelivered
/// exactly once.
/// A 64 KiB outbound limit, and pushes that neither expire nor fill the
/// unacked window: only the outbound limit can end a victim early.
fn bounded_outbound() -> Config {
    Config {
        outbound_bytes_max: 64 * 1024,
        frame_bytes_max: 16 * 1024,
        ack_timeout_ms: 10_000,
        unacked_pushes_max: 10_000,
        ..test_config()
    }
}

#[test]
fn clients_that_stop_reading_are_closed_with_bounded_queues_and_their_pushes_reported() {
    init_log();
    let fb = FaultBackend::default();
    let cfg = bounded_outbound();
    let limit = cfg.outbound_bytes_max as u64;
    let gw = fb.start(cfg);
    let addr = gw.local_addr;
    let victims = vec![
        victim("quiet", small_window_socket(addr), 100, false),
        victim("deaf", small_window_socket(addr), 100, true),
        victim("pinger", small_window_socket(addr), 100, true),
    ];
    let stop = Arc::new(AtomicBool::new(false));
    let pinger = {
        let mut w = victims[2].sock.try_clone().unwrap();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let ping = gw_proto::encode(&Frame {
                body: Some(Body::Ping(pb::Ping::default())),
            });
            while !stop.load(Ordering::SeqCst) && w.write_all(&ping).is_ok() {
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let (mut pusher, _) = Client::login(addr, "pusher");
    let pushed = push_until_closed(&mut pusher, &fb, gw.admin_addr.unwrap(), &victims);
    stop.store(true, Ordering::SeqCst);
    pinger.join().unwrap();
    let reasons: Vec<(&str, CloseReason)> = victims
        .iter()
        .map(|v| (v.name, fb.offline(v.conn_id).unwrap()))
        .collect();
    eprintln!(
        "stopped reading: closes {reasons:?} after {:?}; largest outbound queue {} B (limit {limit})",
        victims
            .iter()
            .map(|v| pushed.closed_after[&v.conn_id])
            .collect::<Vec<_>>(),
        pushed.max_queued
    );
    assert_eq!(reasons[0].1, CloseReason::StaleHeartbeat);
    assert!(matches!(
        reasons[1].1,
        CloseReason::SlowConsumer | CloseReason::StaleHeartbeat
    ));
    assert_eq!(reasons[2].1, CloseReason::SlowConsumer);
    assert!(pushed.max_queued <= limit, "queue {}", pushed.max_queued);
    fb.wait_for("every push reported", |fb| {
        fb.undelivered().len() >= pushed.ids.values().map(Vec::len).sum::<usize>()
    });
    assert_all_reported(&fb, &pushed);
    assert_eq!(pusher.call(1, "echo", "still here").status, 0);
    gw.shutdown(false);
}

/// Two clients in a network namespace of their own lose their link (the
/// veth is set down): no FIN, no reset, packets just vanish. `quiet` gets
/// five pushes and is reaped at its idle timeout (3 × 200 ms) as
/// STALE_HEARTBEAT; `flooded` is closed at its idle timeout or as a slow
/// consumer, its queue never past `outbound_bytes_max`. Every ack-required
/// push to them is reported undelivered. A client outside is unaffected.
#[test]
fn clients_that_vanish_without_a_fin_are_reaped_and_their_pushes_reported() {
    init_log();
    let Some(ns) = Netns::create("clients_that_vanish_without_a_fin") else {
        return;
    };
    let fb = FaultBackend::default();
    let cfg = Config {
        listen: ns.host_addr(0),
        ..bounded_outbound()
    };
    let limit = cfg.outbound_bytes_max as u64;
    let gw = fb.start(cfg);
    let addr = gw.local_addr;
    let victims = vec![
        victim("quiet", ns.connect(addr), 200, false),
        victim("flooded", ns.connect(addr), 200, true),
    ];
    let (mut outside, _) = Client::login(addr, "outside");
    ns.cut();
    let (mut pusher, _) = Client::login(addr, "pusher");
    let pushed = push_until_closed(&mut pusher, &fb, gw.admin_addr.unwrap(), &victims);
    let reasons: Vec<(&str, CloseReason)> = victims
        .iter()
        .map(|v| (v.name, fb.offline(v.conn_id).unwrap()))
        .collect();
    eprintln!(
        "vanished without FIN: closes {reasons:?} {:?} after the link was cut (idle timeout 600 ms); \
         largest outbound queue {} B (limit {limit})",
        victims
            .iter()
            .map(|v| pushed.closed_after[&v.conn_id])
            .collect::<Vec<_>>(),
        pushed.max_queued
    );
    assert_eq!(reasons[0].1, CloseReason::StaleHeartbeat);
    assert!(matches!(
        reasons[1].1,
        CloseReason::SlowConsumer | CloseReason::StaleHeartbeat
    ));
    assert!(pushed.max_queued <= limit, "queue {}", pushed.max_queued);
    fb.wait_for("every push reported", |fb| {
        fb.undelivered().len() >= pushed.ids.values().map(Vec::len).sum::<usize>()
    });
    assert_all_reported(&fb, &pushed);
    assert_eq!(outside.call(1, "echo", "unaffected").status, 0);
    ping_pong(&mut outside);
    gw.shutdown(false);
    drop(victims);
}

/// Sends `bytes` and the FIN in one segment (TCP_CORK, then shutdown).
fn send_with_fin(s: &mut TcpStream, bytes: &[u8]) {
    socket2::SockRef::from(&*s).set_cork(true).unwrap();
    s.write_all(bytes).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
}

/// Clients whose last bytes and FIN arrive together, in one segment: the
/// gateway gets data and the hang-up in one epoll edge, and a short read of
/// the data must not be taken for "drained" (no later edge announces the
/// end of stream). Ten unauthenticated clients (half an Auth frame, FIN)
/// and ten sessions (a Ping, FIN) are closed as CLIENT_CLOSED at once,
/// not at the auth deadline or the idle timeout (60 s and 90 s here).
#[test]
fn a_last_frame_and_fin_in_one_segment_close_the_connection_at_once() {
    init_log();
    let fb = FaultBackend::default();
    let gw = fb.start(Config {
        auth_timeout_ms: 60_000,
        ..test_config()
    });
    let auth = gw_proto::encode(&Frame {
        body: Some(auth_body("half")),
    });
    let ping = gw_proto::encode(&Frame {
        body: Some(Body::Ping(pb::Ping::default())),
    });
    let mut socks = Vec::new();
    let mut sessions = Vec::new();
    for i in 0..10 {
        let mut s = TcpStream::connect(gw.local_addr).unwrap();
        send_with_fin(&mut s, &auth[..auth.len() / 2]);
        socks.push(s);
        let user = format!("leaving{i}");
        let mut s = TcpStream::connect(gw.local_addr).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        write_frame(&mut s, auth_body(&user)).unwrap();
        let Body::AuthOk(ok) = FrameReader::default().read(&mut s).unwrap() else {
            panic!("no AuthOk")
        };
        send_with_fin(&mut s, &ping);
        sessions.push(ok.conn_id);
        socks.push(s);
    }
    let t = Instant::now();
    fb.wait_for("ten sessions offline", |fb| {
        sessions.iter().all(|id| fb.offline(*id).is_some())
    });
    common::eventually("twenty CLIENT_CLOSED", || {
        common::closes(&gw, "CLIENT_CLOSED") == 20
    });
    for id in &sessions {
        assert_eq!(fb.offline(*id), Some(CloseReason::ClientClosed));
    }
    eprintln!(
        "data and FIN in one segment: 20 connections closed as CLIENT_CLOSED within {:?}",
        t.elapsed()
    );
    gw.shutdown(false);
}
