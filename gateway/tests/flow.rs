//! Flow-controlled reliable push: `unacked_pushes_max` is the window, what
//! does not fit waits in the connection's backlog and follows as acks
//! open the window; a client that stops acking, or whose backlog
//! overflows, is a slow consumer and every push it held is handed back.

mod common;

use common::*;
use gw_proto::pb::{self, frame::Body};
use gw_proto::CloseReason;

fn next_push(c: &mut Client) -> pb::Push {
    c.recv_until("push", |b| match b {
        Body::Push(p) => Some(p.clone()),
        _ => None,
    })
}

/// Undelivered pushes reported for `user`: (seq, payload-free count).
fn reported(evs: &[Ev], user: &str) -> Vec<u64> {
    evs.iter()
        .flat_map(|e| match e {
            Ev::Undelivered { user: u, seqs, .. } if u == user => seqs.clone(),
            _ => Vec::new(),
        })
        .collect()
}

#[test]
fn a_burst_larger_than_the_window_reaches_an_acking_client_in_order() {
    const N: usize = 1_000;
    // No resends while the machine is busy: only flow control is tested.
    let cfg = gateway::Config {
        ack_timeout_ms: 30_000,
        ..test_config()
    };
    let (gw, rec) = start(cfg);
    let (mut bob, _) = Client::login(gw.local_addr, "bob");
    let (mut alice, _) = Client::login(gw.local_addr, "alice");
    // One reply carries N ack-required pushes: far more than the window (128).
    assert_eq!(alice.call(1, "test.burst", &format!("bob {N}")).status, 0);
    for i in 0..N {
        let p = next_push(&mut bob);
        assert_eq!(p.seq, i as u64 + 1, "in order, no gaps");
        assert_eq!(p.payload, i.to_string().as_bytes(), "push {i}");
        assert!(!p.retransmit);
        bob.send(Body::Ack(pb::Ack { seq: p.seq }));
    }
    assert_eq!(bob.call(2, "echo", "still here").status, 0);
    let evs = rec.events();
    assert!(
        reported(&evs, "bob").is_empty(),
        "nothing reported: {evs:?}"
    );
    assert_eq!(closes(&gw, "SLOW_CONSUMER"), 0);
    let waited: u64 = gw
        .snapshots()
        .iter()
        .map(|s| s.counters.pushes_waited)
        .sum();
    assert!(
        waited >= (N - 128) as u64,
        "{waited} pushes waited for the window"
    );
    gw.shutdown(false);
}

#[test]
fn a_client_that_stops_acking_is_closed_after_the_stall_deadline_and_every_push_is_handed_back() {
    const N: usize = 300;
    let cfg = gateway::Config {
        push_stall_timeout_ms: 500,
        ack_timeout_ms: 60_000,
        ..test_config()
    };
    let (gw, rec) = start(cfg);
    let (mut bob, _) = Client::login(gw.local_addr, "bob");
    let (mut alice, _) = Client::login(gw.local_addr, "alice");
    assert_eq!(alice.call(1, "test.burst", &format!("bob {N}")).status, 0);
    // Bob reads the window's worth and never acks.
    for i in 0..128 {
        assert_eq!(next_push(&mut bob).seq, i + 1);
    }
    let evs = rec.wait_for("bob closed as a slow consumer", |e| {
        e.iter().any(|e| {
            matches!(e, Ev::Offline { user, reason: CloseReason::SlowConsumer } if user == "bob")
        })
    });
    let mut seqs = reported(&evs, "bob");
    assert_eq!(seqs.len(), N, "every push handed back: {seqs:?}");
    seqs.sort();
    let waiting = seqs.iter().filter(|&&s| s == 0).count();
    assert_eq!(waiting, N - 128, "the backlog, never sent, has no seq");
    assert_eq!(seqs[waiting..], (1..=128).collect::<Vec<u64>>()[..]);
    assert!(bob.read_to_close().0, "the connection is closed");
    gw.shutdown(false);
}

#[test]
fn a_backlog_over_push_queue_bytes_max_is_a_slow_consumer_and_nothing_is_lost() {
    const N: usize = 300;
    let cfg = gateway::Config {
        frame_bytes_max: 1024,
        push_queue_bytes_max: 2048,
        ack_timeout_ms: 60_000,
        ..test_config()
    };
    let (gw, rec) = start(cfg);
    let (_bob, _) = Client::login(gw.local_addr, "bob");
    let (mut alice, _) = Client::login(gw.local_addr, "alice");
    assert_eq!(
        alice.call(1, "test.burst", &format!("bob {N} 20")).status,
        0
    );
    let evs = rec.wait_for("bob closed as a slow consumer", |e| {
        e.iter().any(|e| {
            matches!(e, Ev::Offline { user, reason: CloseReason::SlowConsumer } if user == "bob")
        }) && reported(e, "bob").len() == N
    });
    let seqs = reported(&evs, "bob");
    // The window (sent, seq 1..=128) and everything behind it, none twice.
    let mut sent: Vec<u64> = seqs.iter().copied().filter(|&s| s != 0).collect();
    sent.sort();
    assert_eq!(sent, (1..=128).collect::<Vec<u64>>());
    assert_eq!(closes(&gw, "SLOW_CONSUMER"), 1);
    gw.shutdown(false);
}

#[test]
fn pushes_without_ack_keep_their_place_behind_waiting_ones() {
    let cfg = gateway::Config {
        unacked_pushes_max: 2,
        ..test_config()
    };
    let (gw, _rec) = start(cfg);
    let (mut bob, _) = Client::login(gw.local_addr, "bob");
    let (mut alice, _) = Client::login(gw.local_addr, "alice");
    // Three ack-required pushes: the third waits for the window.
    assert_eq!(alice.call(1, "test.burst", "bob 3").status, 0);
    let first = next_push(&mut bob);
    let second = next_push(&mut bob);
    assert_eq!((first.seq, second.seq), (1, 2));
    // A room push (no ack) now queues behind the waiting one.
    assert_eq!(bob.call(2, "room.join", r#"{"room":"r"}"#).status, 0);
    assert_eq!(alice.call(3, "room.join", r#"{"room":"r"}"#).status, 0);
    assert_eq!(
        alice
            .call(4, "room.send", r#"{"room":"r","text":"after"}"#)
            .status,
        0
    );
    // Nothing more until an ack opens the window: then the waiting push,
    // then the room push, in that order.
    bob.send(Body::Ack(pb::Ack { seq: 1 }));
    let third = next_push(&mut bob);
    assert_eq!((third.seq, &third.payload[..]), (3, &b"2"[..]));
    let room = next_push(&mut bob);
    assert_eq!((room.seq, room.route.as_str()), (0, "room.msg"));
    gw.shutdown(false);
}

#[test]
fn an_ack_required_push_to_a_user_online_nowhere_is_reported_once() {
    // Two cores: the push goes to both, neither has "ghost", the last to
    // count it reports it (NO_CONNECTION), exactly once.
    let (gw, rec) = start(test_config());
    let (mut alice, _) = Client::login(gw.local_addr, "alice");
    assert_eq!(alice.call(1, "test.burst", "ghost 3").status, 0);
    let evs = rec.wait_for("three pushes to ghost reported", |e| {
        reported(e, "ghost").len() >= 3
    });
    // Anything reported twice would have arrived with the others.
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(reported(&rec.events(), "ghost"), vec![0, 0, 0], "{evs:?}");
    gw.shutdown(false);
}
