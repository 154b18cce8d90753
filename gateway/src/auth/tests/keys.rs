//! Tests for key configuration: `from_specs` (env vars and PEM files),
//! `Verifier::new` validation, and the `KeySpec` config shape.

use std::path::PathBuf;

use super::*;

/// A PEM file in the temp dir, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, contents: &[u8]) -> TempFile {
        let path = std::env::temp_dir().join(format!("auth-test-{}-{name}", std::process::id()));
        std::fs::write(&path, contents).expect("write temp file");
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn spec(kid: Option<&str>, alg: Alg, secret_env: Option<&str>, file: Option<&TempFile>) -> KeySpec {
    KeySpec {
        secret_file: None,
        kid: kid.map(Into::into),
        alg,
        secret_env: secret_env.map(Into::into),
        public_key_file: file.map(|f| f.0.clone()),
    }
}

/// `from_specs` against a fake environment holding `GOOD` (long), `SHORT` and `EMPTY`.
fn load(specs: &[KeySpec]) -> Result<Verifier, KeyError> {
    let env = |var: &str| match var {
        "GOOD" => Ok(String::from_utf8(SECRET.to_vec()).expect("utf8")),
        "SHORT" => Ok("only-31-bytes-long-secret-value".into()),
        "EMPTY" => Ok(String::new()),
        _ => Err(std::env::VarError::NotPresent),
    };
    Verifier::from_specs_with_env(specs, VerifyOptions::default(), &env)
}

#[test]
fn from_specs_loads_env_secret_and_pem_files() {
    let (ed, es) = (ed25519_key(), p256_key());
    let (ed_file, es_file) = (
        TempFile::new("ok-ed.pem", ed.pem.as_bytes()),
        TempFile::new("ok-es.pem", es.pem.as_bytes()),
    );
    let v = load(&[
        spec(Some("hs1"), Alg::HS256, Some("GOOD"), None),
        spec(Some("ed1"), Alg::EdDSA, None, Some(&ed_file)),
        spec(Some("es1"), Alg::ES256, None, Some(&es_file)),
    ])
    .expect("loads");
    assert_eq!(v.key_count(), 3);
    assert_eq!(
        v.verify(&sign_hs256(SECRET, Some("hs1"), &claims()), NOW),
        Ok(expected())
    );
    assert_eq!(
        v.verify(&ed_token(&ed, Some("ed1"), &claims()), NOW),
        Ok(expected())
    );
    assert_eq!(
        v.verify(&es_token(&es, Some("es1"), &claims()), NOW),
        Ok(expected())
    );
}

