//! Tests for tokens that must be refused, one distinct `JwtError` outcome at
//! a time: time checks, signatures, algorithm confusion, key selection and
//! claims. Encoding-level rejections are in `malformed`.

use super::*;

fn flip_signature_byte(token: &str) -> String {
    let (input, sig) = token.rsplit_once('.').expect("three segments");
    let mut sig = URL_SAFE_NO_PAD.decode(sig).expect("base64");
    sig[0] ^= 0x01;
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
}

#[test]
fn expiry_and_leeway() {
    let v = hs_verifier(); // leeway 5
    let at = |exp: u64| v.verify(&hs_with(&claims_with("exp", Some(json!(exp)))), NOW);
    assert_eq!(at(NOW - 6), Err(JwtError::Expired));
    assert!(at(NOW - 5).is_ok(), "within leeway");
    assert!(at(NOW).is_ok());
    let strict = hs_verifier_with(VerifyOptions {
        leeway_s: 0,
        ..Default::default()
    });
    let token = hs_with(&claims_with("exp", Some(json!(NOW - 1))));
    assert_eq!(strict.verify(&token, NOW), Err(JwtError::Expired));
    assert_eq!(
        strict.verify(&token, NOW - 1),
        Ok(Claims {
            exp: NOW - 1,
            ..expected()
        })
    );
}

#[test]
fn not_before_and_leeway() {
    let v = hs_verifier();
    let at = |nbf: Value| v.verify(&hs_with(&claims_with("nbf", Some(nbf))), NOW);
    assert_eq!(at(json!(NOW + 6)), Err(JwtError::NotYetValid));
    assert_eq!(
        at(json!(NOW as f64 + 5.5)),
        Err(JwtError::NotYetValid),
        "fractional nbf rounds up"
    );
    assert!(at(json!(NOW + 5)).is_ok(), "within leeway");
    assert!(at(json!(NOW - 100)).is_ok());
    assert_eq!(at(json!("soon")), Err(JwtError::BadClaim("nbf")));
}

#[test]
fn bad_signatures() {
    let hs = hs_verifier();
    let token = hs_with(&claims());
    assert_eq!(
        hs.verify(&flip_signature_byte(&token), NOW),
        Err(JwtError::BadSignature)
    );
    // Payload swapped for another valid one: signature no longer matches.
    let other = hs_with(&claims_with("sub", Some(json!("admin"))));
    let parts: Vec<&str> = token.split('.').collect();
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        other.split('.').nth(1).expect("payload"),
        parts[2]
    );
    assert_eq!(hs.verify(&forged, NOW), Err(JwtError::BadSignature));
    assert_eq!(
        hs.verify(
            &sign_hs256(b"another-secret-of-32-bytes-or-more!!", None, &claims()),
            NOW
        ),
        Err(JwtError::BadSignature)
    );
    let sigless = format!("{}.{}.", parts[0], parts[1]);
    assert_eq!(hs.verify(&sigless, NOW), Err(JwtError::BadSignature));

    let ed = ed25519_key();
    let v = Verifier::new(
        vec![pem_key(None, Alg::EdDSA, &ed)],
        VerifyOptions::default(),
    )
    .expect("verifier");
    let token = ed_token(&ed, None, &claims());
    assert_eq!(
        v.verify(&flip_signature_byte(&token), NOW),
        Err(JwtError::BadSignature)
    );

    let es = p256_key();
    let v = Verifier::new(
        vec![pem_key(None, Alg::ES256, &es)],
        VerifyOptions::default(),
    )
    .expect("verifier");
    let token = es_token(&es, None, &claims());
    assert_eq!(
        v.verify(&flip_signature_byte(&token), NOW),
        Err(JwtError::BadSignature)
    );
}

#[test]
fn unsupported_algorithms_rejected() {
    let v = hs_verifier();
    let payload = URL_SAFE_NO_PAD.encode(claims().to_string());
    for alg in [
        "none", "None", "hs256", "HS384", "HS512", "RS256", "PS256", "ES384", "eddsa", "",
    ] {
        let header = URL_SAFE_NO_PAD.encode(json!({"alg": alg, "kid": "hs1"}).to_string());
        let unsigned = format!("{header}.{payload}.");
        assert_eq!(
            v.verify(&unsigned, NOW),
            Err(JwtError::AlgorithmRejected(alg.into())),
            "{alg}"
        );
    }
    // A huge alg is echoed back truncated.
    let long = "A".repeat(1000);
    let token = hs_raw(&json!({"alg": long}).to_string(), &claims().to_string());
    assert_eq!(
        v.verify(&token, NOW),
        Err(JwtError::AlgorithmRejected("A".repeat(32)))
    );
}

