//! A minimal NATS client codec: CONNECT, PING/PONG (both ways), SUB, PUB,
//! and parsing of MSG, INFO, +OK and -ERR from the server.

use crate::proto::Event;

pub const PING: &[u8] = b"PING\r\n";
pub const PONG: &[u8] = b"PONG\r\n";

/// Longest protocol line accepted (INFO is the long one), bytes.
const LINE_BYTES_MAX: usize = 64 * 1024;
/// Largest message payload accepted, bytes.
const PAYLOAD_BYTES_MAX: usize = 16 << 20;

/// CONNECT followed by PING: the PONG says the server took the CONNECT.
pub fn connect(name: &str) -> Vec<u8> {
    format!("CONNECT {{\"verbose\":false,\"pedantic\":false,\"name\":\"{name}\"}}\r\nPING\r\n")
        .into_bytes()
}

/// SUB followed by PING: the PONG says the subscription is in place.
pub fn subscribe(subject: &str, sid: u32) -> Vec<u8> {
    format!("SUB {subject} {sid}\r\nPING\r\n").into_bytes()
}

/// PUB of one message.
pub fn publish(subject: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!("PUB {subject} {}\r\n", payload.len()).into_bytes();
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\n");
    out
}

fn find_crlf(b: &[u8]) -> Option<usize> {
    b.windows(2).position(|w| w == b"\r\n")
}

fn starts_with_ci(line: &[u8], op: &[u8]) -> bool {
    line.len() >= op.len() && line[..op.len()].eq_ignore_ascii_case(op)
}

/// Parses every whole message of `buf`, calling `on` for each; returns the
/// bytes used (an incomplete message at the end is left).
pub fn parse(buf: &[u8], on: &mut dyn FnMut(Event)) -> Result<usize, String> {
    let mut pos = 0;
    while pos < buf.len() {
        let rest = &buf[pos..];
        let Some(eol) = find_crlf(rest) else {
            if rest.len() > LINE_BYTES_MAX {
                return Err("nats: protocol line too long".into());
            }
            return Ok(pos);
        };
        let line = &rest[..eol];
        if starts_with_ci(line, b"MSG ") {
            let text = std::str::from_utf8(line).map_err(|_| "nats: MSG line not UTF-8")?;
            let n: usize = text
                .split_ascii_whitespace()
                .last()
                .and_then(|t| t.parse().ok())
                .ok_or("nats: MSG without a size")?;
            if n > PAYLOAD_BYTES_MAX {
                return Err(format!("nats: MSG of {n} bytes"));
            }
            let end = eol + 2 + n + 2;
            if rest.len() < end {
                return Ok(pos);
            }
            on(Event::Delivery(&rest[eol + 2..eol + 2 + n]));
            pos += end;
            continue;
        }
        if starts_with_ci(line, b"PING") {
            on(Event::ServerPing);
        } else if starts_with_ci(line, b"PONG") {
            on(Event::Pong);
        } else if starts_with_ci(line, b"-ERR") {
            let msg = String::from_utf8_lossy(&line[4..]);
            on(Event::Refused(format!(
                "nats_err:{}",
                msg.trim().trim_matches('\'').replace(' ', "_")
            )));
        } else if starts_with_ci(line, b"INFO") || starts_with_ci(line, b"+OK") {
            on(Event::Other("nats_info"));
        } else {
            return Err("nats: unknown operation".into());
        }
        pos += eol + 2;
    }
    Ok(pos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_messages() {
        let mut s = b"INFO {\"x\":1}\r\nPONG\r\nMSG bench 1 5\r\nhello\r\nPING\r\n-ERR 'Unknown Protocol'\r\nMSG a 1 3\r\nab".to_vec();
        let mut got = Vec::new();
        let used = parse(&s, &mut |e| got.push(format!("{e:?}"))).unwrap();
        assert_eq!(
            got,
            vec![
                "Other(\"nats_info\")",
                "Pong",
                "Delivery([104, 101, 108, 108, 111])",
                "ServerPing",
                "Refused(\"nats_err:Unknown_Protocol\")"
            ]
        );
        s.drain(..used);
        assert_eq!(s, b"MSG a 1 3\r\nab");
        assert_eq!(publish("b", b"xy"), b"PUB b 2\r\nxy\r\n");
    }
}
