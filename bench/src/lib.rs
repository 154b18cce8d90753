//! The flood client (`src/bin/flood.rs`), the accept-and-hold `sink`, and
//! the other bench tools.
//!
//! - [`args`]: command-line options, and how a run is split over processes.
//! - [`coord`]: the coordinating process: workers, sampling, progress.
//! - [`phases`]: the phases of each scenario, driven by the coordinator.
//! - [`worker`]: a worker process: executors, progress, results.
//! - [`exec`]: what each executor runs: ramp, mark, action, close.
//! - [`conn`]: one connection: settings, counters, establish (any protocol).
//! - [`transport`], [`ws`]: what carries the protocol: TCP, TLS (rustls
//!   over the glommio socket), WebSocket, or TLS and WebSocket.
//! - [`held`]: an established connection: heartbeats, deliveries, replies.
//! - [`proto`], [`wire`], [`mqtt`], [`nats`]: the wire protocols.
//! - [`msg`]: worker-to-coordinator messages, histogram serialisation.
//! - [`report`], [`plot`]: the summary, the JSON report, the SVG.
//! - [`admin`]: the gateway's admin HTTP (its version, for the reports).
//! - [`procfs`]: RSS and CPU of processes, kernel slab, from `/proc`.
//! - [`pushprobe`]: what the `failover` and `backfill` probes share: a
//!   blocking client (a thread per connection) and the publisher's side.
//! - [`net`]: non-blocking connect from a chosen source address, reading
//!   through a per-thread scratch buffer, the monotonic clock.

pub mod admin;
pub mod args;
pub mod conn;
pub mod coord;
pub mod exec;
pub mod held;
pub mod mqtt;
pub mod msg;
pub mod nats;
pub mod net;
pub mod phases;
pub mod plot;
pub mod procfs;
pub mod proto;
pub mod pushprobe;
pub mod report;
pub mod transport;
pub mod wire;
pub mod worker;
pub mod ws;
