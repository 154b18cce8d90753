//! Command-line options of the flood client: those every scenario shares
//! ([`Common`]), those of each scenario, and how a run is split between
//! worker processes ([`Share`]).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use anyhow::bail;

use crate::proto::Protocol;
use crate::transport::TransportArgs;

/// Connections one worker process may hold (RLIMIT_NOFILE is 20,000 here;
/// the rest is headroom for the executor's own descriptors).
pub const CONNS_PER_PROC_MAX: u64 = 19_000;
/// Worker processes at most.
pub const PROCS_MAX: u32 = 256;
/// Broadcast rounds at most.
pub const ROUNDS_MAX: u32 = 1000;

/// Options of every scenario.
#[derive(clap::Args, Clone, Debug)]
pub struct Common {
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:7000")]
    pub target: SocketAddr,
    /// Wire protocol: gw (the gateway), mqtt (3.1.1), nats, raw (connect only).
    #[arg(long, value_enum, default_value_t = Protocol::Gw)]
    pub protocol: Protocol,
    #[command(flatten)]
    pub transport: TransportArgs,
    /// Connections to open, over all worker processes.
    #[arg(long, default_value_t = 1000)]
    pub conns: u64,
    /// New connections per second over all workers, paced evenly.
    #[arg(long, default_value_t = 5000.0)]
    pub rate: f64,
    /// Connection setups (connect + handshake) in flight at most, over all workers.
    #[arg(long, default_value_t = 100_000)]
    pub inflight: u64,
    /// Heartbeat interval, ms (gw Ping, MQTT PINGREQ and keepalive, NATS PING);
    /// the first one of each connection comes after a random part of it.
    #[arg(long, default_value_t = 30_000)]
    pub heartbeat_ms: u32,
    /// HS256 secret [default: the gateway's public demo secret, kid "demo"].
    #[arg(long)]
    pub secret: Option<String>,
    /// Token header `kid` [default: "demo" with the demo secret, none with --secret].
    #[arg(long)]
    pub kid: Option<String>,
    /// Token lifetime, seconds.
    #[arg(long, default_value_t = 3600)]
    pub token_ttl_s: u64,
    /// Device id sent in Auth.
    #[arg(long, default_value = "d")]
    pub device: String,
    /// gw only: do not ask for batches (Auth.push_batches): a hot room's
    /// pushes then come one frame each, as to an old client.
    #[arg(long)]
    pub no_batches: bool,
    /// User ids (and MQTT client ids) are u<first-id + i>.
    #[arg(long, default_value_t = 0)]
    pub first_id: u64,
    /// Source addresses per worker process, counting up from --source-base
    /// (bind + IP_BIND_ADDRESS_NO_PORT); worker k starts k * this many
    /// addresses further up. 0 = let the kernel pick.
    #[arg(long, default_value_t = 0)]
    pub sources: u32,
    /// First source address.
    #[arg(long, default_value = "127.0.0.2")]
    pub source_base: Ipv4Addr,
    /// glommio executors (threads) per worker process.
    #[arg(long, default_value_t = 1)]
    pub cores: usize,
    /// Deadline for connect + handshake of one connection, ms.
    #[arg(long, default_value_t = 10_000)]
    pub timeout_ms: u64,
    /// Retries of a failed connection setup (after 100 ms, 200 ms, ... plus jitter).
    #[arg(long, default_value_t = 0)]
    pub retries: u32,
    /// Give up waiting for the ramp after this many seconds (0: from --conns,
    /// --rate, --timeout-ms and --retries, plus a minute).
    #[arg(long, default_value_t = 0)]
    pub ramp_timeout_s: u64,
    /// Worker processes sharing the connections (each holds at most 19,000).
    #[arg(long, default_value_t = 1)]
    pub procs: u32,
    /// Open this many connections first, wait --settle-s, read the RSS of
    /// the --pid processes, then open the rest: bytes_per_conn is the slope.
    #[arg(long)]
    pub mark: Option<u64>,
    /// Seconds to wait before each RSS reading of --mark (and after the ramp).
    #[arg(long, default_value_t = 0)]
    pub settle_s: u64,
    /// Server processes whose RSS and CPU are sampled and summed (repeatable).
    #[arg(long = "pid")]
    pub pids: Vec<u32>,
    /// Sampling interval of RSS, CPU and slab, ms.
    #[arg(long, default_value_t = 1000)]
    pub sample_ms: u64,
    /// Write the report here as JSON (schema_version 2: BENCHMARKS.md,
    /// "Flood reports").
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Draw established connections and server RSS over time (SVG), and
    /// under them the scenario's latency (p50, p99 per --sample-ms).
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Write this file (a one-line JSON summary) once every connection is up or failed.
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
    /// The gateway's admin address (host:port of --admin-listen): the
    /// report's gateway_version comes from its GET /stats (or /metrics).
    /// Without it gateway_version is null.
    #[arg(long)]
    pub admin: Option<SocketAddr>,
    /// Bearer token for --admin, when the gateway requires one (admin_token_env).
    #[arg(long, env = "FLOOD_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Internal: run as worker process K of --procs.
    #[arg(long, hide = true)]
    pub worker: Option<u32>,
}

