//! The NATS client protocol: parsing what the server sends (MSG, HMSG,
//! INFO, PING, PONG, +OK, -ERR) and encoding what we send (SUB, UNSUB, PUB,
//! HPUB and header blocks; CONNECT is built in `conn`).

use std::io::Write as _;

use bytes::Bytes;

use super::{Cmd, Inbound};

/// Longest control line accepted (INFO of a big cluster can be long).
pub const CONTROL_LINE_BYTES_MAX: usize = 1 << 20;
/// Ceiling on the server's advertised max_payload (nats-server allows 64 MiB).
const PAYLOAD_BYTES_CEILING: usize = 64 << 20;
pub(super) const PAYLOAD_BYTES_MAX_DEFAULT: usize = 1 << 20;

/// One operation from the server.
#[derive(Debug, PartialEq)]
pub enum Op {
    Msg(Inbound),
    Ping,
    Pong,
    Ok,
    Err(String),
    Info(Vec<u8>),
}

#[derive(serde::Deserialize, Default, Debug)]
#[serde(default)]
pub(super) struct ServerInfo {
    pub(super) server_id: String,
    pub(super) nonce: Option<String>,
    pub(super) tls_required: bool,
    pub(super) tls_available: bool,
    max_payload: i64,
    pub(super) headers: bool,
    pub(super) ldm: bool,
    /// Other servers of the cluster clients may use ("host:port").
    pub(super) connect_urls: Vec<String>,
}

/// A protocol error in what the server sent; the connection is dropped
/// and made again. Lines are shown cut to 120 characters, controls as `?`.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("control line too long")]
    LineTooLong,
    #[error("bad length {0:?}")]
    Length(String),
    #[error("too many arguments in {0:?}")]
    TooManyArgs(String),
    #[error("malformed {0:?}")]
    Malformed(String),
    #[error("header length above total in {0:?}")]
    HeaderLength(String),
    #[error("message larger than the server's max_payload ({max_payload}): {line:?}")]
    TooLarge { max_payload: usize, line: String },
    #[error("message body not followed by CRLF: {0:?}")]
    NoCrlf(String),
    #[error("headers do not start with NATS/1.0: {0:?}")]
    HeaderBlock(String),
    #[error("unexpected from server: {0:?}")]
    Unexpected(String),
    #[error("bad INFO from server: {0}")]
    Info(#[from] serde_json::Error),
}

/// Headers that cannot be sent as given.
#[derive(Debug, thiserror::Error)]
pub enum HeaderEncodeError {
    #[error("invalid header name {0:?}")]
    Name(String),
    #[error("header {0:?} has a line break in its value")]
    LineBreak(String),
}

impl ServerInfo {
    pub(super) fn parse(json: &[u8]) -> Result<ServerInfo, WireError> {
        Ok(serde_json::from_slice(json)?)
    }

    pub(super) fn max_payload(&self) -> usize {
        if self.max_payload <= 0 {
            PAYLOAD_BYTES_MAX_DEFAULT
        } else {
            (self.max_payload as u64).min(PAYLOAD_BYTES_CEILING as u64) as usize
        }
    }
}

fn shown(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(&bytes[..bytes.len().min(120)]);
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

fn to_string(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_string(),
        Err(_) => String::from_utf8_lossy(bytes).into_owned(),
    }
}

fn parse_len(b: &[u8]) -> Result<usize, WireError> {
    if b.is_empty() || b.len() > 12 || !b.iter().all(u8::is_ascii_digit) {
        return Err(WireError::Length(shown(b)));
    }
    Ok(b.iter().fold(0usize, |n, d| n * 10 + usize::from(d - b'0')))
}

/// Splits protocol arguments on spaces/tabs into `out`; None if more than fit.
fn split_args<'a>(args: &'a [u8], out: &mut [&'a [u8]; 5]) -> Option<usize> {
    let mut n = 0;
    for a in args
        .split(|&b| b == b' ' || b == b'\t')
        .filter(|a| !a.is_empty())
    {
        if n == out.len() {
            return None;
        }
        out[n] = a;
        n += 1;
    }
    Some(n)
}

