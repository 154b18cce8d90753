//! A node on a NATS cluster is whole or out. Three routed nats-servers, two
//! gateway nodes each given the URL of one server only (they learn the
//! others from INFO `connect_urls`), clients on both, a publisher sending
//! ack-required pushes (NATS requests to `gw.user.<u>`) and an event
//! collector that confirms every event (`nats.events_confirm`: the
//! collector's reply is the confirmation). Faults: the server a node
//! lists killed, then one it learned; the listed server restarted; the
//! node's server frozen (SIGSTOP) for longer than the ping interval; every
//! server gone until the restore deadline.
//!
//! After each fault every ack-required push a publisher was told was taken
//! (`Gw-Delivered`) is acked by its client or reported undelivered; both
//! nodes are ready again and reach their users; sessions on a node that
//! lost its subscriptions get their online event again (`resync`), and
//! clients of a node that could not restore them were told (GoAway
//! NODE_UNAVAILABLE).

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::faults::{init_log, timed_out};
use common::nats::{cluster, Nats, NatsServer};
use common::{http_get, test_config, Client, WAIT};
use gw_proto::pb::{self, frame::Body};
use gw_proto::CloseReason;
use prost::Message as _;

/// Users of node A (listed: server 0) and node B (listed: server 1).
const USERS_A: [&str; 3] = ["a0", "a1", "mute"];
const USERS_B: [&str; 2] = ["b0", "b1"];

#[derive(Default)]
struct Ledger {
    /// Push id → the publisher was told a gateway took it.
    sent: Mutex<Vec<(String, bool)>>,
    acked: Mutex<HashSet<String>>,
    /// Push id → undelivered reason.
    reported: Mutex<HashMap<String, String>>,
    /// Users whose online event came again with `resync`.
    resynced: Mutex<Vec<String>>,
    /// GoAway reasons clients were sent.
    goaways: Mutex<Vec<(String, i32)>>,
}

/// Everything a scenario runs against.
struct Rig {
    servers: Vec<NatsServer>,
    urls: String,
    nodes: Vec<gateway::GatewayHandle>,
    ledger: Arc<Ledger>,
    stop_traffic: Arc<AtomicBool>,
    stop_clients: Arc<AtomicBool>,
    stop_mute: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    mute: Option<JoinHandle<()>>,
    publisher: Option<JoinHandle<()>>,
    _collector: Nats,
}

fn node_config(name: &str, url: &str) -> gateway::Config {
    let mut c = test_config();
    c.node_id = name.into();
    c.nats.urls = vec![url.to_string()];
    c.nats.reconnect_delay_max_ms = 100;
    c.nats.ping_interval_ms = 300;
    c.nats.push_confirm_timeout_ms = 500;
    c.nats.events_confirm = true;
    c.nats.events_confirm_window_ms = 30_000;
    c.nats.restore_deadline_ms = 1_500;
    c.drain_deadline_ms = 1_000;
    c.upstream_timeout_ms = 1_000;
    // Pushes do not expire during a scenario: unacked ones are reported
    // when their connection closes.
    c.ack_timeout_ms = 30_000;
    c.push_stall_timeout_ms = 60_000;
    c
}

/// A client that acks (or not), records acks and GoAways; a receiver
/// told to go (GoAway) leaves, as a client should.
fn receiver(
    user: &'static str,
    mut c: Client,
    ack: bool,
    ledger: Arc<Ledger>,
    stop: Arc<AtomicBool>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            match c.recv_within(Duration::from_millis(50)) {
                Ok(Body::Push(p)) if p.seq > 0 && ack => {
                    c.send(Body::Ack(pb::Ack { seq: p.seq }));
                    let id = String::from_utf8_lossy(&p.payload).into_owned();
                    ledger.acked.lock().unwrap().insert(id);
                }
                Ok(Body::GoAway(g)) => {
                    ledger.goaways.lock().unwrap().push((user.into(), g.reason));
                    return;
                }
                Ok(_) => {}
                Err(e) if timed_out(&e) => {}
                Err(e) => panic!("{user}: closed without a GoAway: {e}"),
            }
        }
    })
}

