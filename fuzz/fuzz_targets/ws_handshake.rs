//! Fuzzes what the client port does with an HTTP request head: the parser
//! (`conn/http.rs`), the WebSocket upgrade check (`conn/ws.rs`) and the
//! demo answers (`conn/web.rs`). Any bytes must give a typed refusal or a
//! well-formed answer; never a panic.
#![no_main]

use base64::Engine as _;
use gateway::config::WsConfig;
use gateway::conn::web;
use gateway::wire::http::Request;
use gateway::wire::ws;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let cfg = WsConfig {
        allowed_origins: vec!["https://app.example".into()],
        ..WsConfig::default()
    };
    // The gateway hands over the bytes before the blank line.
    let head = match data.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(p) => &data[..p],
        None => data,
    };
    let Ok(req) = Request::parse(head) else {
        return;
    };
    let _ = req.param("user");
    match ws::check(&cfg, &req) {
        Ok(key) => {
            let raw = base64::engine::general_purpose::STANDARD.decode(key);
            assert_eq!(raw.map(|k| k.len()).ok(), Some(16));
        }
        Err((status, _)) => assert!(status.as_bytes()[0].is_ascii_digit()),
    }
    if let Some(resp) = web::answer(&req, 1_800_000_000) {
        assert!(resp.starts_with(b"HTTP/1.1 "));
    }
});
