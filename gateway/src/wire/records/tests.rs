//! The record layer against RFC 8448's records, against itself as the
//! peer (a second `Records` with the secrets swapped plays the client),
//! and against records sealed by hand where the layer itself refuses to
//! seal them (oversized ones).

use super::keys::{Dir, Suite};
use super::*;

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

const SUITE: Suite = Suite::Aes256GcmSha384;
const CLIENT: [u8; 48] = [7; 48];
const SERVER: [u8; 48] = [9; 48];

/// (server, client), `per_key` records per key.
fn pair_with(per_key: u64) -> (Records, Records) {
    let server = Records::new(SUITE, &CLIENT, 0, &SERVER, 0, per_key).unwrap();
    let client = Records::new(SUITE, &SERVER, 0, &CLIENT, 0, per_key).unwrap();
    (server, client)
}

fn pair() -> (Records, Records) {
    pair_with(RECORDS_PER_KEY_MAX)
}

/// A record with any inner plaintext, under the client's key at `seq`:
/// what the layer refuses to seal.
fn by_hand(seq: u64, inner: &[u8], declared: Option<usize>) -> Vec<u8> {
    let mut d = Dir::new(SUITE, &CLIENT, seq).unwrap();
    let len = inner.len() + TAG_BYTES;
    let len = declared.unwrap_or(len);
    let header = [APPLICATION_DATA, 3, 3, (len >> 8) as u8, len as u8];
    let mut body = inner.to_vec();
    let nonce = d.next_nonce().unwrap();
    d.key()
        .seal_in_place_append_tag(nonce, Aad::from(header), &mut body)
        .unwrap();
    let mut rec = header.to_vec();
    rec.extend(body);
    rec
}

fn err(r: &mut Records, wire: &[u8]) -> RecordError {
    r.open(wire).unwrap_err()
}

#[test]
fn rfc_8448_records_byte_for_byte() {
    // RFC 8448 §3: the client's first application data (50 bytes 00..31,
    // sequence 0), the server's (sequence 1, after its NewSessionTicket),
    // then each side's close_notify.
    let c = hex("9e40646ce79a7f9dc05af8889bce6552875afa0b06df0087f792ebb7c17504a5");
    let s = hex("a11af9f05531f856ad47116b45a950328204b4f44bfb6b3a4b4f1f3fcb631643");
    let data: Vec<u8> = (0u8..=0x31).collect();
    let client_rec = hex(
        "1703030043a23f7054b62c94d0affafe8228ba55cbefacea42f914aa66bcab3f2b
         9819a8a5b46b395bd54a9a20441e2b62974e1f5a6292a2977014bd1e3deae63a
         eebb21694915e4",
    );
    let server_rec = hex(
        "17030300432e937e11ef4ac740e538ad36005fc4a46932fc3225d05f82aa1b36
         e30efaf97d90e6dffc602dcb501a59a8fcc49c4bf2e5f0a21c0047c2abf33254
         0dd032e167c2955d",
    );
    let suite = Suite::Aes128GcmSha256;
    let mut server = Records::new(suite, &c, 0, &s, 1, RECORDS_PER_KEY_MAX).unwrap();
    assert_eq!(server.open(&client_rec).unwrap().plain, data);
    let mut wire = Vec::new();
    server.seal(&data, &mut wire).unwrap();
    assert_eq!(wire, server_rec);
    wire.clear();
    server.seal_close_notify(&mut wire).unwrap();
    assert_eq!(
        wire,
        hex("1703030013b58fd67166ebf599d24720cfbe7efa7a8864a9")
    );

    let mut client = Records::new(suite, &s, 1, &c, 0, RECORDS_PER_KEY_MAX).unwrap();
    let mut wire = Vec::new();
    client.seal(&data, &mut wire).unwrap();
    assert_eq!(wire, client_rec);
    wire.clear();
    client.seal_close_notify(&mut wire).unwrap();
    assert_eq!(
        wire,
        hex("1703030013c9872760655666b74d7ff1153efd6db6d0b0e3")
    );
    assert_eq!(client.open(&server_rec).unwrap().plain, data);
}

