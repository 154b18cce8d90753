//! WebSocket of the flood client (RFC 6455, client side), as the gateway
//! speaks it (PROTOCOL.md): `GET <path>` HTTP/1.1 upgrade on the client
//! port, then every Frame travels as one binary message without its 4-byte
//! length prefix, masked from the client, unmasked from the server. The
//! server closes with code 4000 + CloseReason.

use base64::Engine as _;
use bytes::Bytes;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use gw_proto::LEN_PREFIX_BYTES;
use prost::Message as _;

use crate::proto::Event;
use crate::transport::{io_reason, Stream};
use crate::wire::FRAME_BYTES_MAX;
use gateway::wire::ws::{accept_key, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG};

/// Longest upgrade response read, bytes.
const RESPONSE_BYTES_MAX: usize = 8192;

/// The upgrade: sends the request, reads the response up to its blank line
/// and checks `101` and `Sec-WebSocket-Accept`. Returns the bytes read past
/// the response. Err: the failure reason (`ws:...`).
pub async fn upgrade(s: &mut Stream, path: &str, host: &str, seed: u64) -> Result<Vec<u8>, String> {
    let mut nonce = [0u8; 16];
    nonce[..8].copy_from_slice(&crate::conn::jitter(seed).to_le_bytes());
    nonce[8..].copy_from_slice(&crate::conn::jitter(!seed).to_le_bytes());
    let key = base64::engine::general_purpose::STANDARD.encode(nonce);
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n"
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("ws:write:{}", io_reason(&e)))?;
    s.flush()
        .await
        .map_err(|e| format!("ws:write:{}", io_reason(&e)))?;
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    let end = loop {
        if let Some(at) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        if head.len() > RESPONSE_BYTES_MAX {
            return Err("ws:response_too_large".into());
        }
        match s.read(&mut chunk).await {
            Ok(0) => return Err("ws:closed_during_upgrade".into()),
            Ok(n) => head.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(format!("ws:read:{}", io_reason(&e))),
        }
    };
    let rest = head.split_off(end);
    let text = String::from_utf8_lossy(&head);
    let mut lines = text.split("\r\n");
    let status = lines.next().unwrap_or("");
    let code = status.split(' ').nth(1).unwrap_or("-");
    if !status.starts_with("HTTP/1.1 ") || code != "101" {
        return Err(format!("ws:status_{}", code.get(..3).unwrap_or(code)));
    }
    let accept = lines.find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("sec-websocket-accept")
            .then(|| v.trim().to_string())
    });
    if accept.as_deref() != Some(accept_key(&key).as_str()) {
        return Err("ws:bad_accept".into());
    }
    Ok(rest)
}

/// A length-prefixed frame as one masked binary message (the prefix
/// dropped), masked with `mask`.
pub fn wrap(frame: &[u8], mask: u32) -> Bytes {
    let payload = frame.get(LEN_PREFIX_BYTES..).unwrap_or(&[]);
    let len = payload.len();
    let mut v = Vec::with_capacity(len + 14);
    v.push(0x80 | OP_BINARY);
    if len < 126 {
        v.push(0x80 | len as u8);
    } else if len <= u16::MAX as usize {
        v.push(0x80 | 126);
        v.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        v.push(0x80 | 127);
        v.extend_from_slice(&(len as u64).to_be_bytes());
    }
    let m = mask.to_be_bytes();
    v.extend_from_slice(&m);
    v.extend(payload.iter().enumerate().map(|(i, b)| b ^ m[i % 4]));
    Bytes::from(v)
}

