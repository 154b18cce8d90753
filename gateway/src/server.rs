//! Starting and stopping a gateway: binds the per-core listeners, builds the
//! token verifier, spawns one pinned glommio executor per core and the
//! control-plane thread. Used by the binary and, on port 0, by the tests.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use glommio::{LocalExecutorBuilder, Placement};

use crate::auth::{read_keys, Alg, KeyMaterial, Verifier, VerifyKey};
use crate::backend::BackendFactory;
use crate::config::{Config, DEMO_KID, DEMO_SECRET};
use crate::conn::{Chosen, Io, IoLoop, Poller};
use crate::control::ControlPlane;
use crate::core::{wake, Core, CoreMsg, Wake};
use crate::listener;
use crate::metrics::Snapshot;
use crate::nats::contract::Subjects;
use crate::nats::inbound::InboundCtx;
use crate::nats::{BridgeStats, NatsFactory};

/// How long `start` waits for every core to report that it serves.
const CORE_START_TIMEOUT: Duration = Duration::from_secs(10);

/// A running gateway.
pub struct GatewayHandle {
    /// Address clients connect to.
    pub local_addr: std::net::SocketAddr,
    /// Address of the admin HTTP server, when enabled.
    pub admin_addr: Option<std::net::SocketAddr>,
    /// Connection cap of each core.
    pub conns_per_core_max: u32,
    mesh: Vec<crate::core::CoreTx>,
    executors: Vec<glommio::ExecutorJoinHandle<()>>,
    control: Option<ControlPlane>,
    nats: Option<NatsParts>,
}

/// The NATS bridge, when `[nats] urls` are set.
struct NatsParts {
    factory: Arc<NatsFactory>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    stats: Arc<BridgeStats>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl NatsParts {
    /// Starts the bridge's connections on the control-plane thread; each
    /// core's waker goes with what is sent to it.
    fn start(
        cfg: &Arc<Config>,
        wakes: Vec<std::task::Waker>,
        control: &ControlPlane,
    ) -> anyhow::Result<NatsParts> {
        let stats = Arc::new(BridgeStats::default());
        let (tx, rx) = std::sync::mpsc::channel();
        let (cfg2, stats2) = (cfg.clone(), stats.clone());
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        control.handle.spawn(async move {
            let _ = tx.send(crate::nats::bridge::start(&cfg2, wakes, stats2, stop_rx).await);
        });
        let (links, tasks) = rx
            .recv()
            .map_err(|_| anyhow::anyhow!("the control plane stopped while starting NATS"))??;
        let _ = control.shared.nats.set(stats.clone());
        tracing::info!(urls = %cfg.nats.urls.join(","), prefix = %cfg.nats.prefix, "NATS backends: upstream frames go to <prefix>.up.<route>");
        let factory = Arc::new(NatsFactory::new(links, cfg, stats.clone()));
        let _ = control.shared.nats_health.set(factory.health());
        Ok(NatsParts {
            factory,
            tasks,
            stats,
            stop,
        })
    }

    /// After the cores have exited: closes the subscriptions and waits for
    /// the request tasks to flush.
    fn stop(self) {
        self.factory.close();
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = futures_lite::future::block_on(t);
        }
    }
}

/// Builds the verifier from the config (and the demo key in demo mode).
pub fn build_verifier(cfg: &Config) -> anyhow::Result<Verifier> {
    let mut keys = read_keys(&cfg.auth.keys).context("loading [[auth.keys]]")?;
    if cfg.demo {
        keys.push(VerifyKey {
            kid: Some(DEMO_KID.into()),
            alg: Alg::HS256,
            material: KeyMaterial::Secret(DEMO_SECRET.as_bytes().to_vec()),
        });
    }
    Verifier::new(keys, cfg.verify_options()).context("building the token verifier")
}

