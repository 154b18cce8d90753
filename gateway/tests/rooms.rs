//! Live rooms over real sockets (`core/rooms.rs`): a hot room's pushes
//! reach a member that reads batches as one Push carrying them, and a
//! member that does not as the same pushes one by one, in the same order;
//! a HIGH push is never held (it ends the batch, in the same frame) and an
//! ack-required one is never batched, and the order holds;
//! LOW is shed over the room's rate, NORMAL coalesced, HIGH always sent;
//! a batch's cap drops and counts; a backend can mark a room; upstream
//! frames naming a room are held to the room's rate.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use gateway::backend::embedded::Embedded;
use gateway::backend::{
    Backend, BackendFactory, BackendReply, LocalBoxFuture, PushOrder, SessionEvent, SessionOp,
    Target, UpstreamRequest,
};
use gateway::metrics::{Reject, Snapshot};
use gw_proto::pb::{self, frame::Body, Frame, Priority};
use gw_proto::ErrorCode;

/// The embedded backend plus
/// - `test.room`: payload `<room> <spec>`, where each character of spec is
///   one push to the room, in order: `l`ow, `n`ormal, `h`igh, `a`
///   ack-required normal; the payload of each is its index;
/// - `test.mode`: payload `<room> hot|normal|auto`: marks the room.
struct Rooms;

impl Backend for Rooms {
    fn upstream(&self, req: UpstreamRequest) -> LocalBoxFuture<BackendReply> {
        let text = String::from_utf8_lossy(&req.payload).into_owned();
        let (room, arg) = text.split_once(' ').unwrap_or((&text, ""));
        let mut r = BackendReply::ok(Bytes::new());
        match req.route.as_str() {
            "test.room" => {
                for (i, kind) in arg.chars().enumerate() {
                    let priority = match kind {
                        'l' => Priority::Low,
                        'h' => Priority::High,
                        _ => Priority::Normal,
                    };
                    r.pushes.push(PushOrder {
                        target: Target::Room(room.to_string()),
                        route: format!("r.{kind}"),
                        payload: Bytes::from(i.to_string()),
                        ack_required: kind == 'a',
                        priority,
                    });
                }
            }
            "test.mode" => r.ops.push(SessionOp::RoomMode {
                room: room.to_string(),
                hot: match arg {
                    "hot" => Some(true),
                    "normal" => Some(false),
                    _ => None,
                },
            }),
            _ => return Embedded.upstream(req),
        }
        Box::pin(std::future::ready(r))
    }
    fn event(&self, _ev: SessionEvent) {}
}

struct RoomsFactory;

impl BackendFactory for RoomsFactory {
    fn for_core(&self, _core: usize) -> std::rc::Rc<dyn Backend> {
        std::rc::Rc::new(Rooms)
    }
}

fn start_rooms(f: impl FnOnce(&mut gateway::Config)) -> gateway::GatewayHandle {
    let mut cfg = test_config();
    cfg.cores = 1;
    cfg.rooms.coalesce_window_ms = 50;
    f(&mut cfg);
    gateway::start(cfg, Arc::new(RoomsFactory), false).expect("gateway starts")
}

