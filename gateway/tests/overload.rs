//! Overload control over real sockets: the per-connection upstream rate, the
//! per-core accept rate and the per-room broadcast rate, each refused with
//! its typed answer and counted by reason. The admission controller itself
//! (shedding by priority under queueing delay) is tested with injected
//! delays in `core/overload/tests.rs`.

mod common;

use std::io::Read;
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use gateway::backend::embedded::Embedded;
use gateway::backend::{
    Backend, BackendFactory, BackendReply, LocalBoxFuture, PushOrder, SessionEvent, Target,
    UndeliveredReason, UpstreamRequest,
};
use gateway::metrics::{Reject, Snapshot};
use gw_proto::pb::{self, frame::Body, Frame};
use gw_proto::ErrorCode;

/// Rejections with `reason` summed over the cores.
fn rejected(snaps: &[Snapshot], reason: Reject) -> u64 {
    snaps
        .iter()
        .map(|s| s.counters.rejections.get(reason))
        .sum()
}

fn upstream_frame(corr: u64, route: &str, payload: &str) -> Vec<u8> {
    gw_proto::encode(&Frame {
        body: Some(Body::Upstream(pb::Upstream {
            correlation_id: corr,
            route: route.into(),
            client_msg_id: format!("m{corr}"),
            payload: payload.as_bytes().to_vec().into(),
            ..Default::default()
        })),
    })
    .to_vec()
}

fn replies(c: &mut Client, n: usize) -> Vec<pb::UpstreamReply> {
    (0..n)
        .map(|_| {
            c.recv_until("reply", |b| match b {
                Body::UpstreamReply(r) => Some(r.clone()),
                _ => None,
            })
        })
        .collect()
}

#[test]
fn over_its_upstream_rate_a_connection_gets_busy_while_pings_and_others_are_served() {
    let mut cfg = test_config();
    cfg.overload.upstream_rate_per_conn_per_s = 1;
    cfg.overload.upstream_burst = 3;
    let (gw, _rec) = start(cfg);
    let (mut a, _) = Client::login(gw.local_addr, "alice");
    // Ten frames in one write: the burst (3) passes, the rest is refused
    // (a token takes a second to come back).
    let burst: Vec<u8> = (1..=10)
        .flat_map(|i| upstream_frame(i, "echo", "x"))
        .collect();
    a.send_raw(&burst);
    let got = replies(&mut a, 10);
    let ok: Vec<u64> = got
        .iter()
        .filter(|r| r.status == 0)
        .map(|r| r.correlation_id)
        .collect();
    assert_eq!(ok, vec![1, 2, 3], "the burst, in order");
    let busy: Vec<&pb::UpstreamReply> = got.iter().filter(|r| r.status != 0).collect();
    assert_eq!(busy.len(), 7);
    for r in &busy {
        assert_eq!(r.status, ErrorCode::Busy as u32);
        assert!(
            (1..=1000).contains(&r.retry_after_ms),
            "retry_after_ms = time to the next token: {}",
            r.retry_after_ms
        );
    }
    // Heartbeats are never limited, and other connections have their own bucket.
    a.send(Body::Ping(pb::Ping::default()));
    assert!(matches!(a.recv().unwrap(), Body::Pong(_)));
    let (mut b, _) = Client::login(gw.local_addr, "bob");
    assert_eq!(b.call(1, "echo", "y").status, 0);

    let snaps = gw.snapshots();
    assert_eq!(rejected(&snaps, Reject::UpstreamRate), 7);
    let busy_total: u64 = snaps.iter().map(|s| s.counters.upstream_busy).sum();
    assert_eq!(busy_total, 7, "upstream_busy counts every BUSY reply");
    let admin = gw.admin_addr.unwrap();
    let (_, metrics) = http_get(admin, "/metrics");
    assert!(
        metrics.contains("gateway_rejections_total{reason=\"upstream_rate\"} 7"),
        "{metrics}"
    );
    assert!(metrics.contains("gateway_admission_level{core=\"0\"} 384"));
    assert!(metrics.contains("gateway_queue_delay_seconds{core=\"0\"}"));
    let (_, stats) = http_get(admin, "/stats");
    let v: serde_json::Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(v["counters"]["rejections"]["upstream_rate"], 7);

    // After the hinted wait, a token is back.
    let wait = busy.iter().map(|r| r.retry_after_ms).max().unwrap_or(1000);
    std::thread::sleep(Duration::from_millis(wait as u64));
    assert_eq!(a.call(20, "echo", "again").status, 0);
    gw.shutdown(false);
}

