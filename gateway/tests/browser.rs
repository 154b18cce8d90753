//! The demo page in headless Chromium, driven over the DevTools protocol:
//! browser sessions (separate browser contexts, so separate storage) sign
//! in through the demo token endpoint, join a room and talk to each other
//! through `clients/js/gateway-client.js`, over ws:// and over wss:// (the
//! gateway's own TLS 1.3 record layer, with a real browser), on the
//! backend `gateway --demo` runs, and over NATS with the reference
//! `chat-backend`, which must answer the same. The page must show errors to the user
//! (a direct message to nobody, a room message before joining, a bad user
//! name, a kick with its message), send on Enter, show a sender's direct
//! messages on all of the sender's devices, and fit a 390 px wide phone.
//!
//! Needs Chromium (`apt-get install chromium`; `.ci/run` installs it). When
//! it is missing the test fails under CI=true and is skipped otherwise,
//! saying what to install.

mod common;

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::nats::{ChatBackend, NatsServer};
use common::{http_get, http_request, test_config, Ev, Recorder, WAIT};
use gateway::backend::embedded::DemoFactory;
use gateway::backend::{
    Backend, BackendFactory, BackendReply, LocalBoxFuture, SessionEvent, UpstreamRequest,
};
use gw_proto::CloseReason;
use serde_json::{json, Value};
use tungstenite::Message;

const BROWSERS: [&str; 3] = [
    "/usr/bin/chromium",
    "/usr/bin/chromium-browser",
    "/usr/bin/google-chrome",
];

fn chromium_path() -> Option<PathBuf> {
    std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .into_iter()
        .chain(BROWSERS.iter().map(PathBuf::from))
        .find(|p| p.exists())
}

/// A headless Chromium and a DevTools connection to it.
struct Browser {
    child: Child,
    cdp: tungstenite::WebSocket<TcpStream>,
    next_id: u64,
    profile: PathBuf,
}

