//! `gwmem`: the gateway (demo key, embedded backend) run in-process under a
//! counting allocator, to attribute its per-connection heap.
//!
//! The allocator is mimalloc, as in the real binary, wrapped to keep the
//! number of live allocations of each requested size. On SIGUSR1 the counts
//! (plus VmRSS) are written to `<dump-dir>/dump-<n>.json`; the difference of
//! two dumps divided by the connections added says which allocations each
//! connection holds. At start it prints the sizes of the per-connection types.
//!
//! ```text
//! gwmem --listen 127.0.0.1:7000 --dump-dir /tmp/gwmem &
//! flood hold --conns 1000 ...; kill -USR1 <pid>; flood hold --conns 14000 ...; kill -USR1 <pid>
//! ```

use std::alloc::{GlobalAlloc, Layout};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;

/// Sizes above this are counted together in the last bucket.
const SIZE_BUCKETS: usize = 4096;

struct Counting;

static LIVE_BYTES: AtomicI64 = AtomicI64::new(0);
static LIVE: [AtomicI64; SIZE_BUCKETS + 1] = [const { AtomicI64::new(0) }; SIZE_BUCKETS + 1];
static BIG_BYTES: AtomicI64 = AtomicI64::new(0);
/// Live allocations of at least `SIZE_BUCKETS` bytes by power of two:
/// `BIG[k]` counts sizes in `[2^k, 2^(k+1))`.
static BIG: [AtomicI64; 64] = [const { AtomicI64::new(0) }; 64];

fn note(size: usize, sign: i64) {
    LIVE_BYTES.fetch_add(sign * size as i64, Relaxed);
    LIVE[size.min(SIZE_BUCKETS)].fetch_add(sign, Relaxed);
    if size >= SIZE_BUCKETS {
        BIG_BYTES.fetch_add(sign * size as i64, Relaxed);
        BIG[size.ilog2() as usize].fetch_add(sign, Relaxed);
    }
}

// SAFETY: forwards to mimalloc unchanged; the bookkeeping allocates nothing.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = mimalloc::MiMalloc.alloc(l);
        if !p.is_null() {
            note(l.size(), 1);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        let p = mimalloc::MiMalloc.alloc_zeroed(l);
        if !p.is_null() {
            note(l.size(), 1);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        note(l.size(), -1);
        mimalloc::MiMalloc.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let q = mimalloc::MiMalloc.realloc(p, l, new);
        if !q.is_null() {
            note(l.size(), -1);
            note(new, 1);
        }
        q
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[derive(Parser)]
#[command(
    about = "Gateway in-process with a counting allocator; SIGUSR1 dumps live allocations by size."
)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:7000")]
    listen: SocketAddr,
    /// Admin HTTP address; "" disables it.
    #[arg(long, default_value = "")]
    admin_listen: String,
    #[arg(long, default_value_t = 1)]
    cores: usize,
    /// Where SIGUSR1 dumps go.
    #[arg(long, default_value = "/tmp/gwmem")]
    dump_dir: PathBuf,
    /// Print the allocations glommio makes for one accepted TcpStream and
    /// for one idle task reading it, then exit.
    #[arg(long)]
    probe: bool,
    /// TLS with a throwaway self-signed certificate (written to $TMPDIR), as
    /// the gateway's --tls-self-signed.
    #[arg(long)]
    tls_self_signed: bool,
    /// Node id (names the self-signed certificate file).
    #[arg(long, default_value = "gwmem")]
    node_id: String,
}

fn counts() -> Vec<i64> {
    LIVE.iter().map(|c| c.load(Relaxed)).collect()
}

fn print_delta(what: &str, before: &[i64]) {
    let d: Vec<String> = counts()
        .iter()
        .zip(before)
        .enumerate()
        .filter(|(_, (a, b))| a != b)
        .map(|(s, (a, b))| format!("{}x{s}B", a - b))
        .collect();
    println!("{what}: {}", d.join(" "));
}

