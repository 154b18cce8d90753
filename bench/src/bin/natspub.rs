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
    /// Priorities in the given shares, as `low=50,normal=40,high=10`: each
    /// message gets Gw-Priority and `"prio":"l|n|h"` in its payload (flood
    /// counts HIGH deliveries). Without it: no header (NORMAL).
    #[arg(long)]
    priority_mix: Option<String>,
    /// Publish one room-mode message (Gw-Room-Mode: hot, normal or auto; no
    /// Gw-Route) to the subject and exit.
    #[arg(long)]
    room_mode: Option<String>,
}

/// A priority mix: (header value, payload mark) per message slot, cycling
/// through `SLOTS` slots in the given shares.
fn mix(spec: &str) -> anyhow::Result<Vec<(&'static str, char)>> {
    const SLOTS: u32 = 100;
    let mut slots = Vec::new();
    for part in spec.split(',') {
        let (name, share) = part
            .split_once('=')
            .with_context(|| format!("--priority-mix: {part:?} is not name=share"))?;
        let share: u32 = share
            .trim()
            .parse()
            .with_context(|| format!("--priority-mix: share of {name}"))?;
        let p = match name.trim() {
            "low" => ("low", 'l'),
            "normal" => ("normal", 'n'),
            "high" => ("high", 'h'),
            other => anyhow::bail!("--priority-mix: {other:?} is not low, normal or high"),
        };
        slots.extend(std::iter::repeat_n(p, share as usize));
    }
    if slots.is_empty() || slots.len() as u32 > SLOTS {
        anyhow::bail!("--priority-mix: shares must add up to 1..={SLOTS}");
    }
    // Interleave: slot i takes the entry at (i * step) so priorities mix.
    let n = slots.len();
    let step = (1..n).find(|s| gcd(*s, n) == 1 && *s * 3 > n).unwrap_or(1);
    Ok((0..n).map(|i| slots[(i * step) % n]).collect())
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

fn mono_ns() -> u64 {
    bench::net::mono_ns()
}

fn payload(n: u64, size: usize, prio: Option<char>) -> Bytes {
    let mut s = format!(
        "{{\"room\":\"bench\",\"from\":\"natspub\",\"text\":\"{n}:{}\"",
        mono_ns()
    );
    if let Some(c) = prio {
        s.push_str(&format!(",\"prio\":\"{c}\""));
    }
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
    if let Some(mode) = &a.room_mode {
        let mut h = async_nats::HeaderMap::new();
        h.insert("Gw-Room-Mode", mode.as_str());
        client
            .publish_with_headers(a.subject.clone(), h, Bytes::new())
            .await
            .context("publishing the room mode")?;
        client.flush().await.context("flushing")?;
        println!(
            "{}",
            serde_json::json!({"subject": a.subject, "room_mode": mode})
        );
        return Ok(());
    }
    let mix = a.priority_mix.as_deref().map(mix).transpose()?;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Gw-Route", a.route.as_str());
    let mut by_prio = [0u64; 3];
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
            let slot = mix.as_ref().map(|m| m[(sent % m.len() as u64) as usize]);
            let mut h = headers.clone();
            if let Some((name, mark)) = slot {
                h.insert("Gw-Priority", name);
                by_prio[match mark {
                    'l' => 0,
                    'n' => 1,
                    _ => 2,
                }] += 1;
            }
            let p = payload(sent, a.payload_bytes, slot.map(|s| s.1));
            if client
                .publish_with_headers(a.subject.clone(), h, p)
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
        "payload_bytes": payload(0, a.payload_bytes, None).len(),
        "published": sent, "publish_errors": errors, "seconds": secs,
        "published_per_s": sent as f64 / secs,
        "published_low": by_prio[0], "published_normal": by_prio[1], "published_high": by_prio[2],
    });
    println!("{line}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mix_keeps_its_shares_and_interleaves() {
        let m = mix("low=5,normal=4,high=1").expect("mix");
        assert_eq!(m.len(), 10);
        assert_eq!(m.iter().filter(|p| p.1 == 'l').count(), 5);
        assert_eq!(m.iter().filter(|p| p.1 == 'h').count(), 1);
        // Not all the lows first.
        assert_ne!(m[..5].iter().filter(|p| p.1 == 'l').count(), 5);
        assert!(mix("loud=1").is_err());
        assert!(mix("").is_err());
    }
}
