//! One connection: the handshake (INFO, TLS upgrade, CONNECT with auth,
//! PING/PONG) and the connected phase (resubscribe, then commands out and
//! messages in until the connection drops).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::rustls;

use super::failure::{ConnErr, HINT_AUTH, HINT_PROTOCOL, HINT_TLS};
use super::nkey::nkey_sign;
use super::tls::build_tls;
use super::url::ServerUrl;
use super::wire::{encode_cmd, encode_sub, parse_op, Op, ServerInfo, PAYLOAD_BYTES_MAX_DEFAULT};
use super::{Auth, Cmd, End, Event, Status, Task};

const READ_CHUNK_BYTES: usize = 64 << 10;
/// Write once this much is buffered, even if more commands are queued.
const WRITE_BATCH_BYTES: usize = 256 << 10;

pub(super) trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

pub(super) struct Conn {
    stream: Box<dyn Stream>,
    rbuf: BytesMut,
    info: ServerInfo,
}

/// The per-connection half of the task; the reconnect loop is in `mod.rs`.
impl Task {
    fn tls_config(&mut self) -> Result<Arc<rustls::ClientConfig>, ConnErr> {
        if let Some(c) = &self.tls {
            return Ok(c.clone());
        }
        let c = build_tls(&self.spec).map_err(|e| ConnErr::new(e, HINT_TLS))?;
        self.tls = Some(c.clone());
        Ok(c)
    }

