//! `gwcat`: a line-oriented client for trying the gateway by hand.
//!
//! ```text
//! gwcat --user alice [--addr 127.0.0.1:7000] [--token JWT]
//! > echo hello            upstream on route "echo" with payload "hello"
//! > chat.send {"to":"bob","text":"hi"}
//! > ping
//! ```
//! Each input line is `ROUTE PAYLOAD` (or `ping`); every frame received is
//! printed on one line (`< ...`): AuthOk, Reply, Push and Pong as
//! `key=value` fields, the others as sentences (`< auth failed:
//! TOKEN_EXPIRED: ...`, `< server going away: drain (...); reconnect in
//! 1500 ms`). Ack-required pushes are acknowledged automatically.
//! Without --token it mints a token with the demo key (gateway --demo).
//! When the server says the token is about to expire (TokenExpiring),
//! gwcat sends a fresh one (Refresh): minted again with the demo key, or
//! printed by `--token-cmd`. Lines are read once the login is accepted; at
//! the end of input gwcat waits (at most --wait-ms) for the answers to what
//! it sent, then exits. Exit status: see [`EXIT_HELP`].

use std::io::{BufRead, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::Parser;
use gateway::config::{DEMO_KID, DEMO_SECRET};
use gw_proto::pb::{self, frame::Body, Frame};
use gw_proto::Decoded;

/// Exit status: input ended, the session still up.
const EXIT_OK: i32 = 0;
/// Usage error, or no session: bad option, --token-cmd failed, connect
/// failed, or the server refused or dropped the connection before login
/// without an AuthError (SERVER_FULL, BUSY, no answer).
const EXIT_USAGE_OR_CONNECT: i32 = 1;
/// The server refused the login (AuthError).
const EXIT_AUTH: i32 = 2;
/// The server sent GoAway (drain, kick, expired token, node unavailable...).
const EXIT_GOAWAY: i32 = 3;
/// The session was lost after login without a GoAway (closed, I/O error,
/// undecodable frame).
const EXIT_LOST: i32 = 4;

/// The exit codes, for --help.
const EXIT_HELP: &str = "\
Exit status:
  0  standard input ended (answers to what was sent waited for, up to --wait-ms)
  1  usage error, or no session: bad option, --token-cmd failed, cannot connect,
     refused or closed before login without an AuthError (SERVER_FULL, BUSY),
     or no answer to Auth within --timeout-ms
  2  authentication failed: the server answered Auth with AuthError
     (TOKEN_EXPIRED, TOKEN_INVALID, ...; the line printed says which)
  3  the server sent GoAway (drain, kicked, token expired, node unavailable):
     the line printed says why and when to reconnect
  4  the session was lost after login without a GoAway (closed by the server,
     read or write error, undecodable frame)";

#[derive(Parser)]
#[command(
    about = "Line-oriented gateway client: `ROUTE PAYLOAD` per line, frames printed as they arrive.",
    after_help = EXIT_HELP
)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:7000")]
    addr: String,
    /// User id for the demo token.
    #[arg(long, default_value = "alice")]
    user: String,
    #[arg(long, default_value = "cli")]
    device: String,
    /// A JWT to use instead of minting one with the demo key.
    #[arg(long)]
    token: Option<String>,
    /// A shell command that prints a fresh JWT (used at login and for every
    /// refresh); overrides --token.
    #[arg(long)]
    token_cmd: Option<String>,
    /// Lifetime of minted demo tokens, seconds.
    #[arg(long, default_value_t = 3600)]
    token_ttl_s: u64,
    /// How long to wait for the answer to Auth (and for the connection), ms.
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
    /// At the end of input, how long to wait for the replies and pongs
    /// still due, ms.
    #[arg(long, default_value_t = 5_000)]
    wait_ms: u64,
}

/// Where tokens come from.
#[derive(Clone)]
enum Tokens {
    Fixed(String),
    Command(String),
    Demo { user: String, ttl_s: u64 },
}

impl Tokens {
    fn get(&self) -> anyhow::Result<String> {
        match self {
            Tokens::Fixed(t) => Ok(t.clone()),
            Tokens::Command(cmd) => {
                let out = std::process::Command::new("sh")
                    .args(["-c", cmd])
                    .output()
                    .with_context(|| format!("running --token-cmd {cmd:?}"))?;
                if !out.status.success() {
                    let err = String::from_utf8_lossy(&out.stderr);
                    let err = err.trim();
                    bail!(
                        "--token-cmd {cmd:?} failed ({}){}{err}",
                        out.status,
                        if err.is_empty() { "" } else { ": " }
                    );
                }
                Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
            }
            Tokens::Demo { user, ttl_s } => {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let claims = serde_json::json!({"sub": user, "exp": now + ttl_s});
                Ok(gateway::auth::sign_hs256(
                    DEMO_SECRET.as_bytes(),
                    Some(DEMO_KID),
                    &claims,
                ))
            }
        }
    }
    fn refreshable(&self) -> bool {
        !matches!(self, Tokens::Fixed(_))
    }
}

