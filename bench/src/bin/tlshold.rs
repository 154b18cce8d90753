//! `tlshold`: the gateway's memory per idle authenticated connection, plain
//! TCP or TLS, from its RSS. Opens N connections (TLS with `--ca`), each
//! authenticates once and then idles; the RSS slope is taken between 10% and
//! 100% of them. A stopgap until `flood` speaks TLS (issue 5).
//!
//! `tlshold --addr 127.0.0.1:7000 --pid $(pidof gateway) --conns 8000 --token T [--ca cert.pem]`
//!
//! With `--handshakes N` it measures handshake rates instead: N connections
//! (TLS handshake, then Auth and AuthOk, then close), `--concurrency` at a
//! time, each with a fresh client (full handshakes) or, with `--resume`,
//! one shared client session cache (resumed handshakes after the first).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Parser)]
struct Args {
    #[arg(long)]
    addr: String,
    /// The gateway's pid (its RSS is read from /proc).
    #[arg(long)]
    pid: u32,
    #[arg(long, default_value_t = 8000)]
    conns: usize,
    /// A token accepted by the gateway (`gateway token --sub x`).
    #[arg(long)]
    token: String,
    /// CA certificate (PEM) to trust: connect with TLS (server name localhost).
    #[arg(long)]
    ca: Option<String>,
    /// Plain WebSocket (`GET /ws` upgrade, then one masked binary message per frame).
    #[arg(long)]
    ws: bool,
    /// Measure handshakes per second over this many connections instead.
    #[arg(long)]
    handshakes: Option<usize>,
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Share one session cache: resumed handshakes.
    #[arg(long)]
    resume: bool,
}

fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb = s
        .lines()
        .find(|l| l.starts_with("VmRSS"))
        .and_then(|l| l.split_whitespace().nth(1))
        .context("no VmRSS")?;
    Ok(kb.parse::<u64>()? * 1024)
}

/// CPU time (user + system) the process has used, seconds.
fn cpu_s(pid: u32) -> anyhow::Result<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces), 1-based: utime 14, stime 15.
    let rest = s.rsplit_once(')').context("bad /proc stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks =
        f.get(11).context("utime")?.parse::<f64>()? + f.get(12).context("stime")?.parse::<f64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks / hz)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(run(args))
}

fn connector(ca: &str) -> anyhow::Result<tokio_rustls::TlsConnector> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut &std::fs::read(ca)?[..]) {
        roots.add(c?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(cfg)))
}

/// Handshakes per second: connect, TLS, Auth, AuthOk, close.
async fn handshakes(a: &Args, ca: &str, total: usize, auth: &bytes::Bytes) -> anyhow::Result<()> {
    let shared = connector(ca)?;
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let resumed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let t = std::time::Instant::now();
    let cpu0 = cpu_s(a.pid)?;
    let mut tasks = Vec::new();
    for _ in 0..a.concurrency {
        let (next, resumed, auth, addr) =
            (next.clone(), resumed.clone(), auth.clone(), a.addr.clone());
        let (shared, resume, ca) = (shared.clone(), a.resume, ca.to_string());
        tasks.push(tokio::task::spawn_local(async move {
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < total {
                let c = if resume {
                    shared.clone()
                } else {
                    connector(&ca)?
                };
                let s = tokio::net::TcpStream::connect(&addr).await?;
                s.set_nodelay(true)?;
                let mut s = c.connect("localhost".try_into()?, s).await?;
                s.write_all(&auth).await?;
                let mut buf = [0u8; 512];
                anyhow::ensure!(s.read(&mut buf).await? > 0, "closed before AuthOk");
                if s.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                    resumed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let secs = t.elapsed().as_secs_f64();
    let cpu = cpu_s(a.pid)? - cpu0;
    println!(
        "{{\"handshakes\":{total},\"resumed\":{},\"per_s\":{:.0},\"gateway_cpu_us_per_handshake\":{:.0},\"per_s_per_gateway_core\":{:.0},\"concurrency\":{}}}",
        resumed.load(std::sync::atomic::Ordering::Relaxed),
        total as f64 / secs,
        cpu * 1e6 / total as f64,
        total as f64 / cpu.max(1e-9),
        a.concurrency
    );
    Ok(())
}

async fn run(a: Args) -> anyhow::Result<()> {
    let tls = match &a.ca {
        None => None,
        Some(ca) => Some(connector(ca)?),
    };
    let auth = gw_proto::encode(&gw_proto::Frame {
        body: Some(gw_proto::Body::Auth(gw_proto::pb::Auth {
            protocol_version: gw_proto::PROTOCOL_VERSION,
            token: a.token.clone(),
            device_id: "tlshold".into(),
            ..Default::default()
        })),
    });
    if let (Some(n), Some(ca)) = (a.handshakes, &a.ca) {
        let local = tokio::task::LocalSet::new();
        return local.run_until(handshakes(&a, ca, n, &auth)).await;
    }
    let (mut plain, mut secure) = (Vec::new(), Vec::new());
    let mark = a.conns / 10;
    let mut base = 0;
    let mut buf = [0u8; 512];
    for i in 0..a.conns {
        if i == mark {
            tokio::time::sleep(Duration::from_millis(500)).await;
            base = rss_bytes(a.pid)?;
        }
        let s = tokio::net::TcpStream::connect(&a.addr).await?;
        s.set_nodelay(true)?;
        match &tls {
            Some(t) => {
                let mut s = t.connect("localhost".try_into()?, s).await?;
                s.write_all(&auth).await?;
                s.flush().await?;
                anyhow::ensure!(s.read(&mut buf).await? > 0, "closed before AuthOk");
                secure.push(s);
            }
            None => {
                let mut s = s;
                if a.ws {
                    upgrade(&mut s).await?;
                    s.write_all(&ws_message(&auth[4..])).await?;
                } else {
                    s.write_all(&auth).await?;
                }
                anyhow::ensure!(s.read(&mut buf).await? > 0, "closed before AuthOk");
                plain.push(s);
            }
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let end = rss_bytes(a.pid)?;
    let per = end.saturating_sub(base) as f64 / (a.conns - mark) as f64;
    println!(
        "{{\"transport\":\"{}\",\"conns\":{},\"bytes_per_conn\":{per:.0}}}",
        match (tls.is_some(), a.ws) {
            (true, _) => "tls",
            (false, true) => "ws",
            (false, false) => "tcp",
        },
        a.conns
    );
    Ok(())
}

/// The WebSocket upgrade, up to the end of the 101 response.
async fn upgrade(s: &mut tokio::net::TcpStream) -> anyhow::Result<()> {
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").await?;
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        anyhow::ensure!(s.read(&mut b).await? == 1, "closed during the upgrade");
        head.push(b[0]);
    }
    anyhow::ensure!(head.starts_with(b"HTTP/1.1 101"), "upgrade refused");
    Ok(())
}

/// One masked binary WebSocket message (client to server), payload < 64 KiB.
fn ws_message(payload: &[u8]) -> Vec<u8> {
    let mask = [1u8, 2, 3, 4];
    let mut v = vec![0x82];
    if payload.len() < 126 {
        v.push(0x80 | payload.len() as u8);
    } else {
        v.push(0x80 | 126);
        v.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    }
    v.extend_from_slice(&mask);
    v.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    v
}