/// The first frame on `s` within `wait`, if any.
fn first_frame(s: &mut TcpStream, wait: Duration) -> Option<Body> {
    s.set_read_timeout(Some(wait)).unwrap();
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    loop {
        if let Ok(gw_proto::Decoded::Frame(f, _)) = gw_proto::decode(&buf, 1 << 20) {
            return f.body;
        }
        match s.read(&mut tmp) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
        }
    }
}

#[test]
fn accept_rate_refuses_a_burst_beyond_its_size_then_accepts_after_refill() {
    let mut cfg = test_config();
    cfg.cores = 1;
    cfg.overload.accept_rate_per_core_per_s = 1;
    cfg.overload.accept_burst = 3;
    let (gw, _rec) = start(cfg);
    let started = Instant::now();
    let held: Vec<Client> = (0..3)
        .map(|i| Client::login(gw.local_addr, &format!("u{i}")).0)
        .collect();
    let mut raw: Vec<TcpStream> = (0..6)
        .map(|_| TcpStream::connect(gw.local_addr).unwrap())
        .collect();
    let elapsed_s = started.elapsed().as_secs();
    eventually("all accepted or refused", || {
        gw.snapshots()[0].counters.accepts == 9
    });
    let mut refused = 0;
    let mut retry_after = 0;
    for s in &mut raw {
        match first_frame(s, Duration::from_millis(300)) {
            Some(Body::Error(e)) => {
                assert_eq!(e.code, ErrorCode::Busy as i32, "{e:?}");
                assert!(e.retry_after_ms > 0);
                retry_after = e.retry_after_ms;
                refused += 1;
                // ... and closed.
                let mut rest = [0u8; 16];
                assert!(matches!(s.read(&mut rest), Ok(0) | Err(_)));
            }
            None => {} // admitted: waits for Auth
            Some(other) => panic!("unexpected {other:?}"),
        }
    }
    // At most one token per second comes back while the burst arrives.
    assert!(
        refused >= 6 - (elapsed_s as usize + 1),
        "refused {refused} of 6 in {elapsed_s} s"
    );
    let snaps = gw.snapshots();
    assert_eq!(rejected(&snaps, Reject::AcceptRate), refused as u64);
    assert_eq!(closes(&gw, "CONN_LIMIT"), refused as u64);
    // The held sessions were never touched.
    drop(held);

    // After the hint, the bucket has a token again.
    std::thread::sleep(Duration::from_millis(retry_after as u64));
    let (mut c, _) = Client::login(gw.local_addr, "later");
    assert_eq!(c.call(1, "echo", "in").status, 0);
    gw.shutdown(false);
}

/// The embedded backend plus `test.room_ack` (payload: a room name): an
/// ack-required push `test.ack` to the room. Records undelivered pushes.
#[derive(Clone, Default)]
struct AckRoom(Arc<Mutex<Vec<(String, String, UndeliveredReason)>>>);

struct AckRoomBackend(AckRoom);

