//! The wire protocols the flood client speaks, behind one event type: the
//! gateway's (`gw`), MQTT 3.1.1 against mosquitto, NATS against
//! nats-server, and `raw` (connect only, for the accept-and-hold sink);
//! the gateway's frames also as WebSocket messages ([`Codec::ws`]).

use bytes::Bytes;

use crate::{mqtt, nats, wire, ws};

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Gw,
    Mqtt,
    Nats,
    Raw,
}

/// How a connection's bytes are taken apart: the protocol, and whether
/// its frames travel as WebSocket messages (gw only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Codec {
    pub proto: Protocol,
    pub ws: bool,
}

/// Something the server sent, whatever the protocol.
#[derive(Debug)]
pub enum Event<'a> {
    /// Handshake accepted: gw AuthOk, MQTT CONNACK 0.
    Ready,
    /// Handshake refused, or a NATS -ERR: the reason.
    Refused(String),
    /// Answer to our heartbeat: gw Pong, PINGRESP, NATS PONG.
    Pong,
    /// NATS server PING: answer PONG.
    ServerPing,
    /// A fan-out message: gw Push, MQTT PUBLISH, NATS MSG (its payload).
    Delivery(&'a [u8]),
    /// gw: the Push just delivered wants an Ack of this seq.
    AckDue(u64),
    /// gw UpstreamReply.
    Reply {
        corr: u64,
        status: u32,
        payload: &'a [u8],
    },
    /// MQTT SUBACK (granted or not).
    SubAck(bool),
    /// gw GoAway (reason).
    GoAway(i32),
    /// gw Error (code).
    Error(i32),
    /// WebSocket close frame (code; 4000 + CloseReason from the gateway).
    Closed(u16),
    Other(&'static str),
}

/// Parses whole messages of `buf`; returns the bytes used.
fn parse(codec: Codec, buf: &[u8], on: &mut dyn FnMut(Event)) -> Result<usize, String> {
    match codec.proto {
        Protocol::Gw if codec.ws => ws::parse(buf, on),
        Protocol::Gw => wire::parse(buf, on),
        Protocol::Mqtt => mqtt::parse(buf, on),
        Protocol::Nats => nats::parse(buf, on),
        Protocol::Raw => Ok(buf.len()),
    }
}

/// Decodes every whole message of `partial ++ data`, calling `on` for each;
/// leaves the bytes of an incomplete one in `partial` (which stays
/// unallocated when reads end on message boundaries, the usual case).
pub fn feed(
    codec: Codec,
    partial: &mut Vec<u8>,
    data: &[u8],
    on: &mut dyn FnMut(Event),
) -> Result<(), String> {
    let joined;
    let buf: &[u8] = if partial.is_empty() {
        data
    } else {
        partial.extend_from_slice(data);
        joined = std::mem::take(partial);
        &joined
    };
    let used = parse(codec, buf, on)?;
    if used < buf.len() {
        *partial = buf[used..].to_vec();
    }
    Ok(())
}

/// The heartbeat this protocol sends (raw sends the gw Ping bytes, which
/// the sink discards).
pub fn heartbeat(proto: Protocol) -> Bytes {
    match proto {
        Protocol::Gw | Protocol::Raw => wire::ping_frame(),
        Protocol::Mqtt => Bytes::from_static(mqtt::PINGREQ),
        Protocol::Nats => Bytes::from_static(nats::PING),
    }
}

/// What to send for a broadcast with `text`, and the payload receivers get.
/// MQTT and NATS carry the same JSON the gateway's demo backend pushes, so
/// every system moves messages of the same size.
pub fn publish(proto: Protocol, room: &str, corr: u64, text: &str) -> Bytes {
    let json = format!("{{\"from\":\"s0\",\"room\":\"{room}\",\"text\":\"{text}\"}}");
    match proto {
        Protocol::Gw => wire::upstream_frame(
            corr,
            "room.send",
            format!("{{\"room\":\"{room}\",\"text\":\"{text}\"}}").into_bytes(),
        ),
        Protocol::Mqtt => mqtt::publish(room, json.as_bytes()).into(),
        Protocol::Nats => nats::publish(room, json.as_bytes()).into(),
        Protocol::Raw => Bytes::new(),
    }
}

/// Whether a pushed payload is marked HIGH by natspub (`"prio":"h"`).
pub fn is_high(payload: &[u8]) -> bool {
    const KEY: &[u8] = b"\"prio\":\"h\"";
    payload.windows(KEY.len()).any(|w| w == KEY)
}

/// The `"text":"<round>:<ns>"` of a broadcast payload.
pub fn parse_text(payload: &[u8]) -> Option<(u32, u64)> {
    const KEY: &[u8] = b"\"text\":\"";
    let at = payload.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let rest = &payload[at..];
    let end = rest.iter().position(|&b| b == b'"')?;
    let s = std::str::from_utf8(&rest[..end]).ok()?;
    let (r, ns) = s.split_once(':')?;
    Some((r.parse().ok()?, ns.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feeds_partial_messages() {
        let mut partial = Vec::new();
        let mut n = 0;
        let data = b"PONG\r\nMSG a 1 2\r\nhi\r\nPO";
        for chunk in data.chunks(5) {
            let codec = Codec {
                proto: Protocol::Nats,
                ws: false,
            };
            feed(codec, &mut partial, chunk, &mut |_| n += 1).unwrap();
        }
        assert_eq!(n, 2);
        assert_eq!(partial, b"PO");
    }

    #[test]
    fn text_round_trips() {
        let p = publish(Protocol::Nats, "bench", 0, "3:123456789");
        assert_eq!(parse_text(&p), Some((3, 123_456_789)));
        assert_eq!(
            parse_text(b"{\"from\":\"u0\",\"room\":\"r\",\"text\":\"12:34\"}"),
            Some((12, 34))
        );
        assert_eq!(parse_text(b"{}"), None);
    }
}
