//! `hostile`: opens many connections that never authenticate, each left
//! half-way through something the gateway must buffer, and holds them.
//!
//! Kinds (`--kind`):
//! - `partial-frame`: a length prefix of `--frame-bytes` (8,000) and all
//!   but the last byte of that frame;
//! - `partial-tls`: a TLS handshake record header announcing 16,000 bytes,
//!   and 1,000 of them;
//! - `tls-handshake`: a whole ClientHello (rustls), then silence: the
//!   server's session waits mid-handshake;
//! - `partial-ws`: a WebSocket upgrade request cut before its blank line,
//!   about 3 KB of headers.
//!
//! Connections are opened at `--rate` per second; once all are open (or
//! refused) it writes `--ready-file` and holds them `--hold-s` seconds. It
//! prints one JSON line: opened, failed, and how many the server had
//! closed by the end (read 0 or an error).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Kind {
    PartialFrame,
    PartialTls,
    TlsHandshake,
    PartialWs,
}

#[derive(Parser)]
#[command(about = "Hold many never-authenticating connections, each with something to buffer")]
struct Args {
    #[arg(long, default_value = "127.0.0.1:17000")]
    target: SocketAddr,
    #[arg(long, value_enum)]
    kind: Kind,
    #[arg(long, default_value_t = 15_000)]
    conns: usize,
    /// New connections per second.
    #[arg(long, default_value_t = 5_000)]
    rate: u32,
    /// Frame length announced by `partial-frame`, bytes.
    #[arg(long, default_value_t = 8_000)]
    frame_bytes: u32,
    /// Seconds to hold once all are open.
    #[arg(long, default_value_t = 20)]
    hold_s: u64,
    /// Written once all connections are open (or failed).
    #[arg(long)]
    ready_file: Option<std::path::PathBuf>,
}

/// The bytes a connection of `kind` sends before going silent.
fn opening(
    kind: Kind,
    frame_bytes: u32,
    tls: &Arc<rustls::ClientConfig>,
) -> anyhow::Result<Vec<u8>> {
    Ok(match kind {
        Kind::PartialFrame => {
            let mut v = frame_bytes.to_be_bytes().to_vec();
            v.resize(4 + frame_bytes as usize - 1, 0);
            v
        }
        Kind::PartialTls => {
            let mut v = vec![0x16, 0x03, 0x01];
            v.extend_from_slice(&16_000u16.to_be_bytes());
            v.resize(5 + 1_000, 0);
            v
        }
        Kind::TlsHandshake => {
            let name = rustls::pki_types::ServerName::try_from("localhost")?;
            let mut c = rustls::ClientConnection::new(tls.clone(), name)?;
            let mut hello = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut hello)?;
            }
            hello
        }
        Kind::PartialWs => {
            let mut v = b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n".to_vec();
            for i in 0..30 {
                v.extend_from_slice(format!("X-Pad-{i}: {}\r\n", "p".repeat(90)).as_bytes());
            }
            v
        }
    })
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    if a.rate == 0 {
        bail!("--rate must be at least 1");
    }
    // No certificate is ever checked: the handshake never gets that far.
    let tls = Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth(),
    );
    let mut held = Vec::with_capacity(a.conns);
    let mut failed = 0usize;
    let start = Instant::now();
    let gap = Duration::from_secs(1) / a.rate;
    for i in 0..a.conns {
        let due = start + gap * i as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let bytes = opening(a.kind, a.frame_bytes, &tls)?;
        match TcpStream::connect_timeout(&a.target, Duration::from_secs(5))
            .and_then(|mut s| s.write_all(&bytes).map(|_| s))
        {
            Ok(s) => held.push(s),
            Err(_) => failed += 1,
        }
    }
    let ramp_s = start.elapsed().as_secs_f64();
    if let Some(f) = &a.ready_file {
        std::fs::write(f, b"ready\n").with_context(|| format!("writing {}", f.display()))?;
    }
    std::thread::sleep(Duration::from_secs(a.hold_s));
    // Which ones did the server close meanwhile? A non-blocking read: 0 or
    // an error other than would-block means closed.
    let mut closed = 0usize;
    let mut buf = [0u8; 4096];
    for s in &mut held {
        let _ = s.set_nonblocking(true);
        loop {
            match s.read(&mut buf) {
                Ok(0) => {
                    closed += 1;
                    break;
                }
                Ok(_) => continue, // what the server said first (a handshake, an error)
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    closed += 1;
                    break;
                }
            }
        }
    }
    println!(
        "{}",
        serde_json::json!({
            "kind": format!("{:?}", a.kind),
            "conns": a.conns,
            "opened": held.len(),
            "failed": failed,
            "closed_by_server": closed,
            "ramp_s": ramp_s,
        })
    );
    Ok(())
}
