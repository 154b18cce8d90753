//! The open-file limit reached: accept fails with EMFILE, the gateway backs
//! off and counts it (no busy loop, no crash), and serves again once files
//! free. A test binary of its own: it lowers RLIMIT_NOFILE for its process.

mod common;

use std::net::TcpStream;
use std::time::Duration;

use common::*;

fn set_nofile(n: u64) {
    let r = libc::rlimit {
        rlim_cur: n,
        rlim_max: n.max(current_max()),
    };
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) }, 0);
}

fn current_max() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) };
    r.rlim_max
}

#[test]
fn emfile_backs_off_counts_and_recovers() {
    // Cap well above what the fd table allows, so accept() hits EMFILE first.
    let cfg = gateway::Config {
        cores: 1,
        fd_reserve: 0,
        accept_backoff_max_ms: 50,
        ..test_config()
    };
    let (gw, _rec) = start(cfg);
    set_nofile(256);
    // Our own client sockets use the same fd table: fill it.
    let mut held: Vec<TcpStream> = Vec::new();
    while let Ok(s) = TcpStream::connect(gw.local_addr) {
        held.push(s);
        if held.len() > 400 {
            break;
        }
    }
    eventually("accept errors counted", || {
        gw.snapshots()[0].counters.accept_errors > 0
    });
    let errors_before = gw.snapshots()[0].counters.accept_errors;
    std::thread::sleep(Duration::from_millis(300));
    let errors_after = gw.snapshots()[0].counters.accept_errors;
    // Backoff: at most one attempt per 10..50 ms, not a spin.
    assert!(
        errors_after - errors_before < 100,
        "accept retried {} times in 300 ms",
        errors_after - errors_before
    );
    // Free files: the backlog is accepted, and new clients are served.
    held.truncate(10);
    set_nofile(4096);
    let (mut c, _) = Client::login(gw.local_addr, "after");
    assert_eq!(c.call(1, "echo", "x").status, 0);
    drop(held);
    gw.shutdown(false);
}
