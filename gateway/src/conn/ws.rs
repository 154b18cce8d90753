//! WebSocket on a connection: runs the pure layer (`wire/ws.rs`) on the
//! connection's plaintext and acts on what it says.
//!
//! WebSocket (RFC 6455) on the client port, after TLS when there is TLS:
//! a connection whose first plaintext byte is `G` (`GET /ws HTTP/1.1`) is
//! upgraded, then every binary message carries one Frame without the
//! length prefix. The handshake is bounded (`ws.handshake_bytes_max`), the
//! path and Origin are checked, text frames and unmasked frames close the
//! connection, ping and pong count as life, and the gateway's typed close
//! reason goes out as close code 4000 + reason. No extensions
//! (permessage-deflate is never negotiated: memory).

use std::rc::Rc;

use bytes::Bytes;
use gw_proto::CloseReason;

use crate::core::push::Out;
use crate::core::{Conn, ConnKey, Core, WsPhase};
use crate::metrics::CoreMetrics;
use crate::wire::http::Request;
pub use crate::wire::ws::*;

/// Whether this first plaintext of a connection starts a WebSocket upgrade
/// (the caller asks on the first plaintext only: `input.rs`, `layer`).
pub fn maybe_start(core: &Core, c: &mut Conn, first: &[u8]) -> bool {
    if first.first() != Some(&b'G') || !core.cfg().ws.enabled {
        return false;
    }
    c.extra_mut().ws = Some(Ws::Handshake(Vec::new()));
    true
}

/// Queues bytes that are already WebSocket (or HTTP) bytes.
fn send_raw(core: &Core, c: &mut Conn, bytes: Bytes) {
    core.push_out_raw(c, Out::frame(bytes));
}

/// Feeds plaintext to the WebSocket layer; whole binary messages go to the
/// frame decoder. A partial WebSocket frame waits in `Conn::partial`.
pub fn input(core: &Rc<Core>, key: ConnKey, data: &[u8]) {
    let id = key.id();
    let Some((state, partial)) = core.with_conn(key, |c| {
        let state = c.extra.as_mut().and_then(|e| e.ws.take());
        (state, std::mem::take(&mut c.partial))
    }) else {
        return;
    };
    let (mut state, mut rest, mut result) = match state {
        Some(Ws::Handshake(mut buf)) => {
            // Look for the blank line only in what is new (and 3 bytes back).
            let from = buf.len().saturating_sub(3);
            buf.extend_from_slice(data);
            handshake(core, key, buf, from)
        }
        Some(Ws::Fragments(message)) => frames(core, key, partial, Some(message), data),
        None => frames(core, key, partial, None, data),
    };
    let failed = loop {
        let (messages, failed) = result;
        for m in messages {
            // Nothing more once the connection is closing (a bad frame, a
            // slow consumer, the client's close).
            if core.with_conn(key, |c| c.close.is_some()).unwrap_or(true) {
                break;
            }
            super::input::on_bytes(core, key, &m);
        }
        // Over the pre-auth limit after whole messages: if those held an
        // accepted Auth, the rest of the read is parsed again under
        // frame_bytes_max (as frames pipelined after Auth are).
        let Some(Failed::PreauthTooLarge(why)) = failed else {
            break failed.map(Failed::into_close);
        };
        let live = core.with_conn(key, |c| c.authed() && c.close.is_none());
        if live != Some(true) {
            // Closing: nothing of the read is kept (nor counted as pre-auth
            // bytes until the teardown).
            (state, rest) = (None, Vec::new());
            break Some((CloseReason::FrameTooLarge, why));
        }
        let message = match state.take() {
            Some(Ws::Fragments(m)) => Some(m),
            _ => None,
        };
        (state, rest, result) = frames(core, key, std::mem::take(&mut rest), message, &[]);
    };
    if let Some((reason, why)) = failed {
        if reason != CloseReason::HttpAnswered {
            CoreMetrics::inc(&core.metrics.ws_rejected);
        }
        tracing::debug!(conn_id = id, %why, "WebSocket closed");
        core.close(key, reason, None);
    }
    // After the decoder, which uses `partial` for frames of its own (none:
    // it gets whole messages).
    core.with_conn(key, |c| {
        c.partial = rest;
        c.extra_mut().ws = state;
        c.shrink_extra();
    });
}

/// Whole messages (length-prefixed frames for the decoder), and why the
/// connection closes, if it does (after those messages).
type Outcome = (Vec<Vec<u8>>, Option<Failed>);

/// Why parsing stopped short.
enum Failed {
    /// The connection closes for this reason.
    Close(CloseReason, String),
    /// Before auth, a message over the pre-auth limit came after whole
    /// messages, which may hold the Auth that lifts it (the bytes from that
    /// message on are kept): parse again once they are handled.
    PreauthTooLarge(String),
}

impl Failed {
    fn into_close(self) -> (CloseReason, String) {
        match self {
            Failed::Close(reason, why) => (reason, why),
            Failed::PreauthTooLarge(why) => (CloseReason::FrameTooLarge, why),
        }
    }
}
/// The state to keep, the bytes of a frame not complete yet, the outcome.
type Step = (Option<Ws>, Vec<u8>, Outcome);

