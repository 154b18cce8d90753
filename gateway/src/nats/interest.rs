//! A minimal NATS connection that holds many subscriptions cheaply.
//!
//! async-nats keeps a channel per subscription (about 4.9 KB each, measured),
//! which is too much for one subscription per online user per core. This
//! connection only does what the gateway's interest needs: SUB/UNSUB, receive
//! MSG/HMSG, and PUB/HPUB (to answer requests that arrive on those subjects).
//! Per subscription it keeps one hash map entry (`Box<str>` subject → `u64`
//! sid, 24 bytes plus the table's control byte and load factor) and the
//! subject's heap bytes: well under 150 bytes for typical subjects.
//!
//! Threads: [`Interest`] is `Send + Sync` and cheap to clone; callers on any
//! thread (the glommio cores) update the subscription table under a mutex and
//! queue a command to the connection task, which runs on a tokio runtime.
//! The table is the truth: on every (re)connect the task re-sends a SUB for
//! each entry, with the same sid.

use std::collections::HashMap;
use std::fmt;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::rustls;

#[cfg(test)]
mod tests;

/// Where and how to connect.
#[derive(Clone, Debug)]
pub struct ConnectSpec {
    /// `nats://host:port`, `tls://host:port` or `host:port` (port 4222 if
    /// absent); tried in order, round-robin on reconnect. `user:pass@` or
    /// `token@` in a URL is used when `auth` is [`Auth::None`].
    pub urls: Vec<String>,
    pub auth: Auth,
    /// Also implied by `tls://` URLs and by the server's INFO `tls_required`.
    pub tls_required: bool,
    /// PEM CA certificates to trust; empty = the system roots.
    pub tls_ca_file: String,
    /// Optional client certificate and key (PEM).
    pub tls_cert_file: String,
    pub tls_key_file: String,
    /// CONNECT `name` (shows in the server's `/connz`).
    pub name: String,
    /// Limit for one attempt: TCP connect, INFO, TLS, CONNECT, PONG.
    pub connect_timeout: Duration,
    /// Backoff starts at 10 ms, doubles, and stops growing here; attempts never stop.
    pub reconnect_delay_max: Duration,
    /// Client PING period; two unanswered PINGs drop the connection. Zero = no PINGs.
    pub ping_interval: Duration,
}

impl Default for ConnectSpec {
    fn default() -> Self {
        ConnectSpec {
            urls: Vec::new(),
            auth: Auth::None,
            tls_required: false,
            tls_ca_file: String::new(),
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
            name: "gateway".into(),
            connect_timeout: Duration::from_secs(2),
            reconnect_delay_max: Duration::from_secs(2),
            ping_interval: Duration::from_secs(30),
        }
    }
}

/// How to authenticate.
#[derive(Clone, PartialEq, Eq)]
pub enum Auth {
    None,
    Token(String),
    UserPassword(String, String),
    /// NKey seed text (`SU...`).
    NKeySeed(String),
    /// User JWT and NKey seed, as in an nsc `.creds` file (see [`read_creds`]).
    Creds {
        jwt: String,
        seed: String,
    },
}

impl fmt::Debug for Auth {
    // Secrets stay out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Auth::None => f.write_str("None"),
            Auth::Token(_) => f.write_str("Token(<redacted>)"),
            Auth::UserPassword(u, _) => write!(f, "UserPassword({u:?}, <redacted>)"),
            Auth::NKeySeed(_) => f.write_str("NKeySeed(<redacted>)"),
            Auth::Creds { .. } => f.write_str("Creds(<redacted>)"),
        }
    }
}

/// A message that arrived on one of the subscriptions.
#[derive(Debug, Clone, PartialEq)]
pub struct Inbound {
    pub subject: String,
    pub reply: Option<String>,
    /// Header fields in wire order (the `NATS/1.0` status line is not included).
    pub headers: Vec<(String, String)>,
    pub payload: Bytes,
}

/// Connection state changes, for logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Handshake done and every subscription re-sent and acknowledged (PONG).
    Connected,
    /// The connection dropped or an attempt failed; the text says why.
    /// Repeats of the same reason are not re-sent until the next `Connected`.
    Disconnected(String),
}

/// Handle to one NATS connection task. Cheap to clone; `Send + Sync`.
/// Dropping every clone ends the task, like [`Interest::close`].
#[derive(Clone)]
pub struct Interest {
    tx: mpsc::UnboundedSender<Cmd>,
    shared: Arc<Shared>,
}

impl fmt::Debug for Interest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Interest")
            .field("subscriptions", &self.subscriptions())
            .field("connected", &self.is_connected())
            .finish()
    }
}

enum Cmd {
    Sub {
        subject: Box<str>,
        queue: Option<Box<str>>,
        sid: u64,
    },
    Unsub {
        sid: u64,
    },
    Pub {
        subject: Box<str>,
        /// The encoded header block (`NATS/1.0\r\n...\r\n\r\n`), if any.
        headers: Option<Box<[u8]>>,
        payload: Bytes,
    },
    Close,
}

/// The subscription table. Compact on purpose: one map entry per subject;
/// queue groups (rare) live in a second map keyed by sid.
struct Subs {
    by_subject: HashMap<Box<str>, u64>,
    queues: HashMap<u64, Box<str>>,
    next_sid: u64,
}

struct Shared {
    subs: Mutex<Subs>,
    connected: AtomicBool,
    closed: AtomicBool,
    close: tokio::sync::Notify,
}