/// Options of `flood hold`.
#[derive(clap::Args, Clone, Debug)]
pub struct HoldArgs {
    #[command(flatten)]
    pub c: Common,
    /// Seconds to hold once every connection is up (or failed) and settled.
    #[arg(long, default_value_t = 10)]
    pub hold_s: u64,
    /// gw only: every connection joins this room (route room.join) and the
    /// window counts the pushes that arrive (e.g. published by `natspub`).
    #[arg(long)]
    pub room: Option<String>,
}

/// Options of `flood echo`.
#[derive(clap::Args, Clone, Debug)]
pub struct EchoArgs {
    #[command(flatten)]
    pub c: Common,
    /// Upstream "echo" requests per second over all connections.
    #[arg(long, default_value_t = 1000.0)]
    pub msgs_per_s: f64,
    /// Seconds of measurement once every connection is up.
    #[arg(long, default_value_t = 10)]
    pub duration_s: u64,
}

/// Options of `flood broadcast`.
#[derive(clap::Args, Clone, Debug)]
pub struct BroadcastArgs {
    #[command(flatten)]
    pub c: Common,
    /// Broadcasts to send.
    #[arg(long, default_value_t = 5)]
    pub rounds: u32,
    /// Pause between broadcasts, ms (0: back to back).
    #[arg(long, default_value_t = 1000)]
    pub interval_ms: u64,
    /// Room (gw), topic (mqtt) or subject (nats).
    #[arg(long, default_value = "bench")]
    pub room: String,
    /// After the last send, wait at most this long for missing deliveries, ms.
    #[arg(long, default_value_t = 10_000)]
    pub drain_ms: u64,
}

/// Options of `flood storm`.
#[derive(clap::Args, Clone, Debug)]
pub struct StormArgs {
    #[command(flatten)]
    pub c: Common,
    /// Seconds to hold before dropping every connection.
    #[arg(long, default_value_t = 2)]
    pub hold_s: u64,
    /// Seconds to hold once all are back.
    #[arg(long, default_value_t = 2)]
    pub after_s: u64,
}

/// The latency a scenario measures while it runs: shown on the progress
/// line, drawn under the plot and summed in the report's `sampled_latency`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Latency {
    /// Heartbeat (gw Ping, MQTT PINGREQ, NATS PING) to its answer.
    PingRtt,
    /// Upstream `echo` to its UpstreamReply (OK replies).
    EchoRtt,
    /// `chat.send` to the partner's `chat.msg` push.
    SendToPush,
    /// Broadcast send to each receipt.
    Delivery,
}

