//! The head of an HTTP/1.1 request on the client port: the WebSocket
//! upgrade, and in demo mode the demo page and the demo token endpoint
//! (`conn/web.rs`). Pure parsing, no I/O, bounded by the caller
//! (`ws.handshake_bytes_max`); fuzzed by `fuzz/fuzz_targets/ws_handshake.rs`.

/// Most header lines a request may carry.
pub const HEADERS_MAX: usize = 64;

/// A parsed request head (the bytes before the blank line).
#[derive(Debug)]
pub struct Request<'a> {
    pub method: &'a str,
    /// The target's path, without the query.
    pub path: &'a str,
    /// The query string after `?`, without it ("" when none).
    pub query: &'a str,
    headers: Vec<(&'a str, &'a str)>,
}

impl<'a> Request<'a> {
    /// Parses a request head without its final CRLF CRLF. Only HTTP/1.1 is
    /// accepted (browsers and WebSocket clients send it).
    pub fn parse(head: &'a [u8]) -> Result<Self, &'static str> {
        let text = std::str::from_utf8(head).map_err(|_| "request is not UTF-8")?;
        let mut lines = text.split("\r\n");
        let mut parts = lines.next().unwrap_or("").split(' ');
        let (method, target, version) = (parts.next(), parts.next(), parts.next());
        let (Some(method), Some(target), Some("HTTP/1.1"), None) =
            (method, target, version, parts.next())
        else {
            return Err("not an HTTP/1.1 request line");
        };
        if method.is_empty() || !target.starts_with('/') {
            return Err("not an HTTP/1.1 request line");
        }
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let mut headers = Vec::new();
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                return Err("malformed header line");
            };
            if name.is_empty() || name.contains([' ', '\t']) {
                return Err("malformed header name");
            }
            if headers.len() == HEADERS_MAX {
                return Err("too many header lines");
            }
            headers.push((name, value.trim()));
        }
        Ok(Self {
            method,
            path,
            query,
            headers,
        })
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    }

    /// Whether a comma-separated header holds `token` (case-insensitive).
    pub fn header_has(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .any(|(_, v)| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    }

    /// The percent-decoded value of query parameter `name`; None when it is
    /// absent or not valid UTF-8 after decoding.
    pub fn param(&self, name: &str) -> Option<String> {
        self.query
            .split('&')
            .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
            .find(|(k, _)| *k == name)
            .and_then(|(_, v)| percent_decode(v))
    }
}

/// Decodes `%XX` escapes and `+` (a space in query strings).
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = b.get(i + 1..i + 3)?;
                // Two hex digits exactly (from_str_radix would take "+1").
                if !hex.iter().all(u8::is_ascii_hexdigit) {
                    return None;
                }
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// A whole response that closes the connection after it.
pub fn response(status: &str, content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.1 {status}\r\nConnection: close\r\nContent-Length: {}\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n",
        body.len()
    );
    if !content_type.is_empty() {
        r.push_str(&format!("Content-Type: {content_type}\r\n"));
    }
    r.push_str("\r\n");
    let mut r = r.into_bytes();
    r.extend_from_slice(body);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_request() {
        let r = Request::parse(
            b"GET /demo/token?user=al%20ice&x HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade",
        )
        .unwrap();
        assert_eq!((r.method, r.path), ("GET", "/demo/token"));
        assert_eq!(r.param("user").as_deref(), Some("al ice"));
        assert_eq!(r.param("x").as_deref(), Some(""));
        assert_eq!(r.param("y"), None);
        assert_eq!(r.header("HOST"), Some("a"));
        assert!(r.header_has("connection", "upgrade"));
        assert!(!r.header_has("connection", "close"));
    }

    #[test]
    fn refuses_malformed_heads() {
        for bad in [
            &b"GET / HTTP/1.0"[..],
            b"GET /",
            b"GET / HTTP/1.1 extra",
            b"GET x HTTP/1.1",
            b" / HTTP/1.1",
            b"GET / HTTP/1.1\r\nno colon",
            b"GET / HTTP/1.1\r\nbad name: x",
            b"GET / HTTP/1.1\r\n\xff: x",
        ] {
            assert!(
                Request::parse(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let many = format!("GET / HTTP/1.1{}", "\r\na: b".repeat(HEADERS_MAX + 1));
        assert_eq!(
            Request::parse(many.as_bytes()).unwrap_err(),
            "too many header lines"
        );
    }

    #[test]
    fn bad_escapes_are_absent_values() {
        let r = Request::parse(b"GET /?a=%zz&b=%4&c=%ff&d=%+1 HTTP/1.1").unwrap();
        assert_eq!(r.param("d"), None);
        assert_eq!(r.param("a"), None);
        assert_eq!(r.param("b"), None);
        assert_eq!(r.param("c"), None);
    }
}
