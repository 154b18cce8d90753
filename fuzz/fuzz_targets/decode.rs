//! Fuzzes the frame decoder: any bytes, at any frame_bytes_max, must give a
//! frame, Incomplete, or a typed error; never a panic. A decoded frame must
//! re-encode and decode to the same frame.
#![no_main]

use gw_proto::{decode, encode, Decoded};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let max = 1 << 16;
    let mut pos = 0;
    while pos < data.len() {
        match decode(&data[pos..], max) {
            Ok(Decoded::Frame(f, used)) => {
                assert!(used >= 4 && pos + used <= data.len());
                let again = encode(&f);
                match decode(&again, max) {
                    Ok(Decoded::Frame(g, n)) => assert!(g == f && n == again.len()),
                    other => panic!("re-encoded frame did not decode: {other:?}"),
                }
                pos += used;
            }
            Ok(Decoded::Incomplete(need)) => {
                assert!(need > 0);
                break;
            }
            Err(_) => break,
        }
    }
});
