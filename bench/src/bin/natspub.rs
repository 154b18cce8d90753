//! `natspub`: publishes pushes straight to NATS, as a backend would, at a
//! set rate (or as fast as the client goes) for a while, and prints what
//! it published as one JSON line.
//!
//! Each message goes to `--subject` (e.g. `gw.room.bench`) with header
//! `Gw-Route: <--route>`, and carries the room-push JSON the flood client
//! understands (`{"room":..,"from":..,"text":"<n>:<send ns>"}`), padded to
//! `--payload-bytes`. Several publishers may run at once.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use clap::Parser;

#[derive(Parser, Debug)]
#[command(name = "natspub", about = "Publish gateway pushes to NATS at a rate.")]
struct Args {
    /// NATS server URL.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    url: String,
    /// Subject (gw.room.<room> or gw.user.<user>).
    #[arg(long, default_value = "gw.room.bench")]
    subject: String,
    /// Gw-Route header: the route clients see.
    #[arg(long, default_value = "room.msg")]
    route: String,
    /// Messages per second (0: as fast as possible).
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Seconds to publish.
    #[arg(long, default_value_t = 10.0)]
    duration_s: f64,
    /// Payload size, bytes (at least the JSON without padding, ~60).
    #[arg(long, default_value_t = 64)]
    payload_bytes: usize,
    /// Wait this long before publishing, seconds.
    #[arg(long, default_value_t = 0.0)]
    delay_s: f64,
}

fn mono_ns() -> u64 {
    bench::net::mono_ns()
}

fn payload(n: u64, size: usize) -> Bytes {
    let mut s = format!(
        "{{\"room\":\"bench\",\"from\":\"natspub\",\"text\":\"{n}:{}\"",
        mono_ns()
    );
    let pad = size.saturating_sub(s.len() + 10);
    if pad > 0 {
        s.push_str(",\"pad\":\"");
        s.extend(std::iter::repeat_n('x', pad));
        s.push('"');
    }
    s.push('}');
    Bytes::from(s)
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    if a.rate.is_nan() || a.rate < 0.0 || a.duration_s.is_nan() || a.duration_s <= 0.0 {
        anyhow::bail!("need --rate >= 0 and --duration-s > 0");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(a))
}

async fn run(a: Args) -> anyhow::Result<()> {
    let client = async_nats::ConnectOptions::new()
        .name("natspub")
        .connect(a.url.as_str())
        .await
        .with_context(|| format!("connecting to {}", a.url))?;
    if a.delay_s > 0.0 {
        tokio::time::sleep(Duration::from_secs_f64(a.delay_s)).await;
    }
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Gw-Route", a.route.as_str());
    let start = Instant::now();
    let until = start + Duration::from_secs_f64(a.duration_s);
    let mut sent = 0u64;
    let mut errors = 0u64;
    while Instant::now() < until {
        let due = if a.rate > 0.0 {
            (start.elapsed().as_secs_f64() * a.rate) as u64 + 1
        } else {
            sent + 256
        };
        while sent < due {
            let p = payload(sent, a.payload_bytes);
            if client
                .publish_with_headers(a.subject.clone(), headers.clone(), p)
                .await
                .is_err()
            {
                errors += 1;
            }
            sent += 1;
        }
        if a.rate > 0.0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        } else {
            tokio::task::yield_now().await;
        }
    }
    client.flush().await.context("flushing")?;
    let secs = start.elapsed().as_secs_f64();
    let line = serde_json::json!({
        "subject": a.subject, "route": a.route, "rate_target": a.rate,
        "payload_bytes": payload(0, a.payload_bytes).len(),
        "published": sent, "publish_errors": errors, "seconds": secs,
        "published_per_s": sent as f64 / secs,
    });
    println!("{line}");
    Ok(())
}
