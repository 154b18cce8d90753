//! Fault injection for `tests/faults/`: a backend that records every
//! undelivered push with its payload and can stall on demand, network
//! namespaces that make a client vanish without a FIN, the gateway binary
//! as a child process under a low open-file limit, frames over any stream
//! (TLS), and small readers for /connz, /metrics and a JetStream stream.
#![allow(dead_code)]

mod backend;
mod child;
mod jetstream;
mod netns;

// The paths `common::faults::...`. Test targets other than `faults`
// compile `common` too and use none of them.
#[allow(unused_imports)]
pub use self::{
    backend::{Event, FaultBackend, PUSH_ROUTE},
    child::ChildGateway,
    jetstream::{js_read, js_stream},
    netns::Netns,
};

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use gw_proto::pb::{frame::Body, Frame};
use gw_proto::Decoded;

/// RUST_LOG=debug shows the gateway's log in failing tests.
pub fn init_log() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// True when a client read error is a timeout rather than a close.
pub fn timed_out(e: &anyhow::Error) -> bool {
    e.to_string().contains("timed out")
        || e.downcast_ref::<io::Error>().is_some_and(|io| {
            matches!(
                io.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            )
        })
}

// ---------------------------------------------------------------------------
// Frames over any byte stream (TLS, a socket made in another namespace).

pub fn write_frame(w: &mut impl Write, body: Body) -> io::Result<()> {
    w.write_all(&gw_proto::encode(&Frame { body: Some(body) }))?;
    w.flush()
}

/// Reads whole frames from any stream.
#[derive(Default)]
pub struct FrameReader {
    buf: Vec<u8>,
}

impl FrameReader {
    pub fn read(&mut self, r: &mut impl Read) -> io::Result<Body> {
        loop {
            match gw_proto::decode(&self.buf, 1 << 24) {
                Ok(Decoded::Frame(f, used)) => {
                    self.buf.drain(..used);
                    return f
                        .body
                        .ok_or_else(|| io::Error::other("frame without a body"));
                }
                Ok(_) => {}
                Err(e) => return Err(io::Error::other(format!("bad frame: {e}"))),
            }
            let mut tmp = [0u8; 16384];
            let n = r.read(&mut tmp)?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&tmp[..n]);
        }
    }
}

// ---------------------------------------------------------------------------
// Admin readers.

/// `/connz?<query>` as JSON.
pub fn connz(admin: SocketAddr, query: &str) -> serde_json::Value {
    let (status, body) = super::http_get(admin, &format!("/connz?{query}"));
    assert_eq!(status, 200, "/connz?{query}: {body}");
    serde_json::from_str(&body).expect("/connz JSON")
}

/// The sum over cores of a Prometheus sample (`gateway_accept_errors_total`
/// sums every `{core=..}` line), from a /metrics text.
pub fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// /metrics, or None when the admin server does not answer within `wait`.
pub fn try_metrics(admin: SocketAddr, wait: Duration) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&admin, wait).ok()?;
    s.set_read_timeout(Some(wait)).ok()?;
    s.set_write_timeout(Some(wait)).ok()?;
    write!(s, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.starts_with("HTTP/1.1 200")
        .then(|| out.split("\r\n\r\n").nth(1).unwrap_or("").to_string())
}