impl Shared {
    fn subs(&self) -> MutexGuard<'_, Subs> {
        // Nothing panics while holding the lock; recover anyway.
        self.subs.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Interest {
    /// Spawns the connection task on the current tokio runtime (panics outside
    /// one, like `tokio::spawn`). Returns at once; connecting happens in the
    /// background, retrying forever with backoff.
    pub fn spawn(
        spec: ConnectSpec,
        inbound: flume::Sender<Inbound>,
        status: flume::Sender<Status>,
    ) -> Interest {
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            subs: Mutex::new(Subs {
                by_subject: HashMap::new(),
                queues: HashMap::new(),
                next_sid: 0,
            }),
            connected: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            close: tokio::sync::Notify::new(),
        });
        let task = Task {
            spec,
            shared: shared.clone(),
            rx,
            inbound,
            status,
            tls: None,
            fail_log: FailLog::default(),
            last_reported: None,
        };
        tokio::spawn(task.run());
        Interest { tx, shared }
    }

    /// Subscribes (optionally in a queue group). No-op if already subscribed
    /// to `subject` (whatever the queue group).
    pub fn sub(&self, subject: &str, queue: Option<&str>) {
        if !valid_subject(subject) || queue.is_some_and(|q| !valid_subject(q)) {
            tracing::warn!(
                subject,
                ?queue,
                "not subscribing: invalid NATS subject or queue group"
            );
            return;
        }
        if self.shared.closed.load(Ordering::Relaxed) {
            return;
        }
        let mut subs = self.shared.subs();
        if subs.by_subject.contains_key(subject) {
            return;
        }
        subs.next_sid += 1;
        let sid = subs.next_sid;
        let key: Box<str> = subject.into();
        subs.by_subject.insert(key.clone(), sid);
        let queue: Option<Box<str>> = queue.map(Into::into);
        if let Some(q) = &queue {
            subs.queues.insert(sid, q.clone());
        }
        // Sent under the lock so the task's reconnect snapshot (taken under
        // the same lock) orders exactly against queued commands.
        let _ = self.tx.send(Cmd::Sub {
            subject: key,
            queue,
            sid,
        });
    }

    /// Unsubscribes. No-op if not subscribed.
    pub fn unsub(&self, subject: &str) {
        let mut subs = self.shared.subs();
        let Some(sid) = subs.by_subject.remove(subject) else {
            return;
        };
        if !subs.queues.is_empty() {
            subs.queues.remove(&sid);
        }
        // Give memory back after a mass logout.
        let (len, cap) = (subs.by_subject.len(), subs.by_subject.capacity());
        if cap > 4096 && len < cap / 4 {
            subs.by_subject.shrink_to(len * 2);
        }
        let _ = self.tx.send(Cmd::Unsub { sid });
    }

    /// Publishes (PUB, or HPUB when `headers` is not empty). Dropped, with a
    /// debug log, while disconnected or if invalid.
    pub fn publish(&self, subject: &str, headers: &[(&str, &str)], payload: Bytes) {
        if !valid_subject(subject) {
            tracing::warn!(subject, "publish dropped: invalid NATS subject");
            return;
        }
        if !self.shared.connected.load(Ordering::Relaxed) {
            tracing::debug!(subject, "publish dropped: NATS interest connection is down");
            return;
        }
        let headers = if headers.is_empty() {
            None
        } else {
            match encode_headers(headers) {
                Ok(h) => Some(h),
                Err(e) => {
                    tracing::warn!(subject, "publish dropped: {e}");
                    return;
                }
            }
        };
        let _ = self.tx.send(Cmd::Pub {
            subject: subject.into(),
            headers,
            payload,
        });
    }

    /// Ends the task (after writing commands queued before this call) and
    /// closes the socket.
    pub fn close(&self) {
        self.shared.closed.store(true, Ordering::Relaxed);
        let _ = self.tx.send(Cmd::Close);
        self.shared.close.notify_one();
    }

    /// Subjects currently subscribed.
    pub fn subscriptions(&self) -> usize {
        self.shared.subs().by_subject.len()
    }

    /// Whether the connection is up (handshake done, subscriptions restored).
    pub fn is_connected(&self) -> bool {
        self.shared.connected.load(Ordering::Relaxed)
    }

    /// Rough heap bytes held by the subscription table: hash table buckets
    /// plus subject strings rounded up to 8-byte allocator classes. Walks the
    /// table (O(n)); for diagnostics, not hot paths.
    pub fn approx_subscription_bytes(&self) -> usize {
        let subs = self.shared.subs();
        let keys: usize = subs.by_subject.keys().map(|k| alloc_size(k.len())).sum();
        let queues: usize = subs.queues.values().map(|q| alloc_size(q.len())).sum();
        table_bytes::<(Box<str>, u64)>(subs.by_subject.capacity())
            + keys
            + table_bytes::<(u64, Box<str>)>(subs.queues.capacity())
            + queues
    }
}

fn alloc_size(len: usize) -> usize {
    if len == 0 {
        0
    } else {
        len.div_ceil(8) * 8
    }
}

/// Heap bytes of a hashbrown table with this capacity (buckets, one control
/// byte each, plus one 16-byte control group).
fn table_bytes<T>(capacity: usize) -> usize {
    if capacity == 0 {
        return 0;
    }
    let buckets = if capacity < 8 {
        (capacity + 1).next_power_of_two()
    } else {
        (capacity * 8 / 7).next_power_of_two()
    };
    buckets * (std::mem::size_of::<T>() + 1) + 16
}

/// A subject or queue group that cannot break the protocol line it goes on.
fn valid_subject(s: &str) -> bool {
    !s.is_empty() && s.len() <= 4096 && s.bytes().all(|b| b > b' ' && b != 0x7f)
}

fn encode_headers(headers: &[(&str, &str)]) -> Result<Box<[u8]>, String> {
    let mut out = Vec::with_capacity(
        12 + headers
            .iter()
            .map(|(k, v)| k.len() + v.len() + 4)
            .sum::<usize>(),
    );
    out.extend_from_slice(b"NATS/1.0\r\n");
    for (k, v) in headers {
        if k.is_empty() || !k.bytes().all(|b| b > b' ' && b < 0x7f && b != b':') {
            return Err(format!("invalid header name {k:?}"));
        }
        if v.bytes().any(|b| b == b'\r' || b == b'\n') {
            return Err(format!("header {k:?} has a line break in its value"));
        }
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(out.into_boxed_slice())
}

// ---------------------------------------------------------------------------
// Credentials and NKeys
// ---------------------------------------------------------------------------

/// Parses an nsc `.creds` file: the user JWT block, then the NKey seed block.
pub fn read_creds(text: &str) -> Result<(String, String), String> {
    let mut jwt = None;
    let mut seed = None;
    let mut unlabelled = Vec::new();
    let mut lines = text.lines().map(str::trim);
    while let Some(line) = lines.next() {
        let is_begin = line.len() > 6
            && line.starts_with("---")
            && line.ends_with("---")
            && line.contains("BEGIN");
        if !is_begin {
            continue;
        }
        let Some(content) = lines.by_ref().find(|l| !l.is_empty()) else {
            break;
        };
        if content.starts_with("---") {
            continue;
        }
        let content = content.to_string();
        if line.contains("JWT") {
            jwt.get_or_insert(content);
        } else if line.contains("SEED") {
            seed.get_or_insert(content);
        } else {
            unlabelled.push(content);
        }
    }
    let mut unlabelled = unlabelled.into_iter();
    let jwt = jwt
        .or_else(|| unlabelled.next())
        .ok_or("no JWT block (-----BEGIN NATS USER JWT-----) in the creds file")?;
    let seed = seed
        .or_else(|| unlabelled.next())
        .ok_or("no seed block (-----BEGIN USER NKEY SEED-----) in the creds file")?;
    if jwt.split('.').count() != 3 {
        return Err(
            "the JWT in the creds file is not a JWT (expected three dot-separated parts)".into(),
        );
    }
    if !seed.starts_with('S') {
        return Err("the seed in the creds file does not start with 'S'".into());
    }
    Ok((jwt, seed))
}

const B32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// RFC 4648 base32, no padding.
fn base32_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(5) * 8);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &b in data {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(B32[((acc >> bits) & 31) as usize] as char);
        }
        acc &= (1 << bits) - 1;
    }
    if bits > 0 {
        out.push(B32[((acc << (5 - bits)) & 31) as usize] as char);
    }
    out
}

