//! Transports of the flood client under the wire protocol: plain TCP, TLS
//! (rustls, one client session per connection), WebSocket (an HTTP/1.1
//! upgrade on the same port, then one binary message per frame: see
//! [`crate::ws`]), or both (wss).
//!
//! [`Stream`] reads and writes plaintext whatever the transport, so the
//! code above it (establish, held connections, the broadcast sender) is the
//! same for all of them; WebSocket framing is a codec choice
//! ([`crate::proto::Codec`]) and [`crate::conn::Ctx::out`]. The TLS layer
//! drives rustls over the glommio socket itself: ciphertext is read and
//! written through the socket's poll functions, so a TLS connection is
//! still one socket, one task and no thread of its own. The client's
//! memory per connection grows by the rustls session (not what a run
//! measures: the server's RSS is).

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use anyhow::{bail, Context as _};
use futures_lite::future::poll_fn;
use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection};

/// Transport options of every scenario.
#[derive(clap::Args, Clone, Debug)]
pub struct TransportArgs {
    /// TLS: a rustls client session per connection (TLS 1.3, or 1.2 where
    /// the server allows only that), trusting --ca.
    #[arg(long)]
    pub tls: bool,
    /// CA certificates (PEM) to trust with --tls, e.g. the file the
    /// gateway's --tls-self-signed writes to $TMPDIR (its log names it).
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// Server name for TLS (SNI and the certificate check).
    #[arg(long, default_value = "localhost")]
    pub tls_server_name: String,
    /// Resume TLS sessions from tickets (one session cache per worker
    /// process) instead of a full handshake on every connection.
    #[arg(long)]
    pub tls_resume: bool,
    /// WebSocket: HTTP/1.1 upgrade on the same port, then each frame as one
    /// masked binary message without its length prefix (with --tls: wss).
    #[arg(long)]
    pub ws: bool,
    /// Path of the WebSocket upgrade request.
    #[arg(long, default_value = "/ws")]
    pub ws_path: String,
}

impl TransportArgs {
    /// `tcp`, `tls`, `ws` or `wss`.
    pub fn name(&self) -> &'static str {
        match (self.tls, self.ws) {
            (false, false) => "tcp",
            (true, false) => "tls",
            (false, true) => "ws",
            (true, true) => "wss",
        }
    }

    /// Checks the options (and reads --ca); Err says what to change.
    pub fn check(&self) -> anyhow::Result<()> {
        match (&self.ca, self.tls) {
            (Some(_), false) => bail!("--ca is for --tls"),
            (None, true) => bail!("--tls needs --ca FILE (the CA certificate to trust)"),
            (Some(ca), true) => {
                tls_config(ca, self.tls_resume)?;
                server_name(&self.tls_server_name)?;
            }
            (None, false) => {}
        }
        if !self.ws_path.starts_with('/')
            || self.ws_path.len() > 1024
            || !self.ws_path.bytes().all(|b| b.is_ascii_graphic())
        {
            bail!("--ws-path: an absolute path of printable ASCII without spaces");
        }
        Ok(())
    }
}

fn server_name(name: &str) -> anyhow::Result<ServerName<'static>> {
    ServerName::try_from(name.to_string())
        .map_err(|e| anyhow::anyhow!("--tls-server-name {name:?}: {e}"))
}

