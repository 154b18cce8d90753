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
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use crate::config::Config;
use crate::conn::Driver;
use crate::core::Core;
use crate::metrics::CoreMetrics;

/// Binds one listener per core on `cfg.listen`. With port 0 the first picks
/// a port and the others join it. Returns the sockets and the bound address.
pub fn bind_all(cfg: &Config, cores: usize) -> io::Result<(Vec<Socket>, SocketAddr)> {
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

fn bind_one(addr: SocketAddr, backlog: u32) -> io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
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

/// Accepts until the core drains (its listener is shut down).
pub async fn accept_loop(core: Rc<Core>, listener: glommio::net::TcpListener) {
    let mut backoff_ms: u32 = 0;
    let mut last_log: Option<Instant> = None;
    let mut unlogged: u64 = 0;
    loop {
        let res = listener.accept().await;
        if core.draining.get() {
            return;
        }
        match res {
            Ok(stream) => {
                backoff_ms = 0;
                CoreMetrics::inc(&core.metrics.accepts);
                if core.conn_count() >= core.conns_max as usize {
                    refuse(&core, stream.as_raw_fd());
                    continue;
                }
                let _ = stream.set_nodelay(true);
                let (idx, id) = core.add_conn(stream.as_raw_fd());
                glommio::spawn_local(Driver::new(core.clone(), stream, idx, id)).detach();
            }
            Err(e) => {
                let e = io::Error::from(e);
                CoreMetrics::inc(&core.metrics.accept_errors);
                unlogged += 1;
                if last_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                    log_accept_error(&core, &e, unlogged);
                    last_log = Some(Instant::now());
                    unlogged = 0;
                }
                backoff_ms = backoff_ms
                    .saturating_mul(2)
                    .max(10)
                    .min(core.cfg.accept_backoff_max_ms);
                glommio::timer::sleep(Duration::from_millis(backoff_ms as u64)).await;
            }
        }
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

/// Refuses a connection over the cap with an Error frame, best effort.
fn refuse(core: &Core, fd: i32) {
    CoreMetrics::inc(&core.metrics.conn_limit_refusals);
    core.metrics.closed(gw_proto::CloseReason::ConnLimit);
    let msg = format!(
        "server full: conns_per_core_max ({}) reached; retry later",
        core.conns_max
    );
    let body = Core::error_body(
        gw_proto::ErrorCode::ServerFull,
        msg,
        core.cfg.busy_retry_after_ms,
    );
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
