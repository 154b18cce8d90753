//! What the bench tools ask the gateway's admin HTTP server (its
//! `--admin-listen` address): the gateway's version, for the reports.
//! A blocking HTTP/1.1 GET, one request per connection (as the admin
//! server answers), with short timeouts: a report never waits long for it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Connect, write and read timeout of one admin request.
const TIMEOUT: Duration = Duration::from_secs(3);
/// Largest answer read, bytes (`/stats` of a many-core node is far smaller).
const ANSWER_BYTES_MAX: u64 = 8 << 20;

/// The running gateway's version and git revision, as its admin endpoint
/// reports them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GatewayVersion {
    pub version: Option<String>,
    pub revision: Option<String>,
}

/// GET `path` from the admin server at `addr`: the body of a 200 answer.
pub fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&addr, TIMEOUT)
        .map_err(|e| format!("connecting to the admin address {addr}: {e}"))?;
    let _ = s.set_read_timeout(Some(TIMEOUT));
    let _ = s.set_write_timeout(Some(TIMEOUT));
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n");
    s.write_all(req.as_bytes())
        .map_err(|e| format!("GET {path} on {addr}: {e}"))?;
    let mut raw = Vec::new();
    s.take(ANSWER_BYTES_MAX)
        .read_to_end(&mut raw)
        .map_err(|e| format!("GET {path} on {addr}: {e}"))?;
    body_of(&raw).map_err(|e| format!("GET {path} on {addr}: {e}"))
}

/// The body of a raw HTTP/1.1 answer, when its status is 200.
fn body_of(raw: &[u8]) -> Result<String, String> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or("no complete HTTP answer")?;
    let status = head.lines().next().unwrap_or("");
    let code = status.split_whitespace().nth(1).unwrap_or("");
    if code != "200" {
        return Err(format!("answered {status:?}"));
    }
    let len = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse::<usize>().ok())?
    });
    Ok(match len {
        Some(n) if n <= body.len() => body[..n].to_string(),
        _ => body.to_string(),
    })
}

/// `version` and `revision` of a `/stats` answer (JSON), when present.
pub fn version_from_stats(body: &str) -> GatewayVersion {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    let field = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
    GatewayVersion {
        version: field("version"),
        revision: field("revision"),
    }
}

/// The labels of `gateway_build_info{version="..",revision=".."}` in a
/// Prometheus text answer (`/metrics`), when present.
pub fn version_from_metrics(body: &str) -> GatewayVersion {
    let Some(labels) = body
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix("gateway_build_info{"))
        .and_then(|l| l.split_once('}'))
        .map(|(labels, _)| labels)
    else {
        return GatewayVersion::default();
    };
    let label = |k: &str| {
        labels.split(',').find_map(|kv| {
            let (name, val) = kv.split_once('=')?;
            (name.trim() == k).then(|| val.trim().trim_matches('"').to_string())
        })
    };
    GatewayVersion {
        version: label("version"),
        revision: label("revision"),
    }
}

/// The gateway's version from GET /stats, else from GET /metrics. Err
/// says why it is unknown (the report then carries null: never a guess).
pub fn gateway_version(addr: SocketAddr, token: Option<&str>) -> Result<GatewayVersion, String> {
    let mut why = Vec::new();
    match get(addr, "/stats", token) {
        Ok(b) => {
            let v = version_from_stats(&b);
            if v.version.is_some() {
                return Ok(v);
            }
            why.push("/stats has no \"version\"".to_string());
        }
        Err(e) => why.push(e),
    }
    match get(addr, "/metrics", token) {
        Ok(b) => {
            let v = version_from_metrics(&b);
            if v.version.is_some() {
                return Ok(v);
            }
            why.push("/metrics has no gateway_build_info".to_string());
        }
        Err(e) => why.push(e),
    }
    Err(why.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_versions() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 39\r\n\r\n{\"version\":\"0.2.0\",\"revision\":\"abc123\"}";
        let body = body_of(raw).unwrap();
        assert_eq!(
            version_from_stats(&body),
            GatewayVersion {
                version: Some("0.2.0".into()),
                revision: Some("abc123".into())
            }
        );
        assert!(body_of(b"HTTP/1.1 401 Unauthorized\r\n\r\nno").is_err());
        assert_eq!(version_from_stats("{\"node_id\":\"gw-1\"}").version, None);
        let m = "# HELP gateway_build_info x\n# TYPE gateway_build_info gauge\n\
                 gateway_build_info{version=\"0.1.0\",revision=\"v0.1-3-gdeadbee\"} 1\n";
        assert_eq!(
            version_from_metrics(m),
            GatewayVersion {
                version: Some("0.1.0".into()),
                revision: Some("v0.1-3-gdeadbee".into())
            }
        );
        assert_eq!(version_from_metrics("gateway_up 1\n").version, None);
    }
}
