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
//! Reachability: a SUB's sid is its *ticket*. PONGs confirm every SUB
//! written before their PING, so the owner learns, in order with the
//! messages (`Event::Confirmed`), from when on a subject reaches it; `Up`
//! and `Down` say when the whole table is in place at a server or not.
//! Servers of the cluster are learned from INFO `connect_urls` and tried
//! after the configured ones.
//!
//! Parts:
//! - this file: the public API, the subscription table, the command channel;
//! - `task`: the connection task's reconnect loop and learned servers;
//! - `conn`: one connection: handshake (CONNECT, auth, TLS upgrade) and the
//!   connected phase (resubscribe, commands out, messages in, PINGs);
//! - `wire`: protocol parsing (MSG/HMSG/INFO/-ERR/...) and encoding
//!   (SUB/UNSUB/PUB/HPUB, headers);
//! - `nkey`: base32, CRC16, NKey seeds and signatures, `.creds` files;
//! - `url`: server URLs; `tls`: rustls setup;
//! - `failure`: failure reasons, hints and rate-limited logging.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

mod conn;
mod failure;
mod nkey;
mod task;
mod tls;
mod url;
pub mod wire;

#[cfg(test)]
mod tests;

pub use nkey::read_creds;

use failure::FailLog;
use task::{End, Task};
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

/// What the connection task hands its owner, in order: messages, and
/// the confirmations and state changes that say which subscriptions are
/// in place at the server.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A message on one of the subscriptions.
    Msg(Inbound),
    /// The server has processed every SUB whose ticket (see
    /// [`Interest::sub`]) is at most this: messages published to those
    /// subjects after this reach us.
    Confirmed(u64),
    /// Connected, and every subscription of the table is in place again
    /// (sent after the `Confirmed` that covers them).
    Up,
    /// The connection that was `Up` is lost; subscriptions are not in
    /// place until the next `Up`.
    Down,
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
    /// Highest ticket (sid) the server has confirmed (see `Event::Confirmed`).
    confirmed: AtomicU64,
    /// Servers learned from INFO `connect_urls`, as URLs.
    learned: Mutex<Vec<String>>,
    /// The URL of the server the connection is on (while connected).
    current: Mutex<Option<String>>,
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
        inbound: crate::core::WakeTx<Event>,
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
            confirmed: AtomicU64::new(0),
            learned: Mutex::new(Vec::new()),
            current: Mutex::new(None),
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
            learned: Vec::new(),
        };
        tokio::spawn(task.run());
        Interest { tx, shared }
    }

    /// Subscribes (optionally in a queue group). No-op if already subscribed
    /// to `subject` (whatever the queue group). Returns the subscription's
    /// ticket while the server has not confirmed it yet: it is reachable
    /// once an [`Event::Confirmed`] of at least the ticket arrives. None:
    /// in place already (or never: an invalid subject, a closed handle).
    pub fn sub(&self, subject: &str, queue: Option<&str>) -> Option<u64> {
        if !valid_subject(subject) || queue.is_some_and(|q| !valid_subject(q)) {
            tracing::warn!(
                subject,
                ?queue,
                "not subscribing: invalid NATS subject or queue group"
            );
            return None;
        }
        if self.shared.closed.load(Ordering::Relaxed) {
            return None;
        }
        let mut subs = self.shared.subs();
        if let Some(&sid) = subs.by_subject.get(subject) {
            return self.pending(sid, subs.next_sid);
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
        Some(sid)
    }

    /// The ticket to wait for before `subject` is reachable, if any (see
    /// [`Interest::sub`]); None when it is confirmed, or not subscribed.
    pub fn ticket(&self, subject: &str) -> Option<u64> {
        let subs = self.shared.subs();
        let sid = *subs.by_subject.get(subject)?;
        self.pending(sid, subs.next_sid)
    }

    /// A subscription's ticket while it is not in place: its own sid until
    /// confirmed; while disconnected, every sid so far (the restore after
    /// the reconnect confirms them all at once).
    fn pending(&self, sid: u64, next_sid: u64) -> Option<u64> {
        if !self.shared.connected.load(Ordering::Acquire) {
            return Some(next_sid);
        }
        (sid > self.shared.confirmed.load(Ordering::Acquire)).then_some(sid)
    }

    /// The servers of the cluster learned from INFO `connect_urls` so far,
    /// as URLs with the configured scheme (`nats://host:port`).
    pub fn learned_servers(&self) -> Vec<String> {
        self.shared
            .learned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The URL of the server this connection is on, while connected.
    pub fn current_server(&self) -> Option<String> {
        self.shared
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The highest ticket the server has confirmed.
    pub fn confirmed(&self) -> u64 {
        self.shared.confirmed.load(Ordering::Acquire)
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