fn base32_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 5 / 8);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'2'..=b'7' => c - b'2' + 26,
            _ => return None,
        };
        acc = (acc << 5) | u32::from(v);
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
        acc &= (1 << bits) - 1;
    }
    Some(out)
}

/// CRC-16/XMODEM (poly 0x1021, init 0), as NKeys use.
fn crc16(data: &[u8]) -> u16 {
    let mut crc = 0u16;
    for &b in data {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

const NKEY_PREFIX_SEED: u8 = 18 << 3;
/// Public-key prefix byte of user keys ('U').
#[cfg(test)]
pub(crate) const NKEY_PREFIX_USER: u8 = 20 << 3;

fn nkey_encode(prefix: &[u8], key: &[u8]) -> String {
    let mut raw = Vec::with_capacity(prefix.len() + key.len() + 2);
    raw.extend_from_slice(prefix);
    raw.extend_from_slice(key);
    let crc = crc16(&raw);
    raw.extend_from_slice(&crc.to_le_bytes());
    base32_encode(&raw)
}

/// Encodes a 32-byte ed25519 seed of the given key type (prefix byte, e.g.
/// [`NKEY_PREFIX_USER`]) as seed text (`S` + type letter + ...).
#[cfg(test)]
pub(crate) fn nkey_encode_seed(kind: u8, seed: &[u8; 32]) -> String {
    let b1 = NKEY_PREFIX_SEED | (kind >> 5);
    let b2 = (kind & 31) << 3;
    nkey_encode(&[b1, b2], seed)
}

/// Encodes a public key of the given type (`U...` for users).
pub(crate) fn nkey_encode_public(kind: u8, key: &[u8]) -> String {
    nkey_encode(&[kind], key)
}

/// Decodes seed text into (key type prefix byte, raw seed).
pub(crate) fn nkey_decode_seed(text: &str) -> Result<(u8, [u8; 32]), String> {
    let raw = base32_decode(text.trim())
        .ok_or("the NKey seed is not base32 (expected text like SUAB...)")?;
    if raw.len() != 36 {
        return Err(format!(
            "the NKey seed has the wrong length ({} bytes decoded, expected 36)",
            raw.len()
        ));
    }
    let (body, crc) = raw.split_at(34);
    if crc16(body) != u16::from_le_bytes([crc[0], crc[1]]) {
        return Err("the NKey seed's checksum does not match (truncated or mistyped?)".into());
    }
    if body[0] & 0xf8 != NKEY_PREFIX_SEED {
        return Err("this is not an NKey seed (it must start with 'S')".into());
    }
    let kind = ((body[0] & 7) << 5) | ((body[1] & 0xf8) >> 3);
    let mut seed = [0u8; 32];
    seed.copy_from_slice(&body[2..]);
    Ok((kind, seed))
}

/// The public key (NKey text) of a seed and the signature of `nonce`,
/// base64url without padding, as CONNECT wants them.
pub(crate) fn nkey_sign(seed_text: &str, nonce: &[u8]) -> Result<(String, String), String> {
    let (kind, seed) = nkey_decode_seed(seed_text)?;
    let kp = ring::signature::Ed25519KeyPair::from_seed_unchecked(&seed)
        .map_err(|_| "the NKey seed is not a valid ed25519 seed".to_string())?;
    use ring::signature::KeyPair as _;
    let public = nkey_encode_public(kind, kp.public_key().as_ref());
    let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(kp.sign(nonce).as_ref());
    Ok((public, sig))
}

// ---------------------------------------------------------------------------
// URLs
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct ServerUrl {
    /// For logs: scheme://host:port, without credentials.
    shown: String,
    host: String,
    port: u16,
    tls: bool,
    auth: Auth,
}

fn parse_url(text: &str) -> Result<ServerUrl, String> {
    let s = text.trim();
    let (scheme, rest) = match s.find("://") {
        Some(i) => (s[..i].to_ascii_lowercase(), &s[i + 3..]),
        None => ("nats".to_string(), s),
    };
    let tls = match scheme.as_str() {
        "nats" => false,
        "tls" => true,
        other => {
            return Err(format!(
                "unsupported URL scheme {other:?} in {s:?} (use nats:// or tls://)"
            ))
        }
    };
    let rest = rest.split('/').next().unwrap_or("");
    let (userinfo, hostport) = match rest.rfind('@') {
        Some(i) => (Some(&rest[..i]), &rest[i + 1..]),
        None => (None, rest),
    };
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let Some((h, after)) = v6.split_once(']') else {
            return Err(format!("unclosed '[' in {s:?}"));
        };
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(format!("unexpected text after ']' in {s:?}")),
        };
        (h, port)
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if host.is_empty() {
        return Err(format!("no host in NATS URL {s:?}"));
    }
    let port = match port {
        None | Some("") => 4222,
        Some(p) => p
            .parse::<u16>()
            .map_err(|_| format!("bad port {p:?} in NATS URL {s:?}"))?,
    };
    let auth = match userinfo {
        None | Some("") => Auth::None,
        Some(ui) => match ui.split_once(':') {
            Some((u, p)) => Auth::UserPassword(u.to_string(), p.to_string()),
            None => Auth::Token(ui.to_string()),
        },
    };
    let shown_host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    Ok(ServerUrl {
        shown: format!("{}://{shown_host}:{port}", if tls { "tls" } else { "nats" }),
        host: host.to_string(),
        port,
        tls,
        auth,
    })
}

// ---------------------------------------------------------------------------
// Protocol parsing
// ---------------------------------------------------------------------------

/// Longest control line accepted (INFO of a big cluster can be long).
const MAX_CONTROL_LINE: usize = 1 << 20;
/// Ceiling on the server's advertised max_payload (nats-server allows 64 MiB).
const MAX_PAYLOAD_CEILING: usize = 64 << 20;
const DEFAULT_MAX_PAYLOAD: usize = 1 << 20;
const READ_CHUNK: usize = 64 << 10;
/// Write once this much is buffered, even if more commands are queued.
const WRITE_BATCH: usize = 256 << 10;

#[derive(Debug)]
enum Op {
    Msg(Inbound),
    Ping,
    Pong,
    Ok,
    Err(String),
    Info(Vec<u8>),
}

#[derive(serde::Deserialize, Default, Debug)]
#[serde(default)]
struct ServerInfo {
    server_id: String,
    nonce: Option<String>,
    tls_required: bool,
    tls_available: bool,
    max_payload: i64,
    headers: bool,
    ldm: bool,
}

impl ServerInfo {
    fn parse(json: &[u8]) -> Result<ServerInfo, String> {
        serde_json::from_slice(json).map_err(|e| format!("bad INFO from server: {e}"))
    }

    fn max_payload(&self) -> usize {
        if self.max_payload <= 0 {
            DEFAULT_MAX_PAYLOAD
        } else {
            (self.max_payload as u64).min(MAX_PAYLOAD_CEILING as u64) as usize
        }
    }
}

fn shown(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(&bytes[..bytes.len().min(120)]);
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

fn to_string(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_string(),
        Err(_) => String::from_utf8_lossy(bytes).into_owned(),
    }
}

fn parse_len(b: &[u8]) -> Result<usize, String> {
    if b.is_empty() || b.len() > 12 || !b.iter().all(u8::is_ascii_digit) {
        return Err(format!("bad length {:?}", shown(b)));
    }
    Ok(b.iter().fold(0usize, |n, d| n * 10 + usize::from(d - b'0')))
}

/// Splits protocol arguments on spaces/tabs into `out`; errors if more than fit.
fn split_args<'a>(args: &'a [u8], out: &mut [&'a [u8]; 5]) -> Result<usize, String> {
    let mut n = 0;
    for a in args
        .split(|&b| b == b' ' || b == b'\t')
        .filter(|a| !a.is_empty())
    {
        if n == out.len() {
            return Err("too many arguments".into());
        }
        out[n] = a;
        n += 1;
    }
    Ok(n)
}

/// Parses one protocol operation from the front of `buf`. `Ok(None)` = need
/// more bytes; `Err` = protocol error (the caller reconnects). Returns the
/// operation and how many bytes it used.
fn parse_op(buf: &[u8], max_payload: usize) -> Result<Option<(Op, usize)>, String> {
    let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
        if buf.len() > MAX_CONTROL_LINE {
            return Err("control line too long".into());
        }
        return Ok(None);
    };
    if nl > MAX_CONTROL_LINE {
        return Err("control line too long".into());
    }
    let line = &buf[..nl];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let body_at = nl + 1;
    let (verb, args) = match line.iter().position(|&b| b == b' ' || b == b'\t') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, &line[line.len()..]),
    };
    let is = |name: &[u8]| verb.eq_ignore_ascii_case(name);
    if is(b"MSG") || is(b"HMSG") {
        let with_headers = is(b"HMSG");
        let mut a: [&[u8]; 5] = [&[]; 5];
        let n = split_args(args, &mut a).map_err(|e| format!("{e} in {:?}", shown(line)))?;
        let (subject, reply, hdr_len, total_len) = match (with_headers, n) {
            (false, 3) => (a[0], None, 0, parse_len(a[2])?),
            (false, 4) => (a[0], Some(a[2]), 0, parse_len(a[3])?),
            (true, 4) => (a[0], None, parse_len(a[2])?, parse_len(a[3])?),
            (true, 5) => (a[0], Some(a[2]), parse_len(a[3])?, parse_len(a[4])?),
            _ => return Err(format!("malformed {:?}", shown(line))),
        };
        if hdr_len > total_len {
            return Err(format!("header length above total in {:?}", shown(line)));
        }
        if hdr_len > max_payload || total_len - hdr_len > max_payload {
            return Err(format!(
                "message larger than the server's max_payload ({max_payload}): {:?}",
                shown(line)
            ));
        }
        let end = body_at + total_len;
        if buf.len() < end + 2 {
            return Ok(None);
        }
        if &buf[end..end + 2] != b"\r\n" {
            return Err(format!(
                "message body not followed by CRLF: {:?}",
                shown(line)
            ));
        }
        let headers = if with_headers {
            parse_headers(&buf[body_at..body_at + hdr_len])?
        } else {
            Vec::new()
        };
        let msg = Inbound {
            subject: to_string(subject),
            reply: reply.map(to_string),
            headers,
            payload: Bytes::copy_from_slice(&buf[body_at + hdr_len..end]),
        };
        return Ok(Some((Op::Msg(msg), end + 2)));
    }
    let op = if is(b"PING") {
        Op::Ping
    } else if is(b"PONG") {
        Op::Pong
    } else if is(b"+OK") {
        Op::Ok
    } else if is(b"-ERR") {
        let text = to_string(args);
        let text = text.trim();
        let text = text
            .strip_prefix('\'')
            .and_then(|t| t.strip_suffix('\''))
            .unwrap_or(text);
        Op::Err(text.to_string())
    } else if is(b"INFO") {
        Op::Info(args.to_vec())
    } else {
        return Err(format!("unexpected from server: {:?}", shown(line)));
    };
    Ok(Some((op, body_at)))
}