/// Parses one protocol operation from the front of `buf`. `Ok(None)` = need
/// more bytes; `Err` = protocol error (the caller reconnects). Returns the
/// operation and how many bytes it used.
pub fn parse_op(buf: &[u8], max_payload: usize) -> Result<Option<(Op, usize)>, WireError> {
    let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
        if buf.len() > CONTROL_LINE_BYTES_MAX {
            return Err(WireError::LineTooLong);
        }
        return Ok(None);
    };
    if nl > CONTROL_LINE_BYTES_MAX {
        return Err(WireError::LineTooLong);
    }
    let line = &buf[..nl];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let body_at = nl + 1;
    let (verb, args) = match line.iter().position(|&b| b == b' ' || b == b'\t') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, &line[line.len()..]),
    };
    let is = |name: &[u8]| verb.eq_ignore_ascii_case(name);
    if is(b"MSG") || is(b"HMSG") {
        let with_headers = is(b"HMSG");
        let mut a: [&[u8]; 5] = [&[]; 5];
        let n = split_args(args, &mut a).ok_or_else(|| WireError::TooManyArgs(shown(line)))?;
        let (subject, reply, hdr_len, total_len) = match (with_headers, n) {
            (false, 3) => (a[0], None, 0, parse_len(a[2])?),
            (false, 4) => (a[0], Some(a[2]), 0, parse_len(a[3])?),
            (true, 4) => (a[0], None, parse_len(a[2])?, parse_len(a[3])?),
            (true, 5) => (a[0], Some(a[2]), parse_len(a[3])?, parse_len(a[4])?),
            _ => return Err(WireError::Malformed(shown(line))),
        };
        if hdr_len > total_len {
            return Err(WireError::HeaderLength(shown(line)));
        }
        if hdr_len > max_payload || total_len - hdr_len > max_payload {
            return Err(WireError::TooLarge {
                max_payload,
                line: shown(line),
            });
        }
        let end = body_at + total_len;
        if buf.len() < end + 2 {
            return Ok(None);
        }
        if &buf[end..end + 2] != b"\r\n" {
            return Err(WireError::NoCrlf(shown(line)));
        }
        let headers = if with_headers {
            parse_headers(&buf[body_at..body_at + hdr_len])?
        } else {
            Vec::new()
        };
        let msg = Inbound {
            subject: to_string(subject),
            reply: reply.map(to_string),
            headers,
            payload: Bytes::copy_from_slice(&buf[body_at + hdr_len..end]),
        };
        return Ok(Some((Op::Msg(msg), end + 2)));
    }
    let op = if is(b"PING") {
        Op::Ping
    } else if is(b"PONG") {
        Op::Pong
    } else if is(b"+OK") {
        Op::Ok
    } else if is(b"-ERR") {
        let text = to_string(args);
        let text = text.trim();
        let text = text
            .strip_prefix('\'')
            .and_then(|t| t.strip_suffix('\''))
            .unwrap_or(text);
        Op::Err(text.to_string())
    } else if is(b"INFO") {
        Op::Info(args.to_vec())
    } else {
        return Err(WireError::Unexpected(shown(line)));
    };
    Ok(Some((op, body_at)))
}

/// `NATS/1.0[ status]\r\nKey: Value\r\n...\r\n\r\n` → fields in order.
pub fn parse_headers(block: &[u8]) -> Result<Vec<(String, String)>, WireError> {
    let text = String::from_utf8_lossy(block);
    let mut lines = text.split("\r\n");
    let first = lines.next().unwrap_or("");
    if !first.starts_with("NATS/") {
        return Err(WireError::HeaderBlock(shown(block)));
    }
    let mut out = Vec::new();
    for line in lines {
        if line.is_empty() {
            continue;
        }
        if let Some((k, v)) = line.split_once(':') {
            out.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    Ok(out)
}

pub(super) fn encode_headers(headers: &[(&str, &str)]) -> Result<Box<[u8]>, HeaderEncodeError> {
    let mut out = Vec::with_capacity(
        12 + headers
            .iter()
            .map(|(k, v)| k.len() + v.len() + 4)
            .sum::<usize>(),
    );
    out.extend_from_slice(b"NATS/1.0\r\n");
    for (k, v) in headers {
        if k.is_empty() || !k.bytes().all(|b| b > b' ' && b < 0x7f && b != b':') {
            return Err(HeaderEncodeError::Name(k.to_string()));
        }
        if v.bytes().any(|b| b == b'\r' || b == b'\n') {
            return Err(HeaderEncodeError::LineBreak(k.to_string()));
        }
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(out.into_boxed_slice())
}

pub(super) fn encode_sub(w: &mut Vec<u8>, subject: &str, queue: Option<&str>, sid: u64) {
    w.extend_from_slice(b"SUB ");
    w.extend_from_slice(subject.as_bytes());
    if let Some(q) = queue {
        w.push(b' ');
        w.extend_from_slice(q.as_bytes());
    }
    let _ = write!(w, " {sid}\r\n");
}

/// Appends a command's protocol text; true = Close.
pub(super) fn encode_cmd(w: &mut Vec<u8>, cmd: Cmd, max_payload: usize, headers_ok: bool) -> bool {
    match cmd {
        Cmd::Sub {
            subject,
            queue,
            sid,
        } => encode_sub(w, &subject, queue.as_deref(), sid),
        Cmd::Unsub { sid } => {
            let _ = write!(w, "UNSUB {sid}\r\n");
        }
        Cmd::Pub {
            subject,
            headers,
            payload,
        } => {
            let hlen = headers.as_ref().map_or(0, |h| h.len());
            if hlen + payload.len() > max_payload {
                tracing::warn!(
                    subject = &*subject,
                    bytes = hlen + payload.len(),
                    max_payload,
                    "publish dropped: larger than the NATS server's max_payload"
                );
                return false;
            }
            match headers {
                Some(h) if headers_ok => {
                    let _ = write!(
                        w,
                        "HPUB {subject} {} {}\r\n",
                        h.len(),
                        h.len() + payload.len()
                    );
                    w.extend_from_slice(&h);
                }
                Some(_) => {
                    tracing::warn!(
                        subject = &*subject,
                        "publish dropped: the NATS server does not support headers"
                    );
                    return false;
                }
                None => {
                    let _ = write!(w, "PUB {subject} {}\r\n", payload.len());
                }
            }
            w.extend_from_slice(&payload);
            w.extend_from_slice(b"\r\n");
        }
        Cmd::Close => return true,
    }
    false
}
