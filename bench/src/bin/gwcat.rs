//! `gwcat`: a line-oriented client for trying the gateway by hand.
//!
//! ```text
//! gwcat --user alice [--addr 127.0.0.1:7000] [--token JWT]
//! > echo hello            upstream on route "echo" with payload "hello"
//! > chat.send {"to":"bob","text":"hi"}
//! > ping
//! ```
//! Each input line is `ROUTE PAYLOAD` (or `ping`); every frame received is
//! printed on one line. Ack-required pushes are acknowledged automatically.
//! Without --token it mints a token with the demo key (gateway --demo).
//! When the server says the token is about to expire (TokenExpiring),
//! gwcat sends a fresh one (Refresh): minted again with the demo key, or
//! printed by `--token-cmd`. It exits 1 when the login is refused.

use std::io::{BufRead, Read, Write};
use std::net::TcpStream;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::Parser;
use gateway::config::{DEMO_KID, DEMO_SECRET};
use gw_proto::pb::{self, frame::Body, Frame};
use gw_proto::Decoded;

#[derive(Parser)]
#[command(
    about = "Line-oriented gateway client: `ROUTE PAYLOAD` per line, frames printed as they arrive."
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
                    bail!(
                        "--token-cmd {cmd:?} failed: {}",
                        String::from_utf8_lossy(&out.stderr)
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
fn send(s: &mut TcpStream, body: Body) -> std::io::Result<()> {
    s.write_all(&gw_proto::encode(&Frame { body: Some(body) }))
}

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
        Body::Push(p) => format!(
            "Push seq={} route={} payload={}",
            p.seq,
            p.route,
            text(&p.payload)
        ),
        Body::Pong(p) => format!("Pong heartbeat_ms={}", p.heartbeat_interval_ms),
        Body::AuthError(e) => format!("AuthError code={} message={}", code(e.code), e.message),
        Body::Error(e) => format!(
            "Error code={} retry_after_ms={} message={}",
            code(e.code),
            e.retry_after_ms,
            e.message
        ),
        Body::GoAway(g) => format!(
            "GoAway reason={} retry_after_ms={} endpoints={} message={}",
            bench::wire::close_reason_name(g.reason),
            g.retry_after_ms,
            g.endpoints.join(","),
            g.message
        ),
        Body::TokenExpiring(t) => {
            format!("TokenExpiring expires_at_unix_s={}", t.expires_at_unix_s)
        }
        Body::RefreshReply(r) => format!(
            "RefreshReply code={} expires_at_unix_s={} message={}",
            code(r.code),
            r.expires_at_unix_s,
            r.message
        ),
        other => format!("{other:?}"),
    }
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let tokens = match (a.token_cmd, a.token) {
        (Some(cmd), _) => Tokens::Command(cmd),
        (None, Some(t)) => Tokens::Fixed(t),
        (None, None) => Tokens::Demo {
            user: a.user.clone(),
            ttl_s: a.token_ttl_s,
        },
    };
    let token = tokens.get()?;
    let mut s = TcpStream::connect(&a.addr).with_context(|| format!("connecting to {}", a.addr))?;
    s.set_nodelay(true)?;
    let auth = pb::Auth {
        protocol_version: gw_proto::PROTOCOL_VERSION,
        token,
        device_id: a.device,
        ..Default::default()
    };
    send(&mut s, Body::Auth(auth))?;
    let mut reader = s.try_clone()?;
    let mut acker = s.try_clone()?;
    std::thread::spawn(move || -> anyhow::Result<()> {
        let (mut buf, mut tmp) = (Vec::new(), [0u8; 65536]);
        loop {
            while let Decoded::Frame(f, used) = gw_proto::decode(&buf, 1 << 24)? {
                buf.drain(..used);
                let Some(b) = f.body else { continue };
                println!("< {}", show(&b));
                match &b {
                    Body::Push(p) if p.ack_required => {
                        send(&mut acker, Body::Ack(pb::Ack { seq: p.seq }))?;
                    }
                    Body::AuthError(_) => std::process::exit(1),
                    Body::TokenExpiring(_) if tokens.refreshable() => {
                        let token = tokens.get()?;
                        send(&mut acker, Body::Refresh(pb::Refresh { token }))?;
                        println!("> Refresh (a fresh token)");
                    }
                    _ => {}
                }
            }
            let n = reader.read(&mut tmp)?;
            if n == 0 {
                println!("< (connection closed by the server)");
                std::process::exit(0);
            }
            buf.extend_from_slice(&tmp[..n]);
        }
    });
    let mut corr = 0u64;
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if line == "ping" {
            send(&mut s, Body::Ping(pb::Ping::default()))?;
            continue;
        }
        let (route, payload) = line.split_once(' ').unwrap_or((line, ""));
        corr += 1;
        let up = pb::Upstream {
            correlation_id: corr,
            route: route.into(),
            client_msg_id: format!("cli-{corr}"),
            payload: payload.as_bytes().to_vec().into(),
        };
        if send(&mut s, Body::Upstream(up)).is_err() {
            bail!("connection lost");
        }
    }
    Ok(())
}
