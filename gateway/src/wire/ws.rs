//! WebSocket (RFC 6455) without I/O: the upgrade request's end and
//! check, the answers, client frames parsed into events, server frames
//! and the wrapping of queued frames as binary messages. `conn/ws.rs`
//! runs it on a connection.
//!
//! WebSocket on the client port, after TLS when there is TLS:
//! a connection whose first plaintext byte is `G` (`GET /ws HTTP/1.1`) is
//! upgraded, then every binary message carries one Frame without the
//! length prefix. The handshake is bounded (`ws.handshake_bytes_max`), the
//! path and Origin are checked, text frames and unmasked frames close the
//! connection, ping and pong count as life, and the gateway's typed close
//! reason goes out as close code 4000 + reason. No extensions
//! (permessage-deflate is never negotiated: memory).

use base64::Engine as _;
use bytes::Bytes;
use gw_proto::{CloseReason, LEN_PREFIX_BYTES};

use super::http::Request;
use super::out::{self, Out};

const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// Opcodes (RFC 6455 §5.2); public for the flood client.
pub const OP_CONT: u8 = 0;
pub const OP_TEXT: u8 = 1;
pub const OP_BINARY: u8 = 2;
pub const OP_CLOSE: u8 = 8;
pub const OP_PING: u8 = 9;
pub const OP_PONG: u8 = 10;
/// Control frames carry at most this many bytes (RFC 6455 §5.5).
const CONTROL_PAYLOAD_BYTES_MAX: usize = 125;

/// A WebSocket's state while it needs more than `Conn::ws` (allocated in
/// the connection's `Extra` only while used).
pub enum Ws {
    /// Reading the HTTP upgrade request.
    Handshake(Vec<u8>),
    /// The fragments of a message not finished yet.
    Fragments(Vec<u8>),
}

impl Ws {
    /// Inbound bytes held (an upgrade request or message fragments), for
    /// the pre-auth budget.
    pub fn buffered(&self) -> usize {
        match self {
            Ws::Handshake(v) | Ws::Fragments(v) => v.capacity(),
        }
    }
}

/// The Sec-WebSocket-Accept for a Sec-WebSocket-Key (RFC 6455 §4.2.2).
pub fn accept_key(key: &str) -> String {
    let digest = ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        format!("{key}{GUID}").as_bytes(),
    );
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}

/// Where an upgrade request being read stands.
#[derive(Debug, PartialEq, Eq)]
pub enum Head {
    /// No blank line yet, within `max`.
    More,
    /// The request head ends at this offset (the blank line is the 4 bytes
    /// after it); what follows are the first WebSocket frames.
    Ends(usize),
    /// Over `ws.handshake_bytes_max`.
    TooLarge,
}

/// Finds the end of an upgrade request in `buf`, looking only from `from`
/// (what is new, and 3 bytes back) for the blank line.
pub fn request_end(buf: &[u8], from: usize, max: usize) -> Head {
    match buf[from.min(buf.len())..]
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + from)
    {
        Some(end) if end + 4 <= max => Head::Ends(end),
        None if buf.len() <= max => Head::More,
        _ => Head::TooLarge,
    }
}

/// The answer that upgrades a connection whose request carried `client_key`.
pub fn switching_protocols(client_key: &str) -> String {
    let accept = accept_key(client_key);
    format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n")
}

