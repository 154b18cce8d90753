//! Upgrading the binary without dropping connections: a new gateway process
//! binds the same client and admin ports (SO_REUSEPORT) while the old one
//! still serves; the old one is then drained (SIGTERM). Its clients get
//! GoAway and reconnect to the new one; logins that run through the switch
//! all succeed (connections waiting in the old listener's queue move to the
//! new listener with net.ipv4.tcp_migrate_req=1). Two real processes.
//!
//! Also here, because it needs the binary and its global allocator: the
//! memory gauges (`gateway_heap_allocated_bytes`, resident bytes).

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{free_port, http_get, Client, WAIT};
use gw_proto::pb::frame::Body;
use gw_proto::CloseReason;

fn spawn(node: &str, port: u16, admin: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["--demo", "--cores", "1", "--node-id", node])
        // Two processes on the same ports during the switch, on purpose.
        .arg("--listen-shared")
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
        .args(["--drain-spread-ms", "500", "--drain-deadline-ms", "5000"])
        .args([
            "--goaway-retry-after-ms",
            "50",
            "--goaway-retry-jitter-ms",
            "100",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("gateway binary starts")
}

/// Logs in; returns the node that answered, or None when the attempt was
/// redirected (GoAway{DRAIN} before AuthOk: the client retries).
fn login(addr: SocketAddr, user: &str) -> Result<(Client, Option<String>), String> {
    let mut c = Client::try_connect(addr).map_err(|e| format!("connect: {e}"))?;
    match c.try_auth(common::token(user, 600), "d") {
        Ok(Body::AuthOk(ok)) => Ok((c, Some(ok.node_id))),
        Ok(Body::GoAway(g)) if g.reason == CloseReason::Drain as i32 => Ok((c, None)),
        Ok(other) => Err(format!("{other:?}")),
        Err(e) => Err(format!("no answer to Auth: {e}")),
    }
}

/// Logs in, retrying only after a GoAway (as a client should); any other
/// outcome is an error.
fn login_retrying(addr: SocketAddr, user: &str) -> Result<(Client, String), String> {
    for _ in 0..20 {
        match login(addr, user)? {
            (c, Some(node)) => return Ok((c, node)),
            (_, None) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    Err("redirected 20 times".into())
}

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_new_process_takes_over_while_the_old_one_drains() {
    // Root in CI: let queued connections move between listeners of the port.
    let migrate = std::fs::write("/proc/sys/net/ipv4/tcp_migrate_req", "1").is_ok();
    if !migrate {
        eprintln!("cannot set net.ipv4.tcp_migrate_req=1 (not root?): logins racing the switch may be reset");
    }
    let (port, admin_port) = (free_port(), free_port());
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let mut old = Proc(spawn("gw-old", port, admin_port));
    let t = Instant::now();
    while std::net::TcpStream::connect(admin).is_err() {
        assert!(t.elapsed() < WAIT, "the old gateway did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut on_old: Vec<Client> = (0..20)
        .map(|i| {
            let (c, node) = login_retrying(addr, &format!("u{i}")).unwrap();
            assert_eq!(node, "gw-old");
            c
        })
        .collect();

    // The new process binds the same ports next to the old one.
    let _new = Proc(spawn("gw-new", port, admin_port));
    let t = Instant::now();
    loop {
        let (_c, node) = login_retrying(addr, "probe").unwrap();
        if node == "gw-new" {
            break;
        }
        assert!(
            t.elapsed() < WAIT,
            "the new gateway never took a connection"
        );
    }

    // Logins keep running through the switch.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let storm = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        std::thread::spawn(move || {
            let mut errors = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                match login_retrying(addr, &format!("storm{i}")) {
                    Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        errors.push(e);
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
            errors
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    // SAFETY: a signal to our own child process.
    assert_eq!(unsafe { libc::kill(old.0.id() as i32, libc::SIGTERM) }, 0);

    // Every client of the old process is told to go, and comes back on the new one.
    for (i, c) in on_old.iter_mut().enumerate() {
        let g = c.recv_until("GoAway", |b| match b {
            Body::GoAway(g) => Some(g.clone()),
            _ => None,
        });
        assert_eq!(g.reason, CloseReason::Drain as i32);
        std::thread::sleep(Duration::from_millis(g.retry_after_ms as u64));
        let (_c, node) = login_retrying(addr, &format!("u{i}")).unwrap();
        assert_eq!(node, "gw-new", "u{i} reconnected to the old process");
    }
    drop(on_old);
    let t = Instant::now();
    let status = loop {
        if let Some(s) = old.0.try_wait().unwrap() {
            break s;
        }
        assert!(t.elapsed() < WAIT, "the old process did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "old process: {status:?}");
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    let errors = storm.join().unwrap();
    assert!(ok.load(Ordering::Relaxed) > 0);
    if migrate {
        assert!(
            errors.is_empty(),
            "logins failed during the switch: {errors:?}"
        );
    }
    // The admin port is the new process's now.
    assert_eq!(http_get(admin, "/healthz").0, 200);
}

/// A gauge's value from Prometheus text.
fn gauge(metrics: &str, name: &str) -> Option<u64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn the_binary_counts_its_heap() {
    let (port, admin_port) = (free_port(), free_port());
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let _gw = Proc(spawn("gw-heap", port, admin_port));
    let t = Instant::now();
    while std::net::TcpStream::connect(admin).is_err() {
        assert!(t.elapsed() < WAIT, "the gateway did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let heap = || {
        let (status, m) = http_get(admin, "/metrics");
        assert_eq!(status, 200);
        assert!(gauge(&m, "process_resident_memory_bytes").is_some_and(|r| r > 0));
        gauge(&m, "gateway_heap_allocated_bytes").expect("the binary reports its heap")
    };
    let before = heap();
    assert!(before > 0);
    let clients: Vec<Client> = (0..500)
        .map(|i| Client::login(addr, &format!("h{i}")).0)
        .collect();
    // The connection slab is allocated ahead (its pages are touched only
    // when used), so a session adds only its names and index entries.
    let with = heap();
    assert!(
        with > before + 500 * 32,
        "500 sessions should hold at least 32 bytes each: {before} -> {with}"
    );
    let (_, body) = http_get(admin, "/stats");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(v["memory"]["heap_allocated_bytes"]
        .as_u64()
        .is_some_and(|h| h > before));
    assert!(v["memory"]["resident_bytes"]
        .as_u64()
        .is_some_and(|r| r > 0));
    drop(clients);
}
