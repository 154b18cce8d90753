//! Unit tests (parser, NKeys, creds, URLs) and tests against a real
//! `nats-server` (must be on PATH).

use super::*;
use futures_util::StreamExt as _;
use std::io::Read as _;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::AtomicU64;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

const WAIT: Duration = Duration::from_secs(10);

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

fn unique() -> u64 {
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// A scratch directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "gw-interest-test-{}-{}",
            std::process::id(),
            unique()
        ));
        std::fs::create_dir_all(&p).expect("mkdir");
        TempDir(p)
    }
    fn file(&self, name: &str, content: &str) -> String {
        let p = self.0.join(name);
        std::fs::write(&p, content).expect("write");
        p.to_string_lossy().into_owned()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A nats-server child process, killed on drop.
struct NatsServer {
    child: Option<Child>,
    port: u16,
    monitor_port: Option<u16>,
    args: Vec<String>,
}

impl NatsServer {
    fn start(args: &[&str]) -> NatsServer {
        Self::start_with_monitor(args, false)
    }

    fn start_with_monitor(args: &[&str], monitor: bool) -> NatsServer {
        let port = free_port();
        let monitor_port = monitor.then(free_port);
        let mut args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        if let Some(m) = monitor_port {
            args.extend(["-m".to_string(), m.to_string()]);
        }
        let mut s = NatsServer {
            child: None,
            port,
            monitor_port,
            args,
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server must be on PATH");
        self.child = Some(child);
        let deadline = Instant::now() + WAIT;
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                break;
            }
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    panic!("nats-server exited at start: {st} (args {:?})", self.args);
                }
            }
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        if let Some(m) = self.monitor_port {
            while std::net::TcpStream::connect(("127.0.0.1", m)).is_err() {
                assert!(Instant::now() < deadline, "monitor port did not open");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// GET on the monitoring port, parsed as JSON.
    fn monitor(&self, path: &str) -> serde_json::Value {
        let port = self.monitor_port.expect("started without monitoring");
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("monitor connect");
        write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").expect("monitor write");
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).expect("monitor read");
        let at = resp
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("HTTP response without body");
        serde_json::from_slice(&resp[at + 4..]).expect("monitor JSON")
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spec(url: String, auth: Auth) -> ConnectSpec {
    ConnectSpec {
        urls: vec![url],
        auth,
        name: format!("interest-test-{}", unique()),
        connect_timeout: Duration::from_secs(2),
        reconnect_delay_max: Duration::from_millis(100),
        ping_interval: Duration::from_secs(30),
        ..ConnectSpec::default()
    }
}

struct Client {
    interest: Interest,
    inbound: flume::Receiver<Inbound>,
    status: flume::Receiver<Status>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.interest.close();
    }
}

fn start_client(spec: ConnectSpec) -> Client {
    let (itx, irx) = flume::bounded(1024);
    let (stx, srx) = flume::bounded(64);
    Client {
        interest: Interest::spawn(spec, itx, stx),
        inbound: irx,
        status: srx,
    }
}

impl Client {
    /// Waits for a status matching `pred`; returns the statuses seen before it too.
    async fn wait_status(&self, pred: impl Fn(&Status) -> bool) -> Vec<Status> {
        let mut seen = Vec::new();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.status.recv_async()).await {
                Ok(Ok(s)) => {
                    let done = pred(&s);
                    seen.push(s);
                    if done {
                        return seen;
                    }
                }
                Ok(Err(_)) => panic!("status channel closed; seen {seen:?}"),
                Err(_) => panic!("timed out waiting for status; seen {seen:?}"),
            }
        }
    }

    async fn connected(&self) {
        self.wait_status(|s| *s == Status::Connected).await;
    }

    async fn recv(&self) -> Inbound {
        tokio::time::timeout(WAIT, self.inbound.recv_async())
            .await
            .expect("timed out waiting for a message")
            .expect("inbound closed")
    }

    /// Returns once the server has processed every command sent so far:
    /// publishes on a marker subject that `nc` listens to (the server handles
    /// one connection's commands in order).
    async fn barrier(&self, nc: &async_nats::Client) {
        let subject = format!("barrier.{}", unique());
        let mut sub = nc.subscribe(subject.clone()).await.expect("subscribe");
        round_trip(nc).await;
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            self.interest.publish(&subject, &[], Bytes::new());
            match tokio::time::timeout(Duration::from_millis(200), sub.next()).await {
                Ok(Some(_)) => return,
                Ok(None) => panic!("barrier subscription ended"),
                Err(_) => assert!(
                    tokio::time::Instant::now() < deadline,
                    "barrier timed out (connected: {})",
                    self.interest.is_connected()
                ),
            }
        }
    }
}

/// A server round trip for `nc` (async-nats' flush only flushes its socket):
/// a request nobody answers comes back as "no responders" after the server
/// processed every earlier command of `nc`, e.g. a SUB.
async fn round_trip(nc: &async_nats::Client) {
    let r = nc
        .request(format!("nobody.{}", unique()), Bytes::new())
        .await;
    assert!(r.is_err(), "nobody listens there");
}

fn header<'a>(m: &'a Inbound, key: &str) -> Option<&'a str> {
    m.headers
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

