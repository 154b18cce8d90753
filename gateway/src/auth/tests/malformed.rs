//! Tests for tokens refused before or while decoding: size limit, segment
//! count, strict base64url, non-object or garbage JSON, and `crit` headers.

use super::*;

#[test]
fn base64_must_be_unpadded_base64url() {
    let v = hs_verifier();
    let token = hs_with(&claims());
    let parts: Vec<&str> = token.split('.').collect();
    let join = |h: &str, p: &str, s: &str| format!("{h}.{p}.{s}");
    // Each segment with `=` padding appended (the encodings here need 1 or 2 pad chars or none).
    for (i, bad) in [
        join(&format!("{}=", parts[0]), parts[1], parts[2]),
        join(parts[0], &format!("{}==", parts[1]), parts[2]),
        join(parts[0], parts[1], &format!("{}=", parts[2])),
        join(&parts[0].replace('e', "+"), parts[1], parts[2]),
        join(parts[0], &format!("{}/", parts[1]), parts[2]),
        join(&format!(" {}", parts[0]), parts[1], parts[2]),
    ]
    .iter()
    .enumerate()
    {
        assert!(
            matches!(v.verify(bad, NOW), Err(JwtError::Malformed(_))),
            "case {i}: {bad}"
        );
    }
    // Standard library output really is padding-free for a 32-byte tag (43 chars).
    assert_eq!(parts[2].len(), 43);
}

#[test]
fn wrong_segment_count() {
    let v = hs_verifier();
    let token = hs_with(&claims());
    let (h, rest) = token.split_once('.').expect("dot");
    let (p, s) = rest.split_once('.').expect("dot");
    for bad in [
        format!("{h}.{p}"),
        format!("{token}.{s}"),
        format!("{h}.{p}.{s}."),
        String::new(),
        "...".into(),
    ] {
        assert!(
            matches!(v.verify(&bad, NOW), Err(JwtError::Malformed(_))),
            "{bad}"
        );
    }
}

#[test]
fn oversized_token_rejected() {
    let token = hs_with(&claims());
    let exact = hs_verifier_with(VerifyOptions {
        token_bytes_max: token.len(),
        ..Default::default()
    });
    assert!(exact.verify(&token, NOW).is_ok());
    let tight = hs_verifier_with(VerifyOptions {
        token_bytes_max: token.len() - 1,
        ..Default::default()
    });
    assert_eq!(tight.verify(&token, NOW), Err(JwtError::TooLarge));
    let big = hs_with(&claims_with("pad", Some(json!("x".repeat(5000)))));
    assert_eq!(hs_verifier().verify(&big, NOW), Err(JwtError::TooLarge));
    assert_eq!(
        hs_verifier().verify(&"!".repeat(10_000), NOW),
        Err(JwtError::TooLarge)
    );
}

#[test]
fn garbage_json_rejected() {
    let v = hs_verifier();
    let ok_payload = claims().to_string();
    let ok_header = r#"{"alg":"HS256"}"#;
    for (header, payload) in [
        ("{not json", ok_payload.as_str()),
        ("", ok_payload.as_str()),
        (r#"["HS256"]"#, ok_payload.as_str()),
        (r#""HS256""#, ok_payload.as_str()),
        (r#"{"alg":"HS256"} trailing"#, ok_payload.as_str()),
        (r#"{"alg":"HS256","alg":"none"}"#, ok_payload.as_str()),
        (r#"{"alg":7}"#, ok_payload.as_str()),
        (r#"{"alg":"HS256","kid":1}"#, ok_payload.as_str()),
        (r#"{"typ":"JWT"}"#, ok_payload.as_str()),
        ("\u{feff}{\"alg\":\"HS256\"}", ok_payload.as_str()),
        (ok_header, "{garbage"),
        (ok_header, r#"["user-1", 1700000060]"#),
        (ok_header, "null"),
        (ok_header, r#"{"sub":"a","sub":"b","exp":1700000060}"#),
    ] {
        let got = v.verify(&hs_raw(header, payload), NOW);
        assert!(
            matches!(got, Err(JwtError::Malformed(_))),
            "{header} / {payload}: {got:?}"
        );
    }
    // Deep nesting cannot exhaust the stack: skipped claims are skipped
    // iteratively, captured ones hit serde_json's recursion limit.
    let v = hs_verifier_with(VerifyOptions {
        token_bytes_max: 10_000,
        ..Default::default()
    });
    let nest = |claim: &str| {
        let deep = format!(
            r#"{{"sub":"u","exp":1700000060,"{claim}":{}{}}}"#,
            "[".repeat(1500),
            "]".repeat(1500)
        );
        v.verify(&hs_raw(ok_header, &deep), NOW)
    };
    assert!(nest("x").is_ok());
    assert!(matches!(nest("aud"), Err(JwtError::Malformed(_))));
}

#[test]
fn crit_header_rejected() {
    let v = hs_verifier();
    for crit in [r#"["exp"]"#, "[]", "null"] {
        let token = hs_raw(
            &format!(r#"{{"alg":"HS256","crit":{crit}}}"#),
            &claims().to_string(),
        );
        assert_eq!(
            v.verify(&token, NOW),
            Err(JwtError::Malformed("crit unsupported")),
            "{crit}"
        );
    }
}

#[test]
fn errors_display_plain_words() {
    assert_eq!(JwtError::Expired.to_string(), "token has expired");
    assert_eq!(
        JwtError::Malformed("crit unsupported").to_string(),
        "malformed token: crit unsupported"
    );
    assert_eq!(
        JwtError::MissingClaim("exp").to_string(),
        "token lacks the required \"exp\" claim"
    );
}

#[test]
fn every_single_character_change_is_rejected() {
    let v = hs_verifier();
    let token = hs_with(&claims());
    assert!(v.verify(&token, NOW).is_ok());
    let mut chars: Vec<char> = token.chars().collect();
    for i in 0..chars.len() {
        let original = chars[i];
        for c in ['A', 'B', 'Q', 'g', 'w', '_', '-', '.', '=', 'é'] {
            if c == original {
                continue;
            }
            chars[i] = c;
            let mutated: String = chars.iter().collect();
            assert!(v.verify(&mutated, NOW).is_err(), "{mutated}");
        }
        chars[i] = original;
    }
}