/// Logs in `user`, reading batches or not, and joins `room`.
fn member(gw: &gateway::GatewayHandle, user: &str, batches: bool, room: &str) -> Client {
    let mut c = Client::connect(gw.local_addr);
    c.send(Body::Auth(pb::Auth {
        protocol_version: gw_proto::PROTOCOL_VERSION,
        token: token(user, 600),
        device_id: "d".into(),
        push_batches: batches,
        ..Default::default()
    }));
    assert!(matches!(c.recv(), Ok(Body::AuthOk(_))));
    let join = format!(r#"{{"room":"{room}"}}"#);
    assert_eq!(c.call(1, "room.join", &join).status, 0);
    c
}

/// The next push or batch, as "route:payload" items; a batch is one
/// entry `[...]` with its dropped count.
fn next(c: &mut Client) -> String {
    c.recv_until("a push", |b| match b {
        Body::Push(p) if !p.batch.is_empty() || !p.room.is_empty() => {
            let items: Vec<String> = p.batch.iter().map(item).collect();
            Some(format!("[{}]{}", items.join(" "), dropped(p.dropped)))
        }
        Body::Push(p) => Some(item(p)),
        _ => None,
    })
}

fn item(p: &pb::Push) -> String {
    format!("{}:{}", p.route, String::from_utf8_lossy(&p.payload))
}

fn dropped(n: u32) -> String {
    if n == 0 {
        String::new()
    } else {
        format!("+{n}")
    }
}

fn send(c: &mut Client, corr: u64, room: &str, spec: &str) {
    let r = c.call(corr, "test.room", &format!("{room} {spec}"));
    assert_eq!(r.status, 0, "{r:?}");
}

fn total(snaps: &[Snapshot], f: impl Fn(&Snapshot) -> u64) -> u64 {
    snaps.iter().map(f).sum()
}

/// The first hot room core 0 lists in `/stats`.
fn busiest_hot_room(gw: &gateway::GatewayHandle) -> serde_json::Value {
    let stats: serde_json::Value =
        serde_json::from_str(&http_get(gw.admin_addr.expect("admin"), "/stats").1).expect("stats");
    stats["cores"][0]["hot_rooms"][0].clone()
}

#[test]
fn a_hot_room_sends_one_batch_to_readers_and_the_same_pushes_to_the_others() {
    let gw = start_rooms(|c| c.rooms.hot = vec!["live-*".into()]);
    let mut reader = member(&gw, "reader", true, "live-1");
    let mut plain = member(&gw, "plain", false, "live-1");
    let mut sender = member(&gw, "sender", true, "live-1");
    send(&mut sender, 2, "live-1", "nnln");
    assert_eq!(next(&mut reader), "[r.n:0 r.n:1 r.l:2 r.n:3]");
    for want in ["r.n:0", "r.n:1", "r.l:2", "r.n:3"] {
        assert_eq!(next(&mut plain), want);
    }
    // A room not named hot (and under the rate) is not coalesced.
    let mut other = member(&gw, "other", true, "lobby");
    send(&mut sender, 3, "lobby", "nn");
    assert_eq!(next(&mut other), "r.n:0");
    assert_eq!(next(&mut other), "r.n:1");
    let snaps = gw.snapshots();
    assert_eq!(total(&snaps, |s| s.counters.room_batches), 1);
    assert_eq!(total(&snaps, |s| s.counters.room_coalesced), 4);
    let (_, metrics) = http_get(gw.admin_addr.expect("admin"), "/metrics");
    assert!(
        metrics.contains("gateway_room_batches_total{core=\"0\"} 1"),
        "{metrics}"
    );
    gw.shutdown(false);
}

#[test]
fn high_pushes_are_never_held_and_ack_required_ones_never_batched() {
    let gw = start_rooms(|c| c.rooms.hot = vec!["live".into()]);
    let mut reader = member(&gw, "reader", true, "live");
    let mut plain = member(&gw, "plain", false, "live");
    let mut sender = member(&gw, "sender", true, "live");
    send(&mut sender, 2, "live", "nnhnan");
    // The HIGH push ends the batch at once, in the same frame; the batch
    // so far goes before the ack-required push.
    assert_eq!(next(&mut reader), "[r.n:0 r.n:1 r.h:2]");
    assert_eq!(next(&mut reader), "[r.n:3]");
    let acked = reader.recv_until("the ack-required push", |b| match b {
        Body::Push(p) if p.ack_required => Some(p.clone()),
        _ => None,
    });
    assert_eq!((acked.route.as_str(), acked.seq), ("r.a", 1));
    reader.send(Body::Ack(pb::Ack { seq: acked.seq }));
    assert_eq!(next(&mut reader), "[r.n:5]");
    let mut seen = Vec::new();
    for _ in 0..6 {
        seen.push(next(&mut plain));
    }
    assert_eq!(seen, ["r.n:0", "r.n:1", "r.h:2", "r.n:3", "r.a:4", "r.n:5"]);
    gw.shutdown(false);
}

#[test]
fn over_the_rate_low_is_shed_normal_coalesced_and_high_sent() {
    let gw = start_rooms(|c| {
        c.overload.room_broadcast_rate_per_s = 1;
        c.overload.room_burst = 1;
        c.rooms.hot_rate_per_s = 0; // hot only because of the rate
    });
    let mut reader = member(&gw, "reader", true, "r");
    let mut sender = member(&gw, "sender", true, "r");
    // The first push takes the burst; the rest are over the rate.
    send(&mut sender, 2, "r", "nllnhn");
    assert_eq!(next(&mut reader), "r.n:0");
    assert_eq!(next(&mut reader), "[r.n:3 r.h:4]+2");
    assert_eq!(next(&mut reader), "[r.n:5]");
    let (_, metrics) = http_get(gw.admin_addr.expect("admin"), "/metrics");
    assert!(
        metrics
            .contains("gateway_room_pushes_dropped_total{reason=\"room_rate\",priority=\"low\"} 2"),
        "{metrics}"
    );
    let hot = busiest_hot_room(&gw);
    assert_eq!(
        (hot["room"].as_str(), hot["dropped"].as_u64()),
        (Some("r"), Some(2))
    );
    gw.shutdown(false);
}

#[test]
fn a_full_batch_drops_and_counts_and_one_room_cannot_take_the_window() {
    let gw = start_rooms(|c| {
        c.rooms.hot = vec!["r".into()];
        c.rooms.batch_pushes_max = 3;
    });
    let mut reader = member(&gw, "reader", true, "r");
    let mut sender = member(&gw, "sender", true, "r");
    send(&mut sender, 2, "r", "nnnnlh");
    // HIGH is taken past the cap: never dropped.
    assert_eq!(next(&mut reader), "[r.n:0 r.n:1 r.n:2 r.h:5]+2");
    let (_, metrics) = http_get(gw.admin_addr.expect("admin"), "/metrics");
    for (p, n) in [("normal", 1), ("low", 1)] {
        let line = format!(
            "gateway_room_pushes_dropped_total{{reason=\"batch_full\",priority=\"{p}\"}} {n}"
        );
        assert!(metrics.contains(&line), "{line} in {metrics}");
    }
    gw.shutdown(false);
}

#[test]
fn a_backend_marks_a_room_hot_or_normal() {
    let gw = start_rooms(|c| c.rooms.hot = vec!["r".into()]);
    let mut reader = member(&gw, "reader", true, "r");
    let mut sender = member(&gw, "sender", true, "r");
    // HIGH alone (nothing gathering) goes alone.
    send(&mut sender, 9, "r", "h");
    assert_eq!(next(&mut reader), "r.h:0");
    assert_eq!(sender.call(2, "test.mode", "r normal").status, 0);
    send(&mut sender, 3, "r", "nn");
    assert_eq!(next(&mut reader), "r.n:0");
    assert_eq!(next(&mut reader), "r.n:1");
    assert_eq!(sender.call(4, "test.mode", "r auto").status, 0);
    send(&mut sender, 5, "r", "nn");
    assert_eq!(next(&mut reader), "[r.n:0 r.n:1]");
    gw.shutdown(false);
}

#[test]
fn upstream_frames_naming_a_room_are_held_to_its_rate() {
    let gw = start_rooms(|c| {
        c.rooms.upstream_rate_per_s = 1;
        c.rooms.upstream_burst = 2;
    });
    let mut c = member(&gw, "quiz", false, "q");
    let frame = |corr: u64, room: &str| {
        gw_proto::encode(&Frame {
            body: Some(Body::Upstream(pb::Upstream {
                correlation_id: corr,
                route: "echo".into(),
                payload: Bytes::from_static(b"a"),
                room: room.into(),
                ..Default::default()
            })),
        })
    };
    let mut all = Vec::new();
    for corr in 10..13 {
        all.extend_from_slice(&frame(corr, "q"));
    }
    // Another room, and no room, are not held by q's bucket.
    all.extend_from_slice(&frame(13, "other"));
    all.extend_from_slice(&frame(14, ""));
    // Not a room name (it would become a NATS header): BAD_REQUEST, and the
    // session goes on.
    all.extend_from_slice(&frame(15, "a\r\nGw-User: mallory"));
    all.extend_from_slice(&frame(16, &"r".repeat(300)));
    c.send_raw(&all);
    let mut replies = Vec::new();
    while replies.len() < 7 {
        if let Body::UpstreamReply(r) = c.recv().expect("reply") {
            replies.push(r);
        }
    }
    replies.sort_by_key(|r| r.correlation_id);
    let status: Vec<u32> = replies.iter().map(|r| r.status).collect();
    let bad = ErrorCode::BadRequest as u32;
    assert_eq!(status, [0, 0, ErrorCode::Busy as u32, 0, 0, bad, bad]);
    assert!(replies[2].retry_after_ms >= 1, "{:?}", replies[2]);
    let snaps = gw.snapshots();
    let n = total(&snaps, |s| {
        s.counters.rejections.get(Reject::RoomUpstreamRate)
    });
    assert_eq!(n, 1);
    gw.shutdown(false);
}

#[test]
fn batches_wait_for_the_window_not_longer() {
    // Not a timing assertion: the batch comes, and nothing of it came before.
    let gw = start_rooms(|c| {
        c.rooms.hot = vec!["r".into()];
        c.rooms.coalesce_window_ms = 200;
    });
    let mut reader = member(&gw, "reader", true, "r");
    let mut sender = member(&gw, "sender", true, "r");
    send(&mut sender, 2, "r", "n");
    assert!(
        reader.recv_within(Duration::from_millis(20)).is_err(),
        "nothing before the window ends"
    );
    assert_eq!(next(&mut reader), "[r.n:0]");
    gw.shutdown(false);
}

#[test]
fn a_room_with_many_members_here_gathers_longer_and_carries_more() {
    // Three members on the one core at 10 frames/s: the window stretches
    // from 50 to 300 ms and carries 6x the 2 pushes of a 50 ms window: 12.
    let gw = start_rooms(|c| {
        c.rooms.hot = vec!["r".into()];
        c.rooms.batch_pushes_max = 2;
        c.rooms.frames_per_s_max = 10;
    });
    let mut reader = member(&gw, "reader", true, "r");
    let _other = member(&gw, "other", true, "r");
    let mut sender = member(&gw, "sender", true, "r");
    send(&mut sender, 2, "r", &format!("{}l", "n".repeat(12)));
    let want: Vec<String> = (0..12).map(|i| format!("r.n:{i}")).collect();
    assert_eq!(next(&mut reader), format!("[{}]+1", want.join(" ")));
    let hot = busiest_hot_room(&gw);
    assert_eq!(
        (hot["room"].as_str(), hot["window_ms"].as_u64()),
        (Some("r"), Some(300))
    );
    gw.shutdown(false);
}

#[test]
fn a_room_with_a_shorter_window_goes_before_one_that_started_earlier() {
    // At 2 frames/s a room of 3 members here gathers 1.5 s, a room of 1
    // member 0.5 s: the second room's batch, started later, is due first.
    let gw = start_rooms(|c| {
        c.rooms.hot = vec!["big".into(), "small".into()];
        c.rooms.frames_per_s_max = 2;
        c.rooms.coalesce_window_max_ms = 5_000;
    });
    let mut reader = member(&gw, "reader", true, "big");
    assert_eq!(reader.call(2, "room.join", r#"{"room":"small"}"#).status, 0);
    let _b = member(&gw, "b", true, "big");
    let mut sender = member(&gw, "sender", true, "big");
    send(&mut sender, 2, "big", "n");
    send(&mut sender, 3, "small", "n");
    let mut rooms = Vec::new();
    while rooms.len() < 2 {
        rooms.push(reader.recv_until("a batch", |b| match b {
            Body::Push(p) if !p.batch.is_empty() => Some(p.room.clone()),
            _ => None,
        }));
    }
    assert_eq!(rooms, ["small", "big"]);
    gw.shutdown(false);
}