impl Rig {
    fn start() -> Rig {
        init_log();
        let servers = cluster();
        // The test's own clients stay off server 0, the one frozen below:
        // async-nats would wait on it forever (see nats/requests.rs).
        let urls = servers[1..]
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",");
        let ledger = Arc::new(Ledger::default());
        let collector = collect_events(&urls, ledger.clone());
        let a = common::start(node_config("gw-a", &servers[0].url())).0;
        let b = common::start(node_config("gw-b", &servers[1].url())).0;
        let mut rig = Rig {
            servers,
            urls,
            nodes: vec![a, b],
            ledger,
            stop_traffic: Arc::new(AtomicBool::new(false)),
            stop_clients: Arc::new(AtomicBool::new(false)),
            stop_mute: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
            mute: None,
            publisher: None,
            _collector: collector,
        };
        for (node, users) in [(0, &USERS_A[..]), (1, &USERS_B[..])] {
            for &user in users {
                // AuthOk means reachable: no wait for interest needed.
                let (c, _) = Client::login(rig.nodes[node].local_addr, user);
                let (ack, stop) = if user == "mute" {
                    (false, rig.stop_mute.clone())
                } else {
                    (true, rig.stop_clients.clone())
                };
                let t = receiver(user, c, ack, rig.ledger.clone(), stop);
                if user == "mute" {
                    rig.mute = Some(t);
                } else {
                    rig.threads.push(t);
                }
            }
        }
        rig.publisher = Some(publisher(
            &rig.urls,
            rig.ledger.clone(),
            rig.stop_traffic.clone(),
        ));
        rig.wait_confirmed_pushes(20);
        rig
    }

    fn wait_confirmed_pushes(&self, n: usize) {
        let t = Instant::now();
        let count = || {
            self.ledger
                .sent
                .lock()
                .unwrap()
                .iter()
                .filter(|(_, c)| *c)
                .count()
        };
        let start = count();
        while count() < start + n {
            assert!(t.elapsed() < WAIT, "pushes are not confirmed");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Both nodes ready, and a push reaches a user of each.
    fn assert_whole(&self) {
        for (i, node) in self.nodes.iter().enumerate() {
            let admin = node.admin_addr.unwrap();
            common::eventually(&format!("node {i} ready"), || {
                http_get(admin, "/readyz").0 == 200
            });
        }
        let before = self.ledger.acked.lock().unwrap().len();
        self.wait_confirmed_pushes(20);
        let t = Instant::now();
        while self.ledger.acked.lock().unwrap().len() < before + 10 {
            assert!(t.elapsed() < WAIT, "pushes are not acked after the fault");
            std::thread::sleep(Duration::from_millis(20));
        }
        let acked = self.ledger.acked.lock().unwrap().clone();
        let sent = self.ledger.sent.lock().unwrap().clone();
        for user in ["a0", "b0"] {
            let prefix = format!("{user}-");
            let recent = sent
                .iter()
                .rev()
                .filter(|(id, c)| *c && id.starts_with(&prefix))
                .take(20);
            assert!(
                recent.into_iter().any(|(id, _)| acked.contains(id)),
                "{user} reachable"
            );
        }
    }

    /// Stops traffic, lets the mute client leave, and checks that every
    /// confirmed push was acked or reported.
    fn finish(mut self, what: &str) -> Arc<Ledger> {
        self.stop_traffic.store(true, Ordering::SeqCst);
        if let Some(p) = self.publisher.take() {
            p.join().unwrap();
        }
        self.stop_mute.store(true, Ordering::SeqCst);
        if let Some(m) = self.mute.take() {
            m.join().unwrap();
        }
        let sent: BTreeMap<String, bool> =
            self.ledger.sent.lock().unwrap().iter().cloned().collect();
        let t = Instant::now();
        let unaccounted = loop {
            let acked = self.ledger.acked.lock().unwrap().clone();
            let reported = self.ledger.reported.lock().unwrap().clone();
            let lost: Vec<String> = sent
                .iter()
                .filter(|(id, ok)| **ok && !acked.contains(*id) && !reported.contains_key(*id))
                .map(|(id, _)| id.clone())
                .collect();
            if lost.is_empty() || t.elapsed() > WAIT {
                break lost;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let (acked, reported) = (
            self.ledger.acked.lock().unwrap().len(),
            self.ledger.reported.lock().unwrap().clone(),
        );
        let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
        for r in reported.values() {
            *reasons.entry(r.clone()).or_default() += 1;
        }
        let confirmed = sent.values().filter(|c| **c).count();
        eprintln!(
            "{what}: {} pushes published, {confirmed} taken by a gateway: {acked} acked, {} reported {reasons:?}, {} unaccounted; resync events for {:?}",
            sent.len(),
            reported.len(),
            unaccounted.len(),
            self.ledger.resynced.lock().unwrap(),
        );
        assert!(
            unaccounted.is_empty(),
            "{what}: taken, neither acked nor reported: {unaccounted:?}"
        );
        assert!(
            reported.values().any(|r| r.contains("CONNECTION_CLOSED")),
            "mute's pushes reported"
        );
        self.stop_clients.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            t.join().unwrap();
        }
        for n in self.nodes.drain(..) {
            n.shutdown(false);
        }
        self.ledger.clone()
    }
}

/// Subscribes to every event and answers each (confirming it); records
/// undelivered pushes and resync online events.
fn collect_events(urls: &str, ledger: Arc<Ledger>) -> Nats {
    use futures_util::StreamExt;
    let opts = async_nats::ConnectOptions::new()
        .ignore_discovered_servers()
        .reconnect_delay_callback(|_| Duration::from_millis(20));
    let nats = Nats::connect_with(urls, opts);
    let mut sub = nats.subscribe("gw.evt.>");
    let c = nats.client.clone();
    nats.rt.spawn(async move {
        while let Some(m) = sub.next().await {
            if let Some(reply) = m.reply.clone() {
                let _ = c.publish(reply, "ok".into()).await;
            }
            if m.subject.as_str() == "gw.evt.undelivered" {
                if let Ok(ev) = pb::UndeliveredEvent::decode(&m.payload[..]) {
                    for p in ev.pushes {
                        let reason = pb::UndeliveredReason::try_from(p.reason)
                            .map_or("?".to_string(), |r| r.as_str_name().to_string());
                        let id = String::from_utf8_lossy(&p.payload).into_owned();
                        ledger.reported.lock().unwrap().insert(id, reason);
                    }
                }
            } else if m.subject.as_str() == "gw.evt.online" {
                if let Ok(ev) = pb::OnlineEvent::decode(&m.payload[..]) {
                    if ev.resync {
                        ledger.resynced.lock().unwrap().push(ev.user);
                    }
                }
            }
        }
    });
    nats
}

/// Sends ack-required pushes to every user in turn, as NATS requests on a
/// connection that knows every server.
fn publisher(urls: &str, ledger: Arc<Ledger>, stop: Arc<AtomicBool>) -> JoinHandle<()> {
    let urls = urls.to_string();
    std::thread::spawn(move || {
        let opts = async_nats::ConnectOptions::new()
            .ignore_discovered_servers()
            .reconnect_delay_callback(|_| Duration::from_millis(20));
        let nats = Nats::connect_with(&urls, opts);
        let users: Vec<&str> = USERS_A.iter().chain(USERS_B.iter()).copied().collect();
        let mut n = 0usize;
        while !stop.load(Ordering::SeqCst) {
            let user = users[n % users.len()];
            let id = format!("{user}-{n}");
            let r = nats.request_within(
                &format!("gw.user.{user}"),
                &[("Gw-Route", "cluster"), ("Gw-Ack", "1")],
                id.as_bytes(),
                Duration::from_millis(500),
            );
            let taken = matches!(&r, Ok(m) if m.headers.as_ref().and_then(|h| h.get("Gw-Delivered")).is_some());
            ledger.sent.lock().unwrap().push((id, taken));
            n += 1;
            std::thread::sleep(Duration::from_millis(3));
        }
    })
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: a signal to a nats-server this test started.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, sig) }, 0);
}

