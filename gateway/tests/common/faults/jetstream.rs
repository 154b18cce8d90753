//! JetStream, through its request API (the test client has no JetStream
//! feature): a stream that keeps what the gateway publishes on a subject,
//! whoever listens, across NATS restarts.

use super::super::nats::Nats;

fn js_call(nats: &Nats, subject: &str, body: serde_json::Value) -> serde_json::Value {
    let m = nats
        .request(subject, &[], body.to_string().as_bytes())
        .unwrap_or_else(|e| panic!("{subject}: {e}"));
    let v: serde_json::Value = serde_json::from_slice(&m.payload).expect("JetStream API JSON");
    assert!(v.get("error").is_none(), "{subject}: {v}");
    v
}

/// Creates a file-backed stream `name` on `subject`.
pub fn js_stream(nats: &Nats, name: &str, subject: &str) {
    js_call(
        nats,
        &format!("$JS.API.STREAM.CREATE.{name}"),
        serde_json::json!({"name": name, "subjects": [subject], "storage": "file"}),
    );
}

/// The payloads stored in stream `name` with sequence numbers from `from`
/// on; returns them and the next sequence number to ask for.
pub fn js_read(nats: &Nats, name: &str, from: u64) -> (Vec<Vec<u8>>, u64) {
    use base64::Engine as _;
    let info = js_call(
        nats,
        &format!("$JS.API.STREAM.INFO.{name}"),
        serde_json::json!({}),
    );
    let last = info["state"]["last_seq"].as_u64().unwrap_or(0);
    let mut out = Vec::new();
    for seq in from..=last {
        let v = js_call(
            nats,
            &format!("$JS.API.STREAM.MSG.GET.{name}"),
            serde_json::json!({ "seq": seq }),
        );
        let data = v["message"]["data"].as_str().unwrap_or("");
        out.push(
            base64::engine::general_purpose::STANDARD
                .decode(data)
                .expect("base64 message data"),
        );
    }
    (out, last.max(from.saturating_sub(1)) + 1)
}