// ---------------------------------------------------------------------------
// Against nats-server
// ---------------------------------------------------------------------------

/// 1. SUB, then MSG and HMSG (subject, payload, headers), a queue-group
///    subscription, and a request answered through `Interest::publish`.
#[tokio::test(flavor = "current_thread")]
async fn sub_receives_messages_headers_and_answers_requests() {
    let server = NatsServer::start(&[]);
    let c = start_client(spec(server.url(), Auth::None));
    c.connected().await;
    let nc = async_nats::connect(server.url()).await.expect("async-nats");

    c.interest.sub("gw.user.42", None);
    c.interest.sub("gw.room.7", Some("cores"));
    assert_eq!(c.interest.subscriptions(), 2);
    c.barrier(&nc).await;

    // Plain MSG.
    nc.publish("gw.user.42", "hello".into()).await.expect("pub");
    let m = c.recv().await;
    assert_eq!(m.subject, "gw.user.42");
    assert_eq!(&m.payload[..], b"hello");
    assert_eq!(m.reply, None);
    assert!(m.headers.is_empty());

    // HMSG.
    let mut h = async_nats::HeaderMap::new();
    h.insert("X-Trace", "abc 123");
    h.insert("Kind", "push");
    nc.publish_with_headers("gw.room.7", h, "room msg".into())
        .await
        .expect("hpub");
    let m = c.recv().await;
    assert_eq!(m.subject, "gw.room.7");
    assert_eq!(&m.payload[..], b"room msg");
    assert_eq!(header(&m, "X-Trace"), Some("abc 123"));
    assert_eq!(header(&m, "Kind"), Some("push"));

    // Empty payload.
    nc.publish("gw.user.42", Bytes::new()).await.expect("pub");
    let m = c.recv().await;
    assert!(m.payload.is_empty());

    // Request → answer via Interest::publish (HPUB to the reply subject).
    let nc2 = nc.clone();
    let req = tokio::spawn(async move {
        nc2.request("gw.user.42", "ping?".into())
            .await
            .expect("request answered")
    });
    let m = c.recv().await;
    assert_eq!(&m.payload[..], b"ping?");
    let reply = m.reply.expect("request has a reply subject");
    c.interest
        .publish(&reply, &[("Answer", "yes")], Bytes::from_static(b"pong!"));
    let answer = tokio::time::timeout(WAIT, req)
        .await
        .expect("answer in time")
        .expect("join");
    assert_eq!(&answer.payload[..], b"pong!");
    let hv = answer.headers.as_ref().and_then(|h| h.get("Answer"));
    assert_eq!(hv.map(|v| v.as_str()), Some("yes"));

    // Publish without headers (PUB) to a subject nc listens on.
    let mut plain = nc.subscribe("plain.out").await.expect("sub");
    round_trip(&nc).await;
    c.interest
        .publish("plain.out", &[], Bytes::from_static(b"x"));
    let got = tokio::time::timeout(WAIT, plain.next())
        .await
        .expect("in time")
        .expect("msg");
    assert_eq!(&got.payload[..], b"x");
    assert!(got.headers.is_none());

    // Invalid subjects and headers are refused locally, not sent.
    c.interest.sub("bad subject", None);
    c.interest.sub("", None);
    assert_eq!(c.interest.subscriptions(), 2);
    c.interest
        .publish("plain.out", &[("Bad\r\nKey", "v")], Bytes::new());
    c.barrier(&nc).await;
    assert!(c.inbound.is_empty());
}

/// 2. UNSUB stops delivery; a second SUB of the same subject is a no-op.
#[tokio::test(flavor = "current_thread")]
async fn unsub_stops_delivery_and_double_sub_is_noop() {
    let server = NatsServer::start(&[]);
    let c = start_client(spec(server.url(), Auth::None));
    c.connected().await;
    let nc = async_nats::connect(server.url()).await.expect("async-nats");

    c.interest.sub("gw.user.a", None);
    c.interest.sub("gw.user.a", None); // no-op
    c.interest.sub("gw.user.a", Some("q")); // no-op too
    assert_eq!(c.interest.subscriptions(), 1);
    c.barrier(&nc).await;
    nc.publish("gw.user.a", "1".into()).await.expect("pub");
    nc.publish("gw.user.a", "2".into()).await.expect("pub");
    assert_eq!(&c.recv().await.payload[..], b"1");
    assert_eq!(
        &c.recv().await.payload[..],
        b"2",
        "one server subscription only"
    );

    c.interest.unsub("gw.user.a");
    c.interest.unsub("gw.user.a"); // no-op
    c.interest.unsub("never.subscribed"); // no-op
    assert_eq!(c.interest.subscriptions(), 0);
    c.interest.sub("gw.marker", None);
    c.barrier(&nc).await;
    // Same publisher, same subscriber connection: delivery is in order, so
    // if "gw.user.a" were still subscribed it would arrive before the marker.
    nc.publish("gw.user.a", "3".into()).await.expect("pub");
    nc.publish("gw.marker", "m".into()).await.expect("pub");
    nc.flush().await.expect("flush");
    let m = c.recv().await;
    assert_eq!(m.subject, "gw.marker");
    c.barrier(&nc).await;
    assert!(c.inbound.is_empty());

    // Subscribe again after unsub: works (new sid).
    c.interest.sub("gw.user.a", None);
    c.barrier(&nc).await;
    nc.publish("gw.user.a", "4".into()).await.expect("pub");
    let m = c.recv().await;
    assert_eq!(
        (m.subject.as_str(), &m.payload[..]),
        ("gw.user.a", &b"4"[..])
    );
}