/// A rustls client configuration that trusts the certificates of `ca`.
fn tls_config(ca: &Path, resume: bool) -> anyhow::Result<Arc<ClientConfig>> {
    let pem = std::fs::read(ca).with_context(|| format!("reading --ca {}", ca.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut &pem[..]) {
        let cert = cert.with_context(|| format!("parsing {}", ca.display()))?;
        roots
            .add(cert)
            .with_context(|| format!("a certificate of {}", ca.display()))?;
    }
    if roots.is_empty() {
        bail!("--ca {}: no certificate in it", ca.display());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    if !resume {
        cfg.resumption = rustls::client::Resumption::disabled();
    }
    Ok(Arc::new(cfg))
}

/// What a worker needs to bring its connections up over the transport.
pub struct Transport {
    tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
    /// WebSocket: request path and `Host` header.
    ws: Option<(String, String)>,
}

impl Transport {
    pub fn new(a: &TransportArgs, target: SocketAddr) -> anyhow::Result<Transport> {
        let tls = match (&a.ca, a.tls) {
            (Some(ca), true) => Some((
                tls_config(ca, a.tls_resume)?,
                server_name(&a.tls_server_name)?,
            )),
            _ => None,
        };
        let host = if a.tls {
            format!("{}:{}", a.tls_server_name, target.port())
        } else {
            target.to_string()
        };
        Ok(Transport {
            tls,
            ws: a.ws.then(|| (a.ws_path.clone(), host)),
        })
    }

    pub fn is_tcp(&self) -> bool {
        self.tls.is_none() && self.ws.is_none()
    }

    pub fn ws(&self) -> bool {
        self.ws.is_some()
    }

    /// Brings a connected socket to where frames flow: the TLS handshake,
    /// then the WebSocket upgrade. Returns the stream and what was read
    /// past the upgrade response (the start of the first message, if any).
    /// Err: the failure reason (`tls:...`, `ws:...`).
    pub async fn open(&self, tcp: TcpStream, seed: u64) -> Result<(Stream, Vec<u8>), String> {
        let mut stream = match &self.tls {
            None => Stream::Plain(tcp),
            Some((cfg, name)) => {
                let tls = ClientConnection::new(cfg.clone(), name.clone())
                    .map_err(|e| format!("tls:{}", tls_reason(&e)))?;
                let mut s = Box::new(TlsStream { tcp, tls });
                poll_fn(|cx| s.poll_handshake(cx))
                    .await
                    .map_err(|e| format!("tls:{}", io_reason(&e)))?;
                Stream::Tls(s)
            }
        };
        let rest = match &self.ws {
            None => Vec::new(),
            Some((path, host)) => crate::ws::upgrade(&mut stream, path, host, seed).await?,
        };
        Ok((stream, rest))
    }
}

/// Reason text for a failure counter: an errno name, the rustls error
/// kind, or a short message.
pub fn io_reason(e: &io::Error) -> String {
    if e.raw_os_error().is_some() {
        return crate::wire::errno_name(e);
    }
    let Some(inner) = e.get_ref() else {
        return format!("{:?}", e.kind());
    };
    if let Some(t) = inner.downcast_ref::<rustls::Error>() {
        return tls_reason(t);
    }
    inner
        .to_string()
        .chars()
        .take(60)
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// The kind of a rustls error without its details, e.g.
/// `InvalidCertificate(UnknownIssuer)`, `AlertReceived(HandshakeFailure)`.
fn tls_reason(e: &rustls::Error) -> String {
    let d = format!("{e:?}");
    let kind: String = d
        .split([' ', '{', '"', '['])
        .next()
        .unwrap_or("")
        .chars()
        .take(60)
        .collect();
    let open = kind
        .matches('(')
        .count()
        .saturating_sub(kind.matches(')').count());
    kind + &")".repeat(open)
}

/// A connection's byte stream: plaintext in and out, whatever the transport.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream>),
}

impl Stream {
    /// TLS: `<version> <cipher suite> <full|resumed>`.
    pub fn tls_summary(&self) -> Option<String> {
        let Stream::Tls(s) = self else {
            return None;
        };
        let c = &s.tls;
        let version = c
            .protocol_version()
            .map_or("-".into(), |v| format!("{v:?}"));
        let suite = c
            .negotiated_cipher_suite()
            .map_or("-".into(), |s| format!("{:?}", s.suite()));
        let kind = match c.handshake_kind() {
            Some(rustls::HandshakeKind::Full) => "full",
            Some(rustls::HandshakeKind::FullWithHelloRetryRequest) => "full_hrr",
            Some(rustls::HandshakeKind::Resumed) => "resumed",
            None => "-",
        };
        Some(format!("{version} {suite} {kind}"))
    }
}

/// A TLS client session over a glommio socket.
pub struct TlsStream {
    tcp: TcpStream,
    tls: ClientConnection,
}

/// The socket as blocking-style I/O for rustls: Pending becomes WouldBlock
/// (the waker is registered by the socket's poll function).
struct SyncIo<'a, 'b> {
    tcp: &'a mut TcpStream,
    cx: &'a mut Context<'b>,
}

impl Read for SyncIo<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match Pin::new(&mut *self.tcp).poll_read(self.cx, buf) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl Write for SyncIo<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match Pin::new(&mut *self.tcp).poll_write(self.cx, buf) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl TlsStream {
    /// Writes the TLS records rustls has queued: Ready(Ok) once none is left.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.tls.wants_write() {
            let mut io = SyncIo {
                tcp: &mut self.tcp,
                cx,
            };
            match self.tls.write_tls(&mut io) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Reads TLS records from the socket into rustls and processes them.
    /// Ready(Ok(false)) at the socket's end of input.
    fn poll_receive(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        let mut io = SyncIo {
            tcp: &mut self.tcp,
            cx,
        };
        match self.tls.read_tls(&mut io) {
            Ok(0) => Poll::Ready(Ok(false)),
            Ok(_) => match self.tls.process_new_packets() {
                Ok(_) => Poll::Ready(Ok(true)),
                Err(e) => {
                    // Send the alert rustls queued, if the socket takes it now.
                    let _ = self.poll_send(cx);
                    Poll::Ready(Err(tls_error(e)))
                }
            },
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Poll::Pending,
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            ready!(self.poll_send(cx))?;
            if !self.tls.is_handshaking() {
                return Poll::Ready(Ok(()));
            }
            if !ready!(self.poll_receive(cx))? {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "closed_during_handshake",
                )));
            }
        }
    }

    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        loop {
            match self.tls.reader().read(buf) {
                // Ok(0): close_notify came, an end of input like a TCP close.
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
            if !ready!(self.poll_receive(cx))? {
                return Poll::Ready(Ok(0));
            }
            // Records may ask for an answer (a KeyUpdate): send what we can.
            if let Poll::Ready(Err(e)) = self.poll_send(cx) {
                return Poll::Ready(Err(e));
            }
        }
    }

    fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        // Take more plaintext only once the records of the last write are
        // out, so what waits in rustls stays bounded by one write.
        ready!(self.poll_send(cx))?;
        let n = self.tls.writer().write(buf)?;
        // Records left over go out on the next write or flush.
        if let Poll::Ready(Err(e)) = self.poll_send(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => s.poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => s.poll_write(cx, buf),
        }
    }

    /// TLS: sends the records still queued in rustls.
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => s.poll_send(cx),
        }
    }

    /// TLS: close_notify, then the socket's write side.
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_close(cx),
            Stream::Tls(s) => {
                s.tls.send_close_notify();
                ready!(s.poll_send(cx))?;
                Pin::new(&mut s.tcp).poll_close(cx)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_reasons_are_short() {
        let e = tls_error(rustls::Error::InvalidMessage(
            rustls::InvalidMessage::InvalidContentType,
        ));
        assert_eq!(io_reason(&e), "InvalidMessage(InvalidContentType)");
    }
}
