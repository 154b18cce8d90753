//! Admin HTTP on the control plane (loopback by default): `/metrics`
//! (Prometheus text), `/healthz` (200 "ok", 503 while draining or when a
//! core does not answer), `/stats` (JSON). A deliberately tiny HTTP/1.1
//! server: GET only, one request per connection, bounded head and time.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{collect, Shared};
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
    while !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
        if len == buf.len() {
            return respond(&mut sock, 431, "text/plain", "request head too large\n").await;
        }
        let n = match tokio::time::timeout(REQUEST_TIMEOUT, sock.read(&mut buf[len..])).await {
            Ok(Ok(0)) | Err(_) => return Ok(()),
            Ok(r) => r?,
        };
        len += n;
    }
    let head = String::from_utf8_lossy(&buf[..len]);
    let mut parts = head.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    if method == "POST" && path == "/tls/reload" {
        return match super::reload_tls(shared) {
            Ok(()) => respond(&mut sock, 200, "text/plain", "TLS certificate reloaded\n").await,
            Err(e) => respond(&mut sock, 500, "text/plain", &format!("{e}\n")).await,
        };
    }
    if method != "GET" {
        return respond(
            &mut sock,
            405,
            "text/plain",
            "only GET is served (and POST /tls/reload)\n",
        )
        .await;
    }
    let draining = shared.draining.load(Ordering::SeqCst);
    match path {
        "/metrics" => {
            let snaps = collect(&shared.mesh, CORE_TIMEOUT).await;
            let mut text = metrics::render_prometheus(&snaps, draining);
            if let Some(n) = shared.nats.get() {
                n.render(&mut text);
            }
            respond(&mut sock, 200, "text/plain; version=0.0.4", &text).await
        }
        "/healthz" => {
            let snaps = collect(&shared.mesh, CORE_TIMEOUT).await;
            if draining {
                respond(&mut sock, 503, "text/plain", "draining\n").await
            } else if snaps.len() < shared.mesh.len() {
                respond(&mut sock, 503, "text/plain", "a core did not answer\n").await
            } else {
                respond(&mut sock, 200, "text/plain", "ok\n").await
            }
        }
        "/stats" => {
            let snaps = collect(&shared.mesh, CORE_TIMEOUT).await;
            let total = metrics::total(&snaps);
            let closes: serde_json::Map<String, serde_json::Value> = (1..metrics::CLOSE_REASONS)
                .map(|i| (metrics::close_label(i).to_string(), total.closes[i].into()))
                .collect();
            let body = serde_json::json!({
                "node_id": shared.node_id,
                "draining": draining,
                "connections": total.connections,
                "sessions": total.sessions,
                "counters": total.counters,
                "closes": closes,
                "cores": snaps,
            });
            respond(&mut sock, 200, "application/json", &body.to_string()).await
        }
        _ => {
            respond(
                &mut sock,
                404,
                "text/plain",
                "not found: try /metrics, /healthz, /stats\n",
            )
            .await
        }
    }
}

async fn respond(
    sock: &mut tokio::net::TcpStream,
    status: u16,
    ctype: &str,
    body: &str,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
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