/// `NATS/1.0[ status]\r\nKey: Value\r\n...\r\n\r\n` → fields in order.
fn parse_headers(block: &[u8]) -> Result<Vec<(String, String)>, String> {
    let text = String::from_utf8_lossy(block);
    let mut lines = text.split("\r\n");
    let first = lines.next().unwrap_or("");
    if !first.starts_with("NATS/") {
        return Err(format!(
            "headers do not start with NATS/1.0: {:?}",
            shown(block)
        ));
    }
    let mut out = Vec::new();
    for line in lines {
        if line.is_empty() {
            continue;
        }
        if let Some((k, v)) = line.split_once(':') {
            out.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// The connection task
// ---------------------------------------------------------------------------

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// Why an attempt failed: the reason for logs/status, and what to do.
struct ConnErr {
    reason: String,
    hint: &'static str,
}

const HINT_REFUSED: &str = "is nats-server running and listening there? check [nats] urls";
const HINT_NETWORK: &str = "check the address, DNS, routes and firewall in [nats] urls";
const HINT_TIMEOUT: &str = "the server did not complete the handshake in time: check the address and firewall, whether it expects TLS (tls://), or raise connect_timeout_ms";
const HINT_AUTH: &str = "check the [nats] credentials (token, user/password, nkey_seed_file, creds_file) against the server's authorization config";
const HINT_TLS: &str = "check tls_ca_file/tls_cert_file/tls_key_file, that the server certificate is valid for the host in the URL, and tls:// vs nats://";
const HINT_PROTOCOL: &str =
    "is this a NATS client port (not the monitoring, cluster or websocket port)?";
const HINT_SERVER: &str = "see the server's log for details";

impl ConnErr {
    fn new(reason: impl Into<String>, hint: &'static str) -> ConnErr {
        ConnErr {
            reason: reason.into(),
            hint,
        }
    }

    fn io(stage: &str, e: std::io::Error) -> ConnErr {
        use std::io::ErrorKind::*;
        let hint = match e.kind() {
            ConnectionRefused => HINT_REFUSED,
            InvalidData => HINT_TLS,
            _ => HINT_NETWORK,
        };
        ConnErr::new(format!("{stage}: {e}"), hint)
    }

    fn server(text: String) -> ConnErr {
        let lower = text.to_ascii_lowercase();
        let hint = if lower.contains("authorization") || lower.contains("authentication") {
            HINT_AUTH
        } else if lower.contains("tls") || lower.contains("secure") {
            HINT_TLS
        } else {
            HINT_SERVER
        };
        ConnErr::new(format!("server said: {text}"), hint)
    }
}

/// Logs each distinct failure per URL at once, and repeats of the same one
/// at most once per 10 s.
#[derive(Default)]
struct FailLog {
    entries: Vec<FailEntry>,
}

struct FailEntry {
    url: String,
    reason: String,
    logged_at: Instant,
    suppressed: u32,
}

const FAIL_LOG_EVERY: Duration = Duration::from_secs(10);

impl FailLog {
    fn failed(&mut self, url: &str, e: &ConnErr) {
        let now = Instant::now();
        let suppressed = match self.entries.iter_mut().find(|x| x.url == url) {
            Some(x) => {
                if x.reason == e.reason && now.duration_since(x.logged_at) < FAIL_LOG_EVERY {
                    x.suppressed += 1;
                    return;
                }
                let s = x.suppressed;
                x.reason.clone_from(&e.reason);
                x.logged_at = now;
                x.suppressed = 0;
                s
            }
            None => {
                self.entries.push(FailEntry {
                    url: url.to_string(),
                    reason: e.reason.clone(),
                    logged_at: now,
                    suppressed: 0,
                });
                0
            }
        };
        tracing::warn!(
            url,
            repeats_not_logged = suppressed,
            "cannot connect to NATS (interest connection): {}; {}; retrying with backoff",
            e.reason,
            e.hint
        );
    }

    fn reset(&mut self) {
        self.entries.clear();
    }
}

struct Task {
    spec: ConnectSpec,
    shared: Arc<Shared>,
    rx: mpsc::UnboundedReceiver<Cmd>,
    inbound: flume::Sender<Inbound>,
    status: flume::Sender<Status>,
    tls: Option<Arc<rustls::ClientConfig>>,
    fail_log: FailLog,
    /// Last `Disconnected` reason sent since the last `Connected`.
    last_reported: Option<String>,
}

/// How the connected phase ended.
enum End {
    /// Closed on purpose (close(), every handle dropped, inbound receiver gone).
    Stop,
    /// Connection lost; reconnect.
    Lost(String),
}

struct Conn {
    stream: Box<dyn Stream>,
    rbuf: BytesMut,
    info: ServerInfo,
}

const BACKOFF_START: Duration = Duration::from_millis(10);

impl Task {
    async fn run(mut self) {
        let mut urls = Vec::new();
        for u in &self.spec.urls {
            match parse_url(u) {
                Ok(p) => urls.push(p),
                Err(e) => tracing::error!("ignoring NATS URL: {e}; fix [nats] urls"),
            }
        }
        if urls.is_empty() {
            tracing::error!("no usable NATS URL for the interest connection; fix [nats] urls");
            self.report_disconnected("no usable NATS URL".into());
            return;
        }
        let shared = self.shared.clone();
        let mut next_url = 0usize;
        let mut delay = Duration::ZERO;
        loop {
            if shared.closed.load(Ordering::Relaxed) || self.inbound.is_disconnected() {
                return;
            }
            if !delay.is_zero() && self.wait_backoff(jitter(delay)).await {
                return;
            }
            let url = urls[next_url % urls.len()].clone();
            next_url = next_url.wrapping_add(1);
            let attempt = tokio::time::timeout(self.spec.connect_timeout, self.handshake(&url));
            let result = tokio::select! {
                r = attempt => r,
                _ = shared.close.notified() => return,
            };
            let err = match result {
                Ok(Ok(conn)) => {
                    self.fail_log.reset();
                    let end = self.serve(conn, &url).await;
                    shared.connected.store(false, Ordering::Relaxed);
                    match end {
                        End::Stop => return,
                        End::Lost(why) => {
                            tracing::warn!(
                                url = %url.shown,
                                "NATS interest connection lost: {why}; {}; reconnecting",
                                lost_hint(&why)
                            );
                            self.report_disconnected(format!("{}: {why}", url.shown));
                            delay = BACKOFF_START;
                            continue;
                        }
                    }
                }
                Ok(Err(e)) => e,
                Err(_) => ConnErr::new(
                    format!(
                        "no complete handshake within {} ms",
                        self.spec.connect_timeout.as_millis()
                    ),
                    HINT_TIMEOUT,
                ),
            };
            self.fail_log.failed(&url.shown, &err);
            self.report_disconnected(format!("{}: {}", url.shown, err.reason));
            delay = if delay.is_zero() {
                BACKOFF_START
            } else {
                (delay * 2).min(self.spec.reconnect_delay_max.max(BACKOFF_START))
            };
        }
    }

    fn report_disconnected(&mut self, why: String) {
        if self.last_reported.as_deref() == Some(why.as_str()) {
            return;
        }
        let _ = self.status.try_send(Status::Disconnected(why.clone()));
        self.last_reported = Some(why);
    }

    /// Sleeps, draining commands meanwhile (SUB/UNSUB are in the table and go
    /// out on reconnect; publishes are dropped). True = stop the task.
    async fn wait_backoff(&mut self, d: Duration) -> bool {
        let sleep = tokio::time::sleep(d);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => return false,
                c = self.rx.recv() => match c {
                    None | Some(Cmd::Close) => return true,
                    Some(Cmd::Pub { subject, .. }) => {
                        tracing::debug!(subject = &*subject, "publish dropped: NATS interest connection is down");
                    }
                    Some(_) => {}
                },
            }
        }
    }

    fn tls_config(&mut self) -> Result<Arc<rustls::ClientConfig>, ConnErr> {
        if let Some(c) = &self.tls {
            return Ok(c.clone());
        }
        let c = build_tls(&self.spec).map_err(|e| ConnErr::new(e, HINT_TLS))?;
        self.tls = Some(c.clone());
        Ok(c)
    }

    async fn handshake(&mut self, url: &ServerUrl) -> Result<Conn, ConnErr> {
        let tcp = TcpStream::connect((url.host.as_str(), url.port))
            .await
            .map_err(|e| ConnErr::io("TCP connect", e))?;
        let _ = tcp.set_nodelay(true);
        let mut tcp = tcp;
        let mut rbuf = BytesMut::with_capacity(4096);
        let mut info = match read_op(&mut tcp, &mut rbuf, DEFAULT_MAX_PAYLOAD).await? {
            Op::Info(json) => {
                ServerInfo::parse(&json).map_err(|e| ConnErr::new(e, HINT_PROTOCOL))?
            }
            other => {
                return Err(ConnErr::new(
                    format!("expected INFO first, got {other:?}"),
                    HINT_PROTOCOL,
                ))
            }
        };
        let use_tls = url.tls || self.spec.tls_required || info.tls_required;
        let mut stream: Box<dyn Stream> = if use_tls {
            if !info.tls_required && !info.tls_available {
                return Err(ConnErr::new(
                    "TLS is required (tls:// or tls_required) but the server does not offer TLS",
                    "enable TLS on the server, or use nats:// and turn off tls_required",
                ));
            }
            if !rbuf.is_empty() {
                return Err(ConnErr::new(
                    "unexpected bytes after INFO before the TLS handshake",
                    HINT_PROTOCOL,
                ));
            }
            let config = self.tls_config()?;
            let name = rustls::pki_types::ServerName::try_from(url.host.clone()).map_err(|e| {
                ConnErr::new(format!("bad TLS server name {:?}: {e}", url.host), HINT_TLS)
            })?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|e| ConnErr::new(format!("TLS handshake: {e}"), HINT_TLS))?;
            Box::new(tls)
        } else {
            Box::new(tcp)
        };
        let connect = self.connect_json(&info, use_tls, url)?;
        let mut out = Vec::with_capacity(connect.len() + 16);
        out.extend_from_slice(b"CONNECT ");
        out.extend_from_slice(connect.as_bytes());
        out.extend_from_slice(b"\r\nPING\r\n");
        write_all(&mut stream, &out)
            .await
            .map_err(|e| ConnErr::io("sending CONNECT", e))?;
        loop {
            match read_op(&mut stream, &mut rbuf, info.max_payload()).await? {
                Op::Pong => break,
                Op::Ping => write_all(&mut stream, b"PONG\r\n")
                    .await
                    .map_err(|e| ConnErr::io("answering PING", e))?,
                Op::Ok => {}
                Op::Err(text) => return Err(ConnErr::server(text)),
                Op::Info(json) => {
                    if let Ok(i) = ServerInfo::parse(&json) {
                        info = i;
                    }
                }
                Op::Msg(m) => {
                    return Err(ConnErr::new(
                        format!("MSG on {:?} before any SUB", m.subject),
                        HINT_PROTOCOL,
                    ))
                }
            }
        }
        Ok(Conn { stream, rbuf, info })
    }

    fn connect_json(
        &self,
        info: &ServerInfo,
        tls: bool,
        url: &ServerUrl,
    ) -> Result<String, ConnErr> {
        use serde_json::{json, Value};
        let mut m = serde_json::Map::new();
        m.insert("verbose".into(), json!(false));
        m.insert("pedantic".into(), json!(false));
        m.insert("tls_required".into(), json!(tls));
        m.insert("headers".into(), json!(true));
        m.insert("no_responders".into(), json!(true));
        m.insert("protocol".into(), json!(1));
        m.insert("lang".into(), json!("rust-gw"));
        m.insert("version".into(), json!(env!("CARGO_PKG_VERSION")));
        m.insert("name".into(), json!(self.spec.name));
        let auth = match &self.spec.auth {
            Auth::None => &url.auth,
            a => a,
        };
        let nonce = info.nonce.as_deref().unwrap_or("").as_bytes();
        let seed_err = |e: String| ConnErr::new(e, HINT_AUTH);
        match auth {
            Auth::None => {}
            Auth::Token(t) => {
                m.insert("auth_token".into(), Value::String(t.clone()));
            }
            Auth::UserPassword(u, p) => {
                m.insert("user".into(), Value::String(u.clone()));
                m.insert("pass".into(), Value::String(p.clone()));
            }
            Auth::NKeySeed(seed) => {
                let (public, sig) = nkey_sign(seed, nonce).map_err(seed_err)?;
                m.insert("nkey".into(), Value::String(public));
                m.insert("sig".into(), Value::String(sig));
            }
            Auth::Creds { jwt, seed } => {
                let (_, sig) = nkey_sign(seed, nonce).map_err(seed_err)?;
                m.insert("jwt".into(), Value::String(jwt.trim().to_string()));
                m.insert("sig".into(), Value::String(sig));
            }
        }
        Ok(Value::Object(m).to_string())
    }

    /// The connected phase: restore subscriptions, then move commands out and
    /// messages in until the connection drops or the task is told to stop.
    async fn serve(&mut self, conn: Conn, url: &ServerUrl) -> End {
        let Conn {
            mut stream,
            mut rbuf,
            info,
        } = conn;
        let mut max_payload = info.max_payload();
        let mut headers_ok = info.headers;
        let mut wbuf: Vec<u8> = Vec::with_capacity(READ_CHUNK);

        // Snapshot the table. Commands queued so far are superseded by it:
        // drop them under the same lock the callers send under, so every
        // later command applies on top of exactly this snapshot.
        let restored = {
            let subs = self.shared.subs();
            loop {
                match self.rx.try_recv() {
                    Ok(Cmd::Close) => return End::Stop,
                    Ok(_) => {}
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => return End::Stop,
                }
            }
            wbuf.reserve(subs.by_subject.len() * 32);
            for (subject, &sid) in &subs.by_subject {
                let queue = subs.queues.get(&sid).map(|q| &**q);
                encode_sub(&mut wbuf, subject, queue, sid);
            }
            subs.by_subject.len()
        };
        // The first PONG after this PING means the server has every SUB.
        wbuf.extend_from_slice(b"PING\r\n");
        let mut pings_out: u32 = 1;
        let mut announced = false;
        // The server's last -ERR: it usually explains a close that follows.
        let mut last_err: Option<String> = None;
        if let Err(e) = flush(&mut stream, &mut wbuf).await {
            return End::Lost(format!("write error: {e}"));
        }

        let period = self.spec.ping_interval;
        let mut ticker = tokio::time::interval_at(
            tokio::time::Instant::now() + period.max(Duration::from_millis(1)),
            period.max(Duration::from_millis(1)),
        );
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

        loop {
            // Everything complete in the read buffer.
            loop {
                let (op, used) = match parse_op(&rbuf, max_payload) {
                    Ok(Some(x)) => x,
                    Ok(None) => break,
                    Err(e) => return End::Lost(format!("protocol error: {e}")),
                };
                rbuf.advance(used);
                match op {
                    Op::Msg(m) => {
                        if self.inbound.send_async(m).await.is_err() {
                            tracing::debug!(
                                "inbound receiver gone; closing the NATS interest connection"
                            );
                            shutdown(&mut stream).await;
                            return End::Stop;
                        }
                    }
                    Op::Ping => wbuf.extend_from_slice(b"PONG\r\n"),
                    Op::Pong => {
                        pings_out = pings_out.saturating_sub(1);
                        if !announced {
                            announced = true;
                            self.shared.connected.store(true, Ordering::Relaxed);
                            self.last_reported = None;
                            let _ = self.status.try_send(Status::Connected);
                            tracing::info!(
                                url = %url.shown,
                                server_id = %info.server_id,
                                subscriptions = restored,
                                "NATS interest connection up"
                            );
                        }
                    }
                    Op::Ok => {}
                    Op::Err(text) => {
                        tracing::warn!(url = %url.shown, "NATS server error: {text}");
                        last_err = Some(text);
                    }
                    Op::Info(json) => {
                        if let Ok(i) = ServerInfo::parse(&json) {
                            max_payload = i.max_payload();
                            headers_ok = i.headers;
                            if i.ldm {
                                tracing::info!(url = %url.shown, "NATS server entering lame duck mode; it will close this connection soon");
                            }
                        }
                    }
                }
            }
            if !wbuf.is_empty() {
                if let Err(e) = flush(&mut stream, &mut wbuf).await {
                    return End::Lost(format!("write error: {e}"));
                }
            }
            if rbuf.capacity() > 4 * READ_CHUNK && rbuf.is_empty() {
                rbuf = BytesMut::with_capacity(READ_CHUNK);
            } else if rbuf.capacity() - rbuf.len() < READ_CHUNK / 4 {
                rbuf.reserve(READ_CHUNK);
            }

            tokio::select! {
                r = stream.read_buf(&mut rbuf) => match r {
                    Ok(0) => return End::Lost(match last_err {
                        Some(e) => format!("server closed the connection after -ERR '{e}'"),
                        None => "server closed the connection".into(),
                    }),
                    Ok(_) => {}
                    Err(e) => return End::Lost(match last_err {
                        Some(l) => format!("read error: {e} (after -ERR '{l}')"),
                        None => format!("read error: {e}"),
                    }),
                },
                c = self.rx.recv() => {
                    let mut stop = match c {
                        Some(c) => encode_cmd(&mut wbuf, c, max_payload, headers_ok),
                        None => true,
                    };
                    while !stop && wbuf.len() < WRITE_BATCH {
                        match self.rx.try_recv() {
                            Ok(c) => stop = encode_cmd(&mut wbuf, c, max_payload, headers_ok),
                            Err(mpsc::error::TryRecvError::Empty) => break,
                            Err(mpsc::error::TryRecvError::Disconnected) => stop = true,
                        }
                    }
                    let written = flush(&mut stream, &mut wbuf).await;
                    if stop {
                        shutdown(&mut stream).await;
                        return End::Stop;
                    }
                    if let Err(e) = written {
                        return End::Lost(format!("write error: {e}"));
                    }
                },
                _ = ticker.tick(), if !period.is_zero() => {
                    if pings_out >= 2 {
                        return End::Lost("no PONG to the last 2 PINGs".into());
                    }
                    pings_out += 1;
                    wbuf.extend_from_slice(b"PING\r\n");
                    if let Err(e) = flush(&mut stream, &mut wbuf).await {
                        return End::Lost(format!("write error: {e}"));
                    }
                },
            }
        }
    }
}

