//! What the push probes (`failover`, `backfill`) share: a blocking gateway
//! client with one OS thread per connection, and the NATS side of a
//! publisher (is a user reachable yet, what did a push request's answer
//! say).
//!
//! The flood client is built for many connections at a rate; these probes
//! need a handful of connections and the exact arrival time of each push,
//! and a plain thread that reads, stamps and acks gives that with no
//! scheduler in between.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use gateway::config::{DEMO_KID, DEMO_SECRET};
use gw_proto::pb::{frame::Body, Push};
use gw_proto::Decoded;

use crate::net::mono_ns;
use crate::wire;

/// Connect + Auth + AuthOk of one client at most.
pub const LOGIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Socket read timeout: how soon a reading thread notices it should stop.
pub const READ_POLL: Duration = Duration::from_millis(20);
/// Heartbeat interval announced in Auth, ms.
pub const HEARTBEAT_MS: u32 = 30_000;
/// A Ping goes out this often (a third of the interval, well inside it).
const PING_EVERY: Duration = Duration::from_secs(10);
/// Token lifetime, seconds: longer than any probe runs.
const TOKEN_TTL_S: u64 = 3600;
/// Read size, bytes.
const READ_BYTES: usize = 64 * 1024;
/// Push route of the reachability probes (not ack-required; clients skip it).
pub const WARMUP_ROUTE: &str = "warmup";

/// One authenticated client connection.
pub struct Session {
    s: TcpStream,
    /// Bytes of an incomplete frame.
    buf: Vec<u8>,
    /// Node (`AuthOk.node_id`) that holds the connection.
    pub node: String,
    pub conn_id: u64,
    last_ping: Instant,
}

/// How a session's reading ended.
#[derive(Debug, Clone, serde::Serialize)]
pub enum Ended {
    /// `stop` was set, or the callback had all it wanted.
    Done,
    /// The server closed the connection (after a GoAway with this reason, if any).
    Closed(Option<String>),
}

/// Connects to `addr` as `user` (demo token) and waits for AuthOk.
pub fn login(addr: SocketAddr, user: &str) -> anyhow::Result<Session> {
    let s = TcpStream::connect_timeout(&addr, LOGIN_TIMEOUT)
        .with_context(|| format!("connecting to {addr}"))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(LOGIN_TIMEOUT))?;
    let token = wire::token(DEMO_SECRET.as_bytes(), Some(DEMO_KID), user, TOKEN_TTL_S);
    (&s).write_all(&wire::auth_frame(token, "d", HEARTBEAT_MS, true))?;
    let mut session = Session {
        s,
        buf: Vec::new(),
        node: String::new(),
        conn_id: 0,
        last_ping: Instant::now(),
    };
    let deadline = Instant::now() + LOGIN_TIMEOUT;
    while Instant::now() < deadline {
        let Some(body) = session.next_frame()? else {
            continue;
        };
        match body {
            Body::AuthOk(ok) => {
                session.node = ok.node_id;
                session.conn_id = ok.conn_id;
                session.s.set_read_timeout(Some(READ_POLL))?;
                return Ok(session);
            }
            Body::AuthError(e) => bail!(
                "{user}: AuthError {} ({})",
                wire::error_code_name(e.code),
                e.message
            ),
            Body::GoAway(g) => bail!("{user}: GoAway {}", wire::close_reason_name(g.reason)),
            _ => {}
        }
    }
    bail!("{user}: no AuthOk within {LOGIN_TIMEOUT:?}")
}