#[test]
fn algorithm_confusion_rejected() {
    let ed = ed25519_key();
    let v = Verifier::new(
        vec![pem_key(Some("k"), Alg::EdDSA, &ed)],
        VerifyOptions::default(),
    )
    .expect("verifier");
    // Classic attack: HMAC the token with the public key (PEM text or raw bytes) as secret.
    for secret in [ed.pem.as_bytes(), &ed.public] {
        let token = sign_hs256(secret, Some("k"), &claims());
        assert_eq!(
            v.verify(&token, NOW),
            Err(JwtError::AlgorithmRejected("HS256".into()))
        );
    }
    // Another supported alg that is not this key's.
    let es = p256_key();
    assert_eq!(
        v.verify(&es_token(&es, Some("k"), &claims()), NOW),
        Err(JwtError::AlgorithmRejected("ES256".into()))
    );
}

#[test]
fn unknown_or_missing_kid() {
    let v = hs_verifier();
    assert_eq!(
        v.verify(&sign_hs256(SECRET, Some("nope"), &claims()), NOW),
        Err(JwtError::UnknownKey)
    );
    let two = Verifier::new(
        vec![hs_key(Some("a")), hs_key(Some("b"))],
        VerifyOptions::default(),
    )
    .expect("verifier");
    assert_eq!(
        two.verify(&sign_hs256(SECRET, None, &claims()), NOW),
        Err(JwtError::UnknownKey)
    );
    assert!(two
        .verify(&sign_hs256(SECRET, Some("b"), &claims()), NOW)
        .is_ok());
}

#[test]
fn required_and_typed_claims() {
    let v = hs_verifier();
    let check =
        |field: &str, value: Option<Value>| v.verify(&hs_with(&claims_with(field, value)), NOW);
    assert_eq!(check("exp", None), Err(JwtError::MissingClaim("exp")));
    assert_eq!(check("sub", None), Err(JwtError::MissingClaim("sub")));
    assert_eq!(
        check("exp", Some(json!(null))),
        Err(JwtError::BadClaim("exp"))
    );
    assert_eq!(
        check("exp", Some(json!(-1))),
        Err(JwtError::BadClaim("exp"))
    );
    assert_eq!(
        check("exp", Some(json!(-0.5))),
        Err(JwtError::BadClaim("exp"))
    );
    assert_eq!(
        check("exp", Some(json!("1700000060"))),
        Err(JwtError::BadClaim("exp"))
    );
    assert_eq!(
        check("sub", Some(json!(""))),
        Err(JwtError::BadClaim("sub"))
    );
    assert_eq!(
        check("sub", Some(json!(42))),
        Err(JwtError::BadClaim("sub"))
    );
    assert_eq!(
        check("sub", Some(json!("x".repeat(129)))),
        Err(JwtError::BadClaim("sub"))
    );
    assert!(check("sub", Some(json!("x".repeat(128)))).is_ok());
    assert_eq!(check("did", Some(json!(7))), Err(JwtError::BadClaim("did")));
    assert_eq!(
        check("did", Some(json!("d".repeat(129)))),
        Err(JwtError::BadClaim("did"))
    );
    assert_eq!(check("did", None).map(|c| c.device_id), Ok(None));
}

#[test]
fn wrong_issuer_or_audience() {
    let opts = VerifyOptions {
        issuer: Some("auth.example".into()),
        audience: Some("gw".into()),
        ..Default::default()
    };
    let v = hs_verifier_with(opts);
    let mut c = claims();
    c["iss"] = json!("auth.example");
    c["aud"] = json!("gw");
    let check = |field: &str, value: Option<Value>| {
        let mut c = c.clone();
        let map = c.as_object_mut().expect("object");
        match value {
            Some(value) => map.insert(field.into(), value),
            None => map.remove(field),
        };
        v.verify(&hs_with(&c), NOW)
    };
    assert!(check("iss", Some(json!("auth.example"))).is_ok());
    assert_eq!(
        check("iss", Some(json!("evil.example"))),
        Err(JwtError::WrongIssuer)
    );
    assert_eq!(check("iss", None), Err(JwtError::MissingClaim("iss")));
    assert_eq!(check("iss", Some(json!(1))), Err(JwtError::BadClaim("iss")));
    assert_eq!(
        check("aud", Some(json!("gw2"))),
        Err(JwtError::WrongAudience)
    );
    assert_eq!(
        check("aud", Some(json!(["a", "b"]))),
        Err(JwtError::WrongAudience)
    );
    assert_eq!(check("aud", Some(json!([]))), Err(JwtError::WrongAudience));
    assert_eq!(
        check("aud", Some(json!(["gw", 3]))),
        Err(JwtError::BadClaim("aud"))
    );
    assert_eq!(check("aud", None), Err(JwtError::MissingClaim("aud")));
    // Without configured issuer/audience, iss/aud are not looked at.
    let mut c = claims();
    c["iss"] = json!(5);
    c["aud"] = json!({"x": 1});
    assert!(hs_verifier().verify(&hs_with(&c), NOW).is_ok());
}