/// What to do about a lost connection, from its reason.
fn lost_hint(why: &str) -> &'static str {
    let lower = why.to_ascii_lowercase();
    if lower.contains("slow consumer") {
        "the gateway read too slowly (inbound queue full for long); check core load and bridge_queue_max"
    } else if lower.contains("authorization") || lower.contains("authentication") {
        HINT_AUTH
    } else if lower.contains("stale connection") || lower.contains("no pong") {
        "PINGs went unanswered; check the network and whether either side is overloaded"
    } else if lower.contains("protocol error") {
        "the server sent something unexpected; check the server version and logs"
    } else {
        "the server restarted, shut down or the network failed; see the server's log"
    }
}

fn jitter(d: Duration) -> Duration {
    use ring::rand::SecureRandom as _;
    let mut b = [0u8; 2];
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        return d;
    }
    // 75%..100% of d, so many cores do not reconnect in lockstep.
    d.mul_f64(0.75 + 0.25 * f64::from(u16::from_le_bytes(b)) / 65535.0)
}

fn encode_sub(w: &mut Vec<u8>, subject: &str, queue: Option<&str>, sid: u64) {
    w.extend_from_slice(b"SUB ");
    w.extend_from_slice(subject.as_bytes());
    if let Some(q) = queue {
        w.push(b' ');
        w.extend_from_slice(q.as_bytes());
    }
    let _ = write!(w, " {sid}\r\n");
}