/// Allocations of one accepted glommio TcpStream and of a task parked on its read.
fn probe() -> anyhow::Result<()> {
    use futures_lite::AsyncReadExt;
    let ex = glommio::LocalExecutorBuilder::default()
        .io_memory(512 * 1024)
        .make()
        .map_err(|e| anyhow::anyhow!("executor: {e}"))?;
    ex.run(async {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        let c = std::net::TcpStream::connect(l.local_addr()?)?;
        let (s, _) = l.accept()?;
        s.set_nonblocking(true)?;
        let b = counts();
        // SAFETY: an open, connected socket whose ownership moves to glommio.
        let mut g = unsafe {
            <glommio::net::TcpStream as std::os::fd::FromRawFd>::from_raw_fd(
                std::os::fd::IntoRawFd::into_raw_fd(s),
            )
        };
        print_delta("glommio TcpStream::from_raw_fd", &b);
        let b = counts();
        let t = glommio::spawn_local(async move {
            let mut buf = [0u8; 16];
            let _ = g.read(&mut buf).await;
        });
        glommio::timer::sleep(Duration::from_millis(20)).await;
        print_delta("task parked in read (first poll)", &b);
        drop(t);
        drop(c);
        Ok::<(), anyhow::Error>(())
    })
}

static DUMP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_usr1(_: libc::c_int) {
    DUMP.store(true, Relaxed);
}

fn dump(dir: &std::path::Path, n: u32) -> anyhow::Result<PathBuf> {
    let by_size: serde_json::Map<String, serde_json::Value> = LIVE
        .iter()
        .enumerate()
        .filter_map(|(s, c)| {
            let c = c.load(Relaxed);
            (c != 0).then(|| (s.to_string(), c.into()))
        })
        .collect();
    let big_by_log2: serde_json::Map<String, serde_json::Value> = BIG
        .iter()
        .enumerate()
        .filter_map(|(k, c)| {
            let c = c.load(Relaxed);
            (c != 0).then(|| (format!("{}", 1u64 << k), c.into()))
        })
        .collect();
    let v = serde_json::json!({
        "live_bytes": LIVE_BYTES.load(Relaxed),
        "big_bytes": BIG_BYTES.load(Relaxed),
        "rss_bytes": bench::procfs::self_rss_bytes(),
        "by_size": by_size,
        "big_by_pow2_floor": big_by_log2,
    });
    let path = dir.join(format!("dump-{n}.json"));
    std::fs::write(&path, serde_json::to_string_pretty(&v)? + "\n")
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

fn print_sizes() {
    use std::mem::size_of;
    println!(
        "size_of gateway::core::Conn          = {}",
        size_of::<gateway::core::Conn>()
    );
    println!(
        "size_of gateway::core::push::Window  = {}",
        size_of::<gateway::core::push::Window>()
    );
    println!(
        "size_of gateway::core::push::Out     = {}",
        size_of::<gateway::core::push::Out>()
    );
    println!(
        "size_of gateway::core::wheel::Entry  = {}",
        size_of::<gateway::core::wheel::Entry>()
    );
    println!(
        "size_of gateway::core::Members       = {}",
        size_of::<gateway::core::Members>()
    );
    println!(
        "size_of Option<std::task::Waker>     = {}",
        size_of::<Option<std::task::Waker>>()
    );
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    print_sizes();
    if a.probe {
        return probe();
    }
    std::fs::create_dir_all(&a.dump_dir)?;
    let mut cfg = gateway::Config {
        demo: true,
        cores: a.cores,
        listen: a.listen,
        admin_listen: a.admin_listen.clone(),
        node_id: a.node_id.clone(),
        ..Default::default()
    };
    cfg.tls.self_signed = a.tls_self_signed;
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(
            libc::SIGUSR1,
            on_usr1 as extern "C" fn(libc::c_int) as *const () as libc::sighandler_t,
        )
    };
    let handle = gateway::start(
        cfg,
        Arc::new(gateway::backend::embedded::EmbeddedFactory),
        true,
    )?;
    println!(
        "gwmem: listening on {}, pid {}",
        handle.local_addr,
        std::process::id()
    );
    let mut n = 0;
    let waiter = std::thread::spawn(move || {
        let mut handle = handle;
        handle.join();
    });
    while !waiter.is_finished() {
        if DUMP.swap(false, Relaxed) {
            let p = dump(&a.dump_dir, n)?;
            println!("gwmem: wrote {}", p.display());
            n += 1;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = waiter.join();
    Ok(())
}
