//! Fuzzes the WebSocket frame parser (`gateway/src/conn/ws.rs`,
//! `parse_frames`) at a message limit the input picks. Checked:
//! - never a panic, whatever the bytes;
//! - the bytes parsed whole and parsed in pieces (carrying the partial
//!   frame and the open message between calls, as the gateway does) give
//!   the same events, the same error and the same open message;
//! - every message is a length-prefixed frame within the limit, pings
//!   carry at most 125 bytes, and nothing follows a close.
#![no_main]

use gateway::wire::ws::{parse_frames, Event, Parsed};
use libfuzzer_sys::fuzz_target;

fn check(p: &Parsed, max: usize, len: usize) {
    assert!(p.used <= len);
    assert!(p.frames * 6 <= p.used, "a client frame is at least 6 bytes");
    for (i, e) in p.events.iter().enumerate() {
        match e {
            Event::Message(m) => {
                assert!(m.len() >= 4);
                let n = u32::from_be_bytes([m[0], m[1], m[2], m[3]]) as usize;
                assert_eq!(n, m.len() - 4);
                assert!(n <= max);
            }
            Event::Ping(p) => assert!(p.len() <= 125),
            Event::Pong => {}
            Event::Close(echo) => {
                assert!(echo.is_empty() || echo.len() == 2);
                assert_eq!(i, p.events.len() - 1, "nothing after a close");
                assert!(p.error.is_none());
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&k, data)) = data.split_first() else {
        return;
    };
    let max = 1 + usize::from(k) * 64;
    let mut whole_message = None;
    let whole = parse_frames(data, max, &mut whole_message);
    check(&whole, max, data.len());

    let step = 1 + usize::from(k % 7);
    let mut events = Vec::new();
    let mut error = None;
    let mut message = None;
    let mut buf = Vec::new();
    for chunk in data.chunks(step) {
        buf.extend_from_slice(chunk);
        let p = parse_frames(&buf, max, &mut message);
        check(&p, max, buf.len());
        let done = p.error.is_some() || matches!(p.events.last(), Some(Event::Close(_)));
        events.extend(p.events);
        if done {
            error = p.error;
            break;
        }
        buf.drain(..p.used);
    }
    assert_eq!(events, whole.events);
    assert_eq!(error, whole.error);
    if error.is_none() {
        assert_eq!(message, whole_message);
    }
});