#[test]
fn sealed_records_open_whole_and_split_at_every_byte() {
    let (_, mut client) = pair();
    let mut wire = Vec::new();
    client.seal(b"hello", &mut wire).unwrap();
    client
        .seal(&vec![1u8; PLAINTEXT_BYTES_MAX], &mut wire)
        .unwrap();
    client.seal(b"", &mut wire).unwrap(); // zero-length data is allowed
    let (mut server, _) = pair();
    let o = server.open(&wire).unwrap();
    assert_eq!(o.plain.len(), 5 + PLAINTEXT_BYTES_MAX);
    assert_eq!(&o.plain[..5], b"hello");
    let (mut server, _) = pair();
    let mut got = Vec::new();
    for b in &wire {
        got.extend(server.open(std::slice::from_ref(b)).unwrap().plain);
    }
    assert_eq!(got.len(), 5 + PLAINTEXT_BYTES_MAX);
    assert_eq!(server.buffered(), 0);
}

#[test]
fn padding_is_stripped_and_counts_toward_the_limit() {
    let (mut server, mut client) = pair();
    let mut wire = Vec::new();
    client
        .seal_padded(b"pad", APPLICATION_DATA, 300, &mut wire)
        .unwrap();
    // Content and padding together fill the record exactly.
    client
        .seal_padded(
            &[5; 100],
            APPLICATION_DATA,
            PLAINTEXT_BYTES_MAX - 100,
            &mut wire,
        )
        .unwrap();
    let o = server.open(&wire).unwrap();
    assert_eq!(o.plain.len(), 103);
    // One byte more is refused when sealing, and leaves nothing behind.
    let before = wire.len();
    assert_eq!(
        client
            .seal_padded(
                &[5; 100],
                APPLICATION_DATA,
                PLAINTEXT_BYTES_MAX - 99,
                &mut wire
            )
            .unwrap_err(),
        RecordError::Overflow(PLAINTEXT_BYTES_MAX + 1)
    );
    assert_eq!(wire.len(), before);
}

#[test]
fn oversized_records_are_a_record_overflow() {
    // Inner plaintext of 2^14 content + type: the largest allowed.
    let mut inner = vec![1u8; PLAINTEXT_BYTES_MAX];
    inner.push(APPLICATION_DATA);
    let (mut server, _) = pair();
    assert_eq!(
        server.open(&by_hand(0, &inner, None)).unwrap().plain.len(),
        PLAINTEXT_BYTES_MAX
    );
    // One byte of content more.
    let mut inner = vec![1u8; PLAINTEXT_BYTES_MAX + 1];
    inner.push(APPLICATION_DATA);
    let (mut server, _) = pair();
    let e = err(&mut server, &by_hand(0, &inner, None));
    assert_eq!(e, RecordError::Overflow(PLAINTEXT_BYTES_MAX + 2));
    assert_eq!(e.alert(), Some(Alert::RecordOverflow));
    // Padding past the limit, with little content.
    let mut inner = vec![1u8, APPLICATION_DATA];
    inner.resize(PLAINTEXT_BYTES_MAX + 2, 0);
    let (mut server, _) = pair();
    assert!(matches!(
        err(&mut server, &by_hand(0, &inner, None)),
        RecordError::Overflow(_)
    ));
    // A header announcing more than 2^14 + 256 bytes: refused at once.
    let (mut server, _) = pair();
    let e = err(&mut server, &[APPLICATION_DATA, 3, 3, 0x41, 0x01]);
    assert_eq!(e, RecordError::Overflow(CIPHERTEXT_BYTES_MAX + 1));
}

