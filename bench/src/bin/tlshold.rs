//! `tlshold`: TLS handshakes (logins) per second against the gateway. Each
//! login is a whole one: TCP connect, TLS handshake, `Auth`, `AuthOk`,
//! close; `--concurrency` at a time, each with a fresh client (full
//! handshakes) or, with `--resume`, one shared client session cache
//! (resumed handshakes after the first). The gateway's CPU per login comes
//! from its utime + stime in `/proc`.
//!
//! `tlshold --addr 127.0.0.1:7000 --pid $(pidof gateway) --token T --ca cert.pem --handshakes 4000 --concurrency 16 [--resume]`
//!
//! Memory per idle connection (plain, TLS, WebSocket, wss) and latency over
//! TLS are `flood`'s now: `flood hold --tls --ca cert.pem [--ws] --mark ...`,
//! `flood echo --tls --ca cert.pem`. This tool stays for short-lived
//! logins, which `flood` (it holds its connections) does not make.

use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Parser)]
struct Args {
    #[arg(long)]
    addr: String,
    /// The gateway's pid (its CPU time is read from /proc).
    #[arg(long)]
    pid: u32,
    /// A token accepted by the gateway (`gateway token --sub x`).
    #[arg(long)]
    token: String,
    /// CA certificate (PEM) to trust (server name localhost).
    #[arg(long)]
    ca: String,
    /// Logins to make.
    #[arg(long, default_value_t = 4000)]
    handshakes: usize,
    /// Logins in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Share one session cache: resumed handshakes.
    #[arg(long)]
    resume: bool,
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
    anyhow::ensure!(
        a.handshakes > 0 && a.concurrency > 0,
        "need --handshakes > 0 and --concurrency > 0"
    );
    let auth = gw_proto::encode(&gw_proto::Frame {
        body: Some(gw_proto::Body::Auth(gw_proto::pb::Auth {
            protocol_version: gw_proto::PROTOCOL_VERSION,
            token: a.token.clone(),
            device_id: "tlshold".into(),
            ..Default::default()
        })),
    });
    let local = tokio::task::LocalSet::new();
    local
        .run_until(handshakes(&a, &a.ca, a.handshakes, &auth))
        .await
}
