//! Aggregated upstreams of live rooms (`rooms.aggregate_routes`,
//! PROTOCOL.md §14.2.1): frames of one route naming one room, gathered per
//! core and window, reach the backend as one request, and each client
//! still gets its own answer. Over a real nats-server with the reference
//! backend, with a backend that answers badly, and with the embedded one.

mod common;

use std::time::Duration;

use common::nats::{ChatBackend, Nats, NatsServer};
use common::{test_config, Client, WAIT};
use futures_util::StreamExt;
use gateway::metrics::Snapshot;
use gw_proto::pb::{self, frame::Body};
use gw_proto::ErrorCode;
use prost::Message as _;

fn nats_config(node: &str, url: &str) -> gateway::Config {
    let mut c = test_config();
    c.node_id = node.into();
    c.nats.urls = vec![url.to_string()];
    c.nats.reconnect_delay_max_ms = 100;
    c
}

fn aggregating(cfg: &mut gateway::Config, route: &str) {
    cfg.cores = 1;
    cfg.rooms.aggregate_routes = vec![route.into()];
    // Long enough that frames sent back to back share a window.
    cfg.rooms.coalesce_window_ms = 300;
}

fn login(gw: &gateway::GatewayHandle, user: &str) -> Client {
    let mut c = Client::connect(gw.local_addr);
    c.send(Body::Auth(pb::Auth {
        protocol_version: gw_proto::PROTOCOL_VERSION,
        token: common::token(user, 600),
        device_id: "d".into(),
        ..Default::default()
    }));
    assert!(matches!(c.recv(), Ok(Body::AuthOk(_))));
    c
}

fn send_in_room(c: &mut Client, corr: u64, route: &str, room: &str, payload: &str) {
    c.send(Body::Upstream(pb::Upstream {
        correlation_id: corr,
        route: route.into(),
        payload: payload.as_bytes().to_vec().into(),
        room: room.into(),
        ..Default::default()
    }));
}

fn reply(c: &mut Client, corr: u64) -> pb::UpstreamReply {
    c.recv_until("upstream reply", |b| match b {
        Body::UpstreamReply(r) if r.correlation_id == corr => Some(r.clone()),
        _ => None,
    })
}