/// The server node A lists is killed: A moves to a server it learned;
/// then that one is killed too: A moves to the last one.
#[test]
fn killing_the_listed_server_then_a_learned_one_leaves_no_node_half_up() {
    let mut rig = Rig::start();
    rig.servers[0].kill();
    rig.assert_whole();
    // Node A is now on server 1 or 2; kill server 2 (learned by both).
    rig.servers[2].kill();
    rig.assert_whole();
    let ledger = rig.finish("listed then learned server killed");
    let resynced = ledger.resynced.lock().unwrap().clone();
    assert!(
        resynced.iter().any(|u| u == "a0"),
        "node A re-announced its sessions: {resynced:?}"
    );
}

/// The listed server is killed and restarted.
#[test]
fn restarting_the_listed_server_leaves_no_node_half_up() {
    let mut rig = Rig::start();
    rig.servers[0].kill();
    std::thread::sleep(Duration::from_millis(500));
    rig.servers[0].restart();
    rig.assert_whole();
    rig.finish("listed server restarted");
}

/// Node A's server hangs (SIGSTOP) for longer than the ping interval: A
/// notices the silence and moves to another server; the hung server then
/// resumes.
#[test]
fn a_frozen_server_is_left_after_the_ping_interval() {
    let rig = Rig::start();
    let pid = rig.servers[0].pid().expect("running");
    signal(pid, libc::SIGSTOP);
    std::thread::sleep(Duration::from_millis(1_500));
    rig.assert_whole();
    signal(pid, libc::SIGCONT);
    rig.wait_confirmed_pushes(20);
    let ledger = rig.finish("listed server frozen 1.5 s (ping interval 300 ms)");
    let resynced = ledger.resynced.lock().unwrap().clone();
    assert!(resynced.iter().any(|u| u == "a0"), "{resynced:?}");
}