/// Appends a command's protocol text; true = Close.
fn encode_cmd(w: &mut Vec<u8>, cmd: Cmd, max_payload: usize, headers_ok: bool) -> bool {
    match cmd {
        Cmd::Sub {
            subject,
            queue,
            sid,
        } => encode_sub(w, &subject, queue.as_deref(), sid),
        Cmd::Unsub { sid } => {
            let _ = write!(w, "UNSUB {sid}\r\n");
        }
        Cmd::Pub {
            subject,
            headers,
            payload,
        } => {
            let hlen = headers.as_ref().map_or(0, |h| h.len());
            if hlen + payload.len() > max_payload {
                tracing::warn!(
                    subject = &*subject,
                    bytes = hlen + payload.len(),
                    max_payload,
                    "publish dropped: larger than the NATS server's max_payload"
                );
                return false;
            }
            match headers {
                Some(h) if headers_ok => {
                    let _ = write!(
                        w,
                        "HPUB {subject} {} {}\r\n",
                        h.len(),
                        h.len() + payload.len()
                    );
                    w.extend_from_slice(&h);
                }
                Some(_) => {
                    tracing::warn!(
                        subject = &*subject,
                        "publish dropped: the NATS server does not support headers"
                    );
                    return false;
                }
                None => {
                    let _ = write!(w, "PUB {subject} {}\r\n", payload.len());
                }
            }
            w.extend_from_slice(&payload);
            w.extend_from_slice(b"\r\n");
        }
        Cmd::Close => return true,
    }
    false
}

