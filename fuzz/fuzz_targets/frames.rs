//! Fuzzes the frame splitter (`gateway/src/wire/frames.rs`): a stream of
//! length-prefixed frames arriving in chunks, with the partial frame kept
//! between reads as a connection keeps it. The first byte picks the frame
//! limit and the chunk size; the rest is the stream. Checked:
//! - never a panic, whatever the bytes;
//! - the stream split chunk by chunk gives the same frames, and the same
//!   error or none, as the stream split whole;
//! - what is kept between reads is less than one frame, and its buffer is
//!   no bigger than that frame (its announced size, or what is there
//!   before the prefix is in): a client cannot make the gateway hold more
//!   than the frame it sends.
#![no_main]

use gateway::wire::frames::Split;
use gw_proto::pb::Frame;
use libfuzzer_sys::fuzz_target;

/// Frames of `stream` fed `chunk` bytes at a time, and whether an error
/// ended it.
fn split(stream: &[u8], max: usize, chunk: usize) -> (Vec<Frame>, bool) {
    let mut kept = Vec::new();
    let mut frames = Vec::new();
    for piece in stream.chunks(chunk) {
        let mut s = Split::new(std::mem::take(&mut kept), piece);
        loop {
            match s.next(max) {
                Some(Ok(f)) => frames.push(f),
                Some(Err(_)) => return (frames, true),
                None => break,
            }
        }
        kept = s.rest(max);
        if kept.len() >= 4 {
            let announced = u32::from_be_bytes([kept[0], kept[1], kept[2], kept[3]]) as usize;
            assert!(announced <= max, "a frame over the limit is kept");
            assert!(kept.len() < 4 + announced, "a whole frame is kept");
            assert!(kept.capacity() <= 4 + announced, "more kept than the frame");
        } else {
            assert!(kept.capacity() <= 4, "more kept than the prefix");
        }
    }
    (frames, false)
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, stream)) = data.split_first() else {
        return;
    };
    let max = [8usize, 64, 512, 4096][usize::from(pick & 3)];
    let chunk = usize::from(pick >> 2) + 1;
    let whole = split(stream, max, stream.len().max(1));
    let pieces = split(stream, max, chunk);
    assert_eq!(whole, pieces);
});
