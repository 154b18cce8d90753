//! Admin HTTP on the control plane (loopback by default): `GET /metrics`
//! (Prometheus text), `/healthz` (200 "ok", 503 while draining or when a
//! core does not answer), `/stats` (JSON), `/connz` (connections, filtered);
//! `POST /drain`, `/kick`, `/tls/reload`. With `admin_token_env` set, every
//! endpoint but /healthz and /readyz needs `Authorization: Bearer <token>`.
//! A deliberately tiny HTTP/1.1 server: one request per connection; the
//! head is bounded in size (8 KiB) and time (2 s), the token is checked
//! before anything is done, and at most 256 connections are open, the
//! slowest head evicted for a new one, so slow clients cannot starve a
//! liveness probe.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{collect, Shared};
use crate::backend::SessionOp;
use crate::core::connz::{ConnzQuery, Sort, CONNZ_LIMIT_DEFAULT, CONNZ_LIMIT_MAX};
use crate::core::CoreMsg;
use crate::metrics;
use crate::wire::http::Request;

/// Largest request head read, bytes.
const HEAD_BYTES_MAX: usize = 8 * 1024;
/// Time a client gets to send its whole request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(2);
/// Time to answer a request once its head is in.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a core gets to answer a snapshot request.
const CORE_TIMEOUT: Duration = Duration::from_secs(2);
/// Admin connections open at once. At the cap a new connection evicts the
/// one that has been sending its head the longest: a slowloris holding
/// every slot loses one per new connection, so a probe (`/healthz` every
/// few seconds) always gets through.
const CONNS_MAX: usize = 256;

/// Connections still sending their request head, oldest first.
#[derive(Default)]
struct Reading {
    next: u64,
    heads: std::collections::VecDeque<(u64, tokio::task::AbortHandle)>,
}

/// Counts an admin connection while its task lives (also when aborted).
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

pub(super) async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    let open = Arc::new(AtomicUsize::new(0));
    let reading = Arc::new(Mutex::new(Reading::default()));
    loop {
        let (sock, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed (out of files?); retrying in 100 ms");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if open.load(Ordering::SeqCst) >= CONNS_MAX {
            // Evict the slowest head; its task's slot frees on abort.
            let oldest = lock(&reading).heads.pop_front();
            match oldest {
                Some((_, abort)) => abort.abort(),
                None => continue, // every slot is answering: drop this one
            }
        }
        open.fetch_add(1, Ordering::SeqCst);
        let slot = Slot(open.clone());
        let (shared, reading2) = (shared.clone(), reading.clone());
        let mut r = lock(&reading);
        let id = r.next;
        r.next += 1;
        let task = tokio::spawn(async move {
            let _slot = slot;
            let _ = handle(sock, &shared, &reading2, id).await;
        });
        // Before the task runs (this runtime has one thread): it finds its
        // entry to remove once its head is in.
        r.heads.push_back((id, task.abort_handle()));
    }
}

fn lock(r: &Mutex<Reading>) -> std::sync::MutexGuard<'_, Reading> {
    r.lock().unwrap_or_else(|e| e.into_inner())
}

async fn handle(
    mut sock: tokio::net::TcpStream,
    shared: &Shared,
    reading: &Mutex<Reading>,
    id: u64,
) -> std::io::Result<()> {
    let head = tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut sock)).await;
    {
        let mut r = lock(reading);
        if let Some(p) = r.heads.iter().position(|(i, _)| *i == id) {
            r.heads.remove(p);
        }
    }
    let buf = match head {
        Err(_) | Ok(Ok(None)) => return Ok(()), // too slow, or closed: nothing to answer
        Ok(Err(e)) => return Err(e),
        Ok(Ok(Some(Err(())))) => {
            return respond(&mut sock, 431, "text/plain", "request head too large\n").await
        }
        Ok(Ok(Some(Ok(buf)))) => buf,
    };
    let req = match Request::parse(&buf) {
        Ok(r) => r,
        Err(why) => return respond(&mut sock, 400, "text/plain", &format!("{why}\n")).await,
    };
    // The token before anything else: nothing is done for a request without it.
    if !matches!(req.path, "/healthz" | "/readyz") && !authorized(shared, &req) {
        return respond(
            &mut sock,
            401,
            "text/plain",
            "admin token required: Authorization: Bearer <token from admin_token_env>\n",
        )
        .await;
    }
    let answered = tokio::time::timeout(ANSWER_TIMEOUT, async {
        let (status, ctype, body) = route(shared, &req).await;
        let res = respond(&mut sock, status, ctype, &body).await;
        if body.len() > GIVE_BACK_AFTER_BYTES {
            drop(body);
            crate::heap::give_back();
        }
        res
    })
    .await;
    answered.unwrap_or(Ok(()))
}