/// 3. Server restart on the same port: Disconnected, then Connected, and
///    every subscription (queue groups too) is restored.
#[tokio::test(flavor = "current_thread")]
async fn reconnect_restores_subscriptions() {
    let mut server = NatsServer::start(&[]);
    let c = start_client(spec(server.url(), Auth::None));
    c.connected().await;
    c.interest.sub("gw.user.r", None);
    c.interest.sub("gw.room.r", Some("q"));
    {
        let nc = async_nats::connect(server.url()).await.expect("async-nats");
        c.barrier(&nc).await;
    }

    server.kill();
    let seen = c
        .wait_status(|s| matches!(s, Status::Disconnected(_)))
        .await;
    assert!(matches!(seen.last(), Some(Status::Disconnected(_))));
    assert!(!c.interest.is_connected());
    // Changes while down are applied on reconnect.
    c.interest.sub("gw.user.while_down", None);
    c.interest.unsub("gw.room.r");
    c.interest.sub("gw.room.r2", Some("q"));
    // Publishes while down are dropped, not queued.
    c.interest
        .publish("gw.user.r", &[], Bytes::from_static(b"lost"));

    server.spawn();
    c.connected().await;
    assert!(c.interest.is_connected());
    // Connected is reported after the server acknowledged every SUB.
    let nc = async_nats::connect(server.url()).await.expect("async-nats");
    for subject in ["gw.user.r", "gw.user.while_down", "gw.room.r", "gw.room.r2"] {
        nc.publish(subject, subject.to_string().into())
            .await
            .expect("pub");
    }
    nc.flush().await.expect("flush");
    // In publish order; gw.room.r (unsubscribed while down) would come
    // before gw.room.r2.
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(c.recv().await.subject);
    }
    assert_eq!(got, ["gw.user.r", "gw.user.while_down", "gw.room.r2"]);
    c.barrier(&nc).await;
    assert!(
        c.inbound.is_empty(),
        "nothing for gw.room.r or the dropped publish"
    );
}

/// 4a. Token auth.
#[tokio::test(flavor = "current_thread")]
async fn auth_token() {
    let server = NatsServer::start(&["--auth", "s3cret"]);
    let c = start_client(spec(server.url(), Auth::Token("s3cret".into())));
    c.connected().await;
    let nc = async_nats::ConnectOptions::with_token("s3cret".into())
        .connect(server.url())
        .await
        .expect("async-nats");
    c.interest.sub("gw.user.t", None);
    c.barrier(&nc).await;
    nc.publish("gw.user.t", "t".into()).await.expect("pub");
    assert_eq!(c.recv().await.subject, "gw.user.t");
}

/// 4b. A wrong token: Disconnected with the server's reason, never Connected.
#[tokio::test(flavor = "current_thread")]
async fn auth_wrong_token_is_reported_and_never_connects() {
    let server = NatsServer::start(&["--auth", "s3cret"]);
    let c = start_client(spec(server.url(), Auth::Token("wrong".into())));
    let seen = c
        .wait_status(
            |s| matches!(s, Status::Disconnected(why) if why.contains("Authorization Violation")),
        )
        .await;
    assert!(!seen.contains(&Status::Connected), "{seen:?}");
    // Several retries happen in this time (backoff capped at 100 ms).
    tokio::time::sleep(Duration::from_millis(400)).await;
    while let Ok(s) = c.status.try_recv() {
        assert_ne!(s, Status::Connected);
    }
    assert!(!c.interest.is_connected());
}

/// 4c. User and password, from the spec and from the URL.
#[tokio::test(flavor = "current_thread")]
async fn auth_user_password() {
    let server = NatsServer::start(&["--user", "u", "--pass", "p w"]);
    let c = start_client(spec(
        server.url(),
        Auth::UserPassword("u".into(), "p w".into()),
    ));
    c.connected().await;
    let nc = async_nats::ConnectOptions::with_user_and_password("u".into(), "p w".into())
        .connect(server.url())
        .await
        .expect("async-nats");
    c.interest.sub("gw.user.up", None);
    c.barrier(&nc).await;
    nc.publish("gw.user.up", "x".into()).await.expect("pub");
    assert_eq!(c.recv().await.subject, "gw.user.up");

    // Credentials in the URL.
    let server2 = NatsServer::start(&["--user", "u", "--pass", "pw"]);
    let c3 = start_client(spec(
        format!("nats://u:pw@127.0.0.1:{}", server2.port),
        Auth::None,
    ));
    c3.connected().await;
}

fn random_seed() -> [u8; 32] {
    use ring::rand::SecureRandom as _;
    let mut seed = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut seed)
        .expect("random");
    seed
}

fn public_of(kind: u8, seed: &[u8; 32]) -> String {
    use ring::signature::KeyPair as _;
    let kp = ring::signature::Ed25519KeyPair::from_seed_unchecked(seed).expect("seed");
    nkey_encode_public(kind, kp.public_key().as_ref())
}

