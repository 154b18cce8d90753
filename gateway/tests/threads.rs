//! Stopping a gateway leaves no threads, epoll instances or sockets behind,
//! so it can be embedded and restarted in one process. Its own test binary:
//! nothing else runs in this process.

mod common;

use common::*;

fn threads_named(prefix: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with(prefix))
        .count()
}

/// Open fds whose link starts with `kind` ("socket:", "anon_inode:[eventpoll]").
fn fds_of(kind: &str) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|p| p.display().to_string().starts_with(kind))
        .count()
}

const EPOLL: &str = "anon_inode:[eventpoll]";

fn cycle(graceful: bool) {
    let (gw, _rec) = start(test_config());
    assert!(
        fds_of(EPOLL) >= 2,
        "one epoll instance per core while running"
    );
    let (mut c, _) = Client::login(gw.local_addr, "a");
    assert_eq!(c.call(1, "echo", "x").status, 0);
    drop(c);
    gw.shutdown(graceful);
}

#[test]
fn stopped_gateways_leave_no_threads_epolls_or_sockets_behind() {
    cycle(false); // warm-up: process-wide one-time state (tokio's signal pair)
    eventually("warm-up threads exit", || threads_named("gw-core") == 0);
    let sockets = fds_of("socket:");
    for graceful in [false, true, false] {
        cycle(graceful);
    }
    eventually("core threads exit", || threads_named("gw-core") == 0);
    eventually("epoll instances closed", || fds_of(EPOLL) == 0);
    eventually("listeners and connections closed", || {
        fds_of("socket:") <= sockets
    });
}