#[test]
fn failures_map_to_their_alerts() {
    let cases: Vec<(Vec<u8>, RecordError, Option<Alert>)> = vec![
        (
            {
                let mut w = by_hand(0, b"hello\x17", None);
                let last = w.len() - 1;
                w[last] ^= 1;
                w
            },
            RecordError::BadRecordMac,
            Some(Alert::BadRecordMac),
        ),
        (
            vec![APPLICATION_DATA, 3, 3, 0, 16]
                .into_iter()
                .chain([0; 16])
                .collect(),
            RecordError::BadRecordMac,
            Some(Alert::BadRecordMac),
        ),
        (
            by_hand(0, &[0, 0, 0], None),
            RecordError::NoContentType,
            Some(Alert::UnexpectedMessage),
        ),
        (
            by_hand(0, b"x\x99", None),
            RecordError::UnexpectedContent(0x99),
            Some(Alert::UnexpectedMessage),
        ),
        (
            by_hand(0, &[1, CHANGE_CIPHER_SPEC], None),
            RecordError::UnexpectedContent(CHANGE_CIPHER_SPEC),
            Some(Alert::UnexpectedMessage),
        ),
        (
            vec![HANDSHAKE, 3, 3, 0, 1, 0],
            RecordError::UnexpectedRecord(HANDSHAKE),
            Some(Alert::UnexpectedMessage),
        ),
        (
            vec![CHANGE_CIPHER_SPEC, 3, 3, 0, 1, 1],
            RecordError::UnexpectedRecord(CHANGE_CIPHER_SPEC),
            Some(Alert::UnexpectedMessage),
        ),
        (
            by_hand(0, &[2, 0, 0, ALERT], None),
            RecordError::Decode("alert"),
            Some(Alert::DecodeError),
        ),
        (
            by_hand(0, &[2, 40, ALERT], None),
            RecordError::PeerAlert(40),
            None,
        ),
        (
            by_hand(0, &[HANDSHAKE], None),
            RecordError::Decode("empty handshake record"),
            Some(Alert::DecodeError),
        ),
        (
            by_hand(0, &[4, 0, 0, 1, 0, HANDSHAKE], None),
            RecordError::UnexpectedHandshake(4),
            Some(Alert::UnexpectedMessage),
        ),
        (
            by_hand(0, &[KEY_UPDATE, 0, 0, 2, 0, 0, HANDSHAKE], None),
            RecordError::Decode("KeyUpdate"),
            Some(Alert::DecodeError),
        ),
        (
            by_hand(0, &[KEY_UPDATE, 0, 0, 1, 2, HANDSHAKE], None),
            RecordError::BadKeyUpdate(2),
            Some(Alert::IllegalParameter),
        ),
        (
            // A KeyUpdate, then more in the same record.
            by_hand(0, &[KEY_UPDATE, 0, 0, 1, 0, KEY_UPDATE, HANDSHAKE], None),
            RecordError::Misaligned,
            Some(Alert::UnexpectedMessage),
        ),
    ];
    for (wire, want, alert) in cases {
        let (mut server, mut client) = pair();
        let e = err(&mut server, &wire);
        assert_eq!(e, want);
        assert_eq!(e.alert(), alert, "{e}");
        assert_eq!(e.close_reason(), CloseReason::TlsFailed);
        // The answer is one protected alert record, then nothing.
        let mut out = Vec::new();
        server.fail(e, &mut out);
        assert!(server.closed());
        match alert {
            Some(a) => assert_eq!(
                client.open(&out).unwrap_err(),
                RecordError::PeerAlert(a as u8)
            ),
            None => assert!(out.is_empty()),
        }
        assert_eq!(server.seal(b"more", &mut out), Err(RecordError::Closed));
    }
}

#[test]
fn close_notify_closes_and_user_canceled_waits_for_it() {
    let (mut server, mut client) = pair();
    let mut wire = Vec::new();
    client.seal(b"a", &mut wire).unwrap();
    client
        .seal_padded(&[1, Alert::UserCanceled as u8], ALERT, 0, &mut wire)
        .unwrap();
    client.seal_close_notify(&mut wire).unwrap();
    wire.extend_from_slice(b"ignored after close_notify");
    let o = server.open(&wire).unwrap();
    assert!(o.peer_closed);
    assert_eq!(o.plain, b"a");
    assert_eq!(server.buffered(), 0);
    assert!(server.open(b"more").unwrap().plain.is_empty());
    assert_eq!(client.seal(b"late", &mut wire), Err(RecordError::Closed));
}

#[test]
fn a_client_key_update_changes_the_receiving_key() {
    let (mut server, mut client) = pair();
    // update_not_requested: the server's sending key stays.
    let mut wire = Vec::new();
    client.seal(b"before", &mut wire).unwrap();
    client
        .seal_padded(&[KEY_UPDATE, 0, 0, 1, 0], HANDSHAKE, 0, &mut wire)
        .unwrap();
    client.tx.update(SUITE).unwrap();
    client.seal(b"after", &mut wire).unwrap();
    let o = server.open(&wire).unwrap();
    assert_eq!(o.plain, b"beforeafter");
    assert_eq!(o.key_updates, 1);
    assert!(!server.key_update_due());
    // update_requested, split across two records: ours is due, and goes
    // before the next data; the client reads both.
    let mut wire = Vec::new();
    client
        .seal_padded(&[KEY_UPDATE, 0, 0], HANDSHAKE, 0, &mut wire)
        .unwrap();
    client
        .seal_padded(&[1, 1], HANDSHAKE, 7, &mut wire)
        .unwrap();
    client.tx.update(SUITE).unwrap();
    client.seal(b"ping", &mut wire).unwrap();
    for b in &wire {
        server.open(std::slice::from_ref(b)).unwrap();
    }
    assert!(server.key_update_due());
    let mut back = Vec::new();
    server.seal(b"pong", &mut back).unwrap();
    assert!(!server.key_update_due());
    let o = client.open(&back).unwrap();
    assert_eq!((o.plain.as_slice(), o.key_updates), (&b"pong"[..], 1));
    assert!(!client.key_update_due(), "the server did not ask back");
}

