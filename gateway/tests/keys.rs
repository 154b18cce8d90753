//! Keys from the config file: an EdDSA public key in a PEM file, tokens
//! signed by a standard JWT library (jsonwebtoken) with the private key.

mod common;

use std::io::Write;

use base64::Engine;
use common::*;
use gateway::auth::{Alg, KeySpec};
use gw_proto::pb::frame::Body;
use ring::signature::{Ed25519KeyPair, KeyPair};

fn ed25519_pem(public: &[u8]) -> String {
    let mut der = vec![
        0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
    ];
    der.extend_from_slice(public);
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    format!("-----BEGIN PUBLIC KEY-----\n{b64}\n-----END PUBLIC KEY-----\n")
}

#[test]
fn eddsa_key_from_pem_file_accepts_tokens_from_a_standard_library() {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    let dir = std::env::temp_dir().join(format!("gw-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pem_path = dir.join("ed25519.pem");
    std::fs::File::create(&pem_path)
        .unwrap()
        .write_all(ed25519_pem(pair.public_key().as_ref()).as_bytes())
        .unwrap();

    let toml = format!(
        "[[auth.keys]]\nkid = \"ed-1\"\nalg = \"EdDSA\"\npublic_key_file = {:?}\n",
        pem_path.display().to_string()
    );
    let file_cfg: gateway::Config = toml::from_str(&toml).unwrap();
    assert_eq!(file_cfg.auth.keys[0].alg, Alg::EdDSA);
    let cfg = gateway::Config {
        demo: false,
        auth: gateway::config::AuthConfig {
            keys: vec![KeySpec {
                secret_file: None,
                ..file_cfg.auth.keys[0].clone()
            }],
            ..Default::default()
        },
        ..test_config()
    };
    let (gw, _rec) = start(cfg);

    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    header.kid = Some("ed-1".into());
    let claims = serde_json::json!({"sub": "erin", "did": "tablet", "exp": unix_now() + 600});
    let key = jsonwebtoken::EncodingKey::from_ed_der(pkcs8.as_ref());
    let token = jsonwebtoken::encode(&header, &claims, &key).unwrap();
    let mut c = Client::connect(gw.local_addr);
    match c.auth_with(token, "ignored-when-did-is-set") {
        Body::AuthOk(ok) => assert_eq!(
            (ok.user_id.as_str(), ok.device_id.as_str()),
            ("erin", "tablet")
        ),
        other => panic!("{other:?}"),
    }
    // The demo key is not configured: a demo token is refused.
    let mut d = Client::connect(gw.local_addr);
    assert!(matches!(d.auth_with(token_demo(), "x"), Body::AuthError(_)));
    gw.shutdown(false);
    let _ = std::fs::remove_dir_all(&dir);
}

fn token_demo() -> String {
    token("mallory", 600)
}