async fn write_all(s: &mut Box<dyn Stream>, data: &[u8]) -> std::io::Result<()> {
    s.write_all(data).await?;
    s.flush().await
}

/// Writes and clears the buffer; gives back memory after a big batch (a
/// resubscription of a million subjects is tens of MB).
async fn flush(s: &mut Box<dyn Stream>, w: &mut Vec<u8>) -> std::io::Result<()> {
    let r = write_all(s, w).await;
    w.clear();
    if w.capacity() > 4 * WRITE_BATCH {
        *w = Vec::with_capacity(READ_CHUNK);
    }
    r
}

async fn shutdown(s: &mut Box<dyn Stream>) {
    let _ = tokio::time::timeout(Duration::from_secs(1), s.shutdown()).await;
}

async fn read_op<S: AsyncRead + Unpin + ?Sized>(
    s: &mut S,
    rbuf: &mut BytesMut,
    max_payload: usize,
) -> Result<Op, ConnErr> {
    loop {
        match parse_op(rbuf, max_payload) {
            Ok(Some((op, used))) => {
                rbuf.advance(used);
                return Ok(op);
            }
            Ok(None) => {}
            Err(e) => return Err(ConnErr::new(format!("protocol error: {e}"), HINT_PROTOCOL)),
        }
        rbuf.reserve(4096);
        let n = s
            .read_buf(rbuf)
            .await
            .map_err(|e| ConnErr::io("reading from server", e))?;
        if n == 0 {
            return Err(ConnErr::new(
                "server closed the connection during the handshake",
                HINT_PROTOCOL,
            ));
        }
    }
}