#[test]
fn from_specs_env_errors() {
    // The real process environment, with a variable nobody sets.
    let specs = [spec(
        None,
        Alg::HS256,
        Some("AUTH_TEST_SURELY_UNSET_0D5F"),
        None,
    )];
    let err = Verifier::from_specs(&specs, VerifyOptions::default()).expect_err("missing");
    assert!(
        matches!(&err, KeyError::EnvMissing { var, .. } if var == "AUTH_TEST_SURELY_UNSET_0D5F")
    );
    assert!(
        err.to_string()
            .contains("AUTH_TEST_SURELY_UNSET_0D5F is not set"),
        "{err}"
    );

    let err = load(&[spec(None, Alg::HS256, Some("EMPTY"), None)]).expect_err("empty");
    assert!(matches!(err, KeyError::EnvEmpty { .. }), "{err}");
    let err = load(&[spec(Some("k"), Alg::HS256, Some("SHORT"), None)]).expect_err("short");
    assert!(
        matches!(err, KeyError::SecretTooShort { len: 31, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("at least 32"), "{err}");
}

#[test]
fn from_specs_file_errors() {
    let garbage = TempFile::new("garbage.pem", b"hello, not a key\n");
    let err = load(&[spec(None, Alg::EdDSA, None, Some(&garbage))]).expect_err("garbage");
    assert!(
        matches!(
            err,
            KeyError::BadPem {
                source: PemError::NoBlock,
                ..
            }
        ),
        "{err}"
    );

    let missing = PathBuf::from("/nonexistent/auth-test/key.pem");
    let specs = [KeySpec {
        secret_file: None,
        public_key_file: Some(missing),
        ..spec(None, Alg::EdDSA, None, None)
    }];
    let err = load(&specs).expect_err("missing file");
    assert!(matches!(err, KeyError::ReadFile { .. }), "{err}");
    assert!(
        err.to_string().contains("/nonexistent/auth-test/key.pem"),
        "{err}"
    );

    let ed = ed25519_key();
    let private = TempFile::new(
        "private.pem",
        pem_block("PRIVATE KEY", &ed.pkcs8).as_bytes(),
    );
    let err = load(&[spec(None, Alg::EdDSA, None, Some(&private))]).expect_err("private key");
    assert!(
        matches!(&err, KeyError::BadPem { source: PemError::WrongLabel(l), .. } if l == "PRIVATE KEY"),
        "{err}"
    );

    let ed_file = TempFile::new("ed-for-es.pem", ed.pem.as_bytes());
    let err = load(&[spec(None, Alg::ES256, None, Some(&ed_file))]).expect_err("wrong type");
    assert!(
        matches!(
            err,
            KeyError::WrongKeyType {
                alg: Alg::ES256,
                ..
            }
        ),
        "{err}"
    );

    let huge = TempFile::new("huge.pem", &vec![b'A'; 70 * 1024]);
    let err = load(&[spec(None, Alg::EdDSA, None, Some(&huge))]).expect_err("huge");
    assert!(matches!(err, KeyError::FileTooLarge { .. }), "{err}");

    let binary = TempFile::new("binary.pem", &[0xff, 0xfe, 0x00]);
    let err = load(&[spec(None, Alg::EdDSA, None, Some(&binary))]).expect_err("binary");
    assert!(matches!(err, KeyError::ReadFile { .. }), "{err}");
}

#[test]
fn from_specs_structure_errors() {
    let f = TempFile::new("structure.pem", ed25519_key().pem.as_bytes());
    type Case = (Vec<KeySpec>, fn(&KeyError) -> bool);
    let cases: Vec<Case> = vec![
        (vec![], |e| matches!(e, KeyError::NoKeys)),
        (vec![spec(None, Alg::HS256, Some("GOOD"), Some(&f))], |e| {
            matches!(e, KeyError::BothSources { .. })
        }),
        (vec![spec(None, Alg::HS256, None, None)], |e| {
            matches!(e, KeyError::NoSource { .. })
        }),
        (vec![spec(None, Alg::HS256, None, Some(&f))], |e| {
            matches!(e, KeyError::WrongMaterial { .. })
        }),
        (vec![spec(None, Alg::EdDSA, Some("GOOD"), None)], |e| {
            matches!(e, KeyError::WrongMaterial { .. })
        }),
        (
            vec![
                spec(Some("a"), Alg::HS256, Some("GOOD"), None),
                spec(Some("a"), Alg::EdDSA, None, Some(&f)),
            ],
            |e| matches!(e, KeyError::DuplicateKid(k) if k == "a"),
        ),
        (
            vec![
                spec(None, Alg::HS256, Some("GOOD"), None),
                spec(None, Alg::EdDSA, None, Some(&f)),
            ],
            |e| matches!(e, KeyError::KidRequired { count: 2, .. }),
        ),
        (
            vec![
                spec(Some("a"), Alg::HS256, Some("GOOD"), None),
                spec(None, Alg::EdDSA, None, Some(&f)),
            ],
            |e| matches!(e, KeyError::KidRequired { count: 2, .. }),
        ),
    ];
    for (i, (specs, want)) in cases.iter().enumerate() {
        let err = load(specs).expect_err("must fail");
        assert!(want(&err), "case {i}: {err}");
        assert!(!err.to_string().is_empty());
    }
}

#[test]
fn new_rejects_mismatched_material() {
    let ed = ed25519_key();
    let pem_for_hs = VerifyKey {
        kid: None,
        alg: Alg::HS256,
        material: KeyMaterial::PublicKeyPem(ed.pem.clone()),
    };
    let err = Verifier::new(vec![pem_for_hs], VerifyOptions::default()).expect_err("pem for hs");
    assert!(
        matches!(
            err,
            KeyError::WrongMaterial {
                alg: Alg::HS256,
                ..
            }
        ),
        "{err}"
    );
    let secret_for_ed = VerifyKey {
        kid: None,
        alg: Alg::EdDSA,
        material: KeyMaterial::Secret(SECRET.to_vec()),
    };
    let err =
        Verifier::new(vec![secret_for_ed], VerifyOptions::default()).expect_err("secret for ed");
    assert!(
        matches!(
            err,
            KeyError::WrongMaterial {
                alg: Alg::EdDSA,
                ..
            }
        ),
        "{err}"
    );
    let err = Verifier::new(
        vec![pem_key(None, Alg::EdDSA, &p256_key())],
        VerifyOptions::default(),
    )
    .expect_err("p256 for ed");
    assert!(
        matches!(
            err,
            KeyError::WrongKeyType {
                found: "an EC P-256 key",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn key_spec_serde_shape() {
    let s: KeySpec =
        serde_json::from_value(json!({"kid": "k", "alg": "EdDSA", "public_key_file": "/k.pem"}))
            .expect("parse");
    assert_eq!(
        s,
        KeySpec {
            secret_file: None,
            kid: Some("k".into()),
            alg: Alg::EdDSA,
            secret_env: None,
            public_key_file: Some("/k.pem".into())
        }
    );
    let unknown = serde_json::from_value::<KeySpec>(json!({"alg": "HS256", "secret": "oops"}));
    assert!(unknown.is_err(), "deny_unknown_fields");
    for (alg, name) in [
        (Alg::HS256, "HS256"),
        (Alg::EdDSA, "EdDSA"),
        (Alg::ES256, "ES256"),
    ] {
        assert_eq!(serde_json::to_value(alg).expect("ser"), json!(name));
        assert_eq!(alg.to_string(), name);
    }
    assert!(serde_json::from_value::<Alg>(json!("hs256")).is_err());
}

#[test]
fn secret_file_holds_an_hs256_secret_read_at_each_load() {
    let mut secret = SECRET.to_vec();
    secret.push(b'\n'); // as `echo` writes it
    let f = TempFile::new("secret", &secret);
    let file_spec = KeySpec {
        secret_file: Some(f.0.clone()),
        ..spec(Some("hs"), Alg::HS256, None, None)
    };
    let v = load(std::slice::from_ref(&file_spec)).expect("loads");
    assert_eq!(v.key_count(), 1);
    // The same secret from the environment gives the same key: the
    // newline was not part of it.
    assert!(v
        .verify(&sign_hs256(SECRET, Some("hs"), &claims()), NOW)
        .is_ok());

    std::fs::write(&f.0, b"\n").expect("rewrite");
    let err = refused(std::slice::from_ref(&file_spec));
    assert!(matches!(err, KeyError::SecretFileEmpty { .. }), "{err}");

    let both = KeySpec {
        secret_env: Some("GOOD".into()),
        ..file_spec.clone()
    };
    let err = refused(&[both]);
    assert!(matches!(err, KeyError::BothSources { .. }), "{err}");

    let wrong = KeySpec {
        alg: Alg::EdDSA,
        ..file_spec
    };
    let err = refused(&[wrong]);
    assert!(matches!(err, KeyError::WrongMaterial { .. }), "{err}");
}

/// The error loading `specs` gives (a load that succeeds fails the test).
fn refused(specs: &[KeySpec]) -> KeyError {
    match load(specs) {
        Err(e) => e,
        Ok(_) => panic!("{specs:?} loaded"),
    }
}
