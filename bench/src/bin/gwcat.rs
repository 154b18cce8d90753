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
        other => format!("{other:?}"),
    }
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let token = a.token.unwrap_or_else(|| {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let claims = serde_json::json!({"sub": a.user, "exp": now + 3600});
        gateway::auth::sign_hs256(DEMO_SECRET.as_bytes(), Some(DEMO_KID), &claims)
    });
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
                if let Body::Push(p) = &b {
                    if p.ack_required {
                        send(&mut acker, Body::Ack(pb::Ack { seq: p.seq }))?;
                    }
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