/// 4d. NKey: the server knows only the public key derived by our encoder;
///     async-nats (the nkeys crate) accepting our seed text cross-checks the
///     seed encoding.
#[tokio::test(flavor = "current_thread")]
async fn auth_nkey() {
    let raw = random_seed();
    let seed = nkey_encode_seed(NKEY_PREFIX_USER, &raw);
    let public = public_of(NKEY_PREFIX_USER, &raw);
    assert!(seed.starts_with("SU") && seed.len() == 58, "{seed}");
    assert!(public.starts_with('U') && public.len() == 56, "{public}");
    let dir = TempDir::new();
    let conf = dir.file(
        "nkey.conf",
        &format!("authorization {{ users = [ {{ nkey: \"{public}\" }} ] }}\n"),
    );
    let server = NatsServer::start(&["-c", &conf]);

    let c = start_client(spec(server.url(), Auth::NKeySeed(format!("{seed}\n"))));
    c.connected().await;
    let nc = async_nats::ConnectOptions::with_nkey(seed.clone())
        .connect(server.url())
        .await
        .expect("async-nats with our seed text");
    c.interest.sub("gw.user.nk", None);
    c.barrier(&nc).await;
    nc.publish("gw.user.nk", "n".into()).await.expect("pub");
    assert_eq!(c.recv().await.subject, "gw.user.nk");

    // Another user's seed is refused.
    let other = nkey_encode_seed(NKEY_PREFIX_USER, &random_seed());
    let bad = start_client(spec(server.url(), Auth::NKeySeed(other)));
    bad.wait_status(
        |s| matches!(s, Status::Disconnected(why) if why.contains("Authorization Violation")),
    )
    .await;
}

fn jwt(issuer_seed: &[u8; 32], claims: serde_json::Value) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = b64.encode(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let body = b64.encode(claims.to_string());
    let signing_input = format!("{header}.{body}");
    let kp = ring::signature::Ed25519KeyPair::from_seed_unchecked(issuer_seed).expect("seed");
    let sig = b64.encode(kp.sign(signing_input.as_bytes()).as_ref());
    format!("{signing_input}.{sig}")
}