/// Reads a request head (up to the blank line). None: the peer closed
/// first; Some(Err): over `HEAD_BYTES_MAX`.
async fn read_head(
    sock: &mut tokio::net::TcpStream,
) -> std::io::Result<Option<Result<Vec<u8>, ()>>> {
    let mut buf = vec![0u8; HEAD_BYTES_MAX];
    let mut len = 0;
    loop {
        if let Some(p) = buf[..len].windows(4).position(|w| w == b"\r\n\r\n") {
            buf.truncate(p);
            return Ok(Some(Ok(buf)));
        }
        if len == buf.len() {
            return Ok(Some(Err(())));
        }
        match sock.read(&mut buf[len..]).await? {
            0 => return Ok(None),
            n => len += n,
        }
    }
}

/// After an answer this big (a `/connz` of thousands), the control thread
/// hands the memory it used back to the OS at once: its allocator would
/// otherwise keep it until this mostly idle thread allocates again.
const GIVE_BACK_AFTER_BYTES: usize = 64 * 1024;

/// Whether the request carries the admin token (or none is configured).
fn authorized(shared: &Shared, req: &Request) -> bool {
    let Some(want) = &shared.admin_token else {
        return true;
    };
    // The scheme name is case-insensitive (RFC 9110 §11.1).
    let got = req
        .header("authorization")
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map_or("", |(_, t)| t.trim());
    // Constant time in the token's length.
    got.len() == want.len()
        && got
            .bytes()
            .zip(want.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

type Answer = (u16, &'static str, String);

fn text(status: u16, body: impl Into<String>) -> Answer {
    (status, "text/plain", body.into())
}

fn json(status: u16, v: impl serde::Serialize) -> Answer {
    match serde_json::to_string(&v) {
        Ok(body) => (status, "application/json", body),
        Err(e) => text(500, format!("encoding the answer: {e}\n")),
    }
}

async fn route(shared: &Shared, req: &Request<'_>) -> Answer {
    let draining = shared.draining.load(Ordering::SeqCst);
    match (req.method, req.path) {
        ("POST", "/tls/reload") => match super::reload_tls(shared) {
            Ok(()) => text(200, "TLS certificate reloaded\n"),
            Err(e) => text(500, format!("{e}\n")),
        },
        ("POST", "/reload") => match super::reload(shared) {
            Ok(summary) => text(200, format!("reloaded: {summary}\n")),
            Err(e) => text(
                500,
                format!("reload failed, the running configuration stays: {e}\n"),
            ),
        },
        ("POST", "/drain") => {
            if super::start_drain(shared, false).await {
                text(202, "draining: GoAways go out over drain_spread_ms, the process exits when empty or at drain_deadline_ms\n")
            } else {
                text(200, "already draining\n")
            }
        }
        ("POST", "/kick") => kick(shared, req).await,
        ("GET", "/metrics") => {
            let snaps = collect(&shared.mesh, CORE_TIMEOUT).await;
            let mut text = metrics::render_prometheus(&snaps, draining);
            let ready = super::not_ready(shared, snaps.len()).is_none();
            metrics::render_gauge(
                &mut text,
                "gateway_ready",
                "1 when the node is ready for clients (GET /readyz answers 200)",
                [(String::new(), u64::from(ready))],
            );
            if let Some(n) = shared.nats.get() {
                n.render(&mut text);
            }
            // /proc/self/fd holds an entry per connection: read off this
            // thread, which also carries NATS.
            match tokio::task::spawn_blocking(metrics::process::Process::read).await {
                Ok(p) => p.render(&mut text),
                Err(e) => tracing::warn!(error = %e, "reading the process metrics failed"),
            }
            if let Some(h) = shared.nats_health.get() {
                let each = |f: fn(&crate::nats::CoreHealth) -> bool| {
                    h.iter()
                        .enumerate()
                        .map(move |(i, c)| (format!("core=\"{i}\""), u64::from(f(c))))
                };
                metrics::render_gauge(
                    &mut text,
                    "gateway_nats_subscriptions_up",
                    "1 when the core's NATS subscription connection is up with every subscription in place",
                    each(crate::nats::CoreHealth::subscriptions_up),
                );
                metrics::render_gauge(
                    &mut text,
                    "gateway_nats_requests_up",
                    "1 when the core's NATS request connection is up",
                    each(crate::nats::CoreHealth::requests_up),
                );
            }
            (200, "text/plain; version=0.0.4", text)
        }
        ("GET", "/healthz") => {
            // Liveness: the process runs and every core answers. Draining
            // or cut off from NATS is still alive (see /readyz).
            let snaps = collect(&shared.mesh, CORE_TIMEOUT).await;
            if snaps.len() < shared.mesh.len() {
                text(503, "a core did not answer\n")
            } else {
                text(200, "ok\n")
            }
        }
        ("GET", "/readyz") => {
            // Readiness: send clients here (load balancers, systemd).
            let snaps = collect(&shared.mesh, CORE_TIMEOUT).await;
            match super::not_ready(shared, snaps.len()) {
                Some(why) => text(503, format!("not ready: {why}\n")),
                None => text(200, "ready\n"),
            }
        }
        ("GET", "/stats") => {
            let snaps = collect(&shared.mesh, CORE_TIMEOUT).await;
            let total = metrics::total(&snaps);
            json(
                200,
                serde_json::json!({
                    "node_id": shared.node_id,
                    "version": crate::VERSION,
                    "revision": crate::REVISION,
                    "draining": draining,
                    "ready": super::not_ready(shared, snaps.len()).is_none(),
                    "connections": total.connections,
                    "sessions": total.sessions,
                    "counters": total.counters,
                    "closes": closes_by_reason(&total),
                    "memory": {
                        "heap_allocated_bytes": crate::heap::allocated_bytes(),
                        "resident_bytes": crate::heap::resident_bytes(),
                    },
                    "cores": snaps,
                }),
            )
        }
        ("GET", "/connz") => match connz_query(req) {
            Ok(q) => json(200, super::connz::connz(shared, q, CORE_TIMEOUT).await),
            Err(e) => text(400, format!("{e}\n")),
        },
        (
            _,
            "/metrics" | "/healthz" | "/readyz" | "/stats" | "/connz" | "/drain" | "/kick"
            | "/reload" | "/tls/reload",
        ) => text(405, format!("{ENDPOINTS}\n")),
        _ => text(404, format!("not found: {ENDPOINTS}\n")),
    }
}

/// What the admin server answers.
const ENDPOINTS: &str =
    "GET /metrics /healthz /readyz /stats /connz; POST /drain /kick /reload /tls/reload";

/// Closes by reason over all cores, by name.
pub(super) fn closes_by_reason(
    total: &metrics::Snapshot,
) -> serde_json::Map<String, serde_json::Value> {
    (1..metrics::CLOSE_REASONS)
        .map(|i| (metrics::close_label(i).to_string(), total.closes[i].into()))
        .collect()
}

/// `/connz` query parameters.
fn connz_query(req: &Request) -> Result<ConnzQuery, String> {
    fn num(req: &Request, name: &str) -> Result<Option<u64>, String> {
        req.param(name)
            .map(|v| {
                v.parse()
                    .map_err(|_| format!("{name} must be a number, not {v:?}"))
            })
            .transpose()
    }
    let transport = req.param("transport");
    if let Some(t) = &transport {
        if !["tcp", "tls", "ws", "wss"].contains(&t.as_str()) {
            return Err(format!("transport must be tcp, tls, ws or wss, not {t:?}"));
        }
    }
    let authed = match req.param("authed").as_deref() {
        None => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(v) => return Err(format!("authed must be true or false, not {v:?}")),
    };
    let sort = match req.param("sort") {
        None => Sort::Age,
        Some(s) => Sort::parse(&s).ok_or_else(|| {
            format!("sort must be age, idle, bytes_in, bytes_out, unacked or queued, not {s:?}")
        })?,
    };
    let limit = num(req, "limit")?.map_or(CONNZ_LIMIT_DEFAULT, |l| l as usize);
    if limit == 0 || limit > CONNZ_LIMIT_MAX {
        return Err(format!("limit must be from 1 to {CONNZ_LIMIT_MAX}"));
    }
    Ok(ConnzQuery {
        user: req.param("user"),
        device: req.param("device"),
        conn_id: num(req, "conn")?,
        transport,
        authed,
        age_ms_min: num(req, "age_ms_min")?,
        idle_ms_min: num(req, "idle_ms_min")?,
        sort,
        limit,
    })
}

/// `POST /kick?user=U` or `POST /kick?conn=ID`, with an optional `message`
/// for the GoAway(KICKED). Answers how many connections matched.
async fn kick(shared: &Shared, req: &Request<'_>) -> Answer {
    let message = req.param("message").unwrap_or_default();
    let (op, q) = match (req.param("user"), req.param("conn")) {
        (Some(user), None) if !user.is_empty() => (
            SessionOp::KickUser {
                user: user.clone(),
                message,
            },
            ConnzQuery {
                user: Some(user),
                authed: Some(true),
                limit: 1,
                ..Default::default()
            },
        ),
        (None, Some(id)) => match id.parse::<u64>() {
            Ok(conn_id) => (
                SessionOp::KickConn { conn_id, message },
                ConnzQuery {
                    conn_id: Some(conn_id),
                    authed: Some(true),
                    limit: 1,
                    ..Default::default()
                },
            ),
            Err(_) => return text(400, format!("conn must be a connection id, not {id:?}\n")),
        },
        _ => {
            return text(
                400,
                "give exactly one of user=<user id> or conn=<connection id>\n",
            )
        }
    };
    let matched = super::connz::connz(shared, q, CORE_TIMEOUT).await.matched;
    let cores: Vec<usize> = match &op {
        SessionOp::KickConn { conn_id, .. } => vec![crate::core::conn_id_core(*conn_id)],
        _ => (0..shared.mesh.len()).collect(),
    };
    for core in cores {
        let Some(tx) = shared.mesh.get(core) else {
            continue; // an id from no core of this node: matched is 0
        };
        if tx.send_async(CoreMsg::Op(op.clone())).await.is_err() {
            return text(503, "a core is not running\n");
        }
    }
    json(200, serde_json::json!({ "kicked": matched }))
}

async fn respond(
    sock: &mut tokio::net::TcpStream,
    status: u16,
    ctype: &str,
    body: &str,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        500 => "Internal Server Error",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    sock.write_all(head.as_bytes()).await?;
    sock.write_all(body.as_bytes()).await?;
    sock.shutdown().await
}