impl Backend for AckRoomBackend {
    fn upstream(&self, req: UpstreamRequest) -> LocalBoxFuture<BackendReply> {
        if req.route != "test.room_ack" {
            return Embedded.upstream(req);
        }
        let mut r = BackendReply::ok(Bytes::new());
        r.pushes.push(PushOrder {
            target: Target::Room(String::from_utf8_lossy(&req.payload).into_owned()),
            route: "test.ack".into(),
            payload: Bytes::from_static(b"must not vanish"),
            ack_required: true,
            priority: pb::Priority::Normal,
        });
        Box::pin(std::future::ready(r))
    }
    fn event(&self, ev: SessionEvent) {
        if let SessionEvent::Undelivered {
            user, room, pushes, ..
        } = ev
        {
            // Who the report names: the user, or the room of a room push.
            let who = room.map_or(user.to_string(), |r| format!("room {r}"));
            let mut log = (self.0).0.lock().unwrap();
            for p in pushes {
                log.push((who.clone(), p.route, p.reason));
            }
        }
    }
}

impl BackendFactory for AckRoom {
    fn for_core(&self, _core: usize) -> std::rc::Rc<dyn Backend> {
        std::rc::Rc::new(AckRoomBackend(self.clone()))
    }
}

#[test]
fn room_over_its_broadcast_rate_coalesces_plain_pushes_and_reports_ack_required_ones() {
    let mut cfg = test_config();
    cfg.cores = 1;
    cfg.overload.room_broadcast_rate_per_s = 1;
    cfg.overload.room_burst = 2;
    let log = AckRoom::default();
    let gw = gateway::start(cfg, Arc::new(log.clone()), false).expect("gateway starts");
    let (mut m, _) = Client::login(gw.local_addr, "member");
    assert_eq!(m.call(1, "room.join", r#"{"room":"live"}"#).status, 0);
    let (mut s, _) = Client::login(gw.local_addr, "sender");
    assert_eq!(s.call(9, "room.join", r#"{"room":"live"}"#).status, 0);
    // Four plain (NORMAL) pushes and one ack-required push, in one write:
    // the burst (2) goes out at once, the rest is over the rate. Over it,
    // NORMAL pushes are coalesced (core/rooms.rs): they still arrive, after
    // the window, and in order (this member reads no batches, so one by one).
    let mut frames: Vec<u8> = (1..=4)
        .flat_map(|i| {
            let text = format!(r#"{{"room":"live","text":"{i}"}}"#);
            upstream_frame(i, "room.send", &text)
        })
        .collect();
    frames.extend(upstream_frame(5, "test.room_ack", "live"));
    s.send_raw(&frames);
    assert!(replies(&mut s, 5).iter().all(|r| r.status == 0));
    let mut texts = Vec::new();
    while texts.len() < 4 {
        if let Body::Push(p) = m.recv().unwrap() {
            assert!(p.route == "room.msg" && p.seq == 0, "{p:?}");
            let v: serde_json::Value = serde_json::from_slice(&p.payload).unwrap();
            texts.push(v["text"].as_str().unwrap_or("").to_string());
        }
    }
    assert_eq!(texts, ["1", "2", "3", "4"]);
    let snaps = gw.snapshots();
    assert_eq!(rejected(&snaps, Reject::RoomRate), 3);
    // The ack-required push is never dropped silently.
    let ev = log.0.lock().unwrap().clone();
    assert_eq!(
        ev,
        vec![(
            "room live".to_string(),
            "test.ack".to_string(),
            UndeliveredReason::RateLimited
        )]
    );
    assert_eq!(snaps[0].counters.undelivered, 1);
    gw.shutdown(false);
}

#[test]
fn overload_keys_are_flags_too() {
    use clap::Parser;
    let cli = gateway::cli::Cli::try_parse_from([
        "gateway",
        "--demo",
        "--overload-queue-delay-max-ms",
        "50",
        "--overload-upstream-rate-per-conn-per-s",
        "7",
        "--overload-accept-rate-per-core-per-s",
        "100",
    ])
    .unwrap();
    let (cfg, _) = cli.config().unwrap();
    assert_eq!(cfg.overload.queue_delay_max_ms, 50);
    assert_eq!(cfg.overload.upstream_rate_per_conn_per_s, 7);
    assert_eq!(cfg.overload.accept_rate_per_core_per_s, 100);
    cfg.validate().unwrap();
}
