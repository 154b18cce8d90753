//! Demo mode only (`--demo`, off by default): the demo page, the JavaScript
//! client library and a token endpoint, served over plain HTTP/1.1 (or
//! HTTPS with TLS) on the client port next to the WebSocket path, so a
//! browser loads the page and opens `ws://host:port/ws` from one origin.
//!
//! - `GET /` : the demo page (`clients/js/demo.html`);
//! - `GET /gateway-client.js` : the client library (`clients/js/`);
//! - `GET /favicon.ico` : the page's icon, a small SVG (`clients/js/favicon.svg`);
//! - `GET /demo/token?user=alice[&device=web1]` : a token signed with the
//!   public demo key, `{"token":..,"user_id":..,"device_id":..,"expires_at_unix_s":..}`.
//!
//! Other paths and methods fall through to the WebSocket layer (404, 400).
//! The token endpoint exposes nothing new: in demo mode the demo key is
//! public and anyone can mint such a token (`gateway token`). Every answer
//! closes its connection (counted as HTTP_ANSWERED).

use crate::config::{DEMO_KID, DEMO_SECRET};
use crate::wire::http::{response, Request};

const PAGE: &str = include_str!("../../../clients/js/demo.html");
const CLIENT_JS: &str = include_str!("../../../clients/js/gateway-client.js");
const ICON: &[u8] = include_bytes!("../../../clients/js/favicon.svg");
/// Lifetime of a demo token, seconds.
pub const DEMO_TOKEN_TTL_S: u64 = 3600;
/// Longest user or device name the token endpoint accepts, bytes.
const NAME_BYTES_MAX: usize = 64;

/// The whole HTTP response to a GET of one of the demo paths; None for any
/// other request (the WebSocket layer answers it: 404, 400).
pub fn answer(req: &Request, now_unix_s: u64) -> Option<Vec<u8>> {
    if req.method != "GET" {
        return None;
    }
    Some(match req.path {
        "/" => response("200 OK", "text/html; charset=utf-8", PAGE.as_bytes()),
        "/gateway-client.js" => response(
            "200 OK",
            "text/javascript; charset=utf-8",
            CLIENT_JS.as_bytes(),
        ),
        "/favicon.ico" => response("200 OK", "image/svg+xml", ICON),
        "/demo/token" => token(req, now_unix_s),
        _ => return None,
    })
}

fn valid_name(s: &str) -> bool {
    (1..=NAME_BYTES_MAX).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

fn token(req: &Request, now_unix_s: u64) -> Vec<u8> {
    let json = "application/json";
    let user = req.param("user").unwrap_or_default();
    let device = req.param("device").filter(|d| !d.is_empty());
    if !valid_name(&user) || !device.as_deref().is_none_or(valid_name) {
        let e = serde_json::json!({"error": format!(
            "user (and device, if given) must be 1 to {NAME_BYTES_MAX} characters of A-Z a-z 0-9 _ - ."
        )});
        return response("400 Bad Request", json, e.to_string().as_bytes());
    }
    let claims = crate::auth::claims(&user, device.as_deref(), now_unix_s, DEMO_TOKEN_TTL_S);
    let token = crate::auth::sign_hs256(DEMO_SECRET.as_bytes(), Some(DEMO_KID), &claims);
    let body = serde_json::json!({
        "token": token,
        "user_id": user,
        "device_id": device,
        "expires_at_unix_s": now_unix_s + DEMO_TOKEN_TTL_S,
    });
    response("200 OK", json, body.to_string().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(target: &str) -> String {
        let head = format!("GET {target} HTTP/1.1\r\nHost: x");
        let req = Request::parse(head.as_bytes()).unwrap();
        answer(&req, 1_000).map_or(String::new(), |r| String::from_utf8(r).unwrap())
    }

    #[test]
    fn serves_page_library_and_tokens() {
        assert!(get("/").starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(get("/").contains("text/html"));
        assert!(get("/gateway-client.js").contains("text/javascript"));
        let icon = get("/favicon.ico");
        assert!(icon.starts_with("HTTP/1.1 200 OK\r\n"), "{icon}");
        assert!(icon.contains("image/svg+xml") && icon.ends_with("</svg>"));
        let t = get("/demo/token?user=alice&device=web1");
        assert!(t.starts_with("HTTP/1.1 200 OK\r\n"), "{t}");
        let body: serde_json::Value =
            serde_json::from_str(t.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert_eq!(body["user_id"], "alice");
        assert_eq!(body["expires_at_unix_s"], 1_000 + DEMO_TOKEN_TTL_S);
        let cfg = crate::config::Config {
            demo: true,
            ..Default::default()
        };
        let keys = crate::server::build_verifier(&cfg).unwrap();
        let c = keys.verify(body["token"].as_str().unwrap(), 1_001).unwrap();
        assert_eq!(
            (c.sub.as_str(), c.device_id.as_deref()),
            ("alice", Some("web1"))
        );
    }

    #[test]
    fn refuses_bad_names_and_other_paths() {
        for bad in [
            "/demo/token",
            "/demo/token?user=",
            "/demo/token?user=a%20b",
            "/demo/token?user=a&device=%2F",
        ] {
            assert!(get(bad).starts_with("HTTP/1.1 400 "), "{bad}");
        }
        let long = format!("/demo/token?user={}", "a".repeat(NAME_BYTES_MAX + 1));
        assert!(get(&long).starts_with("HTTP/1.1 400 "));
        // Plain words for people, not Rust range syntax.
        assert!(get(&long).contains("1 to 64 characters"));
        assert_eq!(get("/etc/passwd"), "");
        let post = Request::parse(b"POST / HTTP/1.1").unwrap();
        assert!(answer(&post, 0).is_none());
    }
}