fn build_tls(spec: &ConnectSpec) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    if spec.tls_ca_file.is_empty() {
        let found = rustls_native_certs::load_native_certs();
        for c in found.certs {
            let _ = roots.add(c);
        }
        if roots.is_empty() {
            return Err("no system root certificates found; set tls_ca_file".into());
        }
    } else {
        let pem = std::fs::read(&spec.tls_ca_file)
            .map_err(|e| format!("cannot read tls_ca_file {:?}: {e}", spec.tls_ca_file))?;
        for c in rustls_pemfile::certs(&mut &pem[..]) {
            let c = c.map_err(|e| format!("bad PEM in tls_ca_file {:?}: {e}", spec.tls_ca_file))?;
            roots.add(c).map_err(|e| {
                format!("bad certificate in tls_ca_file {:?}: {e}", spec.tls_ca_file)
            })?;
        }
        if roots.is_empty() {
            return Err(format!(
                "no certificates in tls_ca_file {:?}",
                spec.tls_ca_file
            ));
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("TLS setup: {e}"))?
    .with_root_certificates(roots);
    let config = match (spec.tls_cert_file.is_empty(), spec.tls_key_file.is_empty()) {
        (true, true) => builder.with_no_client_auth(),
        (false, false) => {
            let pem = std::fs::read(&spec.tls_cert_file)
                .map_err(|e| format!("cannot read tls_cert_file {:?}: {e}", spec.tls_cert_file))?;
            let certs = rustls_pemfile::certs(&mut &pem[..])
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("bad PEM in tls_cert_file {:?}: {e}", spec.tls_cert_file))?;
            if certs.is_empty() {
                return Err(format!(
                    "no certificates in tls_cert_file {:?}",
                    spec.tls_cert_file
                ));
            }
            let pem = std::fs::read(&spec.tls_key_file)
                .map_err(|e| format!("cannot read tls_key_file {:?}: {e}", spec.tls_key_file))?;
            let key = rustls_pemfile::private_key(&mut &pem[..])
                .map_err(|e| format!("bad PEM in tls_key_file {:?}: {e}", spec.tls_key_file))?
                .ok_or_else(|| format!("no private key in tls_key_file {:?}", spec.tls_key_file))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| format!("client certificate/key rejected: {e}"))?
        }
        _ => return Err("set both tls_cert_file and tls_key_file, or neither".into()),
    };
    Ok(Arc::new(config))
}
