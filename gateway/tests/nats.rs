//! The NATS contract end to end: a real nats-server, the reference
//! `chat-backend` process, in-process gateways and real client sockets.

mod common;

use std::time::Duration;

use common::nats::{wait_for_interest, ChatBackend, Nats, NatsServer};
use common::{test_config, Client, WAIT};
use gateway::Config;
use gw_proto::pb::{self, frame::Body};
use gw_proto::{CloseReason, ErrorCode};
use prost::Message as _;

fn nats_config(node: &str, url: &str) -> Config {
    // RUST_LOG=debug shows the gateway's log in failing tests.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let mut c = test_config();
    c.node_id = node.into();
    c.nats.urls = vec![url.to_string()];
    c.nats.reconnect_delay_max_ms = 100;
    c
}

fn start(cfg: Config) -> gateway::GatewayHandle {
    common::start(cfg).0
}

/// Waits for a push on `route` and returns it.
fn push(c: &mut Client, route: &str) -> pb::Push {
    c.recv_until(route, |b| match b {
        Body::Push(p) if p.route == route => Some(p.clone()),
        _ => None,
    })
}

/// Sends an upstream and reads until both its reply and a push on `route`
/// came: a backend that publishes to a room the caller is in may have the
/// push arrive before the reply (they are not ordered).
fn call_and_push(
    c: &mut Client,
    corr: u64,
    up_route: &str,
    payload: &str,
    route: &str,
) -> (pb::UpstreamReply, pb::Push) {
    c.upstream(corr, up_route, payload);
    let (mut reply, mut push) = (None, None);
    while reply.is_none() || push.is_none() {
        match c.recv().unwrap() {
            Body::UpstreamReply(r) if r.correlation_id == corr => reply = Some(r),
            Body::Push(p) if p.route == route => push = Some(p),
            _ => {}
        }
    }
    (reply.unwrap(), push.unwrap())
}

