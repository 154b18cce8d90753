//! `sink`: a trivial accept-and-hold TCP server, the `baseline` of the
//! benchmarks. One thread, plain epoll: accepts, reads and discards,
//! answers nothing, closes on EOF. What it costs per connection is what the
//! kernel alone costs, so a server's connect rate and memory can be read
//! as a ratio to it (`flood hold --protocol raw` counts a connection as
//! established when its connect succeeds).
//!
//! ```text
//! sink --listen 127.0.0.1:17999 [--reuseport]
//! ```
//! Prints the open and accepted counts once a second when they change;
//! SIGINT / SIGTERM stop it.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{IntoRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use socket2::{Domain, SockAddr, Socket, Type};

#[derive(Parser)]
#[command(
    name = "sink",
    about = "Accept-and-hold TCP sink (the baseline server)."
)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:17999")]
    listen: SocketAddr,
    /// listen(2) backlog (the kernel caps it at net.core.somaxconn).
    #[arg(long, default_value_t = 65_535)]
    backlog: i32,
    /// Set SO_REUSEPORT, so several sinks can share the port.
    #[arg(long)]
    reuseport: bool,
    /// Print counts once a second when they change.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    progress: bool,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Relaxed);
}

/// Events handled per epoll_wait.
const EVENTS_MAX: usize = 1024;
/// How long accepting pauses after EMFILE / ENFILE / ENOBUFS / ENOMEM.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

fn epoll_ctl(ep: RawFd, op: libc::c_int, fd: RawFd, events: u32) -> io::Result<()> {
    let mut ev = libc::epoll_event {
        events,
        u64: fd as u64,
    };
    // SAFETY: valid epoll fd, fd and event struct.
    if unsafe { libc::epoll_ctl(ep, op, fd, &mut ev) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn close(fd: RawFd) {
    // SAFETY: fd is a socket this program accepted and no longer uses.
    unsafe { libc::close(fd) };
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        for s in [libc::SIGINT, libc::SIGTERM] {
            libc::signal(
                s,
                on_signal as extern "C" fn(libc::c_int) as *const () as libc::sighandler_t,
            );
        }
    }
    let ls = Socket::new(
        Domain::for_address(a.listen),
        Type::STREAM.nonblocking().cloexec(),
        None,
    )?;
    ls.set_reuse_address(true)?;
    if a.reuseport {
        ls.set_reuse_port(true)?;
    }
    ls.bind(&SockAddr::from(a.listen))
        .with_context(|| format!("binding {}", a.listen))?;
    ls.listen(a.backlog)?;
    let lfd = ls.into_raw_fd();
    // SAFETY: plain syscall.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if ep < 0 {
        return Err(io::Error::last_os_error()).context("epoll_create1");
    }
    epoll_ctl(ep, libc::EPOLL_CTL_ADD, lfd, libc::EPOLLIN as u32)?;
    println!(
        "sink: listening on {}, pid {}",
        a.listen,
        std::process::id()
    );

    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS_MAX];
    let mut buf = vec![0u8; 64 * 1024];
    let (mut open, mut accepted, mut accept_errors) = (0u64, 0u64, 0u64);
    let mut paused_until: Option<Instant> = None;
    let mut last_print = Instant::now();
    let mut printed = (u64::MAX, u64::MAX);
    while !STOP.load(Relaxed) {
        if paused_until.is_some_and(|t| Instant::now() >= t) {
            paused_until = None;
            epoll_ctl(ep, libc::EPOLL_CTL_ADD, lfd, libc::EPOLLIN as u32)?;
        }
        // SAFETY: events has EVENTS_MAX entries.
        let n = unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), EVENTS_MAX as i32, 100) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e).context("epoll_wait");
        }
        for ev in &events[..n as usize] {
            let fd = ev.u64 as RawFd;
            if fd == lfd {
                loop {
                    // SAFETY: accept4 on the listening socket; no address wanted.
                    let c = unsafe {
                        libc::accept4(
                            lfd,
                            std::ptr::null_mut(),
                            std::ptr::null_mut(),
                            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                        )
                    };
                    if c < 0 {
                        let e = io::Error::last_os_error();
                        match e.raw_os_error() {
                            Some(libc::EAGAIN) | Some(libc::EINTR) | Some(libc::ECONNABORTED) => {}
                            _ => {
                                accept_errors += 1;
                                epoll_ctl(ep, libc::EPOLL_CTL_DEL, lfd, 0)?;
                                paused_until = Some(Instant::now() + ACCEPT_PAUSE);
                            }
                        }
                        break;
                    }
                    if epoll_ctl(ep, libc::EPOLL_CTL_ADD, c, libc::EPOLLIN as u32).is_err() {
                        close(c);
                        continue;
                    }
                    open += 1;
                    accepted += 1;
                }
                continue;
            }
            loop {
                // SAFETY: reading into our buffer from an accepted socket.
                let r = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
                if r > 0 {
                    continue;
                }
                let gone = r == 0 || {
                    let e = io::Error::last_os_error();
                    !matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EINTR))
                };
                if gone {
                    // Closing removes it from the epoll set.
                    close(fd);
                    open = open.saturating_sub(1);
                }
                break;
            }
        }
        if a.progress && last_print.elapsed() >= Duration::from_secs(1) {
            last_print = Instant::now();
            if printed != (open, accepted) {
                printed = (open, accepted);
                println!("sink: open {open}, accepted {accepted}, accept errors {accept_errors}");
            }
        }
    }
    println!("sink: stopping with {open} open, {accepted} accepted, {accept_errors} accept errors");
    close(lfd);
    close(ep);
    Ok(())
}