/// 4e. Creds (operator mode): a user JWT signed by an account signed by an
///     operator, written as an nsc .creds file and read by `read_creds`.
#[tokio::test(flavor = "current_thread")]
async fn auth_creds_jwt() {
    use serde_json::json;
    const OPERATOR: u8 = 14 << 3;
    const ACCOUNT: u8 = 0;
    let (op_seed, acc_seed, user_seed) = (random_seed(), random_seed(), random_seed());
    let (op_pub, acc_pub, user_pub) = (
        public_of(OPERATOR, &op_seed),
        public_of(ACCOUNT, &acc_seed),
        public_of(NKEY_PREFIX_USER, &user_seed),
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let op_jwt = jwt(
        &op_seed,
        json!({"jti": format!("OPJTI{}", unique()), "iat": now, "iss": op_pub, "sub": op_pub,
               "name": "op", "nats": {"type": "operator", "version": 2}}),
    );
    let acc_jwt = jwt(
        &op_seed,
        json!({"jti": format!("ACCJTI{}", unique()), "iat": now, "iss": op_pub, "sub": acc_pub,
               "name": "acc", "nats": {"type": "account", "version": 2,
               "limits": {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
                          "wildcards": true, "conn": -1, "leaf": -1}}}),
    );
    let user_jwt = jwt(
        &acc_seed,
        json!({"jti": format!("USRJTI{}", unique()), "iat": now, "iss": acc_pub, "sub": user_pub,
               "name": "user", "nats": {"type": "user", "version": 2, "pub": {}, "sub": {},
               "subs": -1, "data": -1, "payload": -1}}),
    );
    let dir = TempDir::new();
    let conf = dir.file(
        "op.conf",
        &format!(
            "operator: \"{op_jwt}\"\nresolver: MEMORY\nresolver_preload: {{\n  {acc_pub}: \"{acc_jwt}\"\n}}\n"
        ),
    );
    let user_seed_text = nkey_encode_seed(NKEY_PREFIX_USER, &user_seed);
    let creds = format!(
        "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
         ************************* IMPORTANT *************************\n\
         NKEY Seed printed below can be used to sign and prove identity.\n\
         NKEYs are sensitive and should be treated as secrets.\n\n\
         -----BEGIN USER NKEY SEED-----\n{user_seed_text}\n------END USER NKEY SEED------\n\n\
         *************************************************************\n"
    );
    let (jwt_read, seed_read) = read_creds(&creds).expect("creds parse");
    assert_eq!(
        (jwt_read.as_str(), seed_read.as_str()),
        (user_jwt.as_str(), user_seed_text.as_str())
    );

    let server = NatsServer::start(&["-c", &conf]);
    let c = start_client(spec(
        server.url(),
        Auth::Creds {
            jwt: jwt_read,
            seed: seed_read,
        },
    ));
    c.connected().await;
    let nc = async_nats::ConnectOptions::with_credentials(&creds)
        .expect("async-nats reads our creds")
        .connect(server.url())
        .await
        .expect("async-nats with creds");
    c.interest.sub("gw.user.jwt", None);
    c.barrier(&nc).await;
    nc.publish("gw.user.jwt", "j".into()).await.expect("pub");
    assert_eq!(c.recv().await.subject, "gw.user.jwt");
}

/// 5. 10,000 subscriptions: the server sees them all; memory estimate.
#[tokio::test(flavor = "current_thread")]
async fn ten_thousand_subscriptions() {
    const N: usize = 10_000;
    let server = NatsServer::start_with_monitor(&[], true);
    let sp = spec(server.url(), Auth::None);
    let name = sp.name.clone();
    let c = start_client(sp);
    c.connected().await;
    let nc = async_nats::connect(server.url()).await.expect("async-nats");

    let started = Instant::now();
    for i in 0..N {
        c.interest
            .sub(&format!("gw.user.{}", 100_000_000 + i), None);
    }
    c.barrier(&nc).await;
    let took = started.elapsed();
    assert_eq!(c.interest.subscriptions(), N);

    let server_subs = |server: &NatsServer| {
        let connz = server.monitor("/connz?subs=1");
        let conns = connz["connections"].as_array().cloned().unwrap_or_default();
        let ours = conns
            .iter()
            .find(|c| c["name"] == name.as_str())
            .expect("our connection in /connz");
        (
            ours["subscriptions"].as_u64().unwrap_or(0) as usize,
            ours["subscriptions_list"].as_array().map_or(0, |l| l.len()),
        )
    };
    assert_eq!(server_subs(&server), (N, N));

    let bytes = c.interest.approx_subscription_bytes();
    let per_sub = bytes as f64 / N as f64;
    println!(
        "{N} subscriptions (subjects like gw.user.100000000, 17 bytes): ~{bytes} bytes in the table, \
         ~{per_sub:.0} bytes/subscription; subscribed and acknowledged in {took:?}"
    );
    assert!(per_sub < 150.0, "{per_sub} bytes per subscription");

    // A message reaches one of them.
    nc.publish("gw.user.100009999", "last".into())
        .await
        .expect("pub");
    assert_eq!(c.recv().await.subject, "gw.user.100009999");

    // Unsubscribe half; the server agrees.
    for i in 0..N / 2 {
        c.interest.unsub(&format!("gw.user.{}", 100_000_000 + i));
    }
    c.barrier(&nc).await;
    assert_eq!(c.interest.subscriptions(), N / 2);
    assert_eq!(server_subs(&server), (N / 2, N / 2));
}

/// TLS with a private CA (openssl makes the certificates); and TLS required
/// against a server without TLS fails with a clear reason.
#[tokio::test(flavor = "current_thread")]
async fn tls_with_private_ca() {
    let dir = TempDir::new();
    let d = dir.0.to_string_lossy().into_owned();
    dir.file(
        "ext.cnf",
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n",
    );
    let script = format!(
        "set -e; cd {d}; \
         openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=gw-test-ca \
           -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign; \
         openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout server.key -out server.csr -subj /CN=localhost; \
         openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 -extfile ext.cnf"
    );
    let ok = Command::new("sh")
        .args(["-c", &script])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        eprintln!("openssl unavailable or failed; skipping the TLS test");
        return;
    }
    let cert = format!("{d}/server.pem");
    let key = format!("{d}/server.key");
    let server = NatsServer::start(&["--tls", "--tlscert", &cert, "--tlskey", &key]);

    let mut sp = spec(format!("tls://127.0.0.1:{}", server.port), Auth::None);
    sp.tls_ca_file = format!("{d}/ca.pem");
    let c = start_client(sp);
    c.connected().await;
    // Echo: our own publish comes back on our subscription.
    c.interest.sub("gw.user.tls", None);
    c.interest
        .publish("gw.user.tls", &[("H", "v")], Bytes::from_static(b"secure"));
    let m = c.recv().await;
    assert_eq!(
        (m.subject.as_str(), &m.payload[..]),
        ("gw.user.tls", &b"secure"[..])
    );
    assert_eq!(header(&m, "H"), Some("v"));

    // nats:// URL: TLS is still used because INFO says tls_required.
    let mut sp = spec(server.url(), Auth::None);
    sp.tls_ca_file = format!("{d}/ca.pem");
    start_client(sp).connected().await;

    // Without our CA (system roots) the certificate is refused.
    let bad = start_client(spec(format!("tls://127.0.0.1:{}", server.port), Auth::None));
    bad.wait_status(|s| {
        matches!(s, Status::Disconnected(why) if why.contains("TLS") || why.contains("certificate"))
    })
        .await;

    // TLS required, server without TLS.
    let plain = NatsServer::start(&[]);
    let mut sp = spec(plain.url(), Auth::None);
    sp.tls_required = true;
    let c = start_client(sp);
    c.wait_status(|s| matches!(s, Status::Disconnected(why) if why.contains("does not offer TLS")))
        .await;
}

