//! The demo page in headless Chromium, driven over the DevTools protocol:
//! two browser sessions (separate browser contexts, so separate storage)
//! sign in through the demo token endpoint, join a room and talk to each
//! other through `clients/js/gateway-client.js`, over ws:// and over wss://
//! (the gateway's own TLS 1.3 record layer, with a real browser).
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

use common::{http_get, test_config, Ev, WAIT};
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
        let mut js = String::new();
        for (id, text) in fields {
            js.push_str(&format!(
                "document.getElementById({}).value = {};",
                json!(id),
                json!(text)
            ));
        }
        js.push_str(&format!(
            "document.getElementById({}).click(); true",
            json!(button)
        ));
        self.wait(
            page,
            &format!("button {button} enabled"),
            &format!("!document.getElementById({}).disabled", json!(button)),
        );
        self.eval(page, &js);
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

fn two_browsers_chat(tls: bool) {
    let Some(path) = chromium_path() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "Chromium is missing: apt-get install chromium (or set CHROMIUM=/path)"
        );
        eprintln!("skipped: Chromium is missing (apt-get install chromium, or set CHROMIUM=/path)");
        return;
    };
    let mut cfg = test_config();
    cfg.tls.self_signed = tls;
    let (gw, rec) = common::start(cfg);
    let scheme = if tls { "https" } else { "http" };
    let url = format!("{scheme}://localhost:{}/", gw.local_addr.port());

    let mut b = Browser::launch(&path);
    let alice = b.open(&url);
    let bob = b.open(&url);
    for (page, user) in [(&alice, "alice"), (&bob, "bob")] {
        b.wait(
            page,
            "the page's script",
            "document.getElementById('signin')?.onclick != null",
        );
        b.fill_and_click(page, &[("user", user)], "signin");
        b.wait(
            page,
            "sign-in",
            &format!("document.getElementById('status').textContent.startsWith('signed in as {user} (conn ')"),
        );
        b.fill_and_click(page, &[("room", "lobby")], "join");
        b.wait(page, "the room join", &log_has("system", "joined lobby"));
    }

    // A room message reaches both members, the sender included.
    b.fill_and_click(&alice, &[("room-text", "hello from alice")], "send-room");
    for page in [&alice, &bob] {
        b.wait(
            page,
            "the room message",
            &log_has("room.msg", "[lobby] alice: hello from alice"),
        );
    }
    // A direct message is an ack-required push; the library acks it.
    b.fill_and_click(
        &bob,
        &[("to", "alice"), ("text", "hi alice, bob here")],
        "send-user",
    );
    b.wait(
        &alice,
        "the direct message",
        &log_has("chat.msg", "bob → you: hi alice, bob here"),
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
    common::eventually("the push acked by the browser", || {
        counter("pushes_acked") == 1
    });
    if tls {
        // The browser's TLS 1.3 sessions ran on the gateway's record layer.
        assert!(
            counter("tls_handovers") >= 2,
            "{}",
            counter("tls_handovers")
        );
    }
    // Connection ids above 2^53 would print wrongly as Numbers; the page
    // prints the BigInt the library decoded, which must match the gateway's.
    let status = b.eval(&alice, "document.getElementById('status').textContent");
    assert!(status.as_str().unwrap().contains("(conn "), "{status}");

    // Signing out closes cleanly: the gateway sees CLIENT_CLOSED, the page
    // shows the typed reason.
    b.fill_and_click(&alice, &[], "signout");
    b.wait(
        &alice,
        "sign-out",
        "document.getElementById('status').textContent === 'signed out (CLIENT_CLOSED)'",
    );
    rec.wait_for("alice offline", |evs| {
        evs.iter().any(|e| {
            matches!(e, Ev::Offline { user, reason } if user == "alice" && *reason == CloseReason::ClientClosed)
        })
    });
    // Undelivered pushes: none (everything reached a browser and was acked).
    assert!(
        !rec.events()
            .iter()
            .any(|e| matches!(e, Ev::Undelivered { .. })),
        "{:?}",
        rec.events()
    );
    drop(b);
    gw.shutdown(false);
}

#[test]
fn two_browser_sessions_chat_over_websocket() {
    two_browsers_chat(false);
}

#[test]
fn two_browser_sessions_chat_over_tls_websocket() {
    two_browsers_chat(true);
}