/// Calls `route` (without a room: not aggregated) until a backend serves it.
fn until_served(c: &mut Client, route: &str) {
    let t = std::time::Instant::now();
    for corr in 1000.. {
        if c.call(corr, route, "{}").status != ErrorCode::BackendUnavailable as u32 {
            return;
        }
        assert!(t.elapsed() < WAIT, "no backend served {route}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Aggregated requests sent, and the frames they carried, over all cores.
fn aggregation_counts(gw: &gateway::GatewayHandle) -> (u64, u64) {
    let snaps = gw.snapshots();
    let n = |f: fn(&Snapshot) -> u64| snaps.iter().map(f).sum::<u64>();
    (
        n(|s| s.counters.upstream_aggregates),
        n(|s| s.counters.upstream_aggregated),
    )
}

#[test]
fn answers_of_a_room_reach_the_backend_as_one_request_and_each_client_its_reply() {
    let nats_server = NatsServer::start();
    let _backend = ChatBackend::start(&nats_server.url(), &[]);
    let mut cfg = nats_config("gw-a", &nats_server.url());
    aggregating(&mut cfg, "echo");
    let gw = common::start(cfg).0;
    let nats = Nats::connect(&nats_server.url());
    let seen = nats.watch("gw.up.echo");
    let mut clients: Vec<Client> = (0..3).map(|i| login(&gw, &format!("u{i}"))).collect();
    until_served(&mut clients[0], "echo");
    while seen.try_recv().is_ok() {} // until_served's requests
    for (i, c) in clients.iter_mut().enumerate() {
        send_in_room(c, 7, "echo", "quiz", &format!("answer-{i}"));
    }
    for (i, c) in clients.iter_mut().enumerate() {
        let r = reply(c, 7);
        assert_eq!(
            (r.status, r.payload.as_ref()),
            (0, format!("answer-{i}").as_bytes())
        );
    }
    let m = seen.recv_timeout(WAIT).expect("the aggregated request");
    let h = m.headers.as_ref().expect("headers");
    assert_eq!(h.get("Gw-Batch").map(|v| v.as_str()), Some("3"));
    assert_eq!(h.get("Gw-Room").map(|v| v.as_str()), Some("quiz"));
    assert_eq!(h.get("Gw-Node").map(|v| v.as_str()), Some("gw-a"));
    let batch = pb::UpstreamBatch::decode(m.payload).expect("an UpstreamBatch");
    let mut users: Vec<&str> = batch.items.iter().map(|i| i.user.as_str()).collect();
    users.sort_unstable(); // in the order the core read them
    assert_eq!(users, ["u0", "u1", "u2"]);
    assert!(batch.items.iter().all(|i| i.conn_id > 0));
    assert!(
        seen.recv_timeout(Duration::from_millis(100)).is_err(),
        "one request, not three"
    );
    let (_, metrics) = common::http_get(gw.admin_addr.expect("admin"), "/metrics");
    for line in [
        "gateway_upstream_aggregates_total{core=\"0\"} 1",
        "gateway_upstream_aggregated_total{core=\"0\"} 3",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    gw.shutdown(false);
}

#[test]
fn a_batch_answered_with_the_wrong_count_is_internal_for_every_item() {
    let nats_server = NatsServer::start();
    let nats = Nats::connect(&nats_server.url());
    // A backend that answers every batch with a single reply.
    let mut sub = nats.subscribe("gw.up.vote");
    let responder = nats.client.clone();
    nats.rt.spawn(async move {
        while let Some(m) = sub.next().await {
            let Some(to) = m.reply else { continue };
            let one = pb::BatchReply {
                replies: vec![pb::BackendReply::default()],
            };
            let _ = responder.publish(to, one.encode_to_vec().into()).await;
        }
    });
    let mut cfg = nats_config("gw-a", &nats_server.url());
    aggregating(&mut cfg, "vote");
    let gw = common::start(cfg).0;
    let mut a = login(&gw, "a");
    let mut b = login(&gw, "b");
    send_in_room(&mut a, 1, "vote", "quiz", "x");
    send_in_room(&mut b, 1, "vote", "quiz", "y");
    for c in [&mut a, &mut b] {
        assert_eq!(reply(c, 1).status, ErrorCode::Internal as u32);
    }
    let (_, metrics) = common::http_get(gw.admin_addr.expect("admin"), "/metrics");
    assert!(
        metrics.contains("gateway_nats_bad_replies_total 1"),
        "{metrics}"
    );
    gw.shutdown(false);
}

#[test]
fn without_nats_the_gathered_frames_are_answered_one_by_one() {
    let mut cfg = test_config();
    aggregating(&mut cfg, "echo");
    let gw = common::start(cfg).0;
    let mut a = login(&gw, "a");
    let mut b = login(&gw, "b");
    send_in_room(&mut a, 1, "echo", "quiz", "x");
    send_in_room(&mut b, 1, "echo", "quiz", "y");
    // Another room: a gathering of its own.
    send_in_room(&mut b, 2, "echo", "other", "z");
    assert_eq!(reply(&mut a, 1).payload.as_ref(), b"x");
    assert_eq!(reply(&mut b, 1).payload.as_ref(), b"y");
    assert_eq!(reply(&mut b, 2).payload.as_ref(), b"z");
    // No room: not aggregated.
    assert_eq!(b.call(3, "echo", "w").payload.as_ref(), b"w");
    assert_eq!(aggregation_counts(&gw), (2, 3));
    gw.shutdown(false);
}

#[test]
fn a_frame_that_would_take_a_gathering_past_its_bytes_sends_it_first() {
    let mut cfg = test_config();
    aggregating(&mut cfg, "echo");
    cfg.rooms.aggregate_bytes_max = 1024;
    let gw = common::start(cfg).0;
    let mut c = login(&gw, "a");
    // About 640 bytes each: two do not fit 1024.
    let big = "x".repeat(600);
    for corr in 1..=3 {
        send_in_room(&mut c, corr, "echo", "quiz", &big);
    }
    for corr in 1..=3 {
        assert_eq!(reply(&mut c, corr).payload.len(), 600);
    }
    assert_eq!(aggregation_counts(&gw), (3, 3));
    gw.shutdown(false);
}

#[test]
fn a_request_past_the_servers_max_payload_is_refused_and_nats_stays_up() {
    let conf = std::env::temp_dir().join(format!(
        "gw-aggregate-{}-{}.conf",
        std::process::id(),
        common::free_port()
    ));
    std::fs::write(&conf, "max_payload: 2048\n").expect("write nats.conf");
    let nats_server = NatsServer::start_args(vec!["-c".into(), conf.display().to_string()]);
    let _backend = ChatBackend::start(&nats_server.url(), &[]);
    let mut cfg = nats_config("gw-a", &nats_server.url());
    aggregating(&mut cfg, "echo");
    let gw = common::start(cfg).0;
    let mut clients: Vec<Client> = (0..3).map(|i| login(&gw, &format!("u{i}"))).collect();
    until_served(&mut clients[0], "echo");
    let big = "x".repeat(1000);
    for c in clients.iter_mut() {
        send_in_room(c, 7, "echo", "quiz", &big);
    }
    for c in clients.iter_mut() {
        assert_eq!(reply(c, 7).status, ErrorCode::Internal as u32);
    }
    // The connection to NATS was not closed by the server.
    assert_eq!(
        clients[0].call(8, "echo", "small").payload.as_ref(),
        b"small"
    );
    gw.shutdown(false);
    let _ = std::fs::remove_file(&conf);
}
