//! The request connection of one core: an async-nats client for upstream
//! requests, session events and pushes that leave the node, and its
//! replacement when it is stuck.
//!
//! async-nats learns the cluster's servers only from the INFO it gets at
//! connect time, and bounds only the TCP connect of a reconnection
//! attempt: a server that accepts the connection and then says nothing
//! (hung, SIGSTOPped: the kernel still completes the handshake) holds a
//! reconnecting client forever. So each core's client sits behind a
//! [`Requests`] handle, and [`supervise`] replaces a client that has not
//! been connected for two ping intervals plus a connect timeout, while the
//! core's interest connection is up on some server, with a new one that
//! knows every server the interest connection has learned (INFO
//! `connect_urls`, also from later INFO updates). Everything that sends
//! takes the current client from the handle each time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::interest::{self, Interest};
use super::NatsConfig;

/// Whether this client has ever connected (async-nats reports the first
/// connection's server in its server info).
fn ever_up(requests: &Requests) -> bool {
    !requests.current().server_info().server_id.is_empty()
}

/// At most one line per `THROTTLE_WINDOW` from one place, with how many
/// were held back since the last (async-nats reports every failed
/// reconnection attempt, per core, every few seconds).
#[derive(Default)]
pub struct Throttle(std::sync::Mutex<Option<(Instant, u64)>>);

/// Window of [`Throttle`].
pub const THROTTLE_WINDOW: Duration = Duration::from_secs(10);

impl Throttle {
    /// Some(n) when a line may be logged now, n = lines held back since
    /// the last one; None when this one is held back (and counted).
    pub fn allow(&self) -> Option<u64> {
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match &mut *g {
            Some((at, held)) if at.elapsed() < THROTTLE_WINDOW => {
                *held += 1;
                None
            }
            slot => {
                let held = slot.map_or(0, |(_, n)| n);
                *slot = Some((Instant::now(), 0));
                Some(held)
            }
        }
    }
}

/// What a core's request client is made from.
#[derive(Clone)]
pub struct ClientSpec {
    pub cfg: NatsConfig,
    pub auth: interest::Auth,
    /// CONNECT name (shows in the server's /connz).
    pub name: String,
    pub node: String,
    pub core: usize,
}

/// The current request client of one core; cheap to clone.
#[derive(Clone)]
pub struct Requests(Arc<tokio::sync::watch::Sender<async_nats::Client>>);

impl Requests {
    pub fn new(client: async_nats::Client) -> Requests {
        Requests(Arc::new(tokio::sync::watch::channel(client).0))
    }
    /// The client to send with now.
    pub fn current(&self) -> async_nats::Client {
        self.0.borrow().clone()
    }
    /// Whether the current client is connected.
    pub fn connected(&self) -> bool {
        self.0.borrow().connection_state() == async_nats::connection::State::Connected
    }
    fn replace(&self, client: async_nats::Client) {
        self.0.send_replace(client);
    }
}

/// Connects a request client to `urls` (in the background: it returns at
/// once and keeps retrying), logging its connection changes.
/// With `in_order`, servers are tried in the order given (else shuffled,
/// async-nats's default).
pub async fn connect(
    spec: &ClientSpec,
    urls: Vec<String>,
    in_order: bool,
) -> anyhow::Result<async_nats::Client> {
    let (node, core) = (spec.node.clone(), spec.core);
    let shown = urls.join(",");
    let url_list = shown.clone();
    let mut opts = options(&spec.cfg, &spec.auth, spec.name.clone())?;
    if in_order {
        opts = opts.retain_servers_order();
    }
    let throttle = Arc::new(Throttle::default());
    let opts = opts.event_callback(move |ev| {
        let (node, url_list, throttle) = (node.clone(), url_list.clone(), throttle.clone());
        async move {
            match ev {
                async_nats::Event::Connected => {
                    tracing::info!(%node, core, "NATS request connection up")
                }
                async_nats::Event::Disconnected => {
                    if let Some(more) = throttle.allow() {
                        tracing::warn!(
                            %node, core, urls = %url_list, repeats = more,
                            "NATS connection lost: upstream frames get BACKEND_UNAVAILABLE until it is back; reconnecting (is nats-server up at these URLs?)"
                        )
                    }
                }
                other => {
                    if let Some(more) = throttle.allow() {
                        tracing::warn!(%node, core, event = %other, repeats = more, "NATS request connection: check nats.urls and the credentials")
                    }
                }
            }
        }
    });
    opts.connect(urls)
        .await
        .map_err(|e| anyhow::anyhow!("nats.urls {shown}: {e} (check the URLs and credentials)"))
}

