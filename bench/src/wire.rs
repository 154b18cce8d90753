//! What the flood client puts on the wire and how it takes frames apart.

use std::io;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use gw_proto::pb::{self, frame::Body, Frame};
use gw_proto::{DecodeError, Decoded, PROTOCOL_VERSION};

/// Largest frame body the client accepts from the server, bytes (the
/// gateway's own ceiling for `frame_bytes_max`).
pub const FRAME_BYTES_MAX: usize = 16 << 20;

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A fresh HS256 token for user `sub`, valid for `ttl_s` seconds.
pub fn token(secret: &[u8], kid: Option<&str>, sub: &str, ttl_s: u64) -> String {
    let now = unix_now();
    let claims = serde_json::json!({"sub": sub, "iat": now, "exp": now + ttl_s});
    gateway::auth::sign_hs256(secret, kid, &claims)
}

/// A length-prefixed `Auth` frame.
pub fn auth_frame(token: String, device_id: &str, heartbeat_ms: u32) -> Bytes {
    gw_proto::encode(&Frame {
        body: Some(Body::Auth(pb::Auth {
            protocol_version: PROTOCOL_VERSION,
            token,
            device_id: device_id.into(),
            resume_seq: 0,
            metadata: Default::default(),
            heartbeat_interval_ms: heartbeat_ms,
        })),
    })
}

/// A length-prefixed `Ping` frame (keeps the current interval).
pub fn ping_frame() -> Bytes {
    gw_proto::encode(&Frame {
        body: Some(Body::Ping(pb::Ping {
            heartbeat_interval_ms: 0,
        })),
    })
}

/// Decodes every whole frame of `partial ++ data`, calling `on_frame` for
/// each; leaves the bytes of an incomplete frame in `partial` (which stays
/// unallocated when reads end on frame boundaries, the usual case).
pub fn feed(
    partial: &mut Vec<u8>,
    data: &[u8],
    on_frame: &mut dyn FnMut(Body),
) -> Result<(), DecodeError> {
    let joined;
    let buf: &[u8] = if partial.is_empty() {
        data
    } else {
        partial.extend_from_slice(data);
        joined = std::mem::take(partial);
        &joined
    };
    let mut pos = 0;
    while pos < buf.len() {
        match gw_proto::decode(&buf[pos..], FRAME_BYTES_MAX)? {
            Decoded::Frame(frame, used) => {
                pos += used;
                if let Some(body) = frame.body {
                    on_frame(body);
                }
            }
            Decoded::Incomplete(_) => break,
        }
    }
    if pos < buf.len() {
        *partial = buf[pos..].to_vec();
    }
    Ok(())
}

/// Short, stable name of an OS error for failure counters.
pub fn errno_name(e: &io::Error) -> String {
    let name = match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => "ECONNREFUSED",
        Some(libc::ECONNRESET) => "ECONNRESET",
        Some(libc::ETIMEDOUT) => "ETIMEDOUT",
        Some(libc::EPIPE) => "EPIPE",
        Some(libc::EMFILE) => "EMFILE",
        Some(libc::ENFILE) => "ENFILE",
        Some(libc::EADDRNOTAVAIL) => "EADDRNOTAVAIL",
        Some(libc::EADDRINUSE) => "EADDRINUSE",
        Some(libc::ENOBUFS) => "ENOBUFS",
        Some(libc::ENOMEM) => "ENOMEM",
        Some(libc::EHOSTUNREACH) => "EHOSTUNREACH",
        Some(libc::ENETUNREACH) => "ENETUNREACH",
        Some(libc::EINVAL) => "EINVAL",
        Some(n) => return format!("errno{n}"),
        None => return format!("{:?}", e.kind()),
    };
    name.to_string()
}

/// Name of an `ErrorCode` value as sent on the wire.
pub fn error_code_name(code: i32) -> String {
    match gw_proto::ErrorCode::try_from(code) {
        Ok(c) => c
            .as_str_name()
            .trim_start_matches("ERROR_CODE_")
            .to_string(),
        Err(_) => format!("code{code}"),
    }
}

/// Name of a `CloseReason` value as sent on the wire.
pub fn close_reason_name(reason: i32) -> String {
    match gw_proto::CloseReason::try_from(reason) {
        Ok(c) => c
            .as_str_name()
            .trim_start_matches("CLOSE_REASON_")
            .to_string(),
        Err(_) => format!("reason{reason}"),
    }
}

/// Name of a frame body kind, for "unexpected frame" counters.
pub fn body_name(b: &Body) -> &'static str {
    match b {
        Body::Auth(_) => "Auth",
        Body::AuthOk(_) => "AuthOk",
        Body::AuthError(_) => "AuthError",
        Body::Ping(_) => "Ping",
        Body::Pong(_) => "Pong",
        Body::Upstream(_) => "Upstream",
        Body::UpstreamReply(_) => "UpstreamReply",
        Body::Push(_) => "Push",
        Body::Ack(_) => "Ack",
        Body::GoAway(_) => "GoAway",
        Body::Error(_) => "Error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feed_splits_and_keeps_partial() {
        let a = ping_frame();
        let b = auth_frame("t".into(), "d", 30_000);
        let mut all = a.to_vec();
        all.extend_from_slice(&b);
        let mut partial = Vec::new();
        let mut got = Vec::new();
        for chunk in all.chunks(3) {
            feed(&mut partial, chunk, &mut |f| got.push(body_name(&f))).unwrap();
        }
        assert_eq!(got, vec!["Ping", "Auth"]);
        assert!(partial.is_empty() && partial.capacity() == 0);
    }

    #[test]
    fn token_verifies_with_demo_key() {
        use gateway::config::{DEMO_KID, DEMO_SECRET};
        let t = token(DEMO_SECRET.as_bytes(), Some(DEMO_KID), "u1", 60);
        let cfg = gateway::Config {
            demo: true,
            ..Default::default()
        };
        let v = gateway::server::build_verifier(&cfg).unwrap();
        let c = v.verify(&t, unix_now()).unwrap();
        assert_eq!(c.sub, "u1");
        assert_eq!(error_code_name(11), "TOKEN_INVALID");
    }
}
