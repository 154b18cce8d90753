//! Fuzzes the TLS 1.3 record layer (`gateway/src/conn/records/`) with
//! fixed traffic secrets. The input picks a cipher suite, then is a script
//! of what a client sends: raw bytes (anything at all), application data
//! with padding, a record of any content type, a KeyUpdate, or a cut
//! point. The wire is fed to the server's `Records::open` in chunks cut
//! where the script says. Checked:
//! - never a panic, whatever the bytes;
//! - a clean script (application data and KeyUpdates sealed by the layer,
//!   no flood) opens back to exactly the data sealed, in order, with no
//!   error and nothing left over;
//! - what the server seals back (its own KeyUpdates included) opens at the
//!   client: its data when the server is fine, else the fatal alert that
//!   the server's typed error names (nothing when it names none).
#![no_main]

use gateway::wire::records::keys::Suite;
use gateway::wire::records::{RecordError, Records, APPLICATION_DATA};
use libfuzzer_sys::fuzz_target;

const CLIENT: [u8; 48] = [0x11; 48];
const SERVER: [u8; 48] = [0x22; 48];
/// Small, so that both sides change keys within a short script.
const PER_KEY: u64 = 8;
/// As in the layer: KeyUpdates in a row without data that are accepted.
const CONTROL_IN_A_ROW_MAX: usize = 32;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, mut script)) = data.split_first() else {
        return;
    };
    let suite = match pick % 3 {
        0 => Suite::Aes128GcmSha256,
        1 => Suite::Aes256GcmSha384,
        _ => Suite::Chacha20Poly1305Sha256,
    };
    let n = suite.secret_len();
    let (c, s) = (&CLIENT[..n], &SERVER[..n]);
    let mut server = Records::new(suite, c, 0, s, 0, PER_KEY).unwrap();
    let mut client = Records::new(suite, s, 0, c, 0, PER_KEY).unwrap();

    let mut wire = Vec::new();
    let mut sealed = Vec::new(); // application data the client sealed
    let mut clean = true;
    let mut control_run = 0;
    let mut cuts = Vec::new();
    while let [op, rest @ ..] = script {
        let len = rest.first().map_or(0, |&b| b as usize);
        let body = rest.get(1..).unwrap_or(&[]);
        let body = &body[..len.min(body.len())];
        script = &rest[(1 + body.len()).min(rest.len())..];
        match op % 5 {
            0 => {
                wire.extend_from_slice(body);
                clean = false;
            }
            1 => {
                // Data with padding; the KeyUpdate first when one is due.
                if client.key_update_due() && client.seal_key_update(&mut wire).is_ok() {
                    control_run += 1;
                }
                let padding = usize::from(op >> 3) * 600;
                if client
                    .seal_padded(body, APPLICATION_DATA, padding, &mut wire)
                    .is_ok()
                {
                    sealed.extend_from_slice(body);
                    control_run = 0;
                }
            }
            2 => {
                let content_type = op >> 3;
                if client.seal_padded(body, content_type, 0, &mut wire).is_ok() {
                    clean = false;
                }
            }
            3 => {
                if client.seal_key_update(&mut wire).is_ok() {
                    control_run += 1;
                }
            }
            _ => cuts.push(1 + len * 7),
        }
        if control_run > CONTROL_IN_A_ROW_MAX {
            clean = false;
        }
    }

    // Feed the wire in chunks.
    let mut got = Vec::new();
    let mut failed: Option<RecordError> = None;
    let mut closed = false;
    let mut pos = 0;
    let mut k = 0;
    while pos < wire.len() {
        let step = cuts
            .get(k % cuts.len().max(1))
            .copied()
            .unwrap_or(wire.len());
        k += 1;
        let end = (pos + step).min(wire.len());
        match server.open(&wire[pos..end]) {
            Ok(o) => {
                got.extend_from_slice(&o.plain);
                if o.peer_closed {
                    closed = true;
                    break;
                }
            }
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
        pos = end;
    }
    if clean {
        assert_eq!(failed, None, "a clean script failed");
        assert!(!closed);
        assert_eq!(got, sealed, "data opened back differs");
        assert_eq!(server.buffered(), 0, "whole records leave nothing");
    } else if failed.is_none() {
        // Whatever opened was data someone sealed: never more than sent.
        assert!(got.len() <= wire.len());
    }

    // The server's answer, read by the client.
    let mut back = Vec::new();
    match failed {
        None => {
            if server.key_update_due() {
                server.seal_key_update(&mut back).unwrap();
            }
            server.seal(b"pong", &mut back).unwrap();
            server.seal(&[7u8; 300], &mut back).unwrap();
            let o = client.open(&back).expect("the server's records open");
            assert_eq!(o.plain.len(), 304);
            assert_eq!(&o.plain[..4], b"pong");
        }
        Some(e) => {
            let _ = e.close_reason();
            server.fail(e, &mut back);
            assert!(server.closed());
            assert!(server.seal(b"after", &mut back).is_err());
            match e.alert() {
                Some(a) => assert_eq!(
                    client.open(&back).unwrap_err(),
                    RecordError::PeerAlert(a as u8)
                ),
                None => assert!(back.is_empty()),
            }
        }
    }
});