/// Replaces the core's client when it has been disconnected too long (see
/// the module header). Ends when `stop` turns true.
pub async fn supervise(
    requests: Requests,
    spec: ClientSpec,
    interest: Interest,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let ping = Duration::from_millis(spec.cfg.ping_interval_ms as u64);
    let stuck_after = ping * 2 + Duration::from_millis(spec.cfg.connect_timeout_ms as u64);
    let mut down_since: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(ping) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if requests.connected() {
            down_since = None;
            continue;
        }
        if down_since.is_none() && !ever_up(&requests) {
            // Never connected (NATS unreachable at start): async-nats says
            // nothing of that at warn, so say it here, once per outage.
            tracing::warn!(
                node = %spec.node, core = spec.core, urls = %spec.cfg.urls.join(","),
                "NATS connection lost (not reachable since start): upstream frames get BACKEND_UNAVAILABLE and logins wait until it is back; check that nats-server runs at nats.urls and the credentials"
            );
        }
        let since = *down_since.get_or_insert_with(Instant::now);
        // Replace only a client that is stuck while a server answers (the
        // interest connection is up): with NATS down altogether, waiting
        // keeps what async-nats buffered for the reconnect.
        if since.elapsed() < stuck_after || !interest.is_connected() {
            continue;
        }
        // The server the interest connection is on now first (it answers),
        // the one this client was last on last (it may be the hung one).
        let last = requests.current().server_info();
        let last = format!("{}:{}", last.host, last.port);
        let mut urls: Vec<String> = interest.current_server().into_iter().collect();
        for u in spec
            .cfg
            .urls
            .iter()
            .cloned()
            .chain(interest.learned_servers())
        {
            if !urls.contains(&u) {
                urls.push(u);
            }
        }
        urls.sort_by_key(|u| u.ends_with(&last));
        tracing::warn!(
            node = %spec.node, core = spec.core, urls = %urls.join(","),
            down_ms = since.elapsed().as_millis() as u64,
            "NATS request connection still not back: replacing it with one that knows every server learned so far (a hung server can hold a reconnect forever)"
        );
        match connect(&spec, urls, true).await {
            Ok(c) => requests.replace(c),
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "NATS request connection could not be replaced")
            }
        }
        down_since = None;
    }
}

/// Reads the configured credentials once (files included), for both kinds
/// of connection.
pub fn read_auth(cfg: &NatsConfig) -> anyhow::Result<interest::Auth> {
    let read = |key: &str, path: &str| {
        std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("reading nats.{key} {path}: {e}"))
    };
    Ok(if !cfg.creds_file.is_empty() {
        let text = read("creds_file", &cfg.creds_file)?;
        let (jwt, seed) = interest::read_creds(&text)
            .map_err(|e| anyhow::anyhow!("nats.creds_file {}: {e}", cfg.creds_file))?;
        interest::Auth::Creds { jwt, seed }
    } else if !cfg.nkey_seed_file.is_empty() {
        interest::Auth::NKeySeed(
            read("nkey_seed_file", &cfg.nkey_seed_file)?
                .trim()
                .to_string(),
        )
    } else if !cfg.token.is_empty() {
        interest::Auth::Token(cfg.token.clone())
    } else if !cfg.user.is_empty() {
        interest::Auth::UserPassword(cfg.user.clone(), cfg.password.clone())
    } else {
        interest::Auth::None
    })
}

/// Builds the async-nats options from the config.
fn options(
    cfg: &NatsConfig,
    auth: &interest::Auth,
    name: String,
) -> anyhow::Result<async_nats::ConnectOptions> {
    use async_nats::ConnectOptions as O;
    let mut o = match auth.clone() {
        interest::Auth::Creds { .. } => {
            // async-nats parses the same file; it was read once above.
            let text = std::fs::read_to_string(&cfg.creds_file)?;
            O::with_credentials(&text)
                .map_err(|e| anyhow::anyhow!("nats.creds_file {}: {e}", cfg.creds_file))?
        }
        interest::Auth::NKeySeed(seed) => O::with_nkey(seed),
        interest::Auth::Token(t) => O::with_token(t),
        interest::Auth::UserPassword(u, p) => O::with_user_and_password(u, p),
        interest::Auth::None => O::new(),
    };
    if cfg.tls_required {
        o = o.require_tls(true);
    }
    if !cfg.tls_ca_file.is_empty() {
        o = o.add_root_certificates(cfg.tls_ca_file.clone().into());
    }
    if !cfg.tls_cert_file.is_empty() {
        o = o.add_client_certificate(
            cfg.tls_cert_file.clone().into(),
            cfg.tls_key_file.clone().into(),
        );
    }
    let delay_max = Duration::from_millis(cfg.reconnect_delay_max_ms as u64);
    Ok(o.name(name)
        .ping_interval(Duration::from_millis(cfg.ping_interval_ms as u64))
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_millis(cfg.connect_timeout_ms as u64))
        .request_timeout(None)
        .reconnect_delay_callback(move |attempts| {
            let ms = 10u64.saturating_mul(1u64 << attempts.min(16));
            Duration::from_millis(ms).min(delay_max)
        }))
}
