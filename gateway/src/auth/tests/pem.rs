//! Tests for the PEM / SubjectPublicKeyInfo parser: the RFC 8410 example,
//! tolerated formatting, and every kind of damaged or unsupported key.

use super::*;
use crate::auth::pem::{parse_public_key_pem, PublicKey};

/// Minimal DER TLV (short-form length) for building odd SPKIs.
fn der(tag: u8, parts: &[&[u8]]) -> Vec<u8> {
    let body = parts.concat();
    [&[tag, u8::try_from(body.len()).expect("short")][..], &body].concat()
}

const OID_EC: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];

fn ec_spki(curve: &[u8], point: &[u8]) -> String {
    let alg_id = der(0x30, &[&der(0x06, &[OID_EC]), &der(0x06, &[curve])]);
    pem_block(
        "PUBLIC KEY",
        &der(0x30, &[&alg_id, &der(0x03, &[&[0], point])]),
    )
}

#[test]
fn pem_rfc8410_example() {
    // RFC 8410 section 10.1.
    let pem = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----\n";
    let raw = [
        0x19, 0xbf, 0x44, 0x09, 0x69, 0x84, 0xcd, 0xfe, 0x85, 0x41, 0xba, 0xc1, 0x67, 0xdc, 0x3b,
        0x96, 0xc8, 0x50, 0x86, 0xaa, 0x30, 0xb6, 0xb6, 0xcb, 0x0c, 0x5c, 0x38, 0xad, 0x70, 0x31,
        0x66, 0xe1,
    ];
    assert_eq!(parse_public_key_pem(pem), Ok(PublicKey::Ed25519(raw)));
    // Comments before the block, CRLF line ends and indentation are tolerated.
    let messy = format!("# gateway key\r\n  {}", pem.replace('\n', "\r\n  "));
    assert_eq!(parse_public_key_pem(&messy), Ok(PublicKey::Ed25519(raw)));
}

#[test]
fn pem_and_spki_rejections() {
    let es = p256_key();
    assert_eq!(
        parse_public_key_pem(&es.pem),
        Ok(PublicKey::P256(es.public.clone()))
    );
    let body_only = es.pem.replace("-----END PUBLIC KEY-----\n", "");
    assert_eq!(
        parse_public_key_pem(&body_only),
        Err(PemError::Unterminated)
    );
    let wrong_end = es.pem.replace("END PUBLIC KEY", "END PRIVATE KEY");
    assert_eq!(
        parse_public_key_pem(&wrong_end),
        Err(PemError::Unterminated)
    );
    assert_eq!(
        parse_public_key_pem(&es.pem.replace('M', "*")),
        Err(PemError::BadBase64)
    );
    let cert = pem_block("CERTIFICATE", b"not really");
    assert_eq!(
        parse_public_key_pem(&cert),
        Err(PemError::WrongLabel("CERTIFICATE".into()))
    );

    // Structural damage to an otherwise valid P-256 SPKI.
    let good = [&P256_SPKI_PREFIX[..], &es.public].concat();
    let check = |der: &[u8]| parse_public_key_pem(&pem_block("PUBLIC KEY", der));
    assert!(
        matches!(check(&good[..good.len() - 1]), Err(PemError::BadDer(_))),
        "truncated"
    );
    assert!(
        matches!(check(&[&good[..], &[0]].concat()), Err(PemError::BadDer(_))),
        "trailing"
    );
    assert!(
        matches!(check(&good[2..]), Err(PemError::BadDer(_))),
        "no outer sequence"
    );
    assert!(
        matches!(check(&[0x30, 0x80, 0x00, 0x00]), Err(PemError::BadDer(_))),
        "indefinite length"
    );
    assert!(
        matches!(
            check(&[0x30, 0x81, 0x05, 1, 2, 3, 4, 5]),
            Err(PemError::BadDer(_))
        ),
        "non-minimal length"
    );
    assert!(matches!(check(&[]), Err(PemError::BadDer(_))), "empty");
    let mut unused_bits = good.clone();
    unused_bits[P256_SPKI_PREFIX.len() - 1] = 1;
    assert!(
        matches!(check(&unused_bits), Err(PemError::BadDer(_))),
        "unused bits"
    );

    let prime256v1 = [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    let compressed = [&[0x02][..], &es.public[1..33]].concat();
    assert!(matches!(
        parse_public_key_pem(&ec_spki(&prime256v1, &compressed)),
        Err(PemError::Unsupported(_))
    ));
    let p384 = [0x2b, 0x81, 0x04, 0x00, 0x22];
    assert_eq!(
        parse_public_key_pem(&ec_spki(&p384, &[4; 97])),
        Err(PemError::Unsupported("EC P-384"))
    );
    assert!(matches!(
        parse_public_key_pem(&ec_spki(&prime256v1, &[4; 64])),
        Err(PemError::BadDer(_))
    ));

    let rsa_oid = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
    let rsa_alg = der(0x30, &[&der(0x06, &[&rsa_oid]), &der(0x05, &[])]);
    let rsa = der(
        0x30,
        &[
            &rsa_alg,
            &der(0x03, &[&[0], &der(0x30, &[&[2, 1, 1], &[2, 1, 3]])]),
        ],
    );
    assert_eq!(check(&rsa), Err(PemError::Unsupported("RSA")));
    // Ed25519 with (forbidden) parameters.
    let ed_params = der(
        0x30,
        &[
            &der(0x30, &[&der(0x06, &[&[0x2b, 0x65, 0x70]]), &der(0x05, &[])]),
            &der(0x03, &[&[0; 33]]),
        ],
    );
    assert!(matches!(check(&ed_params), Err(PemError::BadDer(_))));
}
