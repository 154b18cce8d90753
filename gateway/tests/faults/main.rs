//! Fault tests (issue 6): faults injected into a running gateway, and what
//! its clients and backends see. Each test asserts behaviour (counts, close
//! reasons, bounds), prints what it measured (recovery times, with
//! `--nocapture`), and takes a few seconds.
//!
//! - NATS killed and restarted under traffic: every ack-required push is
//!   acked, reported undelivered, or refused to its sender; none unaccounted
//!   (and, ignored until fixed, the report lost when NATS hangs first).
//! - A stalled backend (in process, and a NATS backend process stopped with
//!   SIGSTOP): BUSY and TIMEOUT replies, bounded work held, recovery.
//! - Half-open clients: ones that stop reading, and ones that vanish without
//!   a FIN (a veth link cut in a network namespace): reaped, their outbound
//!   queues bounded meanwhile, every push to them reported. And the other
//!   way round: a last frame and its FIN in one segment close at once.
//! - Slowloris in the auth, TLS and WebSocket handshakes.
//! - Thousands of garbage connections while real clients are served.
//! - The open-file limit: a typed refusal at the cap, EMFILE with sessions
//!   still served, recovery when files free.

#[path = "../common/mod.rs"]
mod common;

mod backend;
mod clients;
mod files;
mod hostile;
mod nats;

use common::{token, Client};
use gw_proto::pb::{self, frame::Body};

fn auth_body(user: &str) -> Body {
    Body::Auth(pb::Auth {
        protocol_version: gw_proto::PROTOCOL_VERSION,
        token: token(user, 600),
        device_id: "fault".into(),
        ..Default::default()
    })
}

fn sum_counter(gw: &gateway::GatewayHandle, f: impl Fn(&gateway::metrics::Counters) -> u64) -> u64 {
    gw.snapshots().iter().map(|s| f(&s.counters)).sum()
}

fn ping_pong(c: &mut Client) {
    c.send(Body::Ping(pb::Ping::default()));
    c.recv_until("Pong", |b| matches!(b, Body::Pong(_)).then_some(()));
}

fn echo_reply(b: &Body, corr: u64) -> bool {
    matches!(b, Body::UpstreamReply(r) if r.correlation_id == corr && r.status == 0)
}

fn echo(corr: u64) -> Body {
    Body::Upstream(pb::Upstream {
        correlation_id: corr,
        route: "echo".into(),
        payload: b"x".to_vec().into(),
        ..Default::default()
    })
}