/// Calls until the reply is not BACKEND_UNAVAILABLE (a backend has
/// subscribed); returns the first other reply.
fn call_until_served(
    c: &mut Client,
    corr: &mut u64,
    route: &str,
    payload: &str,
) -> pb::UpstreamReply {
    let t = std::time::Instant::now();
    loop {
        *corr += 1;
        let r = c.call(*corr, route, payload);
        if r.status != ErrorCode::BackendUnavailable as u32 {
            return r;
        }
        assert!(t.elapsed() < WAIT, "no backend served {route}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn json(p: &pb::Push) -> serde_json::Value {
    serde_json::from_slice(&p.payload).expect("JSON push payload")
}

#[test]
fn routes_of_the_reference_backend_over_nats() {
    let nats = NatsServer::start();
    let _backend = ChatBackend::start(&nats.url(), &[]);
    let gw = start(nats_config("gw-a", &nats.url()));
    let (mut alice, _) = Client::login(gw.local_addr, "alice");
    let (mut bob, _) = Client::login(gw.local_addr, "bob");
    let mut corr = 0;
    let r = call_until_served(&mut alice, &mut corr, "echo", "hello");
    assert_eq!((r.status, &r.payload[..]), (0, &b"hello"[..]));

    let r = alice.call(100, "chat.send", r#"{"to":"bob","text":"hi"}"#);
    assert_eq!(r.status, 0);
    let p = push(&mut bob, "chat.msg");
    assert!(p.seq > 0, "chat.msg is ack-required");
    assert_eq!(json(&p)["from"], "alice");
    bob.send(Body::Ack(pb::Ack { seq: p.seq }));

    for (c, corr) in [(&mut alice, 101), (&mut bob, 102)] {
        assert_eq!(c.call(corr, "room.join", r#"{"room":"lobby"}"#).status, 0);
    }
    wait_for_interest(&Nats::connect(&nats.url()), "gw.room.lobby");
    let (r, p) = call_and_push(
        &mut alice,
        103,
        "room.send",
        r#"{"room":"lobby","text":"yo"}"#,
        "room.msg",
    );
    assert_eq!((r.status, json(&p)["text"].as_str()), (0, Some("yo")));
    assert_eq!(json(&push(&mut bob, "room.msg"))["text"], "yo");
    let r = alice.call(104, "no.such.route", "");
    assert_eq!(r.status, ErrorCode::UnknownRoute as u32);
    let r = alice.call(105, "chat.send", "not json");
    assert_eq!(r.status, ErrorCode::BadRequest as u32);
    gw.shutdown(false);
}

#[test]
fn any_service_pushes_kicks_and_commands_a_node() {
    let nats_server = NatsServer::start();
    let gw = start(nats_config("gw-a", &nats_server.url()));
    let nats = Nats::connect(&nats_server.url());
    let (mut alice, ok) = Client::login(gw.local_addr, "alice");
    wait_for_interest(&nats, "gw.user.alice");

    // A plain publish with headers is a push; no protobuf needed.
    nats.publish(
        "gw.user.alice",
        &[("Gw-Route", "news"), ("Gw-Priority", "high")],
        b"extra",
    );
    let p = push(&mut alice, "news");
    assert_eq!(
        (&p.payload[..], p.seq, p.priority),
        (&b"extra"[..], 0, pb::Priority::High as i32)
    );

    // Sent as a request, an ack-required push is confirmed by the gateway.
    let m = nats
        .request(
            "gw.user.alice",
            &[("Gw-Route", "mail"), ("Gw-Ack", "1")],
            b"m1",
        )
        .expect("the gateway confirms the push");
    let delivered = m
        .headers
        .as_ref()
        .and_then(|h| h.get("Gw-Delivered"))
        .map(|v| v.to_string());
    assert_eq!(delivered.as_deref(), Some("1"));
    let p = push(&mut alice, "mail");
    assert!(p.seq > 0);
    alice.send(Body::Ack(pb::Ack { seq: p.seq }));
    // Nobody online: no responders, which the publisher can act on.
    let e = nats
        .request("gw.user.nobody", &[("Gw-Route", "mail")], b"")
        .unwrap_err();
    assert_eq!(e, "NoResponders");

    // A node command: a push to one connection, by id.
    let cmd = pb::NodeCommand {
        pushes: vec![pb::PushOrder {
            target: Some(pb::push_order::Target::Conn(pb::ConnRef {
                node: String::new(),
                conn_id: ok.conn_id,
            })),
            route: "direct".into(),
            payload: b"to-conn".to_vec().into(),
            ..Default::default()
        }],
        ops: vec![],
    };
    nats.publish("gw.node.gw-a", &[], &cmd.encode_to_vec());
    assert_eq!(&push(&mut alice, "direct").payload[..], b"to-conn");

    // A push without Gw-Route is refused and counted; alice is untouched.
    nats.publish("gw.user.alice", &[], b"no route");
    // Kick by user subject.
    nats.publish("gw.user.alice", &[("Gw-Kick", "bye")], b"");
    let goaway = alice.recv_until("GoAway", |b| match b {
        Body::GoAway(g) => Some(g.clone()),
        Body::Push(p) => panic!("unexpected push {:?}", p.route),
        _ => None,
    });
    assert_eq!(
        (goaway.reason, goaway.message.as_str()),
        (CloseReason::Kicked as i32, "bye")
    );
    let (_, body) = common::http_get(gw.admin_addr.unwrap(), "/metrics");
    let refused = body
        .lines()
        .find_map(|l| l.strip_prefix("gateway_nats_inbound_refused_total "))
        .expect("NATS metrics");
    assert_eq!(refused, "1");
    gw.shutdown(false);
}

#[test]
fn session_events_are_published() {
    let nats_server = NatsServer::start();
    let mut cfg = nats_config("gw-a", &nats_server.url());
    cfg.ack_retries_max = 0;
    let gw = start(cfg);
    let nats = Nats::connect(&nats_server.url());
    let online = nats.watch("gw.evt.online");
    let offline = nats.watch("gw.evt.offline");
    let undelivered = nats.watch("gw.evt.undelivered");

    let mut c = Client::connect(gw.local_addr);
    c.send(Body::Auth(pb::Auth {
        protocol_version: gw_proto::PROTOCOL_VERSION,
        token: common::token("carol", 600),
        device_id: "phone".into(),
        resume_seq: 41,
        metadata: [("app".to_string(), "2.1".to_string())].into(),
        ..Default::default()
    }));
    let Body::AuthOk(ok) = c.recv().unwrap() else {
        panic!("no AuthOk")
    };
    let e = pb::OnlineEvent::decode(online.recv_timeout(WAIT).unwrap().payload).unwrap();
    assert_eq!(
        (
            e.node.as_str(),
            e.conn_id,
            e.user.as_str(),
            e.device.as_str()
        ),
        ("gw-a", ok.conn_id, "carol", "phone")
    );
    assert_eq!(
        (e.resume_seq, e.metadata.get("app").map(String::as_str)),
        (41, Some("2.1"))
    );

    // An ack-required push carol never acks: retries run out, reported.
    wait_for_interest(&nats, "gw.user.carol");
    nats.publish(
        "gw.user.carol",
        &[("Gw-Route", "bill"), ("Gw-Ack", "1")],
        b"42",
    );
    let e = pb::UndeliveredEvent::decode(undelivered.recv_timeout(WAIT).unwrap().payload).unwrap();
    assert_eq!(
        (e.user.as_str(), e.conn_id, e.pushes.len()),
        ("carol", ok.conn_id, 1)
    );
    assert_eq!(
        e.pushes[0].reason,
        pb::UndeliveredReason::RetriesExhausted as i32
    );
    assert_eq!(
        (e.pushes[0].route.as_str(), &e.pushes[0].payload[..]),
        ("bill", &b"42"[..])
    );

    // Read what was sent, so that closing is a clean FIN (unread data
    // would make it a reset: IO_ERROR).
    push(&mut c, "bill");
    drop(c);
    let e = pb::OfflineEvent::decode(offline.recv_timeout(WAIT).unwrap().payload).unwrap();
    assert_eq!(
        (e.conn_id, e.reason),
        (ok.conn_id, CloseReason::ClientClosed as i32)
    );
    gw.shutdown(false);
}

#[test]
fn an_ack_required_push_to_nobody_is_reported_undelivered() {
    use futures_util::StreamExt;
    let nats_server = NatsServer::start();
    let backend = ChatBackend::start(&nats_server.url(), &[]);
    let gw = start(nats_config("gw-a", &nats_server.url()));
    let nats = Nats::connect(&nats_server.url());
    let undelivered = nats.watch("gw.evt.undelivered");
    let (mut alice, _) = Client::login(gw.local_addr, "alice");
    let mut corr = 0;
    call_until_served(&mut alice, &mut corr, "echo", "");
    // The reference backend checks first: a DM to nobody is refused.
    let r = alice.call(50, "chat.send", r#"{"to":"ghost","text":"hi"}"#);
    assert_eq!(r.status, ErrorCode::BadRequest as u32, "{r:?}");
    drop(backend); // it answers every route (UNKNOWN_ROUTE for the rest)
                   // A backend that does not check: its reply pushes to the user named
                   // in the payload, ack-required. The gateway reports it undelivered.
    let mut sub = nats.subscribe("gw.up.to.user");
    let client = nats.client.clone();
    nats.rt.spawn(async move {
        while let Some(m) = sub.next().await {
            let reply = pb::BackendReply {
                pushes: vec![pb::PushOrder {
                    target: Some(pb::push_order::Target::User(
                        String::from_utf8_lossy(&m.payload).into_owned(),
                    )),
                    route: "direct".into(),
                    payload: b"to nobody".to_vec().into(),
                    ack_required: true,
                    ..Default::default()
                }],
                ..Default::default()
            };
            let Some(to) = m.reply else { continue };
            let _ = client.publish(to, reply.encode_to_vec().into()).await;
        }
    });
    // Until our subscriber answers: the reference backend, dropped above,
    // may still hold its subscription for a moment (UNKNOWN_ROUTE, or a
    // request it never answers: TIMEOUT). Refused calls push nothing.
    let t = std::time::Instant::now();
    loop {
        let r = call_until_served(&mut alice, &mut corr, "to.user", "ghost");
        if r.status == 0 {
            break;
        }
        assert!(
            [ErrorCode::UnknownRoute as u32, ErrorCode::Timeout as u32].contains(&r.status)
                && t.elapsed() < WAIT,
            "{r:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let e = pb::UndeliveredEvent::decode(undelivered.recv_timeout(WAIT).unwrap().payload).unwrap();
    assert_eq!((e.user.as_str(), e.conn_id), ("ghost", 0));
    assert_eq!(
        e.pushes[0].reason,
        pb::UndeliveredReason::NoConnection as i32
    );
    gw.shutdown(false);
}

/// A login's AuthOk is not sent until its subscription can be confirmed:
/// with no NATS, the login gets `AuthError{BACKEND_UNAVAILABLE}` and
/// closes as NODE_UNAVAILABLE (after `auth_timeout_ms`, or at once once
/// the node is out), and the node is not ready. Once NATS arrives, logins
/// succeed and the node is ready.
#[test]
fn nats_unreachable_at_start_then_arrives() {
    let port = common::nats::free_port();
    let mut cfg = nats_config("gw-a", &format!("nats://127.0.0.1:{port}"));
    cfg.auth_timeout_ms = 300;
    cfg.nats.restore_deadline_ms = 1_000;
    let gw = start(cfg);
    let admin = gw.admin_addr.unwrap();
    let (status, body) = common::http_get(admin, "/readyz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("NATS"), "{body}");
    assert_eq!(
        common::http_get(admin, "/healthz").0,
        200,
        "alive all the same"
    );
    let mut c = Client::connect(gw.local_addr);
    match c.auth_with(common::token("alice", 3600), "d") {
        Body::AuthError(e) => assert_eq!(e.code, ErrorCode::BackendUnavailable as i32),
        other => panic!("expected AuthError, got {other:?}"),
    }
    assert!(c.read_to_close().0);
    // Past the restore deadline the node is out: refused at once.
    std::thread::sleep(Duration::from_millis(1_100));
    let t = std::time::Instant::now();
    let mut c = Client::connect(gw.local_addr);
    assert!(matches!(
        c.auth_with(common::token("alice", 3600), "d"),
        Body::AuthError(e) if e.code == ErrorCode::BackendUnavailable as i32
    ));
    assert!(
        t.elapsed() < Duration::from_millis(250),
        "refused at once when out"
    );
    assert!(common::closes(&gw, "NODE_UNAVAILABLE") >= 2);

    let nats = NatsServer::start_with(port, vec![]);
    let _backend = ChatBackend::start(&nats.url(), &[]);
    common::eventually("ready once NATS is up", || {
        common::http_get(admin, "/readyz").0 == 200
    });
    let (mut alice, _) = Client::login(gw.local_addr, "alice");
    let mut corr = 1;
    let r = call_until_served(&mut alice, &mut corr, "echo", "x");
    assert_eq!((r.status, &r.payload[..]), (0, &b"x"[..]));
    // AuthOk meant reachable: a push right away finds alice.
    let n = Nats::connect(&nats.url());
    assert!(n
        .request(
            "gw.user.alice",
            &[("Gw-Route", "now"), ("Gw-Ack", "1")],
            b""
        )
        .is_ok());
    push(&mut alice, "now");
    gw.shutdown(false);
}

#[test]
fn nats_lost_while_running_gives_retryable_errors_and_recovers() {
    let mut nats = NatsServer::start();
    let _backend = ChatBackend::start(&nats.url(), &[]);
    let gw = start(nats_config("gw-a", &nats.url()));
    let (mut alice, _) = Client::login(gw.local_addr, "alice");
    let mut corr = 0;
    call_until_served(&mut alice, &mut corr, "echo", "x");

    nats.kill();
    // Every upstream gets an answer: retryable, never silence.
    let t = std::time::Instant::now();
    loop {
        corr += 1;
        let r = alice.call(corr, "echo", "x");
        if r.status == ErrorCode::BackendUnavailable as u32 {
            assert!(r.retry_after_ms > 0);
            break;
        }
        assert!(t.elapsed() < WAIT, "NATS loss not noticed: {r:?}");
        std::thread::sleep(Duration::from_millis(20));
    }

    nats.restart();
    let r = call_until_served(&mut alice, &mut corr, "echo", "back");
    assert_eq!(&r.payload[..], b"back");
    // The subscription for alice was restored on reconnect.
    let client = Nats::connect(&nats.url());
    wait_for_interest(&client, "gw.user.alice");
    client.publish("gw.user.alice", &[("Gw-Route", "after")], b"");
    push(&mut alice, "after");
    gw.shutdown(false);
}

#[test]
fn a_silent_backend_times_out_and_a_slow_one_gets_busy() {
    let nats = NatsServer::start();
    let _backend = ChatBackend::start(&nats.url(), &["--delay-ms", "1500"]);
    let mut cfg = nats_config("gw-a", &nats.url());
    cfg.cores = 1;
    cfg.upstream_timeout_ms = 300;
    cfg.upstream_inflight_per_core_max = 3;
    let gw = start(cfg);
    let (mut alice, _) = Client::login(gw.local_addr, "alice");
    let mut corr = 0;
    // The first answer proves the backend is subscribed: a TIMEOUT.
    let r = call_until_served(&mut alice, &mut corr, "echo", "x");
    assert_eq!(r.status, ErrorCode::Timeout as u32, "{r:?}");
    assert!(r.retry_after_ms > 0);
    // Five at once against a bound of three: two BUSY, three TIMEOUT.
    for i in 0..5 {
        alice.upstream(1000 + i, "echo", "x");
    }
    let mut codes = Vec::new();
    while codes.len() < 5 {
        if let Body::UpstreamReply(r) = alice.recv().unwrap() {
            if r.correlation_id >= 1000 {
                codes.push(r.status);
            }
        }
    }
    codes.sort();
    let (busy, timeout) = (ErrorCode::Busy as u32, ErrorCode::Timeout as u32);
    assert_eq!(codes, vec![busy, busy, timeout, timeout, timeout]);
    // The connection is still up.
    alice.send(Body::Ping(pb::Ping::default()));
    alice.recv_until("Pong", |b| matches!(b, Body::Pong(_)).then_some(()));
    gw.shutdown(false);
}

/// Two gateway nodes in front of one NATS (or a cluster): chat, rooms,
/// kicks and drain across nodes.
fn two_nodes(urls: [&str; 3]) {
    let [url_a, url_b, url_backend] = urls;
    let _backend = ChatBackend::start(url_backend, &[]);
    let a = start(nats_config("gw-a", url_a));
    let b = start(nats_config("gw-b", url_b));
    let (mut alice, ok_a) = Client::login(a.local_addr, "alice");
    let (mut bob, ok_b) = Client::login(b.local_addr, "bob");
    assert_eq!(
        (ok_a.node_id.as_str(), ok_b.node_id.as_str()),
        ("gw-a", "gw-b")
    );
    let probe = Nats::connect(url_a);
    wait_for_interest(&probe, "gw.user.bob");
    let mut corr = 0;
    call_until_served(&mut alice, &mut corr, "echo", "");
    // Node B's NATS client may still be connecting: wait until it serves too.
    call_until_served(&mut bob, &mut corr, "echo", "");

    // Chat from node A to node B.
    assert_eq!(
        alice
            .call(10, "chat.send", r#"{"to":"bob","text":"hi bob"}"#)
            .status,
        0
    );
    let p = push(&mut bob, "chat.msg");
    assert_eq!(json(&p)["text"], "hi bob");
    bob.send(Body::Ack(pb::Ack { seq: p.seq }));

    // A room spanning both nodes.
    assert_eq!(alice.call(11, "room.join", r#"{"room":"both"}"#).status, 0);
    assert_eq!(bob.call(12, "room.join", r#"{"room":"both"}"#).status, 0);
    wait_for_interest(&probe, "gw.room.both");
    let probe_b = Nats::connect(url_b);
    wait_for_interest(&probe_b, "gw.room.both");
    let (r, p) = call_and_push(
        &mut bob,
        13,
        "room.send",
        r#"{"room":"both","text":"all"}"#,
        "room.msg",
    );
    assert_eq!((r.status, json(&p)["text"].as_str()), (0, Some("all")));
    assert_eq!(json(&push(&mut alice, "room.msg"))["text"], "all");

    // A kick for bob reaches node B only; alice stays.
    let (bob2, _) = Client::login(a.local_addr, "bob2");
    let kick = pb::NodeCommand {
        pushes: vec![],
        ops: vec![pb::SessionOp {
            op: Some(pb::session_op::Op::KickConn(pb::KickConn {
                conn: Some(pb::ConnRef {
                    node: "gw-b".into(),
                    conn_id: ok_b.conn_id,
                }),
                message: "kicked from A's side".into(),
            })),
        }],
    };
    probe.publish("gw.node.gw-b", &[], &kick.encode_to_vec());
    let g = bob.recv_until("GoAway", |b| match b {
        Body::GoAway(g) => Some(g.clone()),
        _ => None,
    });
    assert_eq!(g.reason, CloseReason::Kicked as i32);
    assert_eq!(alice.call(14, "echo", "still here").status, 0);

    // Node A drains; node B keeps serving.
    let (mut carol, _) = Client::login(b.local_addr, "carol");
    a.shutdown(true);
    let (closed, _) = alice.read_to_close();
    assert!(closed);
    drop(bob2);
    assert_eq!(carol.call(15, "echo", "B is fine").status, 0);
    wait_for_interest(&probe_b, "gw.user.carol");
    probe_b.publish("gw.user.carol", &[("Gw-Route", "still")], b"");
    push(&mut carol, "still");
    b.shutdown(false);
}

#[test]
fn two_nodes_one_nats_server() {
    let nats = NatsServer::start();
    let url = nats.url();
    two_nodes([&url, &url, &url]);
}

#[test]
fn two_nodes_on_a_three_server_cluster() {
    let servers = common::nats::cluster();
    let urls: Vec<String> = servers.iter().map(|s| s.url()).collect();
    two_nodes([&urls[0], &urls[1], &urls[2]]);
}

#[test]
fn token_authentication_to_nats() {
    let nats = NatsServer::start_args(vec!["--auth".into(), "s3cret".into()]);
    let _backend = ChatBackend::start(&nats.url(), &["--nats-token", "s3cret"]);
    let mut cfg = nats_config("gw-a", &nats.url());
    cfg.nats.token = "s3cret".into();
    let gw = start(cfg);
    let (mut alice, _) = Client::login(gw.local_addr, "alice");
    let mut corr = 0;
    let r = call_until_served(&mut alice, &mut corr, "echo", "authed");
    assert_eq!((r.status, &r.payload[..]), (0, &b"authed"[..]));
    // The subscription connection authenticated too: a push arrives.
    assert_eq!(
        alice
            .call(1000, "chat.send", r#"{"to":"alice","text":"me"}"#)
            .status,
        0
    );
    assert_eq!(json(&push(&mut alice, "chat.msg"))["text"], "me");
    gw.shutdown(false);
}

/// A node that cannot authenticate to NATS is not ready, and says so: its
/// logins are refused with a retryable BACKEND_UNAVAILABLE.
#[test]
fn a_wrong_nats_token_makes_the_node_not_ready_and_refuses_logins() {
    let nats = NatsServer::start_args(vec!["--auth".into(), "s3cret".into()]);
    let mut cfg = nats_config("gw-a", &nats.url());
    cfg.nats.token = "wrong".into();
    cfg.auth_timeout_ms = 300;
    let gw = start(cfg);
    let mut c = Client::connect(gw.local_addr);
    assert!(matches!(
        c.auth_with(common::token("alice", 3600), "d"),
        Body::AuthError(e) if e.code == ErrorCode::BackendUnavailable as i32
    ));
    let (status, body) = common::http_get(gw.admin_addr.unwrap(), "/readyz");
    assert_eq!(status, 503, "{body}");
    gw.shutdown(false);
}

#[test]
fn ack_required_pushes_to_connections_on_other_nodes() {
    use futures_util::StreamExt;
    let nats_server = NatsServer::start();
    let a = start(nats_config("gw-a", &nats_server.url()));
    let b = start(nats_config("gw-b", &nats_server.url()));
    let nats = Nats::connect(&nats_server.url());
    let undelivered = nats.watch("gw.evt.undelivered");
    let (mut alice, _) = Client::login(a.local_addr, "alice");
    let (mut bob, ok_b) = Client::login(b.local_addr, "bob");
    // A backend whose reply pushes to the connection named in the payload
    // ("node conn_id"), ack-required.
    let mut sub = nats.subscribe("gw.up.to.conn");
    let client = nats.client.clone();
    nats.rt.spawn(async move {
        while let Some(m) = sub.next().await {
            let text = String::from_utf8_lossy(&m.payload).to_string();
            let (node, conn) = text.split_once(' ').unwrap();
            let reply = pb::BackendReply {
                pushes: vec![pb::PushOrder {
                    target: Some(pb::push_order::Target::Conn(pb::ConnRef {
                        node: node.into(),
                        conn_id: conn.parse().unwrap(),
                    })),
                    route: "direct".into(),
                    payload: b"across".to_vec().into(),
                    ack_required: true,
                    ..Default::default()
                }],
                ..Default::default()
            };
            client
                .publish(m.reply.unwrap(), reply.encode_to_vec().into())
                .await
                .unwrap();
        }
    });
    // To bob's connection on node B: delivered there, acked.
    let target = format!("gw-b {}", ok_b.conn_id);
    let mut corr = 0;
    assert_eq!(
        call_until_served(&mut alice, &mut corr, "to.conn", &target).status,
        0
    );
    let p = push(&mut bob, "direct");
    assert!(p.seq > 0);
    bob.send(Body::Ack(pb::Ack { seq: p.seq }));
    // To a node that does not exist: reported, naming that node's connection.
    assert_eq!(alice.call(100, "to.conn", "gw-gone 77").status, 0);
    let e = pb::UndeliveredEvent::decode(undelivered.recv_timeout(WAIT).unwrap().payload).unwrap();
    assert_eq!((e.node.as_str(), e.conn_id), ("gw-gone", 77));
    assert_eq!(
        e.pushes[0].reason,
        pb::UndeliveredReason::NoConnection as i32
    );
    // To a connection id node B does not have: node B reports it.
    assert_eq!(alice.call(101, "to.conn", "gw-b 12345").status, 0);
    let e = pb::UndeliveredEvent::decode(undelivered.recv_timeout(WAIT).unwrap().payload).unwrap();
    assert_eq!((e.node.as_str(), e.conn_id), ("gw-b", 12345));
    assert_eq!(
        e.pushes[0].reason,
        pb::UndeliveredReason::NoConnection as i32
    );
    a.shutdown(false);
    b.shutdown(false);
}

/// The back-fill pattern: on `OnlineEvent` a backend replays a backlog of
/// 10,000 ack-required pushes all at once (concurrent requests). The
/// window (`unacked_pushes_max`, 128) is flow control, not a limit: the
/// client that acks gets every push, in order, and none is reported.
#[test]
fn a_backlog_sent_concurrently_after_online_reaches_an_acking_client_in_order() {
    use futures_util::StreamExt;
    const N: usize = 10_000;
    let nats = NatsServer::start();
    let gw = start(nats_config("gw-a", &nats.url()));
    let backend = Nats::connect(&nats.url());
    let undelivered = backend.watch("gw.evt.undelivered");
    let mut online = backend.subscribe("gw.evt.online");
    let c = backend.client.clone();
    let replay = backend.rt.spawn(async move {
        let ev = online.next().await.expect("an online event");
        let ev = pb::OnlineEvent::decode(&ev.payload[..]).expect("OnlineEvent");
        assert_eq!(ev.user, "bf");
        // All N as requests at once, without waiting for any answer: the
        // replies come to an inbox of ours, so the publish order is exactly
        // 0..N (async-nats's own request futures may reorder when its
        // command channel is full).
        let mut replies = c.subscribe("bf.replies.>").await.expect("inbox");
        c.flush().await.expect("flush");
        for i in 0..N {
            let mut h = async_nats::HeaderMap::new();
            h.insert("Gw-Route", "backfill");
            h.insert("Gw-Ack", "1");
            c.publish_with_reply_and_headers(
                "gw.user.bf",
                format!("bf.replies.{i}"),
                h,
                i.to_string().into(),
            )
            .await
            .expect("publish");
        }
        let mut taken = 0;
        while taken < N {
            let m = tokio::time::timeout(Duration::from_secs(10), replies.next())
                .await
                .expect("every request answered")
                .expect("inbox open");
            if m.headers
                .as_ref()
                .and_then(|h| h.get("Gw-Delivered"))
                .is_some()
            {
                taken += 1;
            }
        }
        taken
    });
    let (mut bf, _) = Client::login(gw.local_addr, "bf");
    let mut i = 0;
    while i < N {
        let p = push(&mut bf, "backfill");
        bf.send(Body::Ack(pb::Ack { seq: p.seq }));
        if p.seq <= i as u64 {
            // A resend (the machine was slow to ack): a duplicate, acked again.
            assert!(p.retransmit);
            continue;
        }
        assert_eq!(p.seq, i as u64 + 1);
        assert_eq!(p.payload, i.to_string().as_bytes(), "push {i} in order");
        i += 1;
    }
    let taken = backend.rt.block_on(replay).expect("replay task");
    assert_eq!(taken, N, "every push confirmed taken (Gw-Delivered)");
    assert_eq!(
        bf.call(1, "echo", "x").status,
        ErrorCode::BackendUnavailable as u32,
        "still connected"
    );
    assert!(
        undelivered
            .recv_timeout(Duration::from_millis(300))
            .is_err(),
        "nothing reported undelivered"
    );
    gw.shutdown(false);
}

/// A room marked hot over NATS (`Gw-Room-Mode`, as a backend's `room_mode`
/// op is sent): pushes published to the room come to a member that reads
/// batches as one batch; a HIGH one ends the batch at once (one frame); a
/// mode that carries a Gw-Route is a push too; a bad mode is refused and
/// counted.
#[test]
fn a_room_marked_hot_over_nats_sends_batches() {
    let nats_server = NatsServer::start();
    let _backend = ChatBackend::start(&nats_server.url(), &[]);
    let mut cfg = nats_config("gw-a", &nats_server.url());
    cfg.cores = 1;
    cfg.rooms.coalesce_window_ms = 50;
    let gw = start(cfg);
    let nats = Nats::connect(&nats_server.url());
    let mut c = Client::connect(gw.local_addr);
    c.send(Body::Auth(pb::Auth {
        protocol_version: gw_proto::PROTOCOL_VERSION,
        token: common::token("m", 600),
        device_id: "d".into(),
        push_batches: true,
        ..Default::default()
    }));
    assert!(matches!(c.recv(), Ok(Body::AuthOk(_))));
    let mut corr = 0;
    call_until_served(&mut c, &mut corr, "room.join", r#"{"room":"live"}"#);
    wait_for_interest(&nats, "gw.room.live");
    nats.publish("gw.room.live", &[("Gw-Room-Mode", "hot")], b"");
    nats.publish("gw.room.live", &[("Gw-Room-Mode", "tepid")], b"");
    // A mode with a Gw-Route is a push as well ("1").
    nats.publish(
        "gw.room.live",
        &[("Gw-Room-Mode", "hot"), ("Gw-Route", "r")],
        b"1",
    );
    for (text, prio) in [("2", "low"), ("3", "high")] {
        nats.publish(
            "gw.room.live",
            &[("Gw-Route", "r"), ("Gw-Priority", prio)],
            text.as_bytes(),
        );
    }
    let mut got = Vec::new();
    while got.is_empty() {
        if let Body::Push(p) = c.recv().expect("push") {
            if p.route == "probe" {
                continue; // wait_for_interest's
            }
            got.push(if p.batch.is_empty() {
                String::from_utf8_lossy(&p.payload).into_owned()
            } else {
                let items: Vec<_> = p
                    .batch
                    .iter()
                    .map(|q| String::from_utf8_lossy(&q.payload).into_owned())
                    .collect();
                format!("[{}]", items.join(" "))
            });
        }
    }
    assert_eq!(got, ["[1 2 3]"]);
    let (_, metrics) = common::http_get(gw.admin_addr.expect("admin"), "/metrics");
    assert!(
        metrics.contains("gateway_nats_inbound_refused_total 1"),
        "{metrics}"
    );
    gw.shutdown(false);
}