/// n − s for a P-256 `s`, big-endian.
fn p256_negate(s: &[u8]) -> Vec<u8> {
    const N: [u8; 32] = [
        0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63,
        0x25, 0x51,
    ];
    let mut out = vec![0u8; 32];
    let mut borrow = 0i16;
    for i in (0..32).rev() {
        let mut d = N[i] as i16 - s[i] as i16 - borrow;
        borrow = if d < 0 { 1 } else { 0 };
        if d < 0 {
            d += 256;
        }
        out[i] = d as u8;
    }
    out
}

/// (r, s) and (r, n − s) are both valid ECDSA signatures. With
/// `es256_low_s_only` only the low-S one is accepted, so a seen token
/// cannot be turned into a second valid token by flipping s; by default
/// both are (standard libraries make both).
#[test]
fn es256_high_s_is_rejected_when_asked() {
    let key = p256_key();
    let strict = VerifyOptions {
        es256_low_s_only: true,
        ..Default::default()
    };
    let v = Verifier::new(vec![pem_key(None, Alg::ES256, &key)], strict).expect("verifier");
    let lenient = Verifier::new(
        vec![pem_key(None, Alg::ES256, &key)],
        VerifyOptions::default(),
    )
    .expect("verifier");
    let token = es_token(&key, None, &claims());
    let (input, sig64) = token.rsplit_once('.').expect("three parts");
    let sig = URL_SAFE_NO_PAD.decode(sig64).expect("base64url");
    let twin = [&sig[..32], &p256_negate(&sig[32..])[..]].concat();
    let with = |sig: &[u8]| format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig));
    let (low, high) = if sig[32..] <= twin[32..] {
        (with(&sig), with(&twin))
    } else {
        (with(&twin), with(&sig))
    };
    assert_eq!(v.verify(&low, NOW), Ok(expected()));
    assert_eq!(v.verify(&high, NOW), Err(JwtError::BadSignature));
    assert_eq!(lenient.verify(&high, NOW), Ok(expected()));
}

/// `exp` further ahead than `lifetime_max_s` (and 1e300, which saturates
/// to "never") is refused.
#[test]
fn absurd_expiry_is_rejected() {
    let v = Verifier::new(vec![hs_key(None)], VerifyOptions::default()).expect("verifier");
    let max = VerifyOptions::default().lifetime_max_s;
    let at = |exp: Value| sign_hs256(SECRET, None, &json!({"sub": "u", "exp": exp}));
    assert!(v.verify(&at(json!(NOW + max)), NOW).is_ok());
    assert_eq!(
        v.verify(&at(json!(NOW + max + 1)), NOW),
        Err(JwtError::LifetimeTooLong(max))
    );
    assert_eq!(
        v.verify(&at(json!(1e300)), NOW),
        Err(JwtError::LifetimeTooLong(max))
    );
}

/// Why `es256_low_s_only` is off by default: a standard library signs
/// high-S about half the time (measured here: 191 of 400 once).
#[test]
fn a_standard_library_makes_high_s_tokens() {
    let key = p256_key();
    let mut high = 0;
    for i in 0..400 {
        let token = es_token(
            &key,
            None,
            &json!({"sub": format!("u{i}"), "exp": NOW + 60}),
        );
        let sig = URL_SAFE_NO_PAD
            .decode(token.rsplit_once('.').unwrap().1)
            .unwrap();
        if sig[32..] > p256_negate(&sig[32..])[..] {
            high += 1;
        }
    }
    assert!((100..=300).contains(&high), "high-S: {high} of 400");
}
