//! `flood`: many long-lived client connections against the gateway (or a
//! peer: mosquitto, nats-server, the `sink`).
//!
//! Scenarios (subcommands): `hold` (open, authenticate, heartbeat, hold),
//! `echo` (upstream round trips at a rate), `chat` (`chat.send` to a
//! partner connection; latency until the partner has the push), `broadcast` (one sender, every
//! connection in a room; per-round delivery latency), `storm` (drop
//! everything, reconnect at full speed). `--procs P` runs the connections in
//! P worker processes (this binary re-executed) and merges their results.
//! The gateway's protocol runs over plain TCP, `--tls` (trusting `--ca`),
//! `--ws` (WebSocket upgrade on the same port) or both (wss); the report
//! says which.
//! A progress line is printed once a second (with the scenario's rate and
//! its latency over the last second: echo round trip, chat send to push,
//! broadcast delivery, heartbeat round trip), a summary at the end;
//! `--json` writes the report (stamped with its schema version, the tool's
//! version, the gateway's version when `--admin` can tell it, and the start
//! time) and `--plot` an SVG of connections and server RSS, with the
//! latency under it.
//!
//! Per connection the client keeps the socket, a timer and a few words: no
//! read buffer (reads go through one scratch buffer per thread, only the
//! bytes of an incomplete message are kept); with `--tls` also a rustls
//! client session and its buffers (the server's memory is what a run
//! measures). SIGINT / SIGTERM end the run early; the report is still
//! written.

use std::time::SystemTime;

use anyhow::Context as _;
use bench::admin::{self, GatewayVersion};
use bench::args::{BroadcastArgs, EchoArgs, HoldArgs, Scenario, StormArgs};
use bench::{phases, plot, report, worker};
use clap::{Parser, Subcommand};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "flood",
    about = "Connection flood client for the gateway and its peers."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Open connections, authenticate, heartbeat, hold, report.
    Hold(HoldArgs),
    /// Upstream "echo" requests at an aggregate rate; round-trip latency.
    Echo(EchoArgs),
    /// `chat.send` to a partner connection at an aggregate rate; latency
    /// from the send until the partner has the `chat.msg` push (acked).
    Chat(EchoArgs),
    /// Every connection joins a room; one sender broadcasts; delivery latency.
    Broadcast(BroadcastArgs),
    /// Hold, drop every connection at once, reconnect at full speed.
    Storm(StormArgs),
}

fn main() {
    if let Err(e) = run() {
        eprintln!("flood: error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    let sc = match Cli::parse().cmd {
        Cmd::Hold(a) => Scenario::Hold(a),
        Cmd::Echo(a) => Scenario::Echo(a),
        Cmd::Chat(a) => Scenario::Chat(a),
        Cmd::Broadcast(a) => Scenario::Broadcast(a),
        Cmd::Storm(a) => Scenario::Storm(a),
    };
    sc.check()?;
    if let Some(k) = sc.common().worker {
        return worker::run(sc, k);
    }
    let c = sc.common().clone();
    if c.sources > 0 && !c.target.ip().is_loopback() {
        eprintln!(
            "flood: warning: --sources binds {}.. which only reaches a loopback target",
            c.source_base
        );
    }
    println!(
        "flood {}: {} {} conns over {} to {} at {}/s ({} in flight), {} process(es) x {} executor(s), {} source address(es) each, heartbeat {} ms",
        sc.name(), c.conns, serde_json::to_string(&c.protocol)?.trim_matches('"'),
        c.transport.name(), c.target, c.rate,
        c.inflight, c.procs, c.cores, c.sources, c.heartbeat_ms
    );
    let started = SystemTime::now();
    // Asked before the run and, if that failed, after it (the gateway may
    // have come up meanwhile); unknown stays null.
    let ask = || {
        c.admin
            .map(|a| admin::gateway_version(a, c.admin_token.as_deref()))
    };
    let mut gw_version = ask();
    let signalled = worker::catch_signals();
    let (mut co, figures) = phases::run(sc, signalled)?;
    if matches!(gw_version, Some(Err(_))) {
        gw_version = ask();
    }
    let gw = match gw_version {
        Some(Ok(v)) => v,
        Some(Err(why)) => {
            co.notes.push(format!("gateway_version unknown: {why}"));
            GatewayVersion::default()
        }
        None => GatewayVersion::default(),
    };
    let mut doc = report::build(&co, &figures);
    report::stamp(&mut doc, started, &gw);
    if let Some(path) = &c.json {
        let text = serde_json::to_string_pretty(&doc)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &c.plot {
        let title = format!(
            "flood {} ({:?} over {}): {} connections",
            co.sc.name(),
            c.protocol,
            c.transport.name(),
            c.conns
        );
        let svg = plot::svg(&title, &co.samples, co.duration_s, co.latency.label());
        std::fs::write(path, svg).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
