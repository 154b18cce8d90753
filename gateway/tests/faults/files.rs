//! The open-file limit: a typed refusal at the cap, EMFILE with sessions
//! still served, recovery when files free (the gateway binary as a child
//! process under a low RLIMIT_NOFILE).

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use gw_proto::pb::{self, frame::Body};
use gw_proto::ErrorCode;

use crate::common::faults::{write_frame, ChildGateway, FrameReader};
use crate::common::{self, WAIT};
use crate::{auth_body, echo, echo_reply};

/// Connects and authenticates; the first frame answers: AuthOk, or the
/// refusal sent at accept (Error{SERVER_FULL}).
fn connect_and_auth(addr: SocketAddr, user: &str) -> (TcpStream, Body) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    // A refused connection may be closed before the Auth arrives.
    let _ = write_frame(&mut s, auth_body(user));
    let first = FrameReader::default()
        .read(&mut s)
        .unwrap_or_else(|e| panic!("{user}: no first frame: {e}"));
    (s, first)
}

fn assert_server_full(user: &str, first: &Body) {
    match first {
        Body::Error(e) if e.code == ErrorCode::ServerFull as i32 => {
            assert!(e.retry_after_ms > 0, "{e:?}")
        }
        other => panic!("{user}: expected SERVER_FULL, got {other:?}"),
    }
}

fn echo_on(s: &mut TcpStream, r: &mut FrameReader, corr: u64) {
    write_frame(s, echo(corr)).unwrap();
    loop {
        let b = r.read(s).expect("an echo reply");
        if let Body::UpstreamReply(rep) = &b {
            assert!(echo_reply(&b, corr), "{rep:?}");
            return;
        }
    }
}

/// The gateway binary with RLIMIT_NOFILE 200 and the default `fd_reserve`
/// (64): its cap is (200 − 64) / 1 core = 136 connections. All 136 log in
/// and are served; the next ones get Error{SERVER_FULL, retry_after_ms}
/// and a close, never an accept error; when five sessions leave, five new
/// clients get in, and the cap holds again.
#[test]
fn at_the_open_file_cap_clients_get_server_full_and_get_in_once_files_free() {
    const NOFILE: u64 = 200;
    let gw = ChildGateway::start(NOFILE, &["--cores", "1", "--fd-reserve", "64"]);
    let cap = (NOFILE - 64) as usize;
    let mut sessions: Vec<(TcpStream, FrameReader)> = Vec::new();
    for i in 0..cap {
        let user = format!("u{i}");
        let (s, first) = connect_and_auth(gw.addr, &user);
        assert!(matches!(first, Body::AuthOk(_)), "{user}: {first:?}");
        sessions.push((s, FrameReader::default()));
    }
    for i in 0..10 {
        let user = format!("over{i}");
        let (_, first) = connect_and_auth(gw.addr, &user);
        assert_server_full(&user, &first);
    }
    for (i, (s, r)) in sessions.iter_mut().enumerate() {
        echo_on(s, r, i as u64 + 1);
    }
    assert_eq!(gw.metric("gateway_conn_limit_refusals_total"), Some(10));
    assert_eq!(
        gw.metric("gateway_accept_errors_total"),
        Some(0),
        "the reserve keeps the process clear of EMFILE"
    );
    sessions.truncate(cap - 5);
    let t = Instant::now();
    common::eventually("five slots free", || {
        gw.metric("gateway_connections") == Some(cap as u64 - 5)
    });
    for i in 0..5 {
        let (s, first) = connect_and_auth(gw.addr, &format!("late{i}"));
        assert!(matches!(first, Body::AuthOk(_)), "{first:?}");
        sessions.push((s, FrameReader::default()));
    }
    let recovered = t.elapsed();
    let (_, first) = connect_and_auth(gw.addr, "over-again");
    assert_server_full("over-again", &first);
    eprintln!(
        "open-file cap: {cap} sessions at RLIMIT_NOFILE {NOFILE}, 10 refused with SERVER_FULL, \
         0 accept errors; 5 new clients in {recovered:?} after 5 left"
    );
}

/// The gateway binary with RLIMIT_NOFILE 128 and `fd_reserve` 0, so its cap
/// (128) is above what its fd table holds: 150 silent connections make
/// accept fail with EMFILE. The gateway backs off (counted, logged, no busy
/// loop), the sessions it holds are still served, and a client that
/// connected and sent Auth while it was out of files is answered, on the
/// same connection, once files free.
#[test]
fn out_of_files_sessions_stay_served_and_a_waiting_client_gets_in_when_files_free() {
    let gw = ChildGateway::start(
        128,
        &[
            "--cores",
            "1",
            "--fd-reserve",
            "0",
            "--accept-backoff-max-ms",
            "50",
            "--auth-timeout-ms",
            "60000",
        ],
    );
    let mut live: Vec<(TcpStream, FrameReader)> = (0..5)
        .map(|i| {
            let (s, first) = connect_and_auth(gw.addr, &format!("live{i}"));
            assert!(matches!(first, Body::AuthOk(_)), "{first:?}");
            (s, FrameReader::default())
        })
        .collect();
    let t_flood = Instant::now();
    let flood: Vec<TcpStream> = (0..150)
        .map(|_| TcpStream::connect(gw.addr).expect("the kernel completes the handshake"))
        .collect();
    // Its file table fills up; accept fails from then on.
    let t = Instant::now();
    while gw.open_fds() < 128 {
        assert!(
            t.elapsed() < WAIT,
            "{} files open: {}",
            gw.open_fds(),
            gw.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Out of files: the sessions held are served.
    for (i, (s, r)) in live.iter_mut().enumerate() {
        echo_on(s, r, i as u64 + 1);
        write_frame(s, Body::Ping(pb::Ping::default())).unwrap();
        assert!(matches!(r.read(s).unwrap(), Body::Pong(_)));
    }
    let mut waiting = TcpStream::connect(gw.addr).unwrap();
    waiting.set_read_timeout(Some(WAIT)).unwrap();
    write_frame(&mut waiting, auth_body("waiting")).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let out_of_files = t_flood.elapsed();
    drop(flood);
    let t_free = Instant::now();
    let first = FrameReader::default()
        .read(&mut waiting)
        .expect("the waiting client is answered");
    assert!(matches!(first, Body::AuthOk(_)), "{first:?}");
    let recovered = t_free.elapsed();
    let errors = gw
        .metric("gateway_accept_errors_total")
        .expect("the admin server answers again");
    let spent_ms = t_flood.elapsed().as_millis() as u64;
    assert!(errors > 0);
    assert!(
        errors <= spent_ms / 10 + 10,
        "{errors} accept errors in {spent_ms} ms: backoff starts at 10 ms"
    );
    assert!(
        gw.log_text().contains("Too many open files"),
        "the accept error is logged: {}",
        gw.log_text()
    );
    let (_, first) = connect_and_auth(gw.addr, "fresh");
    assert!(matches!(first, Body::AuthOk(_)), "{first:?}");
    for (i, (s, r)) in live.iter_mut().enumerate() {
        echo_on(s, r, 100 + i as u64);
    }
    eprintln!(
        "EMFILE: out of files for {out_of_files:?} with {errors} accept errors (backoff), 5 \
         sessions served throughout; the waiting client answered {recovered:?} after files freed"
    );
}