/// An error code as the protocol spells it (`TOKEN_EXPIRED`).
fn code(v: i32) -> String {
    if v == 0 {
        return "OK".into();
    }
    pb::ErrorCode::try_from(v)
        .map(|e| {
            e.as_str_name()
                .trim_start_matches("ERROR_CODE_")
                .to_string()
        })
        .unwrap_or_else(|_| v.to_string())
}

/// `message` after `what`, when there is one.
fn with_message(what: &str, message: &str) -> String {
    if message.is_empty() {
        what.to_string()
    } else {
        format!("{what}: {message}")
    }
}

/// A close reason in readable lower case (`token expired`).
fn reason(v: i32) -> String {
    if v == 0 {
        return "no reason given".into();
    }
    bench::wire::close_reason_name(v)
        .to_lowercase()
        .replace('_', " ")
}

/// A Unix time as UTC RFC 3339.
fn when(unix_s: u64) -> String {
    bench::report::utc_rfc3339(unix_s)
}

fn send(s: &mut TcpStream, body: Body) -> std::io::Result<()> {
    s.write_all(&gw_proto::encode(&Frame { body: Some(body) }))
}

/// One line for a frame from the server.
fn show(b: &Body) -> String {
    let text = |p: &[u8]| String::from_utf8_lossy(p).into_owned();
    match b {
        Body::AuthOk(o) => format!(
            "AuthOk conn_id={} user={} device={} heartbeat_ms={} node={}",
            o.conn_id, o.user_id, o.device_id, o.heartbeat_interval_ms, o.node_id
        ),
        Body::UpstreamReply(r) => {
            format!(
                "Reply corr={} status={} payload={}",
                r.correlation_id,
                r.status,
                text(&r.payload)
            )
        }
        Body::Push(p) if !p.batch.is_empty() || !p.room.is_empty() => {
            // A hot room's batch: one line for it, one per push.
            let mut out = format!(
                "Batch room={} pushes={} dropped={}",
                p.room,
                p.batch.len(),
                p.dropped
            );
            for q in &p.batch {
                out.push_str(&format!(
                    "\n<   Push route={} payload={}",
                    q.route,
                    text(&q.payload)
                ));
            }
            out
        }
        Body::Push(p) => format!(
            "Push seq={} route={} payload={}",
            p.seq,
            p.route,
            text(&p.payload)
        ),
        Body::Pong(p) => format!("Pong heartbeat_ms={}", p.heartbeat_interval_ms),
        Body::AuthError(e) => format!("auth failed: {}", with_message(&code(e.code), &e.message)),
        Body::Error(e) => {
            let retry = if e.retry_after_ms > 0 {
                format!("; retry after {} ms", e.retry_after_ms)
            } else {
                String::new()
            };
            format!("error: {}{retry}", with_message(&code(e.code), &e.message))
        }
        Body::GoAway(g) => {
            let why = reason(g.reason);
            let why = if g.message.is_empty() {
                why
            } else {
                format!("{why} ({})", g.message)
            };
            let to = if g.endpoints.is_empty() {
                String::new()
            } else {
                format!(" to {}", g.endpoints.join(" or "))
            };
            let delay = if g.retry_after_ms > 0 {
                format!(" in {} ms", g.retry_after_ms)
            } else {
                " at once".to_string()
            };
            format!("server going away: {why}; reconnect{to}{delay}")
        }
        Body::TokenExpiring(t) => format!(
            "token expiring at {} (a Refresh before then keeps the session)",
            when(t.expires_at_unix_s)
        ),
        Body::RefreshReply(r) if r.code == 0 => format!(
            "token refreshed: the session now ends at {}",
            when(r.expires_at_unix_s)
        ),
        Body::RefreshReply(r) => format!(
            "refresh refused: {} (the session still ends when the old token expires)",
            with_message(&code(r.code), &r.message)
        ),
        other => format!(
            "unexpected {} frame from the server",
            bench::wire::body_name(other)
        ),
    }
}

