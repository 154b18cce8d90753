//! Per-core listeners and the accept loop.
//!
//! Every core has its own SO_REUSEPORT socket on the same address, built
//! with socket2 for a configurable backlog (glommio's own bind fixes it at
//! 1024). The kernel spreads new connections over them. Accept errors such
//! as EMFILE back off (10 ms doubling to `accept_backoff_max_ms`), are
//! counted, and are logged at most once a second, never a busy loop.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

use crate::config::Config;
use crate::core::Core;
use crate::metrics::{CoreMetrics, LogLimit, Reject};

/// Binds one listener per core on `cfg.listen`. With port 0 the first picks
/// a port and the others join it. Returns the sockets and the bound address.
pub fn bind_all(cfg: &Config, cores: usize) -> io::Result<(Vec<Socket>, SocketAddr)> {
    if !cfg.listen_shared {
        ensure_free(cfg.listen, "listen")?;
    }
    let mut addr = cfg.listen;
    let mut out = Vec::with_capacity(cores);
    for _ in 0..cores {
        let s = bind_one(addr, cfg.listen_backlog)?;
        if let Some(a) = s.local_addr()?.as_socket() {
            addr = a;
        }
        out.push(s);
    }
    Ok((out, addr))
}

/// Fails when another process listens on `addr`. A socket bound without
/// SO_REUSEPORT cannot share the port with any listener, so its bind tells:
/// without this check a second gateway would join the first one's
/// SO_REUSEPORT group and silently take half the connections. Port 0 is
/// always free.
/// How long the port guard waits for a listener to answer.
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(500);

/// Where to connect to reach a listener bound to `addr` (a wildcard
/// address is reached on loopback).
fn connect_addr(addr: SocketAddr) -> SocketAddr {
    let mut a = addr;
    if a.ip().is_unspecified() {
        a.set_ip(match a {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    a
}

pub fn ensure_free(addr: SocketAddr, key: &str) -> io::Result<()> {
    if addr.port() == 0 {
        return Ok(());
    }
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // SO_REUSEADDR: connections of an earlier process in TIME_WAIT do not count.
    s.set_reuse_address(true)?;
    match s.bind(&addr.into()) {
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            // A listener answers a connect; a port held only by a connection
            // (an outbound one that took it as its local port, or one in
            // TIME_WAIT) does not.
            let listener =
                std::net::TcpStream::connect_timeout(&connect_addr(addr), PROBE_TIMEOUT).is_ok();
            let why = if listener {
                format!(
                    "{key} {addr}: another process listens on this port. Stop it or choose \
                     another port; if sharing it is intended (several gateway processes on one \
                     box, or a binary upgrade), start with --listen-shared (listen_shared = true)"
                )
            } else {
                format!(
                    "{key} {addr}: the port is held by a connection, not a listener (an outbound \
                     connection took it as its local port, or one in TIME_WAIT). Keep the \
                     gateway's ports out of the ephemeral range: net.ipv4.ip_local_reserved_ports \
                     (tuning/gateway-sysctl.conf), or wait for it to go"
                )
            };
            Err(io::Error::new(e.kind(), why))
        }
        _ => Ok(()), // other errors show up in the real bind, with its context
    }
}

fn bind_one(addr: SocketAddr, backlog: u32) -> io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    // Accepted sockets inherit it: no setsockopt per connection. (TLS
    // handshakes need it: 14 handshakes/s without, DESIGN.md.)
    s.set_nodelay(true)?;
    s.bind(&addr.into()).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot bind {addr}: {e} (is another process on that port?)"),
        )
    })?;
    s.listen(backlog.min(i32::MAX as u32) as i32)?;
    s.set_nonblocking(true)?;
    Ok(s)
}

/// Connections per core allowed by config and RLIMIT_NOFILE.
pub fn conns_per_core(cfg: &Config, cores: usize) -> (u32, u64) {
    let nofile = nofile_limit();
    let usable = nofile.saturating_sub(cfg.fd_reserve as u64) / cores.max(1) as u64;
    (
        cfg.conns_per_core_max
            .min(usable.min(u32::MAX as u64) as u32),
        nofile,
    )
}

/// The soft RLIMIT_NOFILE of this process.
pub fn nofile_limit() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return 1024;
    }
    r.rlim_cur
}

/// Connections accepted per round before the accept task yields.
const ACCEPTS_PER_ROUND: usize = 64;

/// Accepts until the core drains, then closes the listener. Woken by the
/// listener's readiness (through the core's poller); accepts with
/// `accept4` until the backlog is empty.
pub async fn accept_loop(core: Rc<Core>, listener: Socket) {
    accept_until_drain(&core, listener).await;
    core.accept_running.set(false);
}