/// Starts a gateway. `backend` serves upstream frames unless `[nats] urls`
/// are set, in which case NATS backends do. `signals`: the control plane
/// handles SIGTERM (drain) and SIGINT (fast stop); tests pass false and call
/// [`GatewayHandle::shutdown`].
pub fn start(
    cfg: Config,
    backend: Arc<dyn BackendFactory>,
    signals: bool,
) -> anyhow::Result<GatewayHandle> {
    cfg.validate()?;
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let cores = if cfg.cores == 0 { cpus } else { cfg.cores };
    if cores > 255 {
        anyhow::bail!("cores = {cores}: at most 255 cores are supported");
    }
    let verifier = Arc::new(build_verifier(&cfg)?);
    let tls = crate::tls::server_config(&cfg)?;
    let (sockets, local_addr) = listener::bind_all(&cfg, cores)?;
    let (conns_max, nofile) = listener::conns_per_core(&cfg, cores);
    if conns_max == 0 {
        anyhow::bail!(
            "no connections fit: RLIMIT_NOFILE is {nofile} and fd_reserve is {}; raise the open-file limit or lower fd_reserve",
            cfg.fd_reserve
        );
    }
    if cores > cpus {
        tracing::warn!(
            cores,
            cpus,
            "more cores than CPUs: executors share CPUs (pinned round-robin)"
        );
    }
    tracing::info!(
        %local_addr, cores, conns_per_core_max = conns_max, rlimit_nofile = nofile,
        fd_reserve = cfg.fd_reserve, "connection cap per core (config and RLIMIT_NOFILE)"
    );
    let (driver, why) = crate::conn::driver::choose(&cfg.io).map_err(anyhow::Error::msg)?;
    tracing::info!(driver = driver.name(), why = %why, "socket driver");
    let cfg = Arc::new(cfg);
    // Each core's cross-thread wake-up: an eventfd its io_uring loop reads,
    // or nothing when glommio parks and wakes itself (epoll driver).
    let wakes = (0..cores)
        .map(|_| match driver {
            Chosen::Uring => Wake::eventfd().context("creating a core's eventfd"),
            Chosen::Epoll => Ok(Wake::none()),
        })
        .collect::<anyhow::Result<Vec<Arc<Wake>>>>()?;
    let (txs, rxs): (Vec<_>, Vec<_>) = wakes
        .iter()
        .map(|w| {
            let (tx, rx) = flume::bounded(cfg.core_inbox_max as usize);
            (crate::core::CoreTx::new(tx, w.waker()), rx)
        })
        .unzip();
    // The control plane first: the NATS bridge runs on it.
    let control = ControlPlane::start(&cfg, txs.clone(), signals)?;
    let nats = if cfg.nats.enabled() {
        match NatsParts::start(&cfg, wakes.iter().map(|w| w.waker()).collect(), &control) {
            Ok(n) => Some(n),
            Err(e) => {
                control.stop();
                return Err(e);
            }
        }
    } else {
        None
    };
    let backend: Arc<dyn BackendFactory> = match &nats {
        Some(n) => n.factory.clone(),
        None => backend,
    };
    let mut handle = GatewayHandle {
        local_addr,
        admin_addr: control.admin_addr,
        conns_per_core_max: conns_max,
        mesh: txs.clone(),
        executors: Vec::with_capacity(cores),
        control: Some(control),
        nats,
    };
    let plan = CorePlan {
        cfg,
        cpus,
        conns_max,
        verifier,
        tls,
        backend,
        driver,
        mesh: txs,
    };
    match spawn_cores(plan, sockets.into_iter().zip(rxs).zip(wakes), &mut handle) {
        Ok(()) => Ok(handle),
        Err(e) => {
            // Cores that started stop with the handle.
            handle.shutdown(false);
            Err(e)
        }
    }
}

/// What every core is started with.
struct CorePlan {
    cfg: Arc<Config>,
    cpus: usize,
    conns_max: u32,
    verifier: Arc<Verifier>,
    tls: Option<Arc<rustls::ServerConfig>>,
    backend: Arc<dyn BackendFactory>,
    driver: Chosen,
    mesh: Vec<crate::core::CoreTx>,
}

/// One core's listener, inbox and wake-up.
type CoreEnds = ((socket2::Socket, flume::Receiver<CoreMsg>), Arc<Wake>);