/// The answer that refuses an upgrade with `status` ("400 Bad Request").
pub fn refusal(status: &str) -> String {
    format!("HTTP/1.1 {status}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
}

/// Turns a queued length-prefixed frame into a binary WebSocket message.
pub fn wrap(out: Out) -> Out {
    let total = out.len();
    let payload = total.saturating_sub(4);
    let mut hdr = [0u8; 10];
    hdr[0] = 0x80 | OP_BINARY;
    let n = if payload < 126 {
        hdr[1] = payload as u8;
        2
    } else if payload <= u16::MAX as usize {
        hdr[1] = 126;
        hdr[2..4].copy_from_slice(&(payload as u16).to_be_bytes());
        4
    } else {
        hdr[1] = 127;
        hdr[2..10].copy_from_slice(&(payload as u64).to_be_bytes());
        10
    };
    if out.head.as_slice().len() >= 4 {
        Out {
            head: out.head.replaced_prefix(&hdr[..n], 4),
            body: out.body,
        }
    } else {
        // A frame encoded on its own: the prefix is the body's first 4 bytes.
        Out {
            head: out::Head::EMPTY.replaced_prefix(&hdr[..n], 0),
            body: out.body.slice(4.min(out.body.len())..),
        }
    }
}

/// A server frame (unmasked) with `payload`.
pub fn frame(op: u8, payload: &[u8]) -> Bytes {
    let mut v = Vec::with_capacity(payload.len() + 4);
    v.push(0x80 | op);
    if payload.len() < 126 {
        v.push(payload.len() as u8);
    } else {
        v.push(126);
        v.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    }
    v.extend_from_slice(payload);
    Bytes::from(v)
}

/// The close frame for a gateway close reason: code 4000 + reason.
pub fn close_frame(reason: CloseReason) -> Bytes {
    let code = 4000u16 + reason as u16;
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(
        reason
            .as_str_name()
            .trim_start_matches("CLOSE_REASON_")
            .as_bytes(),
    );
    frame(OP_CLOSE, &p)
}

/// Checks an upgrade request; returns its Sec-WebSocket-Key. Pure, so the
/// fuzz target `ws_handshake` drives it with [`Request::parse`].
pub fn check<'a>(
    cfg: &crate::config::WsConfig,
    req: &Request<'a>,
) -> Result<&'a str, (&'static str, String)> {
    let bad = |why: &str| ("400 Bad Request", why.to_string());
    if req.method != "GET" {
        return Err(bad("not a GET request"));
    }
    if req.path != cfg.path {
        return Err((
            "404 Not Found",
            format!("path {:?} is not {:?}", req.path, cfg.path),
        ));
    }
    let upgrade = req
        .header("upgrade")
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if !(upgrade && req.header_has("connection", "upgrade")) {
        return Err(bad("not a WebSocket upgrade"));
    }
    if req.header("sec-websocket-version") != Some("13") {
        return Err((
            "426 Upgrade Required",
            "Sec-WebSocket-Version must be 13".into(),
        ));
    }
    let key = req
        .header("sec-websocket-key")
        .ok_or_else(|| bad("no Sec-WebSocket-Key"))?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(key)
        .map_err(|_| bad("bad Sec-WebSocket-Key"))?;
    if raw.len() != 16 {
        return Err(bad("bad Sec-WebSocket-Key"));
    }
    let origin = req.header("origin");
    if !cfg.allowed_origins.is_empty()
        && !origin.is_some_and(|o| cfg.allowed_origins.iter().any(|a| a == o))
    {
        return Err(("403 Forbidden", format!("origin {origin:?} is not allowed")));
    }
    Ok(key)
}

/// What a client's WebSocket frames amount to, in order.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// A whole binary message, as a length-prefixed frame for the decoder.
    Message(Vec<u8>),
    /// A ping and its payload (at most 125 bytes), to answer with a pong.
    Ping(Vec<u8>),
    Pong,
    /// A close frame: the payload to echo (its code when valid, 1002 for
    /// a bad one, nothing for none). Nothing after it is read.
    Close(Vec<u8>),
}

/// A client frame that closes the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("reserved bits set (no extension was negotiated)")]
    ReservedBits,
    #[error("a client frame without a mask")]
    Unmasked,
    #[error("a control frame over 125 bytes or fragmented")]
    BadControl,
    #[error("message larger than frame_bytes_max")]
    TooLarge,
    #[error("a new message inside a fragmented one")]
    NestedMessage,
    #[error("a continuation with no message started")]
    StrayContinuation,
    #[error("a text message (frames are binary)")]
    Text,
    #[error("unknown opcode")]
    UnknownOpcode,
}

impl FrameError {
    pub fn close_reason(self) -> CloseReason {
        match self {
            FrameError::TooLarge => CloseReason::FrameTooLarge,
            _ => CloseReason::ProtocolViolation,
        }
    }
}