#[test]
fn a_split_key_update_admits_no_other_record_in_between() {
    let (mut server, mut client) = pair();
    let mut wire = Vec::new();
    client
        .seal_padded(&[KEY_UPDATE, 0], HANDSHAKE, 0, &mut wire)
        .unwrap();
    client.seal(b"data", &mut wire).unwrap();
    assert_eq!(err(&mut server, &wire), RecordError::Misaligned);
}

#[test]
fn key_update_floods_are_cut_off() {
    let (mut server, mut client) = pair();
    let mut wire = Vec::new();
    for _ in 0..CONTROL_RECORDS_IN_A_ROW_MAX {
        client.seal_key_update(&mut wire).unwrap();
    }
    client.seal(b"data resets the count", &mut wire).unwrap();
    for _ in 0..CONTROL_RECORDS_IN_A_ROW_MAX {
        client.seal_key_update(&mut wire).unwrap();
    }
    let o = server.open(&wire).unwrap();
    assert_eq!(o.key_updates, 2 * u32::from(CONTROL_RECORDS_IN_A_ROW_MAX));
    let mut wire = Vec::new();
    client.seal_key_update(&mut wire).unwrap();
    assert_eq!(err(&mut server, &wire), RecordError::TooManyControlRecords);
}

/// Opens a server's output as the client, counting the records each
/// server key protected.
fn records_per_server_key(wire: &[u8]) -> Vec<usize> {
    let mut counts = vec![0];
    let mut pos = 0;
    let (_, mut client) = pair_with(8);
    while pos < wire.len() {
        let len = u16::from_be_bytes([wire[pos + 3], wire[pos + 4]]) as usize;
        let o = client.open(&wire[pos..pos + HEADER_BYTES + len]).unwrap();
        *counts.last_mut().unwrap() += 1;
        if o.key_updates > 0 {
            counts.push(0);
        }
        pos += HEADER_BYTES + len;
    }
    counts
}

#[test]
fn the_server_changes_its_key_before_the_limit() {
    let (mut server, _) = pair_with(8);
    let mut wire = Vec::new();
    for i in 0..50u8 {
        server.seal(&[i], &mut wire).unwrap();
    }
    let counts = records_per_server_key(&wire);
    assert!(counts.len() >= 7, "{counts:?}");
    assert!(counts.iter().all(|&n| n <= 8), "{counts:?}");
    assert_eq!(
        counts[0], 8,
        "the KeyUpdate takes the last record: {counts:?}"
    );
    // The layer itself refuses a record past the limit.
    let (mut server, _) = pair_with(8);
    let mut out = Vec::new();
    for _ in 0..8 {
        server
            .seal_padded(b"x", APPLICATION_DATA, 0, &mut out)
            .unwrap();
    }
    assert_eq!(
        server.seal_padded(b"x", APPLICATION_DATA, 0, &mut out),
        Err(RecordError::KeyExhausted)
    );
}

#[test]
fn the_server_asks_for_the_clients_key_at_the_limit() {
    let (mut server, _) = pair_with(8);
    let (_, mut client) = pair(); // its own key far from its limit
    let mut wire = Vec::new();
    for _ in 0..8 {
        client
            .seal_padded(b"x", APPLICATION_DATA, 0, &mut wire)
            .unwrap();
    }
    server.open(&wire).unwrap();
    assert!(server.key_update_due());
    let mut back = Vec::new();
    server.seal_key_update(&mut back).unwrap();
    assert_eq!(client.open(&back).unwrap().key_updates, 1);
    assert!(client.key_update_due(), "asked to update");
    // The client's next data comes after its KeyUpdate, under a new key.
    let mut wire = Vec::new();
    client.seal(b"fresh", &mut wire).unwrap();
    let o = server.open(&wire).unwrap();
    assert_eq!((o.plain.as_slice(), o.key_updates), (&b"fresh"[..], 1));
    assert_eq!(server.rx.seq, 1);
    assert!(!server.key_update_due());
}

#[test]
fn the_record_layer_stays_small() {
    // An idle TLS connection pays for this box (plus the Tls enum and the
    // unsent buffer, empty while idle): keys, IVs, sequence numbers and the
    // two traffic secrets. Before the secrets it was 1,184 bytes, in
    // mimalloc's 1,280-byte size class; over 1,280 it would take 1,536.
    let size = std::mem::size_of::<Records>();
    assert!(size <= 1280, "Records is {size} bytes");
}
