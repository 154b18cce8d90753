//! Unit tests without a server: parser, header encoding, NKeys, creds, URLs.

use super::*;
use base64::Engine as _;

use super::super::nkey::{
    base32_decode, base32_encode, crc16, nkey_decode_seed, nkey_encode_seed, nkey_sign,
    NKEY_PREFIX_USER,
};
use super::super::url::parse_url;
use super::super::wire::{
    encode_headers, parse_headers, parse_op, Op, ServerInfo, CONTROL_LINE_BYTES_MAX,
};

fn parse_all(input: &[u8], max: usize) -> Result<Vec<Op>, super::super::wire::WireError> {
    let mut ops = Vec::new();
    let mut at = 0;
    while let Some((op, used)) = parse_op(&input[at..], max)? {
        ops.push(op);
        at += used;
    }
    Ok(ops)
}

#[test]
fn parses_msg_hmsg_and_control_ops() {
    let input = b"MSG a.b 1 5\r\nhello\r\nMSG a.b 2 _INBOX.x 0\r\n\r\n\
HMSG c 3 r 20 22\r\nNATS/1.0\r\nK: v:w\r\n\r\nhi\r\nPING\r\nPONG\r\n+OK\r\n-ERR 'Permissions Violation'\r\nINFO {\"max_payload\":5}\r\n";
    let ops = parse_all(input, 1024).expect("parse");
    assert_eq!(ops.len(), 8, "{ops:?}");
    match &ops[0] {
        Op::Msg(m) => {
            assert_eq!((m.subject.as_str(), m.reply.as_deref()), ("a.b", None));
            assert_eq!(&m.payload[..], b"hello");
        }
        o => panic!("{o:?}"),
    }
    match &ops[1] {
        Op::Msg(m) => {
            assert_eq!(m.reply.as_deref(), Some("_INBOX.x"));
            assert!(m.payload.is_empty());
        }
        o => panic!("{o:?}"),
    }
    match &ops[2] {
        Op::Msg(m) => {
            assert_eq!(m.subject, "c");
            assert_eq!(m.reply.as_deref(), Some("r"));
            assert_eq!(m.headers, vec![("K".to_string(), "v:w".to_string())]);
            assert_eq!(&m.payload[..], b"hi");
        }
        o => panic!("{o:?}"),
    }
    assert!(matches!(ops[3], Op::Ping));
    assert!(matches!(ops[4], Op::Pong));
    assert!(matches!(ops[5], Op::Ok));
    assert!(matches!(&ops[6], Op::Err(t) if t == "Permissions Violation"));
    assert!(
        matches!(&ops[7], Op::Info(j) if ServerInfo::parse(j).expect("info").max_payload() == 5)
    );
}

#[test]
fn partial_input_waits_for_more() {
    let full = b"HMSG c 3 r 20 22\r\nNATS/1.0\r\nK: v:w\r\n\r\nhi\r\n";
    for cut in 0..full.len() {
        assert!(
            matches!(parse_op(&full[..cut], 1024), Ok(None)),
            "cut at {cut}"
        );
    }
    assert!(matches!(parse_op(full, 1024), Ok(Some((_, n))) if n == full.len()));
}

#[test]
fn malformed_input_is_an_error_not_a_panic() {
    let bad: &[&[u8]] = &[
        b"MSG a 1\r\n",
        b"MSG a 1 x\r\n",
        b"MSG a 1 -1\r\n",
        b"MSG a 1 2 3 4 5 6\r\n",
        b"MSG a 1 99999999999999999999\r\n",
        b"MSG a 1 3\r\nabcXY",
        b"HMSG a 1 5 3\r\n",
        b"HMSG a 1 3 5\r\nabc\r\n\r\n",
        b"HMSG a 1 2000 2000\r\n",
        b"MSG a 1 2000\r\n",
        b"WHAT\r\n",
        b"\r\n",
    ];
    for b in bad {
        assert!(
            parse_op(b, 1024).is_err(),
            "{:?}",
            String::from_utf8_lossy(b)
        );
    }
    // A control line that never ends.
    assert!(parse_op(&vec![b'x'; CONTROL_LINE_BYTES_MAX + 1], 1024).is_err());
    // Random bytes: never panic.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let alphabet = b"MSGHPINOK-ERF \r\n0123456789abc";
    for _ in 0..20_000 {
        let len = (x % 64) as usize;
        let mut buf = b"MSG ".to_vec();
        if x & 1 == 0 {
            buf = b"HMSG ".to_vec();
        }
        for _ in 0..len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            buf.push(alphabet[(x % alphabet.len() as u64) as usize]);
        }
        let _ = parse_all(&buf, 64);
    }
}

#[test]
fn base32_and_crc16() {
    // RFC 4648 test vectors (no padding).
    for (raw, enc) in [
        ("", ""),
        ("f", "MY"),
        ("fo", "MZXQ"),
        ("foo", "MZXW6"),
        ("foob", "MZXW6YQ"),
        ("fooba", "MZXW6YTB"),
        ("foobar", "MZXW6YTBOI"),
    ] {
        assert_eq!(base32_encode(raw.as_bytes()), enc);
        assert_eq!(base32_decode(enc).as_deref(), Some(raw.as_bytes()));
    }
    assert_eq!(base32_decode("abc"), None);
    // CRC-16/XMODEM check value.
    assert_eq!(crc16(b"123456789"), 0x31c3);
}