/// What [`parse_frames`] found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Parsed {
    pub events: Vec<Event>,
    /// Bytes of whole frames taken from the front of the input (the rest
    /// starts a frame not complete yet).
    pub used: usize,
    /// Whole frames taken (a fragment or a pong makes no event but is one).
    pub frames: usize,
    /// The frame that ends the connection, after `events`.
    pub error: Option<FrameError>,
}

/// Parses client frames (RFC 6455 §5): pure, bytes in, events out, so the
/// fuzz target `ws_frames` drives it. `message` holds a fragmented message
/// across calls (Some exactly while one is open); `max` bounds a message's
/// payload. Stops at a close frame, an error, or an incomplete frame.
pub fn parse_frames(buf: &[u8], max: usize, message: &mut Option<Vec<u8>>) -> Parsed {
    let mut p = Parsed::default();
    loop {
        let b = &buf[p.used..];
        if b.len() < 2 {
            return p;
        }
        let (fin, op, masked) = (b[0] & 0x80 != 0, b[0] & 0x0f, b[1] & 0x80 != 0);
        let refuse = |mut p: Parsed, e| {
            p.error = Some(e);
            p
        };
        if b[0] & 0x70 != 0 {
            return refuse(p, FrameError::ReservedBits);
        }
        if !masked {
            return refuse(p, FrameError::Unmasked);
        }
        let (len, at) = match b[1] & 0x7f {
            126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
            127 if b.len() >= 10 => {
                let l = u64::from_be_bytes([b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9]]);
                (usize::try_from(l).unwrap_or(usize::MAX), 10)
            }
            126 | 127 => return p,
            l => (l as usize, 2),
        };
        if op >= 8 && (len > CONTROL_PAYLOAD_BYTES_MAX || !fin) {
            return refuse(p, FrameError::BadControl);
        }
        let so_far = message
            .as_ref()
            .map_or(0, |m| m.len().saturating_sub(LEN_PREFIX_BYTES));
        if len > max || (op < 8 && so_far.saturating_add(len) > max) {
            return refuse(p, FrameError::TooLarge);
        }
        // `len <= max` here, so the sum cannot overflow.
        if b.len() < at + 4 + len {
            return p;
        }
        let mask = [b[at], b[at + 1], b[at + 2], b[at + 3]];
        let unmasked = b[at + 4..at + 4 + len]
            .iter()
            .enumerate()
            .map(|(i, x)| x ^ mask[i % 4]);
        p.used += at + 4 + len;
        p.frames += 1;
        match op {
            OP_BINARY | OP_CONT => {
                // A message starts with room for its frame length prefix.
                let m = match (op, message.as_mut()) {
                    (OP_BINARY, None) => message.insert(vec![0; LEN_PREFIX_BYTES]),
                    (OP_CONT, Some(m)) => m,
                    (OP_BINARY, Some(_)) => return refuse(p, FrameError::NestedMessage),
                    _ => return refuse(p, FrameError::StrayContinuation),
                };
                m.extend(unmasked);
                if fin {
                    // Whole: a length-prefixed frame for the decoder.
                    if let Some(mut m) = message.take() {
                        let n = (m.len() - LEN_PREFIX_BYTES) as u32;
                        m[..LEN_PREFIX_BYTES].copy_from_slice(&n.to_be_bytes());
                        p.events.push(Event::Message(m));
                    }
                }
            }
            OP_TEXT => return refuse(p, FrameError::Text),
            OP_PING => p.events.push(Event::Ping(unmasked.collect())),
            OP_PONG => p.events.push(Event::Pong),
            OP_CLOSE => {
                // Echo a valid code; answer 1002 (protocol error) to a bad one.
                let payload: Vec<u8> = unmasked.collect();
                let code =
                    (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                let valid = |c: u16| matches!(c, 1000..=1003 | 1007..=1014 | 3000..=4999);
                let echo = match code {
                    None if payload.is_empty() => Vec::new(),
                    Some(c) if valid(c) => c.to_be_bytes().to_vec(),
                    _ => 1002u16.to_be_bytes().to_vec(),
                };
                p.events.push(Event::Close(echo));
                return p;
            }
            _ => return refuse(p, FrameError::UnknownOpcode),
        }
    }
}
