//! `tlshold`: the gateway's memory per idle authenticated connection, plain
//! TCP or TLS, from its RSS. Opens N connections (TLS with `--ca`), each
//! authenticates once and then idles; the RSS slope is taken between 10% and
//! 100% of them. A stopgap until `flood` speaks TLS (issue 5).
//!
//! `tlshold --addr 127.0.0.1:7000 --pid $(pidof gateway) --conns 8000 --token T [--ca cert.pem]`

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

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(run(args))
}

async fn run(a: Args) -> anyhow::Result<()> {
    let tls = match &a.ca {
        None => None,
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in rustls_pemfile::certs(&mut &std::fs::read(ca)?[..]) {
                roots.add(c?)?;
            }
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let cfg = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots)
                .with_no_client_auth();
            Some(tokio_rustls::TlsConnector::from(Arc::new(cfg)))
        }
    };
    let auth = gw_proto::encode(&gw_proto::Frame {
        body: Some(gw_proto::Body::Auth(gw_proto::pb::Auth {
            protocol_version: gw_proto::PROTOCOL_VERSION,
            token: a.token.clone(),
            device_id: "tlshold".into(),
            ..Default::default()
        })),
    });
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
                s.write_all(&auth).await?;
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
        if tls.is_some() { "tls" } else { "tcp" },
        a.conns
    );
    Ok(())
}