/// Exits with `code`, after a line on stderr when `why` is not empty.
fn exit(code: i32, why: &str) -> ! {
    let _ = std::io::stdout().flush();
    if !why.is_empty() {
        eprintln!("gwcat: {why}");
    }
    std::process::exit(code)
}

/// Reads and prints frames until the connection ends; exits the process
/// with the status the end calls for.
fn read_loop(
    mut reader: TcpStream,
    mut acker: TcpStream,
    tokens: Tokens,
    login: mpsc::Sender<()>,
    answered: Arc<AtomicU64>,
) -> ! {
    let (mut buf, mut tmp) = (Vec::new(), [0u8; 65536]);
    let mut logged_in = false;
    // The end without a GoAway or an AuthError: before login it is a
    // connection error, after it a lost session.
    let lost = |logged_in: bool, why: String| -> ! {
        if logged_in {
            exit(EXIT_LOST, &why)
        } else {
            exit(EXIT_USAGE_OR_CONNECT, &format!("{why} before login"))
        }
    };
    loop {
        loop {
            let f = match gw_proto::decode(&buf, 1 << 24) {
                Ok(Decoded::Frame(f, used)) => {
                    buf.drain(..used);
                    f
                }
                Ok(Decoded::Incomplete(_)) => break,
                Err(e) => lost(logged_in, format!("undecodable frame from the server: {e}")),
            };
            let Some(b) = f.body else { continue };
            println!("< {}", show(&b));
            match &b {
                Body::AuthOk(_) => {
                    logged_in = true;
                    let _ = login.send(());
                }
                Body::AuthError(_) => exit(EXIT_AUTH, ""),
                // A well-behaved client leaves at once (a drain waits for it).
                Body::GoAway(_) => {
                    let _ = reader.shutdown(Shutdown::Both);
                    exit(EXIT_GOAWAY, "")
                }
                Body::UpstreamReply(_) | Body::Pong(_) => {
                    answered.fetch_add(1, SeqCst);
                }
                Body::Push(p) if p.ack_required => {
                    if let Err(e) = send(&mut acker, Body::Ack(pb::Ack { seq: p.seq })) {
                        lost(logged_in, format!("writing an Ack: {e}"));
                    }
                }
                Body::TokenExpiring(_) if tokens.refreshable() => match tokens.get() {
                    Ok(token) => {
                        if let Err(e) = send(&mut acker, Body::Refresh(pb::Refresh { token })) {
                            lost(logged_in, format!("writing a Refresh: {e}"));
                        }
                        println!("> Refresh (a fresh token)");
                    }
                    Err(e) => eprintln!("gwcat: no fresh token: {e:#}"),
                },
                _ => {}
            }
        }
        match reader.read(&mut tmp) {
            Ok(0) => {
                println!("< (connection closed by the server)");
                lost(logged_in, "the server closed the connection".into())
            }
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
            Err(e) => lost(logged_in, format!("reading: {e}")),
        }
    }
}

fn main() {
    let a = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let code = if e.use_stderr() {
                EXIT_USAGE_OR_CONNECT
            } else {
                EXIT_OK // --help, --version
            };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    if let Err(e) = run(a) {
        exit(EXIT_USAGE_OR_CONNECT, &format!("{e:#}"));
    }
}