/// Every server gone past `nats.restore_deadline_ms`: the nodes are not
/// ready and tell their clients to go (GoAway NODE_UNAVAILABLE); logins
/// are refused. When NATS is back the nodes are ready again, and what
/// the clients held was reported.
#[test]
fn a_node_that_cannot_restore_its_subscriptions_tells_its_clients_to_go() {
    let mut rig = Rig::start();
    for s in rig.servers.iter_mut() {
        s.kill();
    }
    let admin = rig.nodes[0].admin_addr.unwrap();
    common::eventually("node A not ready", || http_get(admin, "/readyz").0 == 503);
    // Clients are told, within the restore deadline plus the spread.
    let t = Instant::now();
    while rig.ledger.goaways.lock().unwrap().len() < USERS_A.len() + USERS_B.len() {
        assert!(
            t.elapsed() < WAIT,
            "clients were not told: {:?}",
            rig.ledger.goaways.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let goaways = rig.ledger.goaways.lock().unwrap().clone();
    assert!(
        goaways
            .iter()
            .all(|(_, r)| *r == CloseReason::NodeUnavailable as i32),
        "{goaways:?}"
    );
    // A login now is refused at once with a retryable error.
    let mut c = Client::connect(rig.nodes[1].local_addr);
    assert!(matches!(
        c.auth_with(common::token("late", 3600), "d"),
        Body::AuthError(e) if e.code == gw_proto::ErrorCode::BackendUnavailable as i32
    ));
    for s in rig.servers.iter_mut() {
        s.restart();
    }
    for (i, node) in rig.nodes.iter().enumerate() {
        let admin = node.admin_addr.unwrap();
        common::eventually(&format!("node {i} ready again"), || {
            http_get(admin, "/readyz").0 == 200
        });
    }
    // The clients left: log back in and receive again.
    let (c, _) = Client::login(rig.nodes[0].local_addr, "a0");
    let t = receiver("a0", c, true, rig.ledger.clone(), rig.stop_clients.clone());
    rig.threads.push(t);
    let before = rig.ledger.acked.lock().unwrap().len();
    let t = Instant::now();
    while rig.ledger.acked.lock().unwrap().len() <= before {
        assert!(t.elapsed() < WAIT, "a0 receives again");
        std::thread::sleep(Duration::from_millis(20));
    }
    let ledger = rig.finish("every server gone past the restore deadline");
    let reported = ledger.reported.lock().unwrap().clone();
    assert!(
        reported.values().any(|r| r.contains("CONNECTION_CLOSED")),
        "pushes held by clients that left were reported: {reported:?}"
    );
}