impl Session {
    /// The next whole frame, reading once if none is buffered; None on a
    /// read timeout.
    fn next_frame(&mut self) -> anyhow::Result<Option<Body>> {
        if let Some(b) = self.take_frame()? {
            return Ok(Some(b));
        }
        let mut tmp = [0u8; READ_BYTES];
        match self.s.read(&mut tmp) {
            Ok(0) => bail!("connection closed by the server"),
            Ok(n) => self.buf.extend_from_slice(&tmp[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => return Err(e).context("reading"),
        }
        self.take_frame()
    }

    fn take_frame(&mut self) -> anyhow::Result<Option<Body>> {
        loop {
            match gw_proto::decode(&self.buf, wire::FRAME_BYTES_MAX)
                .map_err(|e| anyhow::anyhow!("bad frame from the server: {e}"))?
            {
                Decoded::Frame(f, used) => {
                    self.buf.drain(..used);
                    if let Some(b) = f.body {
                        return Ok(Some(b));
                    }
                }
                Decoded::Incomplete(_) => return Ok(None),
            }
        }
    }

    /// Reads until `stop` is set, `on` returns false, or the server closes.
    /// `on` gets every push with its arrival time (`mono_ns`); each
    /// ack-required push is acked at once, one Ack per push, the Acks of
    /// one read leaving in one write.
    pub fn serve(
        &mut self,
        stop: &AtomicBool,
        on: &mut dyn FnMut(&Push, u64) -> bool,
    ) -> anyhow::Result<Ended> {
        let mut tmp = vec![0u8; READ_BYTES];
        let mut acks = Vec::new();
        let mut goaway = None;
        loop {
            if stop.load(Ordering::Relaxed) {
                return Ok(Ended::Done);
            }
            if self.last_ping.elapsed() >= PING_EVERY {
                self.s
                    .write_all(&wire::ping_frame())
                    .context("writing a Ping")?;
                self.last_ping = Instant::now();
            }
            let n = match self.s.read(&mut tmp) {
                Ok(0) => return Ok(Ended::Closed(goaway)),
                Ok(n) => n,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    continue
                }
                Err(e) if e.kind() == ErrorKind::ConnectionReset => {
                    return Ok(Ended::Closed(goaway))
                }
                Err(e) => return Err(e).context("reading"),
            };
            let at = mono_ns();
            self.buf.extend_from_slice(&tmp[..n]);
            let mut more = true;
            while let Some(body) = self.take_frame()? {
                match body {
                    Body::Push(p) => {
                        if p.ack_required {
                            acks.extend_from_slice(&wire::ack_frame(p.seq));
                        }
                        more &= on(&p, at);
                    }
                    Body::GoAway(g) => goaway = Some(wire::close_reason_name(g.reason)),
                    _ => {}
                }
            }
            if !acks.is_empty() {
                self.s.write_all(&acks).context("writing Acks")?;
                acks.clear();
            }
            if !more {
                return Ok(Ended::Done);
            }
        }
    }
}

/// Reads the decimal number at the start of a probe payload (`<n>` or `<n>:...`).
pub fn payload_index(payload: &[u8]) -> Option<u64> {
    let end = payload
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(payload.len());
    std::str::from_utf8(&payload[..end]).ok()?.parse().ok()
}

/// What the answer to a push sent as a request said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// A gateway placed it (header `Gw-Delivered`).
    Taken,
    /// Nobody subscribed to the subject (NATS status 503).
    NoResponders,
    /// Anything else.
    Other,
}

/// Classifies a reply to a push request.
pub fn answer(m: &async_nats::Message) -> Answer {
    if m.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
        return Answer::NoResponders;
    }
    match &m.headers {
        Some(h) if h.get("Gw-Delivered").is_some() => Answer::Taken,
        _ => Answer::Other,
    }
}

/// Headers of a push: `Gw-Route`, and `Gw-Ack: 1` when ack-required.
pub fn push_headers(route: &str, ack: bool) -> async_nats::HeaderMap {
    let mut h = async_nats::HeaderMap::new();
    h.insert("Gw-Route", route);
    if ack {
        h.insert("Gw-Ack", "1");
    }
    h
}

/// Waits until a gateway holding `user` answers a (not ack-required)
/// warm-up push sent through `client`'s server: the user's subscription
/// has reached that server over the cluster's routes.
pub async fn reachable(
    client: &async_nats::Client,
    prefix: &str,
    user: &str,
    within: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    let subject = format!("{prefix}.user.{user}");
    loop {
        let r = client
            .request_with_headers(
                subject.clone(),
                push_headers(WARMUP_ROUTE, false),
                Bytes::new(),
            )
            .await;
        if let Ok(m) = &r {
            if answer(m) == Answer::Taken {
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            bail!("{user} is not reachable through NATS after {within:?}: last answer {r:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Percentile `q` (0..=1) of sorted `v`, nearest rank.
pub fn percentile(v: &[f64], q: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let i = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
    Some(v[i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_index_reads_the_leading_number() {
        assert_eq!(payload_index(b"123"), Some(123));
        assert_eq!(payload_index(b"7:999"), Some(7));
        assert_eq!(payload_index(b"x7"), None);
        assert_eq!(payload_index(b""), None);
    }

    #[test]
    fn percentile_nearest_rank() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile(&v, 0.5), Some(2.0));
        assert_eq!(percentile(&v, 1.0), Some(4.0));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&[], 0.5), None);
    }
}
