//! Network namespaces: a client behind a veth pair whose link the test cuts,
//! so the client vanishes without a FIN or a reset.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::super::WAIT;

/// Whether fault tests that need root and iproute2 must run (CI=true) or
/// may be skipped here with a message.
fn required() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A network namespace with one veth pair to the test's namespace:
/// `host_ip` on this side, `inner_ip` inside. Deleted on drop.
pub struct Netns {
    pub name: String,
    inner_dev: String,
    host_dev: String,
    pub host_ip: Ipv4Addr,
    pub inner_ip: Ipv4Addr,
}

impl Netns {
    /// Makes one, or says why it cannot and returns None (the caller skips
    /// its test); under CI=true, cannot is a failure.
    pub fn create(test: &str) -> Option<Netns> {
        match Self::try_create() {
            Ok(n) => Some(n),
            Err(why) if required() => {
                panic!("{test}: needs root and iproute2 (network namespaces): {why}")
            }
            Err(why) => {
                eprintln!(
                    "SKIPPED {test}: needs root and iproute2 to make a network namespace: {why} \
                     (under CI=true this fails instead)"
                );
                None
            }
        }
    }

    fn try_create() -> Result<Netns, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not running as root".into());
        }
        ip(&["-V"]).map_err(|e| format!("iproute2 missing ({e})"))?;
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst) as u32;
        let pid = std::process::id();
        // A /30 in 198.18.0.0/15 (reserved for benchmarks, RFC 2544).
        let block = (pid.wrapping_mul(8).wrapping_add(n)) % (1 << 15);
        let base = u32::from(Ipv4Addr::new(198, 18, 0, 0)) + block * 4;
        let ns = Netns {
            name: format!("gwfault-{pid}-{n}"),
            inner_dev: format!("gf{}c{n}", pid % 1_000_000),
            host_dev: format!("gf{}h{n}", pid % 1_000_000),
            host_ip: Ipv4Addr::from(base + 1),
            inner_ip: Ipv4Addr::from(base + 2),
        };
        ip(&["netns", "add", &ns.name])?;
        // From here on, drop cleans up.
        let host = format!("{}/30", ns.host_ip);
        let inner = format!("{}/30", ns.inner_ip);
        ip(&[
            "link",
            "add",
            &ns.host_dev,
            "type",
            "veth",
            "peer",
            "name",
            &ns.inner_dev,
        ])?;
        ip(&["link", "set", &ns.inner_dev, "netns", &ns.name])?;
        ip(&["addr", "add", &host, "dev", &ns.host_dev])?;
        ip(&["link", "set", &ns.host_dev, "up"])?;
        ip(&["-n", &ns.name, "addr", "add", &inner, "dev", &ns.inner_dev])?;
        ip(&["-n", &ns.name, "link", "set", &ns.inner_dev, "up"])?;
        ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A TCP connection to `addr` made from inside the namespace.
    pub fn connect(&self, addr: SocketAddr) -> TcpStream {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || -> io::Result<TcpStream> {
            let f = std::fs::File::open(&path)?;
            // SAFETY: setns on this (short-lived) thread only; the socket
            // made next belongs to the namespace and outlives the thread.
            if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            let t = Instant::now();
            loop {
                // The veth link may take a moment to come up.
                match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                    Ok(s) => return Ok(s),
                    Err(e) if t.elapsed() > WAIT => return Err(e),
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        })
        .join()
        .expect("netns connect thread")
        .expect("connect from inside the namespace")
    }

    /// Cuts the link: from now on, packets either way are dropped; nothing
    /// (no FIN, no reset) reaches the other side.
    pub fn cut(&self) {
        ip(&["-n", &self.name, "link", "set", &self.inner_dev, "down"]).expect("link down");
    }

    pub fn host_addr(&self, port: u16) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(self.host_ip, port))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
        // Deleting the namespace deletes the pair; this is for the case
        // where it was never moved in.
        let _ = ip(&["link", "del", &self.host_dev]);
    }
}
