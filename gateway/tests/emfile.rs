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
    // No files kept back from connections, so accept() hits EMFILE first.
    let cfg = gateway::Config {
        cores: 1,
        fd_reserve: 0,
        accept_backoff_max_ms: 50,
        ..test_config()
    };
    // Lowered before the start: an io_uring accept takes the limit when it
    // is armed (as the gateway's connection cap does), not at each accept.
    set_nofile(256);
    let (gw, _rec) = start(cfg);
    // Fill the fd table, then free one file for a client socket: the
    // gateway's accept of that connection finds no file left (whichever
    // driver, however fast it accepts).
    let mut held: Vec<std::fs::File> = Vec::new();
    while let Ok(f) = std::fs::File::open("/dev/null") {
        held.push(f);
        assert!(held.len() < 1000, "the open-file limit did not apply");
    }
    held.pop();
    let waiting = TcpStream::connect(gw.local_addr).expect("a socket and a connection");
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
    drop(waiting);
    set_nofile(4096);
    let (mut c, _) = Client::login(gw.local_addr, "after");
    assert_eq!(c.call(1, "echo", "x").status, 0);
    drop(held);
    gw.shutdown(false);
}