/// Decodes every whole server message of `buf`, calling `on` with each
/// frame's event; returns the bytes used (an incomplete message is left).
/// A close frame is [`Event::Closed`] with its code; pings and pongs are
/// counted as other frames (the gateway does not ping its clients).
pub fn parse(buf: &[u8], on: &mut dyn FnMut(Event)) -> Result<usize, String> {
    let mut pos = 0;
    while let Some((hdr, len)) = header(&buf[pos..])? {
        let Some(payload) = buf.get(pos + hdr..pos + hdr + len) else {
            break;
        };
        let b0 = buf[pos];
        pos += hdr + len;
        if b0 & 0x70 != 0 {
            return Err("ws: reserved bits set".into());
        }
        let fin = b0 & 0x80 != 0;
        match b0 & 0x0f {
            OP_BINARY if fin => {
                let frame = gw_proto::Frame::decode(payload).map_err(|e| e.to_string())?;
                if frame.body.is_none() {
                    return Err("frame has no body".into());
                }
                crate::wire::frame_event(frame, on);
            }
            OP_CLOSE => {
                let code = payload
                    .get(..2)
                    .map_or(1005, |c| u16::from_be_bytes([c[0], c[1]]));
                on(Event::Closed(code));
            }
            OP_PING => on(Event::Other("ws_ping")),
            OP_PONG => on(Event::Other("ws_pong")),
            op => return Err(format!("ws: unexpected opcode {op} (fin {fin})")),
        }
    }
    Ok(pos)
}

/// Header length and payload length of the server frame at the start of
/// `b`; None while the header is incomplete.
fn header(b: &[u8]) -> Result<Option<(usize, usize)>, String> {
    let (Some(&b0), Some(&b1)) = (b.first(), b.get(1)) else {
        return Ok(None);
    };
    if b1 & 0x80 != 0 {
        return Err("ws: masked server frame".into());
    }
    let (hdr, len) = match b1 & 0x7f {
        126 => match b.get(2..4) {
            Some(l) => (4, u16::from_be_bytes([l[0], l[1]]) as u64),
            None => return Ok(None),
        },
        127 => match b.get(2..10) {
            Some(l) => {
                let mut a = [0u8; 8];
                a.copy_from_slice(l);
                (10, u64::from_be_bytes(a))
            }
            None => return Ok(None),
        },
        n => (2, n as u64),
    };
    if b0 & 0x08 != 0 && len > 125 {
        return Err("ws: control frame over 125 bytes".into());
    }
    if len > FRAME_BYTES_MAX as u64 {
        return Err(format!("ws: message of {len} bytes"));
    }
    Ok(Some((hdr, len as usize)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_of_rfc_6455() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    /// A server message (unmasked) with `payload`.
    fn server(op: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![0x80 | op];
        if payload.len() < 126 {
            v.push(payload.len() as u8);
        } else {
            v.push(126);
            v.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        }
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn wraps_masked_and_parses_server_messages() {
        let ping = crate::wire::ping_frame();
        let m = wrap(&ping, 0x0102_0304);
        assert_eq!(m[0], 0x82);
        assert_eq!(m[1] as usize, 0x80 | (ping.len() - 4));
        let unmasked: Vec<u8> = m[6..]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ [1, 2, 3, 4][i % 4])
            .collect();
        assert_eq!(unmasked, ping[4..]);

        let reply = crate::wire::upstream_frame(7, "echo", vec![9; 300]);
        let mut all = server(OP_BINARY, &reply[4..]);
        all.extend(server(OP_BINARY, &ping[4..]));
        all.extend(server(OP_CLOSE, &4008u16.to_be_bytes()));
        let mut partial = Vec::new();
        let mut got = Vec::new();
        let codec = crate::proto::Codec {
            proto: crate::proto::Protocol::Gw,
            ws: true,
        };
        for chunk in all.chunks(7) {
            crate::proto::feed(codec, &mut partial, chunk, &mut |e| {
                got.push(format!("{e:?}"))
            })
            .unwrap();
        }
        assert_eq!(
            got,
            vec!["Other(\"Upstream\")", "Other(\"Ping\")", "Closed(4008)"]
        );
        assert!(partial.is_empty());
        assert!(parse(&[0x82, 0x85], &mut |_| {}).is_err(), "masked");
        assert!(parse(&server(1, b"hi"), &mut |_| {}).is_err(), "text");
    }
}
