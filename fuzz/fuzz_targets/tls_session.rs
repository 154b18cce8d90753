//! Fuzzes the TLS layer's input side (`gateway/src/wire/tls.rs`,
//! `Tls::feed`) with a self-signed server configuration: whatever a
//! client sends before and during the handshake. The first byte picks the
//! chunk size the stream arrives in; the rest is the stream. Checked:
//! - never a panic, whatever the bytes;
//! - the stream fed chunk by chunk ends the same as fed whole: failed or
//!   not, the same plaintext (none, before a handshake completes);
//! - what the layer holds between reads stays within one handshake record
//!   plus the session's fixed estimate (the pre-auth budget's charge).
#![no_main]

use std::sync::{Arc, OnceLock};

use gateway::wire::tls::{Tls, TLS_SESSION_BYTES};
use libfuzzer_sys::fuzz_target;

/// A TLS record header and rustls's handshake record limit (2^14 + 2048).
const HELD_BYTES_MAX: usize = TLS_SESSION_BYTES + 5 + 16 * 1024 + 2048;

fn config() -> Arc<rustls::ServerConfig> {
    static CFG: OnceLock<Arc<rustls::ServerConfig>> = OnceLock::new();
    CFG.get_or_init(|| {
        let mut cfg = gateway::Config::default();
        cfg.tls.self_signed = true;
        gateway::tls::server_config(&cfg)
            .ok()
            .flatten()
            .expect("a self-signed TLS configuration")
    })
    .clone()
}

/// (failed, plaintext) after feeding `stream` `chunk` bytes at a time.
fn feed(stream: &[u8], chunk: usize) -> (bool, Vec<u8>) {
    let Ok(mut tls) = Tls::start(config(), 64 * 1024) else {
        panic!("a session starts");
    };
    let mut plain = Vec::new();
    for piece in stream.chunks(chunk) {
        let fed = tls.feed(piece, 1 << 20);
        plain.extend_from_slice(&fed.plain);
        if fed.failed.is_some() || fed.peer_closed {
            return (fed.failed.is_some(), plain);
        }
        let Some(t) = fed.tls else {
            return (true, plain);
        };
        assert!(t.buffered() <= HELD_BYTES_MAX, "held {}", t.buffered());
        tls = t;
    }
    (false, plain)
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, stream)) = data.split_first() else {
        return;
    };
    let whole = feed(stream, stream.len().max(1));
    let pieces = feed(stream, usize::from(pick) + 1);
    assert_eq!(whole, pieces);
});