/// A step that closes the connection for `why`.
fn closing_step(reason: CloseReason, why: impl Into<String>) -> Step {
    (
        None,
        Vec::new(),
        (Vec::new(), Some(Failed::Close(reason, why.into()))),
    )
}

fn handshake(core: &Rc<Core>, key: ConnKey, buf: Vec<u8>, from: usize) -> Step {
    let end = match request_end(&buf, from, core.cfg().ws.handshake_bytes_max as usize) {
        Head::More => return (Some(Ws::Handshake(buf)), Vec::new(), (Vec::new(), None)),
        Head::TooLarge => {
            reject(core, key, "431 Request Header Fields Too Large");
            return closing_step(CloseReason::ProtocolViolation, "handshake too large");
        }
        Head::Ends(end) => end,
    };
    let req = match Request::parse(&buf[..end]) {
        Ok(req) => req,
        Err(why) => {
            reject(core, key, "400 Bad Request");
            return closing_step(CloseReason::ProtocolViolation, why);
        }
    };
    // Demo mode: the demo page, the client library, demo tokens.
    let web = core.cfg().demo && req.path != core.cfg().ws.path;
    if let Some(resp) = web
        .then(|| super::web::answer(&req, super::frames::unix_now()))
        .flatten()
    {
        core.with_conn(key, |c| send_raw(core, c, Bytes::from(resp)));
        let why = format!("answered HTTP {} {}", req.method, req.path);
        return closing_step(CloseReason::HttpAnswered, why);
    }
    match check(&core.cfg().ws, &req) {
        Ok(client_key) => {
            let resp = switching_protocols(client_key);
            core.with_conn(key, |c| {
                send_raw(core, c, Bytes::from(resp));
                c.ws = WsPhase::Open;
            });
            CoreMetrics::inc(&core.metrics.ws_upgrades);
            // Bytes after the request are the first WebSocket frames.
            frames(core, key, Vec::new(), None, &buf[end + 4..])
        }
        Err((status, why)) => {
            reject(core, key, status);
            closing_step(CloseReason::ProtocolViolation, why)
        }
    }
}

fn reject(core: &Core, key: ConnKey, status: &str) {
    let resp = refusal(status);
    core.with_conn(key, |c| send_raw(core, c, Bytes::from(resp)));
}

/// Parses client frames and acts on them; returns whole binary messages.
fn frames(
    core: &Rc<Core>,
    key: ConnKey,
    mut partial: Vec<u8>,
    mut message: Option<Vec<u8>>,
    data: &[u8],
) -> Step {
    partial.extend_from_slice(data);
    // Before Auth is accepted, messages are held to the pre-auth limit.
    let authed = core.with_conn(key, |c| c.authed()).unwrap_or(false);
    let max = if authed {
        core.cfg().frame_bytes_max
    } else {
        core.cfg().preauth_frame_bytes_max()
    } as usize;
    let parsed = parse_frames(&partial, max, &mut message);
    if parsed.frames > 0 {
        // Any whole WebSocket frame is a sign of life (ping and pong too).
        core.with_conn(key, |c| c.last_in = core.now());
    }
    let mut out = Vec::new();
    // `Conn::ws` stays open on a failure, so the close frame with the
    // reason goes out.
    let fail = |out, reason, why: &str| {
        let failed = Failed::Close(reason, why.to_string());
        (None, Vec::new(), (out, Some(failed)))
    };
    for ev in parsed.events {
        match ev {
            Event::Message(m) => out.push(m),
            Event::Ping(payload) => {
                // Pongs count against outbound_bytes_max like any output: a
                // client that pings without reading is a slow consumer.
                let limit = core.cfg().outbound_bytes_max as usize;
                let queued = core
                    .with_conn(key, |c| {
                        let fits = c.out_bytes as usize + payload.len() + 4 <= limit;
                        if fits {
                            send_raw(core, c, frame(OP_PONG, &payload));
                        }
                        fits
                    })
                    .unwrap_or(false);
                if !queued {
                    return fail(
                        out,
                        CloseReason::SlowConsumer,
                        "pings faster than pongs are read",
                    );
                }
            }
            Event::Pong => {}
            Event::Close(echo) => {
                core.with_conn(key, |c| send_raw(core, c, frame(OP_CLOSE, &echo)));
                core.with_conn(key, |c| c.ws = WsPhase::CloseSent);
                core.close(key, CloseReason::ClientClosed, None);
                return (None, Vec::new(), (out, None));
            }
        }
    }
    if let Some(e) = parsed.error {
        if e == FrameError::TooLarge && !authed && !out.is_empty() {
            let rest = partial.split_off(parsed.used);
            let failed = Failed::PreauthTooLarge(e.to_string());
            return (message.map(Ws::Fragments), rest, (out, Some(failed)));
        }
        return fail(out, e.close_reason(), &e.to_string());
    }
    let rest = if parsed.used == partial.len() {
        Vec::new()
    } else {
        partial.split_off(parsed.used)
    };
    (message.map(Ws::Fragments), rest, (out, None))
}

/// Before a WebSocket connection is torn down: the close frame with the
/// gateway's reason, unless one went out already.
pub fn closing(c: &mut Conn, reason: CloseReason) -> Option<Bytes> {
    if c.ws != WsPhase::Open {
        return None;
    }
    c.ws = WsPhase::CloseSent;
    Some(close_frame(reason))
}
