//! Reload (SIGHUP, `systemctl reload`, `POST /reload`): the configuration
//! is read again the way the process was started (the same file and
//! flags), the token verifier and the TLS settings are built from it, and
//! what can change live goes to every core. Nothing drops a connection:
//! open sessions stay, and new limits apply from their next use on.
//!
//! All or nothing: a file that does not parse, a setting out of range, a
//! key or certificate that does not load leaves the running configuration
//! as it was, and says why. Settings that cannot change live ([`RESTART`])
//! keep their running values; each one that changed is named in the log
//! and in the answer (OPERATIONS.md, "Reload").

use std::sync::Arc;

use serde_json::Value;

use super::Shared;
use crate::config::Config;
use crate::core::CoreMsg;

/// Reads the configuration again (the binary: its command line, file and
/// flags; in-process users: what they choose).
pub type Source = Box<dyn Fn() -> anyhow::Result<Config> + Send + Sync>;

/// Top-level settings that take a restart: sockets, threads and memory
/// sized at start, the NATS connections, the node's identity.
pub const RESTART: &[&str] = &[
    "node_id",
    "listen",
    "listen_backlog",
    "listen_shared",
    "cores",
    "conns_per_core_max",
    "fd_reserve",
    "core_inbox_max",
    "tick_ms",
    "io_memory_bytes",
    "io",
    "admin_listen",
    "admin_token_env",
    "log_format",
    "nats",
    "demo",
];

/// Settings of `[overload]` that change live: the rate limits. The
/// shedding controller's settings take a restart.
pub const OVERLOAD_LIVE: &[&str] = &[
    "upstream_rate_per_conn_per_s",
    "upstream_burst",
    "accept_rate_per_core_per_s",
    "accept_burst",
    "room_broadcast_rate_per_s",
    "room_burst",
];

/// What a reload changed.
#[derive(Debug, Default, PartialEq)]
pub struct Changes {
    /// Settings now in force with their new values (`auth.keys`, ...).
    pub applied: Vec<String>,
    /// Settings that changed in the file or flags but take a restart:
    /// the running values stay.
    pub kept: Vec<String>,
}

impl Changes {
    /// One line for the log, systemd's STATUS and the admin answer.
    pub fn summary(&self) -> String {
        let applied = if self.applied.is_empty() {
            "no setting changed".to_string()
        } else {
            format!("applied: {}", self.applied.join(", "))
        };
        if self.kept.is_empty() {
            applied
        } else {
            format!(
                "{applied}; take a restart, running values kept: {}",
                self.kept.join(", ")
            )
        }
    }
}

/// The configuration to run after a reload: `new`, except that settings
/// which cannot change live keep their `running` values.
pub fn merge(running: &Config, new: &Config) -> anyhow::Result<(Config, Changes)> {
    let run = serde_json::to_value(running)?;
    let mut next = serde_json::to_value(new)?;
    let mut changes = Changes::default();
    let (Value::Object(run), Some(next_map)) = (&run, next.as_object_mut()) else {
        anyhow::bail!("the configuration is not a table");
    };
    for (key, was) in run {
        let Some(now) = next_map.get_mut(key) else {
            continue;
        };
        if now == was {
            continue;
        }
        let restart = RESTART.contains(&key.as_str())
            // TLS on or off takes a restart; its files and settings do not.
            || (key == "tls" && running.tls.enabled() != new.tls.enabled());
        if restart {
            changes.kept.push(key.clone());
            *now = was.clone();
        } else if let (Value::Object(was), Value::Object(now)) = (was, &mut *now) {
            for (sub, w) in was {
                let Some(n) = now.get_mut(sub) else { continue };
                if n == w {
                    continue;
                }
                let name = format!("{key}.{sub}");
                if key == "overload" && !OVERLOAD_LIVE.contains(&sub.as_str()) {
                    changes.kept.push(name);
                    *n = w.clone();
                } else {
                    changes.applied.push(name);
                }
            }
        } else {
            changes.applied.push(key.clone());
        }
    }
    changes.applied.sort();
    changes.kept.sort();
    Ok((serde_json::from_value(next)?, changes))
}

