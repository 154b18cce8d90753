//! What received bytes become, whatever driver read them: the transport
//! is picked from a connection's first bytes (TLS, WebSocket or frames),
//! then the bytes go through the layers to whole frames, and each frame to
//! `frames::on_frame`. No socket here: the drivers (`epoll.rs`,
//! `uring/`) call [`received`] with bytes they read.

use std::rc::Rc;

use gw_proto::{CloseReason, ErrorCode};

use crate::core::{Conn, ConnKey, Core};
use crate::metrics::CoreMetrics;
use crate::wire::frames::Split;

/// Bytes read from a connection's socket: through the layers to frames.
/// Counts them, and keeps the core's pre-auth budget (`preauth.rs`) up to
/// date with what an unauthenticated connection now buffers.
pub fn received(core: &Rc<Core>, key: ConnKey, data: &[u8]) {
    let id = key.id();
    CoreMetrics::add(&core.metrics.bytes_in, data.len() as u64);
    let Some((layer, before)) = core.with_conn(key, |c| {
        // Nothing was read before: these are the connection's first bytes.
        let first = c.bytes_in == 0;
        c.bytes_in = c.bytes_in.saturating_add(data.len() as u32);
        let before = crate::core::preauth::bytes(c);
        (layer(core, c, data, Some(first)), before)
    }) else {
        return;
    };
    match layer {
        Layer::Tls => super::tls::input(core, key, data),
        Layer::Ws => super::ws::input(core, key, data),
        Layer::Frames => on_bytes(core, key, data),
    }
    let after = core
        .with_conn(key, |c| crate::core::preauth::bytes(c))
        .unwrap_or(0);
    if before != after {
        core.preauth_changed(id, before, after);
    }
}

/// What received bytes go to first.
enum Layer {
    Tls,
    Ws,
    Frames,
}

/// The layer for a connection's bytes: TLS, WebSocket or frames. The
/// transport is decided once, by a connection's first bytes: on its first
/// read (`first_raw` = Some(true)) for TLS, and on its first plaintext
/// (after TLS, when it speaks TLS) for WebSocket. Later bytes never start
/// a handshake, whatever they begin with: a WebSocket or frame connection
/// that sends 0x16 or `G` stays what it is (and its parser judges them).
/// `first_raw` is None for plaintext out of TLS.
fn layer(core: &Core, c: &mut Conn, data: &[u8], first_raw: Option<bool>) -> Layer {
    if let Some(first) = first_raw {
        if c.tls_active() || (first && super::tls::maybe_start(core, c, data)) {
            return Layer::Tls;
        }
    }
    if c.ws_active() {
        return Layer::Ws;
    }
    let first_plain = !c.flags.plain_seen();
    c.flags.set_plain_seen(true);
    if first_plain && super::ws::maybe_start(core, c, data) {
        Layer::Ws
    } else {
        Layer::Frames
    }
}

/// Plaintext out of TLS: WebSocket or frames.
pub(super) fn plain_input(core: &Rc<Core>, key: ConnKey, data: &[u8]) {
    match core.with_conn(key, |c| layer(core, c, data, None)) {
        Some(Layer::Ws) => super::ws::input(core, key, data),
        Some(_) => on_bytes(core, key, data),
        None => {}
    }
}

/// Decodes and handles every whole frame in `data` (plus any partial);
/// `data` is plaintext (after TLS and WebSocket, when the connection uses
/// them).
pub(super) fn on_bytes(core: &Rc<Core>, key: ConnKey, data: &[u8]) {
    let id = key.id();
    let now = core.now();
    let Some((partial, mut authed)) =
        core.with_conn(key, |c| (std::mem::take(&mut c.partial), c.authed()))
    else {
        return;
    };
    let mut split = Split::new(partial, data);
    // Before Auth only an Auth frame makes sense: a small limit keeps what
    // an unauthenticated client can make the core buffer small.
    let limit = |authed: bool| {
        if authed {
            core.cfg().frame_bytes_max
        } else {
            core.cfg().preauth_frame_bytes_max()
        }
    };
    let mut max = limit(authed) as usize;
    let mut closing = false;
    while !closing {
        match split.next(max) {
            None => break,
            Some(Ok(frame)) => {
                CoreMetrics::inc(&core.metrics.frames_in);
                // A whole frame is a sign of life; stray bytes are not.
                let state = core.with_conn(key, |c| {
                    c.last_in = now;
                    c.authed()
                });
                super::frames::on_frame(core, key, frame);
                let after = core.with_conn(key, |c| (c.close.is_some(), c.authed()));
                closing = after.is_none_or(|(closing, _)| closing);
                if state == Some(false) && after.is_some_and(|(_, a)| a) {
                    authed = true;
                    max = limit(authed) as usize;
                }
            }
            Some(Err(e)) => {
                let (reason, code) = match e {
                    gw_proto::DecodeError::TooLarge { .. } => {
                        (CloseReason::FrameTooLarge, ErrorCode::FrameTooLarge)
                    }
                    gw_proto::DecodeError::Malformed(_) => {
                        (CloseReason::BadFrame, ErrorCode::BadFrame)
                    }
                };
                tracing::debug!(conn_id = id, error = %e, authed, "bad frame");
                core.close(key, reason, Some(Core::error_body(code, e.to_string(), 0)));
                closing = true;
            }
        }
    }
    if closing {
        return;
    }
    let keep = split.rest(max);
    core.with_conn(key, |c| c.partial = keep);
}