async fn accept_until_drain(core: &Rc<Core>, listener: Socket) {
    let lfd = listener.as_raw_fd();
    let Some(poller) = core.io.poller() else {
        return;
    };
    if let Err(e) = poller.add_listener(lfd) {
        tracing::error!(core = core.index, error = %e, "cannot watch the listener; this core accepts nothing");
        return;
    }
    let mut backoff_ms: u32 = 0;
    let log_limit = LogLimit::default();
    let mut unlogged: u64 = 0;
    loop {
        core.accept_wait().await;
        if core.draining.get() {
            poller.remove(lfd);
            return; // drops (closes) the listener
        }
        for _ in 0..ACCEPTS_PER_ROUND {
            // SAFETY: accept4 on our listening socket; the new fd is ours.
            let fd = unsafe {
                libc::accept4(
                    lfd,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                )
            };
            if fd >= 0 {
                backoff_ms = 0;
                admit(core, fd);
                continue;
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::WouldBlock => core.accept_ready.set(false),
                io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted => continue,
                _ => {
                    CoreMetrics::inc(&core.metrics.accept_errors);
                    unlogged += 1;
                    if log_limit.allow() {
                        log_accept_error(core, &e, unlogged);
                        unlogged = 0;
                    }
                    backoff_ms = backoff_ms
                        .saturating_mul(2)
                        .max(10)
                        .min(core.cfg().accept_backoff_max_ms);
                    // accept_ready stays set: retry after the pause.
                    core.sleep(Duration::from_millis(backoff_ms as u64)).await;
                }
            }
            break;
        }
        futures_lite::future::yield_now().await;
    }
}

/// Takes an accepted socket: refuse over the cap or the accept rate, else
/// register it.
pub fn admit(core: &Core, fd: i32) {
    CoreMetrics::inc(&core.metrics.accepts);
    let refusal = if core.conn_count() >= core.conns_max as usize {
        CoreMetrics::inc(&core.metrics.conn_limit_refusals);
        let msg = format!(
            "server full: conns_per_core_max ({}) reached; retry later",
            core.conns_max
        );
        Some((
            Reject::ConnLimit,
            gw_proto::ErrorCode::ServerFull,
            msg,
            core.cfg().busy_retry_after_ms,
        ))
    } else if let Err(ms) = core.overload.take_accept(core.now()) {
        // A reconnect storm: spread the retries over busy_retry_after_ms.
        let retry = ms.saturating_add(core.overload.jitter(core.cfg().busy_retry_after_ms));
        let msg = "busy: over accept_rate_per_core_per_s; retry later".to_string();
        Some((Reject::AcceptRate, gw_proto::ErrorCode::Busy, msg, retry))
    } else {
        None
    };
    if let Some((reason, code, msg, retry_after_ms)) = refusal {
        core.metrics.rejected(reason);
        refuse(core, fd, Core::error_body(code, msg, retry_after_ms));
        // SAFETY: closing the fd accept4 just gave us.
        unsafe { libc::close(fd) };
        return;
    }
    // TCP_NODELAY comes from the listener (Linux copies it to accepted
    // sockets): no setsockopt per connection.
    if let Err(e) = core.add_conn(fd) {
        CoreMetrics::inc(&core.metrics.accept_errors);
        tracing::warn!(core = core.index, error = %e, "cannot watch a new connection; closed it");
        // SAFETY: add_conn failed, so the fd is still only ours.
        unsafe { libc::close(fd) };
    }
}

fn log_accept_error(core: &Core, e: &io::Error, count: u64) {
    let hint = match e.raw_os_error() {
        Some(libc::EMFILE) => format!(
            "the process open-file limit ({}) is reached: raise LimitNOFILE (systemd) or ulimit -n, or lower conns_per_core_max",
            nofile_limit()
        ),
        Some(libc::ENFILE) => "the system-wide file limit is reached: raise fs.file-max / fs.nr_open (see tuning/)".into(),
        Some(libc::ENOBUFS) | Some(libc::ENOMEM) => "the kernel is out of socket memory: check net.ipv4.tcp_mem".into(),
        _ => "accepting continues after a pause".into(),
    };
    tracing::warn!(core = core.index, error = %e, errors_since_last_log = count, "accept failed: {hint}");
}

/// Refuses a new connection with an Error frame, best effort; counted as
/// closed with CONN_LIMIT (the rejection reason says which limit).
fn refuse(core: &Core, fd: i32, body: gw_proto::pb::frame::Body) {
    core.metrics.closed(gw_proto::CloseReason::ConnLimit);
    let frame = gw_proto::encode(&gw_proto::Frame { body: Some(body) });
    // SAFETY: non-blocking send on an open fd; the stream is dropped (closed) after.
    unsafe {
        libc::send(
            fd,
            frame.as_ptr() as *const libc::c_void,
            frame.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
}