/// Logs in, then sends the input lines; Err: no session (exit 1).
fn run(a: Args) -> anyhow::Result<()> {
    let tokens = match (a.token_cmd, a.token) {
        (Some(cmd), _) => Tokens::Command(cmd),
        (None, Some(t)) => Tokens::Fixed(t),
        (None, None) => Tokens::Demo {
            user: a.user.clone(),
            ttl_s: a.token_ttl_s,
        },
    };
    let token = tokens.get()?;
    let timeout = Duration::from_millis(a.timeout_ms.max(1));
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&a.addr)
        .with_context(|| format!("resolving {}", a.addr))?
        .next()
        .with_context(|| format!("{} resolves to no address", a.addr))?;
    let mut s = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("connecting to {}", a.addr))?;
    s.set_nodelay(true)?;
    let auth = pb::Auth {
        protocol_version: gw_proto::PROTOCOL_VERSION,
        token,
        device_id: a.device,
        // gwcat prints batches (a hot room's pushes, PROTOCOL.md §7.5).
        push_batches: true,
        ..Default::default()
    };
    send(&mut s, Body::Auth(auth)).context("sending Auth")?;
    let (reader, acker) = (s.try_clone()?, s.try_clone()?);
    let (login_tx, login_rx) = mpsc::channel();
    let answered = Arc::new(AtomicU64::new(0));
    {
        let answered = answered.clone();
        std::thread::spawn(move || read_loop(reader, acker, tokens, login_tx, answered));
    }
    // The reader ends the process on an AuthError or a closed connection.
    if login_rx.recv_timeout(timeout).is_err() {
        bail!("no answer to Auth within {} ms", a.timeout_ms);
    }
    // Requests sent (each gets a Reply or a Pong), and the last correlation id.
    let (mut sent, mut corr) = (0u64, 0u64);
    for line in std::io::stdin().lock().lines() {
        let line = line.context("reading standard input")?;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let body = if line == "ping" {
            Body::Ping(pb::Ping::default())
        } else {
            let (route, payload) = line.split_once(' ').unwrap_or((line, ""));
            corr += 1;
            // Fields the protocol adds later stay at their defaults.
            #[allow(clippy::needless_update)]
            let up = pb::Upstream {
                correlation_id: corr,
                route: route.into(),
                client_msg_id: format!("cli-{corr}"),
                payload: payload.as_bytes().to_vec().into(),
                ..Default::default()
            };
            Body::Upstream(up)
        };
        if let Err(e) = send(&mut s, body) {
            // The reader may know why (GoAway, closed): let it say so first.
            std::thread::sleep(Duration::from_millis(500));
            exit(EXIT_LOST, &format!("connection lost: writing: {e}"));
        }
        sent += 1;
    }
    let until = Instant::now() + Duration::from_millis(a.wait_ms);
    while answered.load(SeqCst) < sent && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(10));
    }
    let missing = sent.saturating_sub(answered.load(SeqCst));
    if missing > 0 {
        eprintln!("gwcat: end of input; {missing} answer(s) not received within --wait-ms");
    }
    exit(EXIT_OK, "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_read_as_sentences() {
        let auth = Body::AuthError(pb::AuthError {
            code: pb::ErrorCode::TokenExpired as i32,
            message: "token has expired".into(),
        });
        assert_eq!(show(&auth), "auth failed: TOKEN_EXPIRED: token has expired");
        let drain = Body::GoAway(pb::GoAway {
            reason: pb::CloseReason::Drain as i32,
            retry_after_ms: 1500,
            endpoints: vec!["10.0.0.2:7000".into(), "10.0.0.3:7000".into()],
            message: String::new(),
        });
        assert_eq!(
            show(&drain),
            "server going away: drain; reconnect to 10.0.0.2:7000 or 10.0.0.3:7000 in 1500 ms"
        );
        let expired = Body::GoAway(pb::GoAway {
            reason: pb::CloseReason::TokenExpired as i32,
            message: "refresh next time".into(),
            ..Default::default()
        });
        assert_eq!(
            show(&expired),
            "server going away: token expired (refresh next time); reconnect at once"
        );
        let busy = Body::Error(pb::Error {
            code: pb::ErrorCode::Busy as i32,
            message: "busy".into(),
            retry_after_ms: 200,
        });
        assert_eq!(show(&busy), "error: BUSY: busy; retry after 200 ms");
        let expiring = Body::TokenExpiring(pb::TokenExpiring {
            expires_at_unix_s: 1_796_729_545,
        });
        assert_eq!(
            show(&expiring),
            "token expiring at 2026-12-08T11:32:25Z (a Refresh before then keeps the session)"
        );
        let ok = Body::RefreshReply(pb::RefreshReply {
            code: 0,
            message: String::new(),
            expires_at_unix_s: 0,
        });
        assert_eq!(
            show(&ok),
            "token refreshed: the session now ends at 1970-01-01T00:00:00Z"
        );
        let refused = Body::RefreshReply(pb::RefreshReply {
            code: pb::ErrorCode::TokenInvalid as i32,
            message: "bad signature".into(),
            expires_at_unix_s: 0,
        });
        assert!(show(&refused).starts_with("refresh refused: TOKEN_INVALID: bad signature"));
        let batch = Body::Push(pb::Push {
            room: "live".into(),
            dropped: 2,
            batch: vec![pb::Push {
                route: "like".into(),
                payload: bytes::Bytes::from_static(b"1"),
                ..Default::default()
            }],
            ..Default::default()
        });
        assert_eq!(
            show(&batch),
            "Batch room=live pushes=1 dropped=2\n<   Push route=like payload=1"
        );
        let odd = Body::Ping(pb::Ping::default());
        assert_eq!(show(&odd), "unexpected Ping frame from the server");
        // Nothing reads as Rust debug output.
        for b in [auth, drain, expired, busy, expiring, ok, refused, odd] {
            let line = show(&b);
            assert!(!line.contains('{') && !line.contains("code:"), "{line}");
        }
    }
}
