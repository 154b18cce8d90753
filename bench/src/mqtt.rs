//! A minimal MQTT 3.1.1 client codec: CONNECT (clean session, keepalive),
//! CONNACK, SUBSCRIBE at QoS 0, SUBACK, PUBLISH at QoS 0, PINGREQ and
//! PINGRESP. Enough to hold connections and receive a topic fan-out.

use crate::proto::Event;

/// PINGREQ: fixed header only.
pub const PINGREQ: &[u8] = &[0xC0, 0x00];

/// Largest packet accepted from the broker (remaining length), bytes.
const PACKET_BYTES_MAX: usize = 16 << 20;

fn put_remaining_len(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
        }
    }
}

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(first);
    put_remaining_len(&mut out, body.len());
    out.extend_from_slice(body);
    out
}

/// CONNECT with a clean session, no will, no credentials.
pub fn connect(client_id: &str, keepalive_s: u16) -> Vec<u8> {
    let mut body = Vec::with_capacity(16 + client_id.len());
    put_str(&mut body, b"MQTT");
    body.push(4); // protocol level 3.1.1
    body.push(0x02); // clean session
    body.extend_from_slice(&keepalive_s.to_be_bytes());
    put_str(&mut body, client_id.as_bytes());
    packet(0x10, &body)
}

/// SUBSCRIBE to one topic filter at QoS 0.
pub fn subscribe(packet_id: u16, topic: &str) -> Vec<u8> {
    let mut body = Vec::with_capacity(5 + topic.len());
    body.extend_from_slice(&packet_id.to_be_bytes());
    put_str(&mut body, topic.as_bytes());
    body.push(0); // requested QoS
    packet(0x82, &body)
}

/// PUBLISH at QoS 0 (no packet id), not retained.
pub fn publish(topic: &str, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(2 + topic.len() + payload.len());
    put_str(&mut body, topic.as_bytes());
    body.extend_from_slice(payload);
    packet(0x30, &body)
}

/// Parses every whole packet of `buf`, calling `on` for each; returns the
/// bytes used (an incomplete packet at the end is left).
pub fn parse(buf: &[u8], on: &mut dyn FnMut(Event)) -> Result<usize, String> {
    let mut pos = 0;
    loop {
        let rest = &buf[pos..];
        if rest.len() < 2 {
            return Ok(pos);
        }
        let (mut len, mut mult, mut i) = (0usize, 1usize, 1usize);
        loop {
            let Some(&b) = rest.get(i) else {
                return Ok(pos);
            };
            len += (b & 0x7f) as usize * mult;
            i += 1;
            if b & 0x80 == 0 {
                break;
            }
            mult *= 128;
            if i > 4 {
                return Err("mqtt: remaining length over 4 bytes".into());
            }
        }
        if len > PACKET_BYTES_MAX {
            return Err(format!("mqtt: packet of {len} bytes"));
        }
        if rest.len() < i + len {
            return Ok(pos);
        }
        let body = &rest[i..i + len];
        pos += i + len;
        match rest[0] >> 4 {
            2 => match body.get(1) {
                Some(0) => on(Event::Ready),
                Some(rc) => on(Event::Refused(format!("connack:rc{rc}"))),
                None => return Err("mqtt: short CONNACK".into()),
            },
            3 => {
                let qos = (rest[0] >> 1) & 3;
                if body.len() < 2 {
                    return Err("mqtt: short PUBLISH".into());
                }
                let tlen = u16::from_be_bytes([body[0], body[1]]) as usize;
                let start = 2 + tlen + if qos > 0 { 2 } else { 0 };
                if start > body.len() {
                    return Err("mqtt: bad PUBLISH topic length".into());
                }
                on(Event::Delivery(&body[start..]));
            }
            9 => on(Event::SubAck(body.get(2).is_some_and(|&rc| rc < 0x80))),
            13 => on(Event::Pong),
            _ => on(Event::Other("mqtt_other")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_and_parses() {
        let c = connect("u1", 30);
        assert_eq!(&c[..2], &[0x10, 14]);
        assert_eq!(&c[2..8], &[0, 4, b'M', b'Q', b'T', b'T']);
        let p = publish("bench", b"hello");
        let mut big = vec![0x20, 2, 0, 0, 0x90, 3, 0, 1, 0, 0xD0, 0];
        big.extend_from_slice(&p);
        let mut got = Vec::new();
        let used = parse(&big[..big.len() - 1], &mut |e| got.push(format!("{e:?}"))).unwrap();
        assert_eq!(used, 11);
        assert_eq!(got, vec!["Ready", "SubAck(true)", "Pong"]);
        got.clear();
        parse(&big[11..], &mut |e| got.push(format!("{e:?}"))).unwrap();
        assert_eq!(got, vec!["Delivery([104, 101, 108, 108, 111])"]);
        let mut long = Vec::new();
        put_remaining_len(&mut long, 200);
        assert_eq!(long, vec![0xC8, 0x01]);
    }
}
