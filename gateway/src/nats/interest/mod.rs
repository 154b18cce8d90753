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
//!
//! Parts:
//! - this file: the public API, the command channel and the connection
//!   task's reconnect loop;
//! - `conn`: one connection: handshake (CONNECT, auth, TLS upgrade) and the
//!   connected phase (resubscribe, commands out, messages in, PINGs);
//! - `wire`: protocol parsing (MSG/HMSG/INFO/-ERR/...) and encoding
//!   (SUB/UNSUB/PUB/HPUB, headers);
//! - `nkey`: base32, CRC16, NKey seeds and signatures, `.creds` files;
//! - `url`: server URLs; `tls`: rustls setup;
//! - `failure`: failure reasons, hints and rate-limited logging.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_rustls::rustls;

mod conn;
mod failure;
mod nkey;
mod tls;
mod url;
mod wire;

#[cfg(test)]
mod tests;

pub use nkey::read_creds;

use self::url::parse_url;
use failure::{lost_hint, ConnErr, FailLog, HINT_TIMEOUT};
use wire::encode_headers;

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

// ---------------------------------------------------------------------------
// The connection task
// ---------------------------------------------------------------------------

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
