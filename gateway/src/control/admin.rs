//! Admin HTTP on the control plane (loopback by default): `GET /metrics`
//! (Prometheus text), `/healthz` (200 "ok", 503 while draining or when a
//! core does not answer), `/stats` (JSON), `/connz` (connections, filtered);
//! `POST /drain`, `/kick`, `/tls/reload`. With `admin_token_env` set, every
//! endpoint but /healthz needs `Authorization: Bearer <token>`. A
//! deliberately tiny HTTP/1.1 server: one request per connection, bounded
//! head and time.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{collect, Shared};
use crate::backend::SessionOp;
use crate::conn::http::Request;
use crate::core::connz::{ConnzQuery, Sort, CONNZ_LIMIT_DEFAULT, CONNZ_LIMIT_MAX};
use crate::core::CoreMsg;
use crate::metrics;

/// Largest request head read, bytes.
const HEAD_BYTES_MAX: usize = 8 * 1024;
/// Time a client gets to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a core gets to answer a snapshot request.
const CORE_TIMEOUT: Duration = Duration::from_secs(2);
/// Admin requests served at once; more wait in the backlog.
const CONCURRENT_MAX: usize = 64;

pub(super) async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    let permits = Arc::new(tokio::sync::Semaphore::new(CONCURRENT_MAX));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let (sock, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(REQUEST_TIMEOUT * 2, handle(sock, &shared)).await;
            drop(permit);
        });
    }
}

async fn handle(mut sock: tokio::net::TcpStream, shared: &Shared) -> std::io::Result<()> {
    let mut buf = vec![0u8; HEAD_BYTES_MAX];
    let mut len = 0;
    let end = loop {
        if let Some(p) = buf[..len].windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        if len == buf.len() {
            return respond(&mut sock, 431, "text/plain", "request head too large\n").await;
        }
        let n = match tokio::time::timeout(REQUEST_TIMEOUT, sock.read(&mut buf[len..])).await {
            Ok(Ok(0)) | Err(_) => return Ok(()),
            Ok(r) => r?,
        };
        len += n;
    };
    let req = match Request::parse(&buf[..end]) {
        Ok(r) => r,
        Err(why) => return respond(&mut sock, 400, "text/plain", &format!("{why}\n")).await,
    };
    if !matches!(req.path, "/healthz" | "/readyz") && !authorized(shared, &req) {
        return respond(
            &mut sock,
            401,
            "text/plain",
            "admin token required: Authorization: Bearer <token from admin_token_env>\n",
        )
        .await;
    }
    let (status, ctype, body) = route(shared, &req).await;
    let res = respond(&mut sock, status, ctype, &body).await;
    if body.len() > GIVE_BACK_AFTER_BYTES {
        drop(body);
        crate::heap::give_back();
    }
    res
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
            | "/tls/reload",
        ) => text(405, format!("{ENDPOINTS}\n")),
        _ => text(404, format!("not found: {ENDPOINTS}\n")),
    }
}

/// What the admin server answers.
const ENDPOINTS: &str =
    "GET /metrics /healthz /readyz /stats /connz; POST /drain /kick /tls/reload";

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
        return Err(format!("limit must be within 1..={CONNZ_LIMIT_MAX}"));
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
