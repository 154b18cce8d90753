//! Reload as an operator does it: the binary started with a config file,
//! the file changed (a new token key, a new limit, a setting that takes a
//! restart), SIGHUP. Nobody is dropped, the new key signs in and the old
//! one no longer does, the new limit holds, what takes a restart keeps
//! its running value; a broken file changes nothing.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, http_get, http_request, unix_now, Client, WAIT};
use gw_proto::pb::{self, frame::Body};

/// A child process killed on drop, with its scratch directory.
struct Gw {
    child: Option<Child>,
    dir: PathBuf,
    addr: SocketAddr,
    admin: SocketAddr,
}

impl Drop for Gw {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const SECRET_A: &str = "first-secret-first-secret-first-secret-0001";
const SECRET_B: &str = "second-secret-second-secret-second-secret-02";

/// Writes the config file: listeners, `cores`, `frame_bytes_max`, one key.
fn write_config(gw: &Gw, kid: &str, frame_bytes_max: u32, cores: u32) {
    let secret_file = gw.dir.join(format!("{kid}.secret"));
    let text = format!(
        "listen = \"{}\"\nadmin_listen = \"{}\"\ncores = {cores}\nframe_bytes_max = {frame_bytes_max}\n\
         [[auth.keys]]\nkid = \"{kid}\"\nalg = \"HS256\"\nsecret_file = \"{}\"\n",
        gw.addr,
        gw.admin,
        secret_file.display()
    );
    std::fs::write(gw.dir.join("gateway.toml"), text).expect("config");
}

fn token(secret: &str, kid: &str, sub: &str) -> String {
    let claims = serde_json::json!({"sub": sub, "exp": unix_now() + 600});
    gateway::auth::sign_hs256(secret.as_bytes(), Some(kid), &claims)
}

/// Logs in with `token`: AuthOk, or the AuthError's code.
fn login(addr: SocketAddr, token: String) -> (Client, Result<pb::AuthOk, i32>) {
    let mut c = Client::connect(addr);
    let r = match c.auth_with(token, "d") {
        Body::AuthOk(ok) => Ok(ok),
        Body::AuthError(e) => Err(e.code),
        other => panic!("unexpected answer to Auth: {other:?}"),
    };
    (c, r)
}

fn ping(c: &mut Client) -> bool {
    c.send(Body::Ping(pb::Ping::default()));
    matches!(c.recv(), Ok(Body::Pong(_)))
}

fn start() -> Gw {
    let dir =
        std::env::temp_dir().join(format!("gw-reload-{}-{}", std::process::id(), free_port()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    std::fs::write(dir.join("a.secret"), format!("{SECRET_A}\n")).expect("secret a");
    std::fs::write(dir.join("b.secret"), SECRET_B).expect("secret b");
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let mut gw = Gw {
        child: None,
        dir,
        addr,
        admin,
    };
    write_config(&gw, "a", 65536, 1);
    let child = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .arg("--config")
        .arg(gw.dir.join("gateway.toml"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("gateway binary starts");
    gw.child = Some(child);
    let t = Instant::now();
    while http_get_ok(gw.admin, "/readyz").is_none() {
        assert!(t.elapsed() < WAIT, "the gateway did not get ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    gw
}

fn http_get_ok(admin: SocketAddr, path: &str) -> Option<String> {
    std::net::TcpStream::connect(admin).ok()?;
    let (status, body) = http_get(admin, path);
    (status == 200).then_some(body)
}

fn hup(gw: &Gw) {
    // SAFETY: kill(2) with a pid we spawned.
    let pid = gw.child.as_ref().map_or(0, Child::id) as i32;
    assert!(pid > 0);
    let r = unsafe { libc::kill(pid, libc::SIGHUP) };
    assert_eq!(r, 0, "SIGHUP sent");
}

/// Retries `f` until it holds (the reload is applied asynchronously).
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < WAIT, "{what}: not within {WAIT:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sighup_rotates_keys_and_limits_without_dropping_anyone() {
    let gw = start();
    let (mut old, ok) = login(gw.addr, token(SECRET_A, "a", "old"));
    assert!(ok.is_ok(), "key a signs in before the reload");
    let (_, refused) = login(gw.addr, token(SECRET_B, "b", "early"));
    assert!(refused.is_err(), "key b is unknown before the reload");

    // New key, a smaller frame limit (live), two cores (takes a restart).
    write_config(&gw, "b", 1024, 2);
    hup(&gw);
    eventually("key b signs in after SIGHUP", || {
        login(gw.addr, token(SECRET_B, "b", "new")).1.is_ok()
    });
    let (_, a_after) = login(gw.addr, token(SECRET_A, "a", "late"));
    assert_eq!(
        a_after.err(),
        Some(gw_proto::ErrorCode::TokenInvalid as i32),
        "key a is gone"
    );

    // The connection from before the reload is still served.
    assert!(ping(&mut old), "the old session survives the reload");

    // The new frame limit holds: a 2 KB upstream frame closes as FRAME_TOO_LARGE.
    let (mut big, ok) = login(gw.addr, token(SECRET_B, "b", "big"));
    assert!(ok.is_ok());
    big.upstream(1, "echo", &"x".repeat(2048));
    let (closed, bodies) = big.read_to_close();
    assert!(closed, "the connection over the new limit is closed");
    assert!(
        bodies.iter().any(|b| matches!(b, Body::Error(e)
            if e.code == gw_proto::ErrorCode::FrameTooLarge as i32)),
        "closed as FRAME_TOO_LARGE: {bodies:?}"
    );

    // `cores` takes a restart: still one core.
    let stats: serde_json::Value =
        serde_json::from_str(&http_get(gw.admin, "/stats").1).expect("stats json");
    assert_eq!(stats["cores"].as_array().map(Vec::len), Some(1));

    // A broken file: the reload is refused, with the reason, and nothing changes.
    std::fs::write(gw.dir.join("gateway.toml"), "frame_bytes_max = \"lots\"\n").expect("config");
    let (status, answer) = http_request(gw.admin, "POST", "/reload");
    assert_eq!(status, 500, "{answer}");
    assert!(answer.contains("frame_bytes_max"), "{answer}");
    assert!(login(gw.addr, token(SECRET_B, "b", "after")).1.is_ok());
    assert!(ping(&mut old));

    // A reload through the admin API names what it kept.
    write_config(&gw, "b", 2048, 2);
    let (status, answer) = http_request(gw.admin, "POST", "/reload");
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("applied: frame_bytes_max"), "{answer}");
    assert!(answer.contains("running values kept: cores"), "{answer}");
}