/// close() ends the task: the server sees the connection go.
#[tokio::test(flavor = "current_thread")]
async fn close_ends_the_connection() {
    let server = NatsServer::start_with_monitor(&[], true);
    let sp = spec(server.url(), Auth::None);
    let name = sp.name.clone();
    let c = start_client(sp);
    c.connected().await;
    let count = |server: &NatsServer| {
        server.monitor("/connz")["connections"]
            .as_array()
            .map_or(0, |a| {
                a.iter().filter(|c| c["name"] == name.as_str()).count()
            })
    };
    assert_eq!(count(&server), 1);
    c.interest.close();
    let deadline = Instant::now() + WAIT;
    while count(&server) != 0 {
        assert!(
            Instant::now() < deadline,
            "connection still open after close()"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The task is gone: the status sender was dropped.
    let end =
        tokio::time::timeout(WAIT, async { while c.status.recv_async().await.is_ok() {} }).await;
    assert!(end.is_ok(), "task still running after close()");
}

/// The server's PINGs are answered (server ping interval 100 ms, 1 missed allowed).
#[tokio::test(flavor = "current_thread")]
async fn answers_server_pings() {
    let dir = TempDir::new();
    let conf = dir.file("ping.conf", "ping_interval: \"100ms\"\nping_max: 1\n");
    let server = NatsServer::start(&["-c", &conf]);
    let c = start_client(spec(server.url(), Auth::None));
    c.connected().await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(c.interest.is_connected());
    assert!(
        c.status.is_empty(),
        "no reconnect: {:?}",
        c.status.try_recv()
    );
}

/// Backpressure: a full inbound channel stops reading; nothing is lost and
/// order is kept.
#[tokio::test(flavor = "current_thread")]
async fn slow_consumer_loses_nothing() {
    const N: usize = 2_000;
    let server = NatsServer::start(&[]);
    let (itx, irx) = flume::bounded(2);
    let (stx, srx) = flume::bounded(64);
    let c = Client {
        interest: Interest::spawn(spec(server.url(), Auth::None), itx, stx),
        inbound: irx,
        status: srx,
    };
    c.connected().await;
    let nc = async_nats::connect(server.url()).await.expect("async-nats");
    c.interest.sub("gw.user.slow", None);
    c.barrier(&nc).await;
    for i in 0..N {
        nc.publish("gw.user.slow", i.to_string().into())
            .await
            .expect("pub");
    }
    nc.flush().await.expect("flush");
    tokio::time::sleep(Duration::from_millis(100)).await;
    for i in 0..N {
        let m = c.recv().await;
        assert_eq!(m.payload, Bytes::from(i.to_string()));
    }
    assert!(c.interest.is_connected());
}

/// A scripted fake server: each connection does the handshake (INFO, PONG
/// to CONNECT's PING and to the resubscription PING), then misbehaves.
async fn fake_server(listener: tokio::net::TcpListener, scripts: Vec<&'static [u8]>) {
    use tokio::io::AsyncBufReadExt as _;
    for script in scripts {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let (r, mut w) = stream.into_split();
        let mut lines = tokio::io::BufReader::new(r).lines();
        let info = b"INFO {\"server_id\":\"fake\",\"max_payload\":1024,\"headers\":true}\r\n";
        if w.write_all(info).await.is_err() {
            continue;
        }
        let mut pongs = 0;
        while pongs < 2 {
            match lines.next_line().await {
                Ok(Some(l)) if l == "PING" => {
                    pongs += 1;
                    let _ = w.write_all(b"PONG\r\n").await;
                }
                Ok(Some(_)) => {}
                _ => break,
            }
        }
        let _ = w.write_all(script).await;
        // Keep reading (never answering PINGs) until the client hangs up.
        while let Ok(Some(_)) = lines.next_line().await {}
    }
}

/// Protocol errors and missing PONGs drop the connection (no panic), and
/// the client reconnects.
#[tokio::test(flavor = "current_thread")]
async fn misbehaving_server_causes_reconnect() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(fake_server(
        listener,
        vec![
            b"MSG a 1 99999\r\n",  // above max_payload
            b"MSG a 1 3\r\nabcXY", // no CRLF after the payload
            b"BOGUS\r\n",          // unknown operation
            b"",                   // silent: our PINGs go unanswered
        ],
    ));
    let mut sp = spec(format!("127.0.0.1:{port}"), Auth::None);
    sp.ping_interval = Duration::from_millis(50);
    sp.reconnect_delay_max = Duration::from_millis(20);
    let c = start_client(sp);
    for expect in [
        "max_payload",
        "not followed by CRLF",
        "unexpected from server",
        "no PONG",
    ] {
        c.connected().await;
        let seen = c
            .wait_status(|s| matches!(s, Status::Disconnected(_)))
            .await;
        match seen.last() {
            Some(Status::Disconnected(why)) => assert!(why.contains(expect), "{why}"),
            other => panic!("{other:?}"),
        }
    }
}

#[derive(Clone, Default)]
struct LogBuf(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogBuf {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }
}

/// Repeated identical failures are logged once (per 10 s), with the URL,
/// the reason and a hint; statuses are not repeated either.
#[tokio::test(flavor = "current_thread")]
async fn repeated_failures_are_logged_once() {
    let logs = LogBuf::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let port = free_port(); // nothing listens there
    let mut sp = spec(format!("nats://127.0.0.1:{port}"), Auth::None);
    sp.reconnect_delay_max = Duration::from_millis(10);
    let c = start_client(sp);
    c.wait_status(|s| matches!(s, Status::Disconnected(_)))
        .await;
    // Dozens of attempts at 10 ms.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let text = logs.text();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("cannot connect to NATS"))
        .collect();
    assert_eq!(lines.len(), 1, "{text}");
    assert!(
        lines[0].contains(&format!("127.0.0.1:{port}")),
        "{}",
        lines[0]
    );
    assert!(lines[0].contains("is nats-server running"), "{}", lines[0]);
    assert!(
        c.status.is_empty(),
        "one Disconnected status for one reason"
    );
}

#[test]
fn interest_is_send_sync() {
    fn check<T: Send + Sync + Clone>() {}
    check::<Interest>();
}

// ---------------------------------------------------------------------------
// Unit tests
// ---------------------------------------------------------------------------

fn parse_all(input: &[u8], max: usize) -> Result<Vec<Op>, String> {
    let mut ops = Vec::new();
    let mut at = 0;
    while let Some((op, used)) = parse_op(&input[at..], max)? {
        ops.push(op);
        at += used;
    }
    Ok(ops)
}

#[test]
fn parses_msg_hmsg_and_control_ops() {
    let input = b"MSG a.b 1 5\r\nhello\r\nMSG a.b 2 _INBOX.x 0\r\n\r\n\
HMSG c 3 r 20 22\r\nNATS/1.0\r\nK: v:w\r\n\r\nhi\r\nPING\r\nPONG\r\n+OK\r\n-ERR 'Permissions Violation'\r\nINFO {\"max_payload\":5}\r\n";
    let ops = parse_all(input, 1024).expect("parse");
    assert_eq!(ops.len(), 8, "{ops:?}");
    match &ops[0] {
        Op::Msg(m) => {
            assert_eq!((m.subject.as_str(), m.reply.as_deref()), ("a.b", None));
            assert_eq!(&m.payload[..], b"hello");
        }
        o => panic!("{o:?}"),
    }
    match &ops[1] {
        Op::Msg(m) => {
            assert_eq!(m.reply.as_deref(), Some("_INBOX.x"));
            assert!(m.payload.is_empty());
        }
        o => panic!("{o:?}"),
    }
    match &ops[2] {
        Op::Msg(m) => {
            assert_eq!(m.subject, "c");
            assert_eq!(m.reply.as_deref(), Some("r"));
            assert_eq!(m.headers, vec![("K".to_string(), "v:w".to_string())]);
            assert_eq!(&m.payload[..], b"hi");
        }
        o => panic!("{o:?}"),
    }
    assert!(matches!(ops[3], Op::Ping));
    assert!(matches!(ops[4], Op::Pong));
    assert!(matches!(ops[5], Op::Ok));
    assert!(matches!(&ops[6], Op::Err(t) if t == "Permissions Violation"));
    assert!(
        matches!(&ops[7], Op::Info(j) if ServerInfo::parse(j).expect("info").max_payload() == 5)
    );
}

#[test]
fn partial_input_waits_for_more() {
    let full = b"HMSG c 3 r 20 22\r\nNATS/1.0\r\nK: v:w\r\n\r\nhi\r\n";
    for cut in 0..full.len() {
        assert!(
            matches!(parse_op(&full[..cut], 1024), Ok(None)),
            "cut at {cut}"
        );
    }
    assert!(matches!(parse_op(full, 1024), Ok(Some((_, n))) if n == full.len()));
}

#[test]
fn malformed_input_is_an_error_not_a_panic() {
    let bad: &[&[u8]] = &[
        b"MSG a 1\r\n",
        b"MSG a 1 x\r\n",
        b"MSG a 1 -1\r\n",
        b"MSG a 1 2 3 4 5 6\r\n",
        b"MSG a 1 99999999999999999999\r\n",
        b"MSG a 1 3\r\nabcXY",
        b"HMSG a 1 5 3\r\n",
        b"HMSG a 1 3 5\r\nabc\r\n\r\n",
        b"HMSG a 1 2000 2000\r\n",
        b"MSG a 1 2000\r\n",
        b"WHAT\r\n",
        b"\r\n",
    ];
    for b in bad {
        assert!(
            parse_op(b, 1024).is_err(),
            "{:?}",
            String::from_utf8_lossy(b)
        );
    }
    // A control line that never ends.
    assert!(parse_op(&vec![b'x'; MAX_CONTROL_LINE + 1], 1024).is_err());
    // Random bytes: never panic.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let alphabet = b"MSGHPINOK-ERF \r\n0123456789abc";
    for _ in 0..20_000 {
        let len = (x % 64) as usize;
        let mut buf = b"MSG ".to_vec();
        if x & 1 == 0 {
            buf = b"HMSG ".to_vec();
        }
        for _ in 0..len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            buf.push(alphabet[(x % alphabet.len() as u64) as usize]);
        }
        let _ = parse_all(&buf, 64);
    }
}