fn spawn_cores(
    plan: CorePlan,
    ends: impl ExactSizeIterator<Item = CoreEnds>,
    handle: &mut GatewayHandle,
) -> anyhow::Result<()> {
    let cores = ends.len();
    // Each core reports once it serves (or why it cannot).
    let (up_tx, up_rx) = flume::bounded::<Result<(), String>>(cores);
    for (i, ((sock, rx), wake)) in ends.enumerate() {
        let up = up_tx.clone();
        let (cfg, verifier, backend, mesh, tls, driver, conns_max) = (
            plan.cfg.clone(),
            plan.verifier.clone(),
            plan.backend.clone(),
            plan.mesh.clone(),
            plan.tls.clone(),
            plan.driver,
            plan.conns_max,
        );
        let inbound = handle.nats.as_ref().and_then(|n| {
            let (rx, subs) = n.factory.take_inbound(i)?;
            Some((
                rx,
                InboundCtx {
                    subjects: Subjects::new(&cfg.nats.prefix),
                    subs,
                    stats: n.stats.clone(),
                },
            ))
        });
        let h = LocalExecutorBuilder::new(Placement::Fixed(i % plan.cpus))
            .name(&format!("gw-core-{i}"))
            .io_memory(cfg.io_memory_bytes as usize)
            .spawn(move || wake::Counted::new(async move {
                if driver == Chosen::Uring {
                    // Before any task: they wait through the loop from the start.
                    wake::set_own_loop(true);
                }
                let backend = backend.for_core(i);
                let io = match driver {
                    Chosen::Uring => Io::Uring(Default::default()),
                    Chosen::Epoll => match Poller::new() {
                        Ok(p) => Io::Epoll(p),
                        Err(e) => {
                            let _ = up.send(Err(format!("core {i}: cannot create its epoll instance: {e}")));
                            return;
                        }
                    },
                };
                let uring = crate::conn::driver::uring_settings(&cfg.io);
                let mut core = Core::new(i, cfg, verifier, backend, mesh, conns_max, io);
                core.tls = std::cell::RefCell::new(tls);
                let core = Rc::new(core);
                let uring_loop = match driver {
                    Chosen::Uring => match crate::conn::uring::start(core.clone(), sock, uring, wake) {
                        Ok(l) => Some(l),
                        Err(e) => {
                            let _ = up.send(Err(format!("core {i}: cannot set up its io_uring (ring and receive buffers): {e}; see OPERATIONS.md, or run with --io-driver epoll")));
                            return;
                        }
                    },
                    Chosen::Epoll => {
                        wake::spawn(IoLoop::new(core.clone())).detach();
                        wake::spawn(listener::accept_loop(core.clone(), sock)).detach();
                        None
                    }
                };
                wake::spawn(core.clone().run_ticks()).detach();
                wake::spawn(core.clone().run_rooms()).detach();
                if let Some((rx, ctx)) = inbound {
                    wake::spawn(crate::nats::inbound::run(core.clone(), rx, ctx)).detach();
                }
                // Last: a task spawned runs at once, and this one only
                // yields back once the others have had their first turn.
                if let Some(l) = uring_loop {
                    wake::spawn(crate::conn::uring::run(l)).detach();
                }
                let _ = up.send(Ok(()));
                drop(up);
                core.run_inbox(rx).await;
            }))
            .map_err(|e| anyhow::anyhow!("starting the executor of core {i}: {e} (io_uring and locked memory: see OPERATIONS.md)"))?;
        handle.executors.push(h);
    }
    drop(up_tx);
    for _ in 0..cores {
        match up_rx.recv_timeout(CORE_START_TIMEOUT) {
            Ok(Ok(())) => {}
            Ok(Err(why)) => anyhow::bail!("{why}"),
            Err(_) => anyhow::bail!(
                "a core did not start within {CORE_START_TIMEOUT:?}: io_uring setup failed? (see the log above and OPERATIONS.md)"
            ),
        }
    }
    Ok(())
}

impl GatewayHandle {
    /// Graceful (drain, as SIGTERM) or fast (as SIGINT) stop; returns when
    /// every core has exited.
    pub fn shutdown(mut self, graceful: bool) {
        if let Some(c) = &self.control {
            c.set_draining();
        }
        for tx in &self.mesh {
            let _ = tx.send(if graceful {
                CoreMsg::Drain
            } else {
                CoreMsg::Stop
            });
        }
        self.join();
    }

    /// Waits until every core has exited (after a signal or shutdown).
    pub fn join(&mut self) {
        for h in self.executors.drain(..) {
            if let Err(e) = h.join() {
                tracing::error!(error = %e, "a core ended with an error");
            }
        }
        if let Some(n) = self.nats.take() {
            n.stop();
        }
        if let Some(c) = self.control.take() {
            c.stop();
        }
    }

    /// Reports to systemd (READY=1, STATUS, WATCHDOG=1: `notify.rs`) when
    /// the process runs under it with `Type=notify`; nothing otherwise.
    pub fn notify_systemd(&self) {
        if let Some(c) = &self.control {
            c.handle.spawn(crate::notify::supervise(c.shared.clone()));
        }
    }

    /// Where a reload (SIGHUP, `POST /reload`, [`GatewayHandle::reload`])
    /// reads the configuration again; without one, reloads fail.
    pub fn set_config_source(&self, source: crate::control::reload::Source) {
        if let Some(c) = &self.control {
            if let Ok(mut s) = c.shared.source.lock() {
                *s = Some(source);
            }
        }
    }

    /// Reloads the configuration (as SIGHUP) and waits until every core
    /// has taken it; what changed, or why nothing did.
    pub fn reload(&self) -> Result<String, String> {
        let c = self.control.as_ref().ok_or("stopped")?;
        let res = crate::control::reload(&c.shared);
        self.snapshots(); // inboxes are FIFO: every core has the reload
        res
    }

    /// Reloads the TLS certificate and key from their files.
    pub fn reload_tls(&self) -> anyhow::Result<()> {
        let cfg = self.control.as_ref().context("stopped")?.shared.cfg();
        let sc = crate::tls::reload(&cfg)?;
        crate::tls::install(&self.mesh, &sc);
        // Inboxes are FIFO: once every core has answered a snapshot, each has
        // installed the new settings.
        self.snapshots();
        Ok(())
    }

    /// Metrics of every core (blocking; for tests and tools).
    pub fn snapshots(&self) -> Vec<Snapshot> {
        crate::control::collect_blocking(&self.mesh, Duration::from_secs(5))
    }
}