impl Latency {
    /// The name in the JSON report.
    pub fn name(self) -> &'static str {
        match self {
            Latency::PingRtt => "ping_rtt",
            Latency::EchoRtt => "echo_rtt",
            Latency::SendToPush => "send_to_push",
            Latency::Delivery => "delivery",
        }
    }

    /// What it is, for people (plot, progress line).
    pub fn label(self) -> &'static str {
        match self {
            Latency::PingRtt => "heartbeat round trip",
            Latency::EchoRtt => "echo round trip",
            Latency::SendToPush => "chat.send to push",
            Latency::Delivery => "broadcast send to receipt",
        }
    }

    /// Short form for the progress line.
    pub fn short(self) -> &'static str {
        match self {
            Latency::PingRtt => "ping rtt",
            Latency::EchoRtt => "rtt",
            Latency::SendToPush => "send->push",
            Latency::Delivery => "latency",
        }
    }
}

/// The scenario a process runs, with its options.
#[derive(Clone, Debug)]
pub enum Scenario {
    Hold(HoldArgs),
    Echo(EchoArgs),
    /// `chat.send` to the partner connection, latency until the push arrives.
    Chat(EchoArgs),
    Broadcast(BroadcastArgs),
    Storm(StormArgs),
}

impl Scenario {
    pub fn common(&self) -> &Common {
        match self {
            Scenario::Hold(a) => &a.c,
            Scenario::Echo(a) | Scenario::Chat(a) => &a.c,
            Scenario::Broadcast(a) => &a.c,
            Scenario::Storm(a) => &a.c,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Scenario::Hold(_) => "hold",
            Scenario::Echo(_) => "echo",
            Scenario::Chat(_) => "chat",
            Scenario::Broadcast(_) => "broadcast",
            Scenario::Storm(_) => "storm",
        }
    }

    /// The latency this scenario measures as it runs.
    pub fn latency(&self) -> Latency {
        match self {
            // Holding a room: what arrives, from publish to receipt.
            Scenario::Hold(h) if h.room.is_some() => Latency::Delivery,
            Scenario::Hold(_) | Scenario::Storm(_) => Latency::PingRtt,
            Scenario::Echo(_) => Latency::EchoRtt,
            Scenario::Chat(_) => Latency::SendToPush,
            Scenario::Broadcast(_) => Latency::Delivery,
        }
    }

    /// Per-connection interval of requests, when this is `echo` or `chat`.
    pub fn echo_interval_s(&self) -> Option<f64> {
        match self {
            Scenario::Echo(e) | Scenario::Chat(e) => Some(e.c.conns as f64 / e.msgs_per_s),
            _ => None,
        }
    }