    pub(super) async fn handshake(&mut self, url: &ServerUrl) -> Result<Conn, ConnErr> {
        let tcp = TcpStream::connect((url.host.as_str(), url.port))
            .await
            .map_err(|e| ConnErr::io("TCP connect", e))?;
        let _ = tcp.set_nodelay(true);
        let mut tcp = tcp;
        let mut rbuf = BytesMut::with_capacity(4096);
        let mut info = match read_op(&mut tcp, &mut rbuf, PAYLOAD_BYTES_MAX_DEFAULT).await? {
            Op::Info(json) => {
                ServerInfo::parse(&json).map_err(|e| ConnErr::new(e.to_string(), HINT_PROTOCOL))?
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
            let name =
                rustls::pki_types::ServerName::try_from(url.tls_name.clone()).map_err(|e| {
                    ConnErr::new(
                        format!("bad TLS server name {:?}: {e}", url.tls_name),
                        HINT_TLS,
                    )
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
        self.learned.extend(info.connect_urls.iter().cloned());
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
    ///
    /// Confirmations: every PING carries the highest sid whose SUB was
    /// written before it, and PONGs come back in order, so a PONG confirms
    /// every SUB up to its PING's sid (`Event::Confirmed`). A PING follows
    /// each batch of commands with a SUB in it, so a connect storm costs one
    /// PING per batch, not one per login.
    pub(super) async fn serve(&mut self, conn: Conn, url: &ServerUrl) -> End {
        let Conn {
            mut stream,
            mut rbuf,
            info,
        } = conn;
        let mut max_payload = info.max_payload();
        let mut headers_ok = info.headers;
        let mut wbuf: Vec<u8> = Vec::with_capacity(READ_CHUNK_BYTES);

        // Snapshot the table. Commands queued so far are superseded by it:
        // drop them under the same lock the callers send under, so every
        // later command applies on top of exactly this snapshot.
        let (restored, mut written_sid) = {
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
            // Every sid so far is in the snapshot or was unsubscribed.
            (subs.by_subject.len(), subs.next_sid)
        };
        // The first PONG after this PING means the server has every SUB.
        wbuf.extend_from_slice(b"PING\r\n");
        let mut pings = Pings::default();
        pings.sent(written_sid);
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
                let event = match op {
                    Op::Msg(m) => Some(Event::Msg(m)),
                    Op::Ping => {
                        wbuf.extend_from_slice(b"PONG\r\n");
                        None
                    }
                    Op::Pong => {
                        let confirmed = pings.answered();
                        let before = self.shared.confirmed.load(Ordering::Acquire);
                        if confirmed > before {
                            self.shared.confirmed.store(confirmed, Ordering::Release);
                        }
                        if !announced {
                            announced = true;
                            self.shared.connected.store(true, Ordering::Release);
                            self.last_reported = None;
                            let _ = self.status.try_send(Status::Connected);
                            tracing::info!(
                                url = %url.shown,
                                server_id = %info.server_id,
                                subscriptions = restored,
                                "NATS interest connection up"
                            );
                            if self.emit(Event::Confirmed(confirmed.max(before))).await
                                || self.emit(Event::Up).await
                            {
                                shutdown(&mut stream).await;
                                return End::Stop;
                            }
                            None
                        } else {
                            (confirmed > before).then_some(Event::Confirmed(confirmed))
                        }
                    }
                    Op::Ok => None,
                    Op::Err(text) => {
                        tracing::warn!(url = %url.shown, "NATS server error: {text}");
                        last_err = Some(text);
                        None
                    }
                    Op::Info(json) => {
                        if let Ok(i) = ServerInfo::parse(&json) {
                            max_payload = i.max_payload();
                            headers_ok = i.headers;
                            self.learned.extend(i.connect_urls.iter().cloned());
                            if i.ldm {
                                tracing::info!(url = %url.shown, "NATS server entering lame duck mode; it will close this connection soon");
                            }
                        }
                        None
                    }
                };
                if let Some(ev) = event {
                    if self.emit(ev).await {
                        shutdown(&mut stream).await;
                        return End::Stop;
                    }
                }
            }
            if !wbuf.is_empty() {
                if let Err(e) = flush(&mut stream, &mut wbuf).await {
                    return End::Lost(format!("write error: {e}"));
                }
            }
            if rbuf.capacity() > 4 * READ_CHUNK_BYTES && rbuf.is_empty() {
                rbuf = BytesMut::with_capacity(READ_CHUNK_BYTES);
            } else if rbuf.capacity() - rbuf.len() < READ_CHUNK_BYTES / 4 {
                rbuf.reserve(READ_CHUNK_BYTES);
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
                    let mut subs_written = false;
                    let mut stop = match c {
                        Some(c) => self.encode(&mut wbuf, c, max_payload, headers_ok, &mut written_sid, &mut subs_written),
                        None => true,
                    };
                    while !stop && wbuf.len() < WRITE_BATCH_BYTES {
                        match self.rx.try_recv() {
                            Ok(c) => stop = self.encode(&mut wbuf, c, max_payload, headers_ok, &mut written_sid, &mut subs_written),
                            Err(mpsc::error::TryRecvError::Empty) => break,
                            Err(mpsc::error::TryRecvError::Disconnected) => stop = true,
                        }
                    }
                    if subs_written && !stop {
                        wbuf.extend_from_slice(b"PING\r\n");
                        pings.sent(written_sid);
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
                    if pings.oldest_age().is_some_and(|age| age >= period * 2) {
                        return End::Lost(format!("no PONG within {} ms", (period * 2).as_millis()));
                    }
                    wbuf.extend_from_slice(b"PING\r\n");
                    pings.sent(written_sid);
                    if let Err(e) = flush(&mut stream, &mut wbuf).await {
                        return End::Lost(format!("write error: {e}"));
                    }
                },
            }
        }
    }

    /// Encodes one command; notes the sid of a SUB written. True = stop.
    fn encode(
        &self,
        wbuf: &mut Vec<u8>,
        c: Cmd,
        max_payload: usize,
        headers_ok: bool,
        written_sid: &mut u64,
        subs_written: &mut bool,
    ) -> bool {
        if let Cmd::Sub { sid, .. } = &c {
            *written_sid = (*written_sid).max(*sid);
            *subs_written = true;
        }
        encode_cmd(wbuf, c, max_payload, headers_ok)
    }

    /// Hands an event to the owner; true when the owner is gone.
    async fn emit(&self, ev: Event) -> bool {
        if self.inbound.send_async(ev).await.is_err() {
            tracing::debug!("inbound receiver gone; closing the NATS interest connection");
            return true;
        }
        false
    }
}

/// PINGs awaiting their PONG, oldest first, each with the highest SUB sid
/// written before it.
#[derive(Default)]
struct Pings(std::collections::VecDeque<(std::time::Instant, u64)>);

impl Pings {
    fn sent(&mut self, sid: u64) {
        self.0.push_back((std::time::Instant::now(), sid));
    }
    /// A PONG came: the sid its PING confirms (0 for an unsolicited PONG).
    fn answered(&mut self) -> u64 {
        self.0.pop_front().map_or(0, |(_, sid)| sid)
    }
    fn oldest_age(&self) -> Option<Duration> {
        self.0.front().map(|(t, _)| t.elapsed())
    }
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
    if w.capacity() > 4 * WRITE_BATCH_BYTES {
        *w = Vec::with_capacity(READ_CHUNK_BYTES);
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
