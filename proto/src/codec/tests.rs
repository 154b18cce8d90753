use super::*;
use crate::pb::{self, frame::Body};

const MAX: usize = 64 * 1024;

fn samples() -> Vec<Frame> {
    let b = |body| Frame { body: Some(body) };
    vec![
        b(Body::Ping(pb::Ping::default())),
        b(Body::Auth(pb::Auth {
            protocol_version: 1,
            token: "a.b.c".into(),
            device_id: "phone".into(),
            resume_seq: 42,
            metadata: [("os".to_string(), "linux".to_string())].into(),
            heartbeat_interval_ms: 30_000,
            push_batches: true,
        })),
        b(Body::Upstream(pb::Upstream {
            correlation_id: u64::MAX,
            route: "chat.send".into(),
            client_msg_id: "m1".into(),
            payload: Bytes::from(vec![7u8; 1000]),
            room: "quiz".into(),
        })),
        b(Body::Push(pb::Push {
            seq: 9,
            route: "r".into(),
            payload: Bytes::from_static(b"\x00\xff"),
            ack_required: true,
            priority: pb::Priority::High as i32,
            retransmit: false,
            ..Default::default()
        })),
        // A batch: a Push carrying pushes of one room.
        b(Body::Push(pb::Push {
            batch: vec![
                pb::Push {
                    route: "like".into(),
                    priority: pb::Priority::Low as i32,
                    ..Default::default()
                },
                pb::Push {
                    route: "gift".into(),
                    payload: Bytes::from_static(b"rose"),
                    ..Default::default()
                },
            ],
            room: "live-1".into(),
            dropped: 12,
            ..Default::default()
        })),
        b(Body::Ack(pb::Ack { seq: 3 })),
    ]
}

#[test]
fn round_trip_every_sample() {
    for f in samples() {
        let bytes = encode(&f);
        assert_eq!(decode(&bytes, MAX), Ok(Decoded::Frame(f, bytes.len())));
    }
}

#[test]
fn ping_is_under_ten_bytes_on_the_wire() {
    let ping = encode(&Frame {
        body: Some(Body::Ping(pb::Ping::default())),
    });
    assert!(ping.len() < 10, "ping is {} bytes", ping.len());
}

/// Every frame, and a stream of all frames, split at every byte position:
/// the front part is Incomplete (never an error), and the whole decodes.
#[test]
fn split_at_every_byte() {
    let frames = samples();
    let mut stream = BytesMut::new();
    for f in &frames {
        encode_into(f, &mut stream);
    }
    for cut in 0..stream.len() {
        let (head, _) = stream.split_at(cut);
        // Decode as many whole frames as the head holds; the rest must be Incomplete.
        let mut pos = 0;
        let mut got = 0;
        loop {
            match decode(&head[pos..], MAX).expect("no error on a prefix") {
                Decoded::Frame(f, used) => {
                    assert_eq!(f, frames[got]);
                    pos += used;
                    got += 1;
                }
                Decoded::Incomplete(need) => {
                    assert!(need > 0);
                    break;
                }
            }
        }
        assert!(got < frames.len());
    }
    // The whole stream yields every frame, in order.
    let mut pos = 0;
    for f in &frames {
        match decode(&stream[pos..], MAX) {
            Ok(Decoded::Frame(g, used)) => {
                assert_eq!(&g, f);
                pos += used;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(pos, stream.len());
}

#[test]
fn oversized_length_is_rejected_before_the_body_arrives() {
    let mut buf = BytesMut::new();
    buf.put_u32((MAX + 1) as u32);
    assert_eq!(
        decode(&buf, MAX),
        Err(DecodeError::TooLarge {
            len: MAX + 1,
            max: MAX
        })
    );
    assert_eq!(
        decode(&[0xff, 0xff, 0xff, 0xff], MAX),
        Err(DecodeError::TooLarge {
            len: u32::MAX as usize,
            max: MAX
        })
    );
    // Exactly at the limit is allowed (Incomplete, not an error).
    let mut at = BytesMut::new();
    at.put_u32(MAX as u32);
    assert!(matches!(decode(&at, MAX), Ok(Decoded::Incomplete(_))));
}

#[test]
fn garbage_is_malformed_not_a_panic() {
    for garbage in [
        &b"\x00\x00\x00\x03\xff\xff\xff"[..],
        &b"\x00\x00\x00\x02\x0a\x05"[..],
        &b"\x00\x00\x00\x01\x08"[..],
        b"GET / HTTP/1.1\r\n\r\n",
    ] {
        match decode(garbage, MAX) {
            Err(DecodeError::Malformed(_)) | Err(DecodeError::TooLarge { .. }) => {}
            Ok(Decoded::Incomplete(_)) => {}
            other => panic!("garbage {garbage:?} decoded as {other:?}"),
        }
    }
    // "GET " as a length is 1195725856 bytes: rejected as too large.
    assert!(matches!(
        decode(b"GET / HTTP/1.1\r\n", MAX),
        Err(DecodeError::TooLarge { .. })
    ));
}

#[test]
fn empty_frame_has_no_body() {
    assert!(matches!(
        decode(&[0, 0, 0, 0], MAX),
        Err(DecodeError::Malformed(_))
    ));
}

#[test]
fn deterministic_random_bytes_never_panic() {
    // xorshift so the test is reproducible without a rand dependency.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..20_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let len = (x % 40) as usize;
        let mut buf = vec![0u8, 0, 0, len as u8];
        let mut y = x;
        for _ in 0..len {
            y = y.wrapping_mul(6364136223846793005).wrapping_add(1);
            buf.push((y >> 56) as u8);
        }
        let _ = decode(&buf, MAX);
    }
}