#[test]
fn base32_and_crc16() {
    // RFC 4648 test vectors (no padding).
    for (raw, enc) in [
        ("", ""),
        ("f", "MY"),
        ("fo", "MZXQ"),
        ("foo", "MZXW6"),
        ("foob", "MZXW6YQ"),
        ("fooba", "MZXW6YTB"),
        ("foobar", "MZXW6YTBOI"),
    ] {
        assert_eq!(base32_encode(raw.as_bytes()), enc);
        assert_eq!(base32_decode(enc).as_deref(), Some(raw.as_bytes()));
    }
    assert_eq!(base32_decode("abc"), None);
    // CRC-16/XMODEM check value.
    assert_eq!(crc16(b"123456789"), 0x31c3);
}

#[test]
fn nkey_seed_round_trip_and_errors() {
    let raw = random_seed();
    let seed = nkey_encode_seed(NKEY_PREFIX_USER, &raw);
    assert!(seed.starts_with("SU"));
    assert_eq!(nkey_decode_seed(&seed), Ok((NKEY_PREFIX_USER, raw)));
    let (public, sig) = nkey_sign(&seed, b"nonce").expect("sign");
    assert_eq!(public, public_of(NKEY_PREFIX_USER, &raw));
    // The signature verifies with the public key inside the NKey.
    let pk = base32_decode(&public).expect("b32");
    let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(sig)
        .expect("b64");
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &pk[1..33])
        .verify(b"nonce", &sig)
        .expect("signature verifies");
    // A typo breaks the checksum.
    let mut typo = seed.clone().into_bytes();
    typo[10] = if typo[10] == b'A' { b'B' } else { b'A' };
    let typo = String::from_utf8(typo).expect("utf8");
    assert!(nkey_decode_seed(&typo).is_err());
    assert!(nkey_decode_seed("SUXYZ").is_err());
    assert!(nkey_decode_seed("not base32!").is_err());
    // A public key is not a seed.
    assert!(nkey_decode_seed(&public).is_err());
}

