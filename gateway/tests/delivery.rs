//! Pushes: chat across cores, room fan-out, ack / retransmit / undelivered,
//! and the slow-consumer policy.

mod common;

use std::time::Duration;

use common::*;
use gateway::core::conn_id_core;
use gw_proto::pb::{self, frame::Body};
use gw_proto::CloseReason;

/// Logs in as `user` until the connection lands on `core` (SO_REUSEPORT
/// spreads connections by hash, so a few tries find each core).
fn login_on_core(addr: std::net::SocketAddr, user: &str, core: usize) -> Client {
    for _ in 0..200 {
        let (c, ok) = Client::login(addr, user);
        if conn_id_core(ok.conn_id) == core {
            return c;
        }
    }
    panic!("no connection landed on core {core}");
}

fn next_push(c: &mut Client) -> pb::Push {
    c.recv_until("push", |b| match b {
        Body::Push(p) => Some(p.clone()),
        _ => None,
    })
}

#[test]
fn chat_between_users_on_different_cores() {
    let (gw, _rec) = start(test_config());
    let mut alice = login_on_core(gw.local_addr, "alice", 0);
    let mut bob = login_on_core(gw.local_addr, "bob", 1);
    let r = alice.call(1, "chat.send", r#"{"to":"bob","text":"hi bob"}"#);
    assert_eq!(r.status, 0);
    let p = next_push(&mut bob);
    assert_eq!(p.route, "chat.msg");
    assert!(p.ack_required);
    assert_eq!(p.seq, 1);
    let body: serde_json::Value = serde_json::from_slice(&p.payload).unwrap();
    assert_eq!(body["from"], "alice");
    assert_eq!(body["text"], "hi bob");
    bob.send(Body::Ack(pb::Ack { seq: 1 }));
    // And back, to every device of alice: a second alice device on core 1.
    let mut alice2 = login_on_core(gw.local_addr, "alice", 1);
    assert_eq!(
        bob.call(2, "chat.send", r#"{"to":"alice","text":"hey"}"#)
            .status,
        0
    );
    assert_eq!(
        next_push(&mut alice).payload,
        next_push(&mut alice2).payload
    );
    gw.shutdown(false);
}

#[test]
fn room_broadcast_reaches_every_member_on_every_core() {
    let (gw, _rec) = start(test_config());
    let members = 200;
    let mut clients: Vec<Client> = (0..members)
        .map(|i| Client::login(gw.local_addr, &format!("u{i}")).0)
        .collect();
    let cores: std::collections::HashSet<usize> = gw
        .snapshots()
        .iter()
        .filter(|s| s.sessions > 0)
        .map(|s| s.core)
        .collect();
    assert_eq!(cores.len(), 2, "members on both cores");
    for (i, c) in clients.iter_mut().enumerate() {
        assert_eq!(
            c.call(i as u64, "room.join", r#"{"room":"lobby"}"#).status,
            0
        );
    }
    let (mut outsider, _) = Client::login(gw.local_addr, "outsider");
    assert_eq!(
        clients[0]
            .call(999, "room.send", r#"{"room":"lobby","text":"hello all"}"#)
            .status,
        0
    );
    for c in clients.iter_mut() {
        let p = next_push(c);
        assert_eq!(
            (p.route.as_str(), p.seq, p.ack_required),
            ("room.msg", 0, false)
        );
        let body: serde_json::Value = serde_json::from_slice(&p.payload).unwrap();
        assert_eq!(body["text"], "hello all");
    }
    // Non-members get nothing; a member that left gets nothing.
    assert_eq!(
        clients[1]
            .call(5000, "room.leave", r#"{"room":"lobby"}"#)
            .status,
        0
    );
    assert_eq!(
        clients[0]
            .call(5001, "room.send", r#"{"room":"lobby","text":"2"}"#)
            .status,
        0
    );
    assert!(next_push(&mut clients[2]).payload.ends_with(b"\"2\"}"));
    assert!(outsider.recv_within(Duration::from_millis(300)).is_err());
    assert!(clients[1].recv_within(Duration::from_millis(300)).is_err());
    let rooms: u64 = gw.snapshots().iter().map(|s| s.rooms).sum();
    assert!(rooms >= 1);
    drop(clients);
    eventually("rooms emptied when members leave", || {
        gw.snapshots().iter().map(|s| s.rooms).sum::<u64>() == 0
    });
    gw.shutdown(false);
}

#[test]
fn unacked_push_is_retransmitted_then_reported_undelivered() {
    let cfg = gateway::Config {
        ack_timeout_ms: 100,
        ack_retries_max: 2,
        ..test_config()
    };
    let (gw, rec) = start(cfg);
    let (mut bob, _) = Client::login(gw.local_addr, "bob");
    let (mut alice, _) = Client::login(gw.local_addr, "alice");
    assert_eq!(
        alice
            .call(1, "chat.send", r#"{"to":"bob","text":"one"}"#)
            .status,
        0
    );
    let first = next_push(&mut bob);
    assert!(!first.retransmit);
    let again: Vec<pb::Push> = (0..2).map(|_| next_push(&mut bob)).collect();
    for p in &again {
        assert_eq!(p.seq, first.seq);
        assert!(p.retransmit);
        assert_eq!(p.payload, first.payload);
    }
    let evs = rec.wait_for("undelivered", |e| {
        e.iter().any(|e| matches!(e, Ev::Undelivered { .. }))
    });
    let und: Vec<_> = evs
        .iter()
        .filter(|e| matches!(e, Ev::Undelivered { .. }))
        .collect();
    assert_eq!(
        und,
        vec![&Ev::Undelivered {
            user: "bob".into(),
            seqs: vec![first.seq],
            routes: vec!["chat.msg".into()]
        }]
    );
    // No third retransmit; the connection stays up.
    assert!(bob.recv_within(Duration::from_millis(400)).is_err());
    assert_eq!(bob.call(9, "echo", "x").status, 0);
    let retransmits: u64 = gw.snapshots().iter().map(|s| s.counters.retransmits).sum();
    assert_eq!(retransmits, 2);
    gw.shutdown(false);
}

#[test]
fn acked_pushes_are_not_retransmitted_and_close_reports_the_rest() {
    let cfg = gateway::Config {
        ack_timeout_ms: 100,
        ..test_config()
    };
    let (gw, rec) = start(cfg);
    let (mut bob, _) = Client::login(gw.local_addr, "bob");
    let (mut alice, _) = Client::login(gw.local_addr, "alice");
    for i in 0..3 {
        assert_eq!(
            alice
                .call(i, "chat.send", &format!(r#"{{"to":"bob","text":"{i}"}}"#))
                .status,
            0
        );
    }
    let seqs: Vec<u64> = (0..3).map(|_| next_push(&mut bob).seq).collect();
    assert_eq!(seqs, vec![1, 2, 3]);
    bob.send(Body::Ack(pb::Ack { seq: 2 })); // cumulative: 1 and 2
    let p = next_push(&mut bob);
    assert_eq!((p.seq, p.retransmit), (3, true), "only seq 3 is resent");
    drop(bob);
    let evs = rec.wait_for("undelivered on close", |e| {
        e.iter().any(|e| matches!(e, Ev::Undelivered { .. }))
    });
    assert!(evs.contains(&Ev::Undelivered {
        user: "bob".into(),
        seqs: vec![3],
        routes: vec!["chat.msg".into()]
    }));
    gw.shutdown(false);
}

#[test]
fn slow_consumer_is_closed_and_its_pushes_reported() {
    let cfg = gateway::Config {
        outbound_bytes_max: 70 * 1024,
        ack_timeout_ms: 60_000,
        ..test_config()
    };
    let (gw, rec) = start(cfg);
    let (slow, _) = Client::login(gw.local_addr, "slow");
    slow.s.set_nonblocking(false).unwrap();
    // Shrink the client's receive buffer so the server's socket fills soon.
    socket2::SockRef::from(&slow.s)
        .set_recv_buffer_size(4096)
        .unwrap();
    let (mut alice, _) = Client::login(gw.local_addr, "alice");
    let text = "x".repeat(8000);
    let mut sent = 0;
    // The slow client never reads. Keep pushing until the gateway gives up on it.
    while sent < 2000 {
        let r = alice.call(
            sent,
            "chat.send",
            &format!(r#"{{"to":"slow","text":"{text}"}}"#),
        );
        assert_eq!(r.status, 0);
        sent += 1;
        if rec
            .events()
            .iter()
            .any(|e| matches!(e, Ev::Offline { user, .. } if user == "slow"))
        {
            break;
        }
    }
    let evs = rec.wait_for("slow consumer offline", |e| {
        e.iter().any(|e| matches!(e, Ev::Offline { user, reason: CloseReason::SlowConsumer } if user == "slow"))
    });
    let reported: usize = evs
        .iter()
        .map(|e| match e {
            Ev::Undelivered { user, seqs, .. } if user == "slow" => seqs.len(),
            _ => 0,
        })
        .sum();
    assert!(
        reported >= 1,
        "unacked pushes are reported undelivered, got {evs:?}"
    );
    let slow_count: u64 = gw
        .snapshots()
        .iter()
        .map(|s| s.counters.slow_consumers)
        .sum();
    assert!(slow_count >= 1);
    // Everyone else is fine.
    assert_eq!(alice.call(99_999, "echo", "ok").status, 0);
    drop(slow);
    gw.shutdown(false);
}

#[test]
fn kick_reaches_every_connection_of_a_user_on_every_core() {
    let (gw, rec) = start(test_config());
    let mut v0 = login_on_core(gw.local_addr, "victim", 0);
    let mut v1 = login_on_core(gw.local_addr, "victim", 1);
    let (mut other, _) = Client::login(gw.local_addr, "other");
    let (mut admin, _) = Client::login(gw.local_addr, "admin");
    assert_eq!(admin.call(1, "test.kick", "victim").status, 0);
    for c in [&mut v0, &mut v1] {
        let (closed, frames) = c.read_to_close();
        assert!(closed);
        match frames.as_slice() {
            [Body::GoAway(g)] => {
                assert_eq!(g.reason, CloseReason::Kicked as i32);
                assert_eq!(g.message, "kicked by test");
            }
            other => panic!("expected one GoAway, got {other:?}"),
        }
    }
    rec.wait_for("two kicked offline events", |e| {
        e.iter().filter(|e| matches!(e, Ev::Offline { user, reason: CloseReason::Kicked } if user == "victim")).count() == 2
    });
    assert_eq!(other.call(2, "echo", "x").status, 0);
    gw.shutdown(false);
}

#[test]
fn a_client_kicked_by_its_own_request_gets_the_reply_first() {
    let (gw, _rec) = start(test_config());
    let (mut me, _) = Client::login(gw.local_addr, "self-kicker");
    me.upstream(7, "test.kick", "self-kicker");
    let (closed, frames) = me.read_to_close();
    assert!(closed);
    match frames.as_slice() {
        [Body::UpstreamReply(r), Body::GoAway(g)] => {
            assert_eq!((r.correlation_id, r.status), (7, 0));
            assert_eq!(g.reason, CloseReason::Kicked as i32);
        }
        other => panic!("expected the reply, then GoAway; got {other:?}"),
    }
    gw.shutdown(false);
}

#[test]
fn push_larger_than_frame_bytes_max_is_refused_and_reported() {
    let cfg = gateway::Config {
        frame_bytes_max: 1024,
        outbound_bytes_max: 64 * 1024,
        ..test_config()
    };
    let (gw, rec) = start(cfg);
    let (mut bob, _) = Client::login(gw.local_addr, "bob");
    let (mut alice, _) = Client::login(gw.local_addr, "alice");
    // The request fits; the push (which adds "from" and "device") does not.
    let text = "y".repeat(960);
    assert_eq!(
        alice
            .call(
                1,
                "chat.send",
                &format!(r#"{{"to":"bob","text":"{text}"}}"#)
            )
            .status,
        0
    );
    rec.wait_for("undelivered too large", |e| {
        e.iter().any(|e| matches!(e, Ev::Undelivered { routes, .. } if routes == &vec!["chat.msg".to_string()]))
    });
    assert!(
        bob.recv_within(Duration::from_millis(300)).is_err(),
        "nothing oversized reaches bob"
    );
    let refused: u64 = gw
        .snapshots()
        .iter()
        .map(|s| s.counters.pushes_too_large)
        .sum();
    assert_eq!(refused, 1);
    assert_eq!(
        bob.call(2, "chat.send", r#"{"to":"alice","text":"small"}"#)
            .status,
        0
    );
    assert_eq!(next_push(&mut alice).route, "chat.msg");
    gw.shutdown(false);
}
