//! Connection inspection for the admin `/connz` endpoint, in the spirit of
//! nats-server's: each core filters its own connections and returns the
//! first `limit` by the requested order; the control plane merges them.
//! Nothing is kept for it: it reads what connections already hold.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;

use serde::Serialize;

use super::wheel::Tick;
use super::{Conn, Core};

/// Largest `limit` a query may ask for, connections.
pub const CONNZ_LIMIT_MAX: usize = 10_000;
/// `limit` when the query gives none, connections (as nats-server).
pub const CONNZ_LIMIT_DEFAULT: usize = 1024;

/// How to order the connections listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sort {
    /// Oldest first.
    #[default]
    Age,
    /// Longest without inbound bytes first.
    Idle,
    BytesIn,
    BytesOut,
    /// Most ack-required pushes awaiting an ack first.
    Unacked,
    /// Most bytes queued for the socket first.
    Queued,
}

impl Sort {
    pub fn parse(s: &str) -> Option<Sort> {
        Some(match s {
            "age" => Sort::Age,
            "idle" => Sort::Idle,
            "bytes_in" => Sort::BytesIn,
            "bytes_out" => Sort::BytesOut,
            "unacked" => Sort::Unacked,
            "queued" => Sort::Queued,
            _ => return None,
        })
    }
}

/// Filters of a `/connz` query; unset fields match everything.
#[derive(Debug, Clone, Default)]
pub struct ConnzQuery {
    pub user: Option<String>,
    pub device: Option<String>,
    pub conn_id: Option<u64>,
    /// "tcp", "tls", "ws" or "wss".
    pub transport: Option<String>,
    pub authed: Option<bool>,
    pub age_ms_min: Option<u64>,
    pub idle_ms_min: Option<u64>,
    pub sort: Sort,
    pub limit: usize,
}

/// One connection as `/connz` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ConnInfo {
    pub conn_id: u64,
    pub core: usize,
    pub user: Option<String>,
    pub device: Option<String>,
    pub transport: &'static str,
    pub remote: Option<String>,
    pub age_ms: u64,
    /// Since the last whole inbound frame (or WebSocket frame): what the
    /// idle reaper measures.
    pub idle_ms: u64,
    pub bytes_in: u32,
    pub bytes_out: u32,
    /// Bytes queued for the socket, not yet written.
    pub queued_bytes: u32,
    /// Ack-required pushes awaiting an ack.
    pub unacked: usize,
    /// Upstream requests awaiting a backend.
    pub inflight: u32,
    pub heartbeat_ms: u32,
    pub rooms: Vec<String>,
    pub resume_seq: u64,
    /// The close reason, while the connection is being closed.
    pub closing: Option<&'static str>,
}

/// One core's answer.
#[derive(Debug, Default)]
pub struct ConnzPart {
    /// Connections that matched, before `limit`.
    pub matched: usize,
    pub conns: Vec<ConnInfo>,
}

fn transport(c: &Conn) -> &'static str {
    let tls = c.extra.as_ref().is_some_and(|e| e.tls.is_some());
    match (tls, c.ws_active()) {
        (false, false) => "tcp",
        (true, false) => "tls",
        (false, true) => "ws",
        (true, true) => "wss",
    }
}

fn peer(fd: i32) -> Option<SocketAddr> {
    // SAFETY: getpeername writes at most `len` bytes into the storage that
    // socket2 provides; fd is the connection's open socket.
    let (_, addr) = unsafe {
        socket2::SockAddr::try_init(|storage, len| {
            if libc::getpeername(fd, storage.cast(), len) == -1 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(())
            }
        })
    }
    .ok()?;
    addr.as_socket()
}

fn key(sort: Sort, c: &ConnInfo) -> u64 {
    match sort {
        Sort::Age => c.age_ms,
        Sort::Idle => c.idle_ms,
        Sort::BytesIn => c.bytes_in as u64,
        Sort::BytesOut => c.bytes_out as u64,
        Sort::Unacked => c.unacked as u64,
        Sort::Queued => c.queued_bytes as u64,
    }
}

