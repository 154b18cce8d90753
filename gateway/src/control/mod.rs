//! The control plane: one thread running a single-threaded tokio runtime.
//! It serves the admin HTTP endpoints (`admin.rs`) and turns signals into
//! core messages: SIGTERM drains (a second one stops fast), SIGINT stops
//! fast. The NATS bridge's tasks (`crate::nats::bridge`) run here too.

mod admin;
mod connz;
pub mod reload;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use crate::config::Config;
use crate::core::CoreMsg;
use crate::metrics::Snapshot;

pub struct ControlPlane {
    pub admin_addr: Option<SocketAddr>,
    /// Runs tasks on the control-plane thread.
    pub handle: tokio::runtime::Handle,
    pub(crate) shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Shared between the admin server and the signal handler.
pub(crate) struct Shared {
    pub mesh: Vec<crate::core::CoreTx>,
    pub draining: AtomicBool,
    pub node_id: String,
    /// The configuration in force (replaced by a reload).
    pub cfg: std::sync::RwLock<Arc<Config>>,
    /// How a reload reads the configuration again (`reload.rs`).
    pub source: std::sync::Mutex<Option<reload::Source>>,
    /// The NATS bridge's counters, once it runs.
    pub nats: std::sync::OnceLock<Arc<crate::nats::BridgeStats>>,
    /// Each core's subscription connection and request client (readiness).
    pub nats_health: std::sync::OnceLock<Vec<crate::nats::CoreHealth>>,
    /// The admin bearer token (from `admin_token_env`), if any.
    pub admin_token: Option<String>,
    /// Held while a `/connz` or `/kick` scans the cores (one at a time).
    pub scan: tokio::sync::Mutex<()>,
}

impl ControlPlane {
    pub fn start(
        cfg: &Config,
        mesh: Vec<crate::core::CoreTx>,
        signals: bool,
    ) -> anyhow::Result<ControlPlane> {
        let admin = if cfg.admin_listen.is_empty() {
            None
        } else {
            let l = bind_admin(&cfg.admin_listen, cfg.listen_shared).with_context(|| {
                format!(
                    "binding the admin server on {} (set admin_listen, or \"\" to disable)",
                    cfg.admin_listen
                )
            })?;
            Some(l)
        };
        let admin_addr = admin.as_ref().and_then(|l| l.local_addr().ok());
        let admin_token = admin_token(cfg)?;
        if admin_token.is_none() && admin_addr.is_some_and(|a| !a.ip().is_loopback()) {
            tracing::warn!(admin = ?admin_addr, "the admin server is reachable from other hosts and needs no token: anyone there can drain and kick; set admin_token_env or bind admin_listen to 127.0.0.1");
        }
        let shared = Arc::new(Shared {
            mesh,
            draining: AtomicBool::new(false),
            node_id: cfg.node_id.clone(),
            cfg: std::sync::RwLock::new(Arc::new(cfg.clone())),
            source: std::sync::Mutex::new(None),
            nats: std::sync::OnceLock::new(),
            nats_health: std::sync::OnceLock::new(),
            admin_token,
            scan: tokio::sync::Mutex::new(()),
        });
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let shared_rt = shared.clone();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = rt.handle().clone();
        let thread = std::thread::Builder::new()
            .name("gw-control".into())
            .spawn(move || {
                rt.block_on(async move {
                    let shared = shared_rt;
                    if let Some(l) = admin {
                        match tokio::net::TcpListener::from_std(l) {
                            Ok(l) => {
                                tokio::spawn(admin::serve(l, shared.clone()));
                            }
                            Err(e) => tracing::error!(error = %e, "admin server failed to start"),
                        }
                    }
                    if signals {
                        tokio::spawn(handle_signals(shared.clone()));
                    }
                    let _ = stop_rx.await;
                });
            })?;
        Ok(ControlPlane {
            admin_addr,
            handle,
            shared,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// Marks the node as draining (/healthz answers 503 from now on).
    pub fn set_draining(&self) {
        self.shared.draining.store(true, Ordering::SeqCst);
    }

    pub fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn handle_signals(shared: Arc<Shared>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers; stop the gateway with SIGKILL");
        return;
    };
    loop {
        let fast = tokio::select! {
            _ = term.recv() => shared.draining.load(Ordering::SeqCst),
            _ = int.recv() => true,
            _ = hup.recv() => {
                let _ = reload(&shared);
                continue;
            }
        };
        start_drain(&shared, fast).await;
    }
}

/// Starts a drain (SIGTERM, `POST /drain`), or with `fast` stops at once
/// (SIGINT, a second SIGTERM). Returns false when a drain was already on.
pub(crate) async fn start_drain(shared: &Shared, fast: bool) -> bool {
    let first = !shared.draining.swap(true, Ordering::SeqCst);
    if !fast && !first {
        return false;
    }
    crate::notify::stopping(fast);
    if fast {
        tracing::info!("stopping now (SIGINT, or a second SIGTERM)");
    } else {
        tracing::info!(
            spread_ms = shared.cfg().drain_spread_ms,
            deadline_ms = shared.cfg().drain_deadline_ms,
            "draining: GoAways spread over drain_spread_ms, exit when empty or at the deadline"
        );
    }
    for tx in &shared.mesh {
        let _ = tx
            .send_async(if fast { CoreMsg::Stop } else { CoreMsg::Drain })
            .await;
    }
    true
}

/// The admin listener, with SO_REUSEPORT like the client listeners: during
/// a binary upgrade the new process binds the same address while the old
/// one drains (OPERATIONS.md).
fn bind_admin(addr: &str, shared: bool) -> std::io::Result<std::net::TcpListener> {
    use std::net::ToSocketAddrs as _;
    let addr = addr.to_socket_addrs()?.next().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "no address to bind")
    })?;
    if !shared {
        crate::listener::ensure_free(addr, "admin_listen")?;
    }
    let s = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.bind(&addr.into())?;
    s.listen(128)?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

/// The admin token from the variable `admin_token_env` names (also
/// checked by `gateway check-config`).
pub fn admin_token(cfg: &Config) -> anyhow::Result<Option<String>> {
    let Some(var) = &cfg.admin_token_env else {
        return Ok(None);
    };
    match std::env::var(var) {
        Ok(t) if t.len() >= 16 => Ok(Some(t)),
        Ok(_) => anyhow::bail!("admin_token_env: the token in ${var} is shorter than 16 bytes; use a random one (e.g. `openssl rand -hex 24`)"),
        Err(_) => anyhow::bail!("admin_token_env names ${var}, which is not set (or not UTF-8): export it, or remove admin_token_env"),
    }
}

impl Shared {
    /// The configuration in force.
    pub fn cfg(&self) -> Arc<Config> {
        match self.cfg.read() {
            Ok(c) => c.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }
}

/// SIGHUP (`systemctl reload`), `POST /reload`: reads the configuration
/// again and applies what can change live (`reload.rs`), and tells systemd.
pub(crate) fn reload(shared: &Shared) -> Result<String, String> {
    crate::notify::reloading();
    let res = reload::reload(shared);
    let outcome = match &res {
        Ok(summary) => summary.clone(),
        Err(e) => {
            tracing::error!(error = %e, "reload failed: the running configuration stays as it was");
            format!("failed, the running configuration stays: {e}")
        }
    };
    crate::notify::reloaded(shared, &outcome);
    res
}

/// Reloads the TLS certificate and key (`POST /tls/reload`).
pub(crate) fn reload_tls(shared: &Shared) -> Result<(), String> {
    let cfg = shared.cfg();
    match crate::tls::reload(&cfg) {
        Ok(sc) => {
            crate::tls::install(&shared.mesh, &sc);
            tracing::info!(cert = %cfg.tls.cert_file, "TLS certificate reloaded: new connections use it, open ones keep theirs");
            Ok(())
        }
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "TLS reload failed; the current certificate stays in use");
            Err(format!("{e:#}"))
        }
    }
}

/// Why the node is not ready for clients, if it is not: draining, a core
/// that did not answer (`answered` < cores), or with NATS, a core whose
/// subscriptions or request connection are not up.
pub(crate) fn not_ready(shared: &Shared, answered: usize) -> Option<String> {
    if shared.draining.load(Ordering::SeqCst) {
        return Some("draining".into());
    }
    if answered < shared.mesh.len() {
        return Some("a core did not answer".into());
    }
    for (core, h) in shared.nats_health.get().into_iter().flatten().enumerate() {
        if !h.subscriptions_up() {
            return Some(format!(
                "NATS: the subscriptions of core {core} are not in place"
            ));
        }
        if !h.requests_up() {
            return Some(format!(
                "NATS: the request connection of core {core} is down"
            ));
        }
    }
    None
}

/// Asks every core for its snapshot, waiting at most `timeout` per core.
pub async fn collect(mesh: &[crate::core::CoreTx], timeout: Duration) -> Vec<Snapshot> {
    let mut out = Vec::with_capacity(mesh.len());
    for tx in mesh {
        let (stx, srx) = flume::bounded(1);
        // A core whose inbox is full counts as not answering.
        if tx.try_send(CoreMsg::Snapshot(stx)).is_err() {
            continue;
        }
        if let Ok(Ok(s)) = tokio::time::timeout(timeout, srx.recv_async()).await {
            out.push(s);
        }
    }
    out
}

/// Blocking variant for callers outside any runtime.
pub fn collect_blocking(mesh: &[crate::core::CoreTx], timeout: Duration) -> Vec<Snapshot> {
    let mut out = Vec::with_capacity(mesh.len());
    for tx in mesh {
        let (stx, srx) = flume::bounded(1);
        if tx.send(CoreMsg::Snapshot(stx)).is_ok() {
            if let Ok(s) = srx.recv_timeout(timeout) {
                out.push(s);
            }
        }
    }
    out
}
