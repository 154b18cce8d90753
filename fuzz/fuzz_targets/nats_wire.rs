//! Fuzzes the NATS protocol parser of the interest connection
//! (`gateway/src/nats/interest/wire.rs`): the bytes a server, or anything
//! posing as one, sends. The first byte picks the advertised max_payload
//! and the size of the chunks the stream arrives in; the rest is the
//! stream. Checked:
//! - never a panic, whatever the bytes;
//! - every operation parsed uses at least one byte and no more than given;
//! - the stream parsed as it arrives, chunk by chunk, gives the same
//!   operations, and the same error or none, as the stream parsed whole.
#![no_main]

use gateway::nats::interest::wire::{parse_op, Op};
use libfuzzer_sys::fuzz_target;

/// Operations parsed from `stream` fed `chunk` bytes at a time, and the
/// protocol error that ended the parse, if any.
fn parse(stream: &[u8], max_payload: usize, chunk: usize) -> (Vec<Op>, Option<String>) {
    let mut buf: Vec<u8> = Vec::new();
    let mut ops = Vec::new();
    let mut fed = 0;
    loop {
        loop {
            match parse_op(&buf, max_payload) {
                Ok(Some((op, used))) => {
                    assert!(
                        used > 0 && used <= buf.len(),
                        "used {used} of {}",
                        buf.len()
                    );
                    ops.push(op);
                    buf.drain(..used);
                }
                Ok(None) => break,
                Err(e) => return (ops, Some(e.to_string())),
            }
        }
        if fed == stream.len() {
            return (ops, None);
        }
        let n = chunk.min(stream.len() - fed);
        buf.extend_from_slice(&stream[fed..fed + n]);
        fed += n;
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, stream)) = data.split_first() else {
        return;
    };
    let max_payload = [1usize, 16, 1024, 1 << 20][usize::from(pick & 3)];
    let chunk = 1 + usize::from(pick >> 2);
    let whole = parse(stream, max_payload, stream.len().max(1));
    let chunked = parse(stream, max_payload, chunk);
    assert_eq!(whole, chunked, "chunks of {chunk} bytes parse differently");
});