impl Browser {
    fn launch(path: &PathBuf) -> Browser {
        static N: AtomicUsize = AtomicUsize::new(0);
        let profile = std::env::temp_dir().join(format!(
            "gw-chromium-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let mut child = Command::new(path)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                // The gateway's --tls-self-signed certificate.
                "--ignore-certificate-errors",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("chromium starts");
        // Chromium prints its DevTools address on stderr; keep draining
        // stderr afterwards so it never blocks on a full pipe.
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    let _ = tx.send(url.to_string());
                }
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("chromium prints its DevTools address");
        let hostport = url
            .trim_start_matches("ws://")
            .split('/')
            .next()
            .unwrap()
            .to_string();
        let sock = TcpStream::connect(&hostport).unwrap();
        sock.set_read_timeout(Some(WAIT)).unwrap();
        let (cdp, _) = tungstenite::client(url.as_str(), sock).expect("DevTools connection");
        Browser {
            child,
            cdp,
            next_id: 1,
            profile,
        }
    }

    /// One DevTools command; events that arrive meanwhile are skipped.
    fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = s.into();
        }
        self.cdp
            .send(Message::Text(msg.to_string().into()))
            .unwrap();
        loop {
            let m = self.cdp.read().expect("DevTools answers");
            let Message::Text(t) = m else { continue };
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    /// A new tab in its own browser context (its own cookies and storage).
    fn open(&mut self, url: &str) -> Page {
        let ctx =
            self.call(None, "Target.createBrowserContext", json!({}))["browserContextId"].clone();
        let target = self.call(
            None,
            "Target.createTarget",
            json!({"url": url, "browserContextId": ctx}),
        )["targetId"]
            .clone();
        let session = self.call(
            None,
            "Target.attachToTarget",
            json!({"targetId": target, "flatten": true}),
        )["sessionId"]
            .as_str()
            .unwrap()
            .to_string();
        Page { session }
    }

    /// Evaluates `expr` in the page; returns its value.
    fn eval(&mut self, page: &Page, expr: &str) -> Value {
        let r = self.call(
            Some(&page.session),
            "Runtime.evaluate",
            json!({"expression": expr, "awaitPromise": true, "returnByValue": true}),
        );
        assert!(r.get("exceptionDetails").is_none(), "{expr}: {r}");
        r["result"]["value"].clone()
    }

    /// Waits until `expr` is true in the page.
    fn wait(&mut self, page: &Page, what: &str, expr: &str) {
        let t = Instant::now();
        while self.eval(page, expr) != Value::Bool(true) {
            let log = self.eval(page, "document.getElementById('log')?.innerText");
            let status = self.eval(page, "document.getElementById('status')?.innerText");
            assert!(
                t.elapsed() < WAIT,
                "timed out waiting for {what}; status {status}, log {log}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Types `text` into input `id` and clicks button `button`, as a person would.
    fn fill_and_click(&mut self, page: &Page, fields: &[(&str, &str)], button: &str) {
        self.wait(
            page,
            &format!("button {button} enabled"),
            &format!("!document.getElementById({}).disabled", json!(button)),
        );
        self.fill(page, fields);
        self.eval(
            page,
            &format!("document.getElementById({}).click(); true", json!(button)),
        );
    }

    fn fill(&mut self, page: &Page, fields: &[(&str, &str)]) {
        let mut js = String::new();
        for (id, text) in fields {
            js.push_str(&format!(
                "document.getElementById({}).value = {};",
                json!(id),
                json!(text)
            ));
        }
        js.push_str("true");
        self.eval(page, &js);
    }

    /// Fills the fields, focuses input `id` and presses Enter on the
    /// keyboard (real key events, so the browser submits the form).
    fn fill_and_press_enter(&mut self, page: &Page, fields: &[(&str, &str)], id: &str) {
        self.fill(page, fields);
        self.eval(
            page,
            &format!("document.getElementById({}).focus(); true", json!(id)),
        );
        for kind in ["keyDown", "keyUp"] {
            let mut key = json!({
                "type": kind, "key": "Enter", "code": "Enter",
                "windowsVirtualKeyCode": 13, "nativeVirtualKeyCode": 13,
            });
            if kind == "keyDown" {
                key["text"] = "\r".into();
            }
            self.call(Some(&page.session), "Input.dispatchKeyEvent", key);
        }
    }

    /// Opens the demo page and waits for its script.
    fn open_demo(&mut self, url: &str) -> Page {
        let page = self.open(url);
        self.wait(
            &page,
            "the page's script",
            "document.documentElement?.dataset.ready === 'true'",
        );
        page
    }

    fn sign_in(&mut self, page: &Page, user: &str) {
        self.fill_and_click(page, &[("user", user)], "signin");
        self.wait_signed_in(page, user);
    }

    fn wait_signed_in(&mut self, page: &Page, user: &str) {
        self.wait(
            page,
            "sign-in",
            &format!("document.getElementById('status').textContent.startsWith('signed in as {user} (conn ')"),
        );
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

struct Page {
    session: String,
}

fn log_has(kind: &str, text: &str) -> String {
    format!(
        "[...document.querySelectorAll('#log li[data-kind={}]')].some(li => li.textContent === {})",
        json!(kind),
        json!(text)
    )
}

/// An error shown to the user: in the log and in the alert above it.
fn error_shown(text: &str) -> String {
    format!(
        "[...document.querySelectorAll('#log li[data-kind=error]')].some(li => li.textContent.includes({t})) \
         && !document.getElementById('error').hidden \
         && document.getElementById('error').textContent.includes({t})",
        t = json!(text)
    )
}

/// Nothing on the page is wider than a 390 px phone.
const FITS_390: &str = "document.documentElement.scrollWidth <= 390 && \
    [...document.querySelectorAll('fieldset, input, button, #log, #status')] \
    .every(e => e.getBoundingClientRect().right <= 390)";

/// The backend `gateway --demo` runs, its session events recorded.
struct Recording {
    demo: DemoFactory,
    rec: Recorder,
}

struct RecordingBackend {
    inner: std::rc::Rc<dyn Backend>,
    rec: Recorder,
}

impl BackendFactory for Recording {
    fn for_core(&self, core: usize) -> std::rc::Rc<dyn Backend> {
        std::rc::Rc::new(RecordingBackend {
            inner: self.demo.for_core(core),
            rec: self.rec.clone(),
        })
    }
}

impl Backend for RecordingBackend {
    fn upstream(&self, req: UpstreamRequest) -> LocalBoxFuture<BackendReply> {
        self.inner.upstream(req)
    }
    fn event(&self, ev: SessionEvent) {
        self.rec.record(&ev);
        self.inner.event(ev);
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// ws://, the embedded demo backend.
    Ws,
    /// wss://, the embedded demo backend.
    Wss,
    /// ws://, backends over NATS: the reference `chat-backend`.
    Nats,
}

fn two_browsers_chat(mode: Mode) {
    let Some(path) = chromium_path() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "Chromium is missing: apt-get install chromium (or set CHROMIUM=/path)"
        );
        eprintln!("skipped: Chromium is missing (apt-get install chromium, or set CHROMIUM=/path)");
        return;
    };
    let tls = mode == Mode::Wss;
    let mut cfg = test_config();
    cfg.tls.self_signed = tls;
    let nats = (mode == Mode::Nats).then(|| {
        let server = NatsServer::start();
        let backend = ChatBackend::start(&server.url(), &[]);
        cfg.nats.urls = vec![server.url()];
        cfg.nats.reconnect_delay_max_ms = 100;
        (server, backend)
    });
    // Without NATS, the backend `gateway --demo` runs, its events recorded
    // (with NATS the gateway uses its NATS backends instead).
    let rec = Recorder::default();
    let backend = Recording {
        demo: DemoFactory::default(),
        rec: rec.clone(),
    };
    let gw = gateway::start(cfg, std::sync::Arc::new(backend), false).expect("gateway starts");
    if nats.is_some() {
        // The reference backend serves (and so follows sessions) before
        // anyone signs in.
        let (mut c, _) = common::Client::login(gw.local_addr, "probe");
        let t = Instant::now();
        while c.call(1, "echo", "").status != 0 {
            assert!(t.elapsed() < WAIT, "chat-backend never served");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let scheme = if tls { "https" } else { "http" };
    let url = format!("{scheme}://localhost:{}/", gw.local_addr.port());

    let mut b = Browser::launch(&path);
    let alice = b.open(&url);
    // Alice is on a 390 px wide phone.
    b.call(
        Some(&alice.session),
        "Emulation.setDeviceMetricsOverride",
        json!({"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": true}),
    );
    b.wait(
        &alice,
        "the page's script",
        "document.documentElement?.dataset.ready === 'true'",
    );
    let bob = b.open_demo(&url);
    let bob2 = b.open_demo(&url); // bob's second device

    // A user name the token endpoint refuses: the reason is shown, in words.
    b.fill_and_click(&alice, &[("user", "not a name")], "signin");
    b.wait(
        &alice,
        "the refused sign-in",
        &error_shown("Sign-in failed: user (and device, if given) must be 1 to 64 characters"),
    );
    b.sign_in(&alice, "alice");
    // Bob signs in with Enter.
    b.fill_and_press_enter(&bob, &[("user", "bob")], "user");
    b.wait_signed_in(&bob, "bob");
    b.sign_in(&bob2, "bob");

    // A room message before joining is refused, and the page says so.
    b.fill_and_click(
        &alice,
        &[("room", "lobby"), ("room-text", "too early")],
        "send-room",
    );
    b.wait(
        &alice,
        "the refused room message",
        &error_shown(
            "Message to lobby failed: you have not joined lobby; join it first (BAD_REQUEST).",
        ),
    );
    for page in [&alice, &bob] {
        b.fill_and_click(page, &[("room", "lobby")], "join");
        b.wait(page, "the room join", &log_has("system", "joined lobby"));
    }
    // Joined: the error is gone.
    b.wait(
        &alice,
        "the error cleared",
        "document.getElementById('error').hidden",
    );

    // A room message reaches both members, the sender included (Enter sends).
    b.fill_and_press_enter(&alice, &[("room-text", "hello from alice")], "room-text");
    for page in [&alice, &bob] {
        b.wait(
            page,
            "the room message",
            &log_has("room.msg", "[lobby] alice: hello from alice"),
        );
    }
    // A direct message is an ack-required push; the library acks it. The
    // sender sees it too, on the sending device (on OK) and on the other
    // (a copy from the backend). Enter in the message box sends.
    b.fill_and_press_enter(
        &bob,
        &[("to", "alice"), ("text", "hi alice, bob here")],
        "text",
    );
    b.wait(
        &alice,
        "the direct message",
        &log_has("chat.msg", "bob → you: hi alice, bob here"),
    );
    for page in [&bob, &bob2] {
        b.wait(
            page,
            "the sender's own direct message",
            &log_has("chat.msg", "you → alice: hi alice, bob here"),
        );
    }
    // A direct message to a user who is not online: an error, shown.
    b.fill_and_click(
        &alice,
        &[("to", "nobody"), ("text", "anyone?")],
        "send-user",
    );
    b.wait(
        &alice,
        "the refused direct message",
        &error_shown("Message to nobody failed: nobody is not online; the message was not delivered (BAD_REQUEST)."),
    );
    let counter = |name: &str| -> u64 {
        let (_, body) = http_get(gw.admin_addr.unwrap(), "/stats");
        let v: Value = serde_json::from_str(&body).unwrap();
        v["cores"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["counters"][name].as_u64().unwrap_or(0))
            .sum()
    };
    // Alice's ack; the sender's copy is not ack-required.
    common::eventually("the push acked by the browser", || {
        counter("pushes_acked") == 1
    });
    if tls {
        // The browser's TLS 1.3 sessions ran on the gateway's record layer.
        assert!(
            counter("tls_handovers") >= 3,
            "{}",
            counter("tls_handovers")
        );
    }
    // Connection ids above 2^53 would print wrongly as Numbers; the page
    // prints the BigInt the library decoded, which must match the gateway's.
    let status = b.eval(&alice, "document.getElementById('status').textContent");
    assert!(status.as_str().unwrap().contains("(conn "), "{status}");
    // The phone-sized page fits, with the log and errors on it.
    assert_eq!(
        b.eval(&alice, FITS_390),
        Value::Bool(true),
        "at 390 px: {}",
        b.eval(
            &alice,
            "JSON.stringify([document.documentElement.scrollWidth, \
             ...[...document.querySelectorAll('fieldset, input, button, #log, #status')] \
             .map(e => [e.id || e.tagName, Math.round(e.getBoundingClientRect().right)])])"
        )
    );
    // The icon is served, small.
    let icon = b.eval(
        &alice,
        "fetch('/favicon.ico').then(async r => [r.status, r.headers.get('content-type'), (await r.arrayBuffer()).byteLength])",
    );
    assert_eq!((&icon[0], &icon[1]), (&json!(200), &json!("image/svg+xml")));
    assert!(
        icon[2].as_u64().is_some_and(|n| n > 0 && n <= 512),
        "{icon}"
    );

    // Signing out closes cleanly: the gateway sees CLIENT_CLOSED, the page
    // shows the typed reason.
    b.fill_and_click(&alice, &[], "signout");
    b.wait(
        &alice,
        "sign-out",
        "document.getElementById('status').textContent === 'signed out (CLIENT_CLOSED)'",
    );
    if nats.is_none() {
        rec.wait_for("alice offline", |evs| {
            evs.iter().any(|e| {
                matches!(e, Ev::Offline { user, reason } if user == "alice" && *reason == CloseReason::ClientClosed)
            })
        });
    }

    // A kick: both of bob's pages say so with the kick's message, and
    // neither claims a reconnect that does not happen.
    let (status, _) = http_request(
        gw.admin_addr.unwrap(),
        "POST",
        "/kick?user=bob&message=bye%20now",
    );
    assert_eq!(status, 200);
    for page in [&bob, &bob2] {
        b.wait(
            page,
            "the kick",
            "document.getElementById('status').textContent === 'signed out (KICKED): bye now'",
        );
        b.wait(
            page,
            "the kick's message",
            &error_shown("You were signed out by the server: bye now"),
        );
        let log = b.eval(page, "document.getElementById('log').innerText");
        assert!(!log.as_str().unwrap().contains("reconnect"), "{log}");
        assert_eq!(
            b.eval(page, "document.getElementById('signin').disabled"),
            Value::Bool(false)
        );
    }
    // No Rust range syntax anywhere a person reads.
    for page in [&alice, &bob, &bob2] {
        assert_eq!(
            b.eval(page, "document.body.innerText.includes('..=')"),
            Value::Bool(false)
        );
    }
    // Undelivered pushes: none (everything reached a browser and was acked).
    assert_eq!(counter("undelivered"), 0);
    assert!(
        !rec.events()
            .iter()
            .any(|e| matches!(e, Ev::Undelivered { .. })),
        "{:?}",
        rec.events()
    );
    drop(b);
    gw.shutdown(false);
    drop(nats);
}

#[test]
fn two_browser_sessions_chat_over_websocket() {
    two_browsers_chat(Mode::Ws);
}

#[test]
fn two_browser_sessions_chat_over_tls_websocket() {
    two_browsers_chat(Mode::Wss);
}

#[test]
fn two_browser_sessions_chat_through_the_reference_nats_backend() {
    two_browsers_chat(Mode::Nats);
}