/// Runs a reload; the summary of what changed, or why nothing did.
pub(crate) fn reload(shared: &Shared) -> Result<String, String> {
    let new = {
        let source = shared.source.lock().map_err(|_| "reload source poisoned")?;
        let Some(source) = source.as_ref() else {
            return Err("no configuration source: this gateway was started in-process without one (GatewayHandle::set_config_source)".into());
        };
        source().map_err(|e| format!("reading the configuration: {e:#}"))?
    };
    new.validate().map_err(|e| format!("{e}"))?;
    let running = shared.cfg();
    let (cfg, changes) = merge(&running, &new).map_err(|e| format!("{e:#}"))?;
    cfg.validate().map_err(|e| format!("{e}"))?;
    let verifier = crate::server::build_verifier(&cfg)
        .map(Arc::new)
        .map_err(|e| format!("{e:#}"))?;
    // TLS from the files now named (a certificate renewed in place is
    // picked up as well); a self-signed certificate stays.
    let tls = if cfg.tls.enabled() && !cfg.tls.self_signed {
        Some(crate::tls::reload(&cfg).map_err(|e| format!("TLS: {e:#}"))?)
    } else {
        None
    };
    // Everything loaded: hand it over.
    let cfg = Arc::new(cfg);
    for tx in &shared.mesh {
        let _ = tx.send(CoreMsg::Reload(cfg.clone(), verifier.clone()));
    }
    if let Some(sc) = &tls {
        crate::tls::install(&shared.mesh, sc);
    }
    for k in &changes.kept {
        tracing::warn!(setting = %k, "changed in the configuration, but takes a restart: the running value stays");
    }
    let mut summary = changes.summary();
    if tls.is_some() {
        // Said even when no setting changed: a renewed certificate is
        // what most reloads are for.
        summary.push_str("; TLS certificate reloaded");
    }
    tracing::info!(
        applied = ?changes.applied,
        tls_reloaded = tls.is_some(),
        "configuration reloaded: open connections stay; {summary}"
    );
    *shared
        .cfg
        .write()
        .map_err(|_| "configuration lock poisoned")? = cfg;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_survives_the_round_trip() {
        let c = Config::default();
        let (m, changes) = merge(&c, &c).unwrap();
        assert_eq!(m, c);
        assert_eq!(changes, Changes::default());
    }

    #[test]
    fn live_settings_change_and_the_others_are_kept() {
        let running = Config::default();
        let mut new = running.clone();
        new.frame_bytes_max = 1234;
        new.auth.leeway_s = 7;
        new.cores = running.cores + 3;
        new.tick_ms = 10;
        new.overload.room_broadcast_rate_per_s = 5;
        new.overload.queue_delay_max_ms = 77;
        let (m, changes) = merge(&running, &new).unwrap();
        assert_eq!(m.frame_bytes_max, 1234);
        assert_eq!(m.auth.leeway_s, 7);
        assert_eq!(m.overload.room_broadcast_rate_per_s, 5);
        assert_eq!(m.cores, running.cores);
        assert_eq!(m.tick_ms, running.tick_ms);
        assert_eq!(
            m.overload.queue_delay_max_ms,
            running.overload.queue_delay_max_ms
        );
        assert_eq!(
            changes.applied,
            [
                "auth.leeway_s",
                "frame_bytes_max",
                "overload.room_broadcast_rate_per_s"
            ]
        );
        assert_eq!(
            changes.kept,
            ["cores", "overload.queue_delay_max_ms", "tick_ms"]
        );
        let s = changes.summary();
        assert!(s.contains("applied: auth.leeway_s, frame_bytes_max"), "{s}");
        assert!(s.contains("running values kept: cores"), "{s}");
    }

    #[test]
    fn turning_tls_on_takes_a_restart() {
        let running = Config::default();
        let mut new = running.clone();
        new.tls.self_signed = true;
        let (m, changes) = merge(&running, &new).unwrap();
        assert!(!m.tls.enabled());
        assert_eq!(changes.kept, ["tls"]);
    }
}