/// Orders `conns` by `sort`, largest first (ties by connection id), and
/// keeps `limit` (merging the cores' parts).
pub fn sort_and_cut(conns: &mut Vec<ConnInfo>, sort: Sort, limit: usize) {
    conns.sort_by(|a, b| {
        key(sort, b)
            .cmp(&key(sort, a))
            .then(a.conn_id.cmp(&b.conn_id))
    });
    conns.truncate(limit);
}

impl Core {
    /// This core's connections matching `q`, the first `q.limit` of them.
    /// Matching costs no allocation per connection: only the `limit` best
    /// are kept (a bounded heap) and described.
    pub fn connz(&self, q: &ConnzQuery) -> ConnzPart {
        let now = self.now();
        let tick_ms = self.cfg().tick_ms as u64;
        let st = self.state.borrow();
        let mut matched = 0;
        // Min-heap of the best `limit`: (sort key, smaller id first, slab index).
        let mut best: BinaryHeap<Reverse<(u64, Reverse<u64>, usize)>> = BinaryHeap::new();
        for (i, c) in st.conns.iter() {
            let info = |c: &Conn| describe(self, c, now, tick_ms, false);
            let d = info(c);
            let matches = q
                .user
                .as_deref()
                .is_none_or(|u| c.user.as_deref() == Some(u))
                && q.device
                    .as_deref()
                    .is_none_or(|dv| c.device.as_deref() == Some(dv))
                && q.conn_id.is_none_or(|id| id == c.id)
                && q.transport.as_deref().is_none_or(|t| t == d.transport)
                && q.authed.is_none_or(|a| a == c.authed())
                && q.age_ms_min.is_none_or(|m| d.age_ms >= m)
                && q.idle_ms_min.is_none_or(|m| d.idle_ms >= m);
            if !matches {
                continue;
            }
            matched += 1;
            best.push(Reverse((key(q.sort, &d), Reverse(c.id), i)));
            if best.len() > q.limit {
                best.pop();
            }
        }
        let mut conns: Vec<ConnInfo> = best
            .into_iter()
            .filter_map(|Reverse((_, _, i))| st.conns.get(i))
            .map(|c| describe(self, c, now, tick_ms, true))
            .collect();
        sort_and_cut(&mut conns, q.sort, q.limit);
        ConnzPart { matched, conns }
    }
}

/// A connection's description; `full` adds the names, rooms and peer
/// address (allocations and a syscall), only for the connections listed.
fn describe(core: &Core, c: &Conn, now: Tick, tick_ms: u64, full: bool) -> ConnInfo {
    ConnInfo {
        conn_id: c.id,
        core: core.index,
        user: full
            .then(|| c.user.as_deref().map(str::to_string))
            .flatten(),
        device: full
            .then(|| c.device.as_deref().map(str::to_string))
            .flatten(),
        transport: transport(c),
        remote: full.then(|| peer(c.fd).map(|a| a.to_string())).flatten(),
        age_ms: now.saturating_sub(c.created) as u64 * tick_ms,
        idle_ms: now.saturating_sub(c.last_in) as u64 * tick_ms,
        bytes_in: c.bytes_in,
        bytes_out: c.bytes_out,
        queued_bytes: c.out_bytes,
        unacked: c.window.len(),
        inflight: c.inflight.into(),
        heartbeat_ms: c.heartbeat_ms,
        rooms: if full {
            c.rooms().iter().map(|r| r.to_string()).collect()
        } else {
            Vec::new()
        },
        resume_seq: c.extra.as_ref().map_or(0, |e| e.resume_seq),
        closing: c.close.map(|r| {
            r.as_str_name()
                .strip_prefix("CLOSE_REASON_")
                .unwrap_or("UNSPECIFIED")
        }),
    }
}
