//! What the flood client puts on the wire and how it takes frames apart.

use std::io;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use gw_proto::pb::{self, frame::Body, Frame};
use gw_proto::{Decoded, PROTOCOL_VERSION};

use crate::proto::Event;

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
/// `batches`: the client reads a hot room's batches (`Auth.push_batches`).
pub fn auth_frame(token: String, device_id: &str, heartbeat_ms: u32, batches: bool) -> Bytes {
    gw_proto::encode(&Frame {
        body: Some(Body::Auth(pb::Auth {
            protocol_version: PROTOCOL_VERSION,
            token,
            device_id: device_id.into(),
            resume_seq: 0,
            metadata: Default::default(),
            heartbeat_interval_ms: heartbeat_ms,
            push_batches: batches,
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

/// A length-prefixed `Ack` frame (acknowledges every push up to `seq`).
pub fn ack_frame(seq: u64) -> Bytes {
    gw_proto::encode(&Frame {
        body: Some(Body::Ack(pb::Ack { seq })),
    })
}

/// A length-prefixed `Upstream` frame.
pub fn upstream_frame(corr: u64, route: &str, payload: Vec<u8>) -> Bytes {
    gw_proto::encode(&Frame {
        body: Some(Body::Upstream(pb::Upstream {
            correlation_id: corr,
            route: route.into(),
            client_msg_id: String::new(),
            payload: payload.into(),
            room: String::new(),
        })),
    })
}

/// Decodes every whole frame of `buf`, calling `on` with each as an
/// [`Event`]; returns the bytes used (an incomplete frame is left).
pub fn parse(buf: &[u8], on: &mut dyn FnMut(Event)) -> Result<usize, String> {
    let mut pos = 0;
    while pos < buf.len() {
        match gw_proto::decode(&buf[pos..], FRAME_BYTES_MAX).map_err(|e| e.to_string())? {
            Decoded::Frame(frame, used) => {
                pos += used;
                frame_event(frame, on);
            }
            Decoded::Incomplete(_) => break,
        }
    }
    Ok(pos)
}

/// Calls `on` with the [`Event`]s of one decoded frame.
pub fn frame_event(frame: Frame, on: &mut dyn FnMut(Event)) {
    let Some(body) = frame.body else { return };
    match &body {
        Body::AuthOk(_) => on(Event::Ready),
        Body::AuthError(e) => on(Event::Refused(format!(
            "auth_error:{}",
            error_code_name(e.code)
        ))),
        Body::Pong(_) => on(Event::Pong),
        // A hot room's batch: each push it carries is a delivery.
        Body::Push(p) if !p.batch.is_empty() => {
            for q in &p.batch {
                on(Event::Delivery(&q.payload));
            }
        }
        Body::Push(p) => {
            on(Event::Delivery(&p.payload));
            if p.ack_required {
                on(Event::AckDue(p.seq));
            }
        }
        Body::UpstreamReply(r) => on(Event::Reply {
            corr: r.correlation_id,
            status: r.status,
            payload: &r.payload,
        }),
        Body::GoAway(g) => on(Event::GoAway(g.reason)),
        Body::Error(e) => on(Event::Error(e.code)),
        other => on(Event::Other(body_name(other))),
    }
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
        Body::Refresh(_) => "Refresh",
        Body::RefreshReply(_) => "RefreshReply",
        Body::TokenExpiring(_) => "TokenExpiring",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_one_delivery_per_push_it_carries() {
        let push = |payload: &'static [u8]| pb::Push {
            route: "r".into(),
            payload: Bytes::from_static(payload),
            ..Default::default()
        };
        let frame = Frame {
            body: Some(Body::Push(pb::Push {
                batch: vec![push(b"1"), push(b"2"), push(b"3")],
                room: "live".into(),
                ..Default::default()
            })),
        };
        let mut seen = Vec::new();
        frame_event(frame, &mut |e| {
            if let Event::Delivery(p) = e {
                seen.push(p.to_vec());
            }
        });
        assert_eq!(seen, [b"1".to_vec(), b"2".to_vec(), b"3".to_vec()]);
    }

    #[test]
    fn frames_split_and_keep_partial() {
        let a = ping_frame();
        let b = upstream_frame(7, "echo", b"hi".to_vec());
        let mut all = a.to_vec();
        all.extend_from_slice(&b);
        let mut partial = Vec::new();
        let mut got = Vec::new();
        for chunk in all.chunks(3) {
            let codec = crate::proto::Codec {
                proto: crate::proto::Protocol::Gw,
                ws: false,
            };
            crate::proto::feed(codec, &mut partial, chunk, &mut |e| {
                got.push(format!("{e:?}"))
            })
            .unwrap();
        }
        assert_eq!(got, vec!["Other(\"Ping\")", "Other(\"Upstream\")"]);
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