#[test]
fn creds_parsing() {
    let creds = "-----BEGIN NATS USER JWT-----\neyJa.eyJb.sig\n------END NATS USER JWT------\n\n\
                 ****\n-----BEGIN USER NKEY SEED-----\nSUAXYZ\n------END USER NKEY SEED------\n";
    assert_eq!(
        read_creds(creds),
        Ok(("eyJa.eyJb.sig".to_string(), "SUAXYZ".to_string()))
    );
    // CRLF line ends and indentation.
    let crlf = creds.replace('\n', "\r\n  ");
    assert_eq!(
        read_creds(&crlf),
        Ok(("eyJa.eyJb.sig".to_string(), "SUAXYZ".to_string()))
    );
    assert!(read_creds("").is_err());
    assert!(read_creds(
        "-----BEGIN NATS USER JWT-----\neyJa.eyJb.sig\n------END NATS USER JWT------\n"
    )
    .is_err());
    assert!(read_creds("-----BEGIN NATS USER JWT-----\nnotajwt\n------END NATS USER JWT------\n-----BEGIN USER NKEY SEED-----\nSUAXYZ\n------END USER NKEY SEED------\n").is_err());
}

#[test]
fn url_parsing() {
    let u = parse_url("nats://h:1234").expect("url");
    assert_eq!((u.host.as_str(), u.port, u.tls), ("h", 1234, false));
    let u = parse_url("tls://h").expect("url");
    assert_eq!(
        (u.port, u.tls, u.shown.as_str()),
        (4222, true, "tls://h:4222")
    );
    let u = parse_url("10.0.0.1:5000").expect("url");
    assert_eq!((u.host.as_str(), u.port), ("10.0.0.1", 5000));
    let u = parse_url("nats://[::1]:4223").expect("url");
    assert_eq!(
        (u.host.as_str(), u.port, u.shown.as_str()),
        ("::1", 4223, "nats://[::1]:4223")
    );
    let u = parse_url("nats://user:pw@h:1/").expect("url");
    assert_eq!(u.auth, Auth::UserPassword("user".into(), "pw".into()));
    assert_eq!(u.shown, "nats://h:1", "no credentials in logs");
    let u = parse_url("nats://tok@h").expect("url");
    assert_eq!(u.auth, Auth::Token("tok".into()));
    assert!(parse_url("ws://h:1").is_err());
    assert!(parse_url("nats://h:99999").is_err());
    assert!(parse_url("nats://:1").is_err());
    assert!(parse_url("nats://[::1").is_err());
}

#[test]
fn header_encoding_and_validation() {
    let h = encode_headers(&[("A", "1"), ("B-c", "x y")]).expect("ok");
    assert_eq!(&h[..], b"NATS/1.0\r\nA: 1\r\nB-c: x y\r\n\r\n");
    assert_eq!(
        parse_headers(&h).expect("parse"),
        vec![("A".into(), "1".into()), ("B-c".into(), "x y".into())]
    );
    assert!(encode_headers(&[("A:B", "1")]).is_err());
    assert!(encode_headers(&[("A", "1\r\nX: 2")]).is_err());
    assert!(encode_headers(&[("", "1")]).is_err());
}

#[test]
fn auth_debug_redacts_secrets() {
    let s = format!(
        "{:?}",
        ConnectSpec {
            auth: Auth::UserPassword("me".into(), "hunter2".into()),
            ..ConnectSpec::default()
        }
    );
    assert!(!s.contains("hunter2"), "{s}");
    assert!(!format!("{:?}", Auth::Token("tok123".into())).contains("tok123"));
}