    /// Checks the options; Err says what to change.
    pub fn check(&self) -> anyhow::Result<()> {
        let c = self.common();
        if c.conns == 0 || c.rate.is_nan() || c.rate <= 0.0 || c.inflight == 0 {
            bail!("need --conns > 0, --rate > 0 and --inflight > 0");
        }
        if c.cores == 0 || c.cores > 64 || c.procs == 0 || c.procs > PROCS_MAX {
            bail!("need 1 <= --cores <= 64 and 1 <= --procs <= {PROCS_MAX}");
        }
        if c.heartbeat_ms < 100 || c.sample_ms < 10 || c.timeout_ms == 0 || c.retries > 20 {
            bail!(
                "need --heartbeat-ms >= 100, --sample-ms >= 10, --timeout-ms > 0, --retries <= 20"
            );
        }
        if c.mark.is_some_and(|m| m == 0 || m >= c.conns) {
            bail!("--mark must be between 1 and --conns - 1");
        }
        if c.settle_s > 3600 || c.ramp_timeout_s > 86_400 {
            bail!("--settle-s at most 3600, --ramp-timeout-s at most 86400");
        }
        let per_proc = c.conns.div_ceil(c.procs as u64);
        let nofile = crate::procfs::nofile_limit();
        if per_proc > CONNS_PER_PROC_MAX || per_proc + 64 > nofile {
            bail!(
                "{per_proc} connections per process is too many (at most {CONNS_PER_PROC_MAX}, \
                 RLIMIT_NOFILE {nofile}): raise --procs to at least {}",
                c.conns
                    .div_ceil(CONNS_PER_PROC_MAX.min(nofile.saturating_sub(64)).max(1))
            );
        }
        match (self, c.protocol) {
            (Scenario::Echo(_) | Scenario::Chat(_), p) if p != Protocol::Gw => {
                bail!("echo and chat need --protocol gw")
            }
            (Scenario::Hold(HoldArgs { room: Some(_), .. }), p) if p != Protocol::Gw => {
                bail!("hold --room needs --protocol gw")
            }
            (Scenario::Broadcast(_), Protocol::Raw) => bail!("broadcast needs gw, mqtt or nats"),
            _ => {}
        }
        c.transport.check()?;
        if (c.transport.tls || c.transport.ws) && c.protocol != Protocol::Gw {
            bail!("--tls and --ws need --protocol gw");
        }
        if c.protocol == Protocol::Mqtt && c.heartbeat_ms > 65_535_000 {
            bail!("MQTT keepalive is at most 65535 s");
        }
        match self {
            Scenario::Echo(e) | Scenario::Chat(e) => {
                if e.msgs_per_s.is_nan() || e.msgs_per_s <= 0.0 || e.duration_s == 0 {
                    bail!("need --msgs-per-s > 0 and --duration-s > 0");
                }
                let iv = c.conns as f64 / e.msgs_per_s;
                if iv < 0.001 {
                    bail!("each connection would send more than 1000/s: use more --conns");
                }
                if iv * 1000.0 > c.heartbeat_ms as f64 {
                    bail!("each connection sends every {iv:.1} s, longer than --heartbeat-ms: raise --msgs-per-s");
                }
            }
            Scenario::Broadcast(b) => {
                if b.rounds == 0 || b.rounds > ROUNDS_MAX || b.interval_ms > 600_000 {
                    bail!("need 1 <= --rounds <= {ROUNDS_MAX} and --interval-ms <= 600000");
                }
                check_room(&b.room)?;
            }
            Scenario::Hold(h) => {
                if let Some(r) = &h.room {
                    check_room(r)?;
                }
            }
            Scenario::Storm(_) => {}
        }
        Ok(())
    }
}

fn check_room(room: &str) -> anyhow::Result<()> {
    if room.is_empty()
        || room.len() > 128
        || !room
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'.' || c == b'-' || c == b'_')
    {
        bail!("--room: 1..=128 of [A-Za-z0-9._-]");
    }
    Ok(())
}

/// What one worker process does: its slice of the connections.
#[derive(Clone, Debug)]
pub struct Share {
    pub worker: u32,
    /// Connections of this worker.
    pub conns: u64,
    /// Connections of this worker to open before the --mark reading.
    pub mark: Option<u64>,
    /// User id of this worker's first connection.
    pub first_id: u64,
    /// First source address of this worker (with `Common::sources` addresses).
    pub source_base: Ipv4Addr,
    /// This worker sends the broadcasts.
    pub sender: bool,
}

/// Part `k` of `n` split into `parts` nearly equal pieces, and where it starts.
pub fn split(n: u64, parts: u64, k: u64) -> (u64, u64) {
    let (q, r) = (n / parts, n % parts);
    (q + u64::from(k < r), k * q + k.min(r))
}

impl Share {
    pub fn of(c: &Common, worker: u32) -> Share {
        let p = c.procs as u64;
        let (conns, start) = split(c.conns, p, worker as u64);
        Share {
            worker,
            conns,
            mark: c.mark.map(|m| split(m, p, worker as u64).0),
            first_id: c.first_id + start,
            source_base: crate::net::source_addr(c.source_base, worker * c.sources),
            sender: worker == 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_cover_everything() {
        let mut next = 0;
        for k in 0..7 {
            let (n, start) = split(100, 7, k);
            assert_eq!(start, next);
            next += n;
        }
        assert_eq!(next, 100);
    }
}