#[test]
fn nkey_seed_round_trip_and_errors() {
    let raw = random_seed();
    let seed = nkey_encode_seed(NKEY_PREFIX_USER, &raw);
    assert!(seed.starts_with("SU"));
    assert_eq!(nkey_decode_seed(&seed), Ok((NKEY_PREFIX_USER, raw)));
    let (public, sig) = nkey_sign(&seed, b"nonce").expect("sign");
    assert_eq!(public, public_of(NKEY_PREFIX_USER, &raw));
    // The signature verifies with the public key inside the NKey.
    let pk = base32_decode(&public).expect("b32");
    let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(sig)
        .expect("b64");
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &pk[1..33])
        .verify(b"nonce", &sig)
        .expect("signature verifies");
    // A typo breaks the checksum.
    let mut typo = seed.clone().into_bytes();
    typo[10] = if typo[10] == b'A' { b'B' } else { b'A' };
    let typo = String::from_utf8(typo).expect("utf8");
    assert!(nkey_decode_seed(&typo).is_err());
    assert!(nkey_decode_seed("SUXYZ").is_err());
    assert!(nkey_decode_seed("not base32!").is_err());
    // A public key is not a seed.
    assert!(nkey_decode_seed(&public).is_err());
}

#[test]
fn creds_parsing() {
    let creds = "-----BEGIN NATS USER JWT-----\neyJa.eyJb.sig\n------END NATS USER JWT------\n\n\
                 ****\n-----BEGIN USER NKEY SEED-----\nSUAXYZ\n------END USER NKEY SEED------\n";
    assert_eq!(
        read_creds(creds),
        Ok(("eyJa.eyJb.sig".to_string(), "SUAXYZ".to_string()))
    );
    // CRLF line ends and indentation.
    let crlf = creds.replace('\n', "\r\n  ");
    assert_eq!(
        read_creds(&crlf),
        Ok(("eyJa.eyJb.sig".to_string(), "SUAXYZ".to_string()))
    );
    assert!(read_creds("").is_err());
    assert!(read_creds(
        "-----BEGIN NATS USER JWT-----\neyJa.eyJb.sig\n------END NATS USER JWT------\n"
    )
    .is_err());
    assert!(read_creds("-----BEGIN NATS USER JWT-----\nnotajwt\n------END NATS USER JWT------\n-----BEGIN USER NKEY SEED-----\nSUAXYZ\n------END USER NKEY SEED------\n").is_err());
}

#[test]
fn url_parsing() {
    let u = parse_url("nats://h:1234").expect("url");
    assert_eq!((u.host.as_str(), u.port, u.tls), ("h", 1234, false));
    let u = parse_url("tls://h").expect("url");
    assert_eq!(
        (u.port, u.tls, u.shown.as_str()),
        (4222, true, "tls://h:4222")
    );
    let u = parse_url("10.0.0.1:5000").expect("url");
    assert_eq!((u.host.as_str(), u.port), ("10.0.0.1", 5000));
    let u = parse_url("nats://[::1]:4223").expect("url");
    assert_eq!(
        (u.host.as_str(), u.port, u.shown.as_str()),
        ("::1", 4223, "nats://[::1]:4223")
    );
    let u = parse_url("nats://user:pw@h:1/").expect("url");
    assert_eq!(u.auth, Auth::UserPassword("user".into(), "pw".into()));
    assert_eq!(u.shown, "nats://h:1", "no credentials in logs");
    let u = parse_url("nats://tok@h").expect("url");
    assert_eq!(u.auth, Auth::Token("tok".into()));
    assert!(parse_url("ws://h:1").is_err());
    assert!(parse_url("nats://h:99999").is_err());
    assert!(parse_url("nats://:1").is_err());
    assert!(parse_url("nats://[::1").is_err());
}

#[test]
fn header_encoding_and_validation() {
    let h = encode_headers(&[("A", "1"), ("B-c", "x y")]).expect("ok");
    assert_eq!(&h[..], b"NATS/1.0\r\nA: 1\r\nB-c: x y\r\n\r\n");
    assert_eq!(
        parse_headers(&h).expect("parse"),
        vec![("A".into(), "1".into()), ("B-c".into(), "x y".into())]
    );
    assert!(encode_headers(&[("A:B", "1")]).is_err());
    assert!(encode_headers(&[("A", "1\r\nX: 2")]).is_err());
    assert!(encode_headers(&[("", "1")]).is_err());
}

#[test]
fn auth_debug_redacts_secrets() {
    let s = format!(
        "{:?}",
        ConnectSpec {
            auth: Auth::UserPassword("me".into(), "hunter2".into()),
            ..ConnectSpec::default()
        }
    );
    assert!(!s.contains("hunter2"), "{s}");
    assert!(!format!("{:?}", Auth::Token("tok123".into())).contains("tok123"));
}
