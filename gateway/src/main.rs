//! The `gateway` binary: parse flags, check the machine, run until a signal.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::Parser;
use gateway::backend::embedded::EmbeddedFactory;
use gateway::cli::{Cli, Cmd};
use gateway::config::{Config, LogFormat, DEMO_KID, DEMO_SECRET};

#[global_allocator]
static GLOBAL: gateway::heap::Counting = gateway::heap::Counting;

fn main() {
    GLOBAL.installed();
    let parsed = Cli::parse().config();
    if let Ok((cfg, _)) = &parsed {
        init_logging(cfg.log_format);
    }
    if let Err(e) = parsed.and_then(|(cfg, cmd)| run(cfg, cmd)) {
        eprintln!("error: {e:#}");
        if let Some(hint) = permission_hint(&e) {
            eprintln!("{hint}");
        }
        // `systemctl status` shows why the start failed.
        gateway::notify::status(&format!("failed: {e:#}"));
        std::process::exit(1);
    }
}

/// Permission denied: most often the config or a key installed root-only
/// while the service runs as its own user; sometimes a port under 1024.
fn permission_hint(e: &anyhow::Error) -> Option<String> {
    let denied = e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::PermissionDenied)
    });
    // SAFETY: getuid and getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    denied.then(|| {
        format!(
            "hint: this process runs as uid {uid}, gid {gid}. A file it reads must be readable by that group \
             (e.g. chgrp gateway FILE && chmod 0640 FILE, and 0750 on its directory; \
             `systemd/verify.sh --installed` checks every file the config names: OPERATIONS.md, \"Install with systemd\"); \
             a port under 1024 needs CAP_NET_BIND_SERVICE"
        )
    })
}

/// Logging: RUST_LOG, or info with async-nats's own connection chatter at
/// warn (the gateway logs NATS state changes itself, rate-limited). Colours
/// only on a terminal: files and the journal get plain text.
fn init_logging(format: LogFormat) {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,async_nats=warn".into());
    let fmt = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Json => fmt.json().init(),
        LogFormat::Text => fmt.with_ansi(std::io::stdout().is_terminal()).init(),
    }
}

fn run(cfg: Config, cmd: Option<Cmd>) -> anyhow::Result<()> {
    match cmd {
        Some(Cmd::Token { sub, did, ttl_s }) => {
            println!("{}", token(&sub, did.as_deref(), ttl_s));
            return Ok(());
        }
        Some(Cmd::CheckConfig) => return check_config(&cfg),
        None => {}
    }
    cfg.validate()?;
    checks(&cfg)?;
    if cfg.demo {
        tracing::warn!("demo mode: tokens signed with the public demo key are accepted; never use --demo in production");
        tracing::info!("mint a demo token with: gateway token --sub alice");
    }
    let backend = if cfg.nats.enabled() {
        "NATS backends"
    } else {
        "embedded demo backend"
    };
    gateway::notify::status("starting: binding listeners, starting cores");
    let mut handle = gateway::start(cfg, Arc::new(EmbeddedFactory), true)?;
    // A reload reads the same file with the same flags again.
    handle.set_config_source(Box::new(|| {
        let cli = Cli::try_parse().map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(cli.config()?.0)
    }));
    tracing::info!(listen = %handle.local_addr, admin = ?handle.admin_addr, backend, "gateway running");
    handle.notify_systemd();
    handle.join();
    tracing::info!("gateway stopped");
    Ok(())
}

/// `gateway check-config`: the file is valid, every file it names can be
/// read by this user (all unreadable ones are listed), the token keys and
/// the TLS certificate load, and the admin token is set. Run it as the
/// service's user (`systemd/verify.sh --installed` does).
fn check_config(cfg: &Config) -> anyhow::Result<()> {
    cfg.validate()?;
    let files = cfg.named_files();
    let unreadable: Vec<String> = files
        .iter()
        .filter_map(|(key, path)| {
            let e = std::fs::File::open(path).err()?;
            Some(format!("  {key} = {}: {e}", path.display()))
        })
        .collect();
    if !unreadable.is_empty() {
        // SAFETY: getuid cannot fail.
        let uid = unsafe { libc::getuid() };
        anyhow::bail!(
            "uid {uid} cannot read {} of the files the configuration names:\n{}\n\
             make each readable by the service's user (e.g. chgrp gateway FILE && chmod 0640 FILE; \
             OPERATIONS.md, \"Install with systemd\")",
            unreadable.len(),
            unreadable.join("\n")
        );
    }
    gateway::server::build_verifier(cfg)?;
    if !cfg.tls.self_signed {
        gateway::tls::server_config(cfg)?;
    }
    gateway::control::admin_token(cfg)?;
    println!(
        "configuration ok: {} named files readable, keys and certificates load",
        files.len()
    );
    Ok(())
}

fn token(sub: &str, did: Option<&str>, ttl_s: u64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let claims = gateway::auth::claims(sub, did, now, ttl_s);
    match std::env::var("GATEWAY_TOKEN_SECRET") {
        Ok(s) => gateway::auth::sign_hs256(s.as_bytes(), None, &claims),
        Err(_) => gateway::auth::sign_hs256(DEMO_SECRET.as_bytes(), Some(DEMO_KID), &claims),
    }
}

/// Startup checks that say what to do when they fail.
fn checks(cfg: &Config) -> anyhow::Result<()> {
    if let Err(e) = glommio::LocalExecutorBuilder::default()
        .io_memory(cfg.io_memory_bytes as usize)
        .make()
    {
        anyhow::bail!(
            "io_uring is not usable here ({e}). Needs Linux >= 5.8 with io_uring enabled \
             (sysctl kernel.io_uring_disabled=0; containers: allow io_uring_* syscalls in seccomp) \
             and locked memory of at least io_memory_bytes ({}) per core: raise LimitMEMLOCK / ulimit -l",
            cfg.io_memory_bytes
        );
    }
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut r) } == 0 && r.rlim_cur < 4 << 20 {
        tracing::warn!(memlock_bytes = r.rlim_cur, "RLIMIT_MEMLOCK is low; io_uring may fail without CAP_IPC_LOCK: set LimitMEMLOCK=infinity (systemd) or ulimit -l");
    }
    let nofile = gateway::listener::nofile_limit();
    if nofile < 65_536 {
        tracing::warn!(rlimit_nofile = nofile, "the open-file limit caps connections at about this number: raise LimitNOFILE (systemd) or ulimit -n; see tuning/");
    }
    Ok(())
}
