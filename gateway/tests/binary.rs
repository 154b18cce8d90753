//! The gateway binary as operators run it: a second process on a taken
//! port refuses to start (unless the sharing is intended), and the logs
//! (JSON on request, no colours off a terminal, NATS trouble said once,
//! with what to do, not once per attempt).

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, Client, WAIT};

/// A child process killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(node: &str, port: u16, admin: u16) -> Proc {
    Proc(
        Command::new(env!("CARGO_BIN_EXE_gateway"))
            .args(["--demo", "--cores", "1", "--node-id", node])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("gateway binary starts"),
    )
}

/// A second gateway on a taken port refuses to start and says why, unless
/// it is told the sharing is intended (`--listen-shared`, as above); the
/// first one keeps serving.
#[test]
fn a_second_gateway_on_a_taken_port_refuses_to_start() {
    let (port, admin_port) = (free_port(), free_port());
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let _first = spawn("gw-first", port, admin_port);
    let t = Instant::now();
    while std::net::TcpStream::connect(admin).is_err() {
        assert!(t.elapsed() < WAIT, "the gateway did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let second = |client_port: u16, admin_port: u16| {
        Command::new(env!("CARGO_BIN_EXE_gateway"))
            .args(["--demo", "--cores", "1", "--node-id", "gw-second"])
            .args(["--listen", &format!("127.0.0.1:{client_port}")])
            .args(["--admin-listen", &format!("127.0.0.1:{admin_port}")])
            .output()
            .expect("gateway binary runs")
    };
    for (what, out) in [
        ("client port", second(port, free_port())),
        ("admin port", second(free_port(), admin_port)),
    ] {
        assert!(!out.status.success(), "{what}: started anyway");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("another process listens") && err.contains("--listen-shared"),
            "{what}: {err}"
        );
    }
    // The first one was not disturbed.
    let (mut c, ok) = Client::login(addr, "still-first");
    assert_eq!(ok.node_id, "gw-first");
    assert_eq!(c.call(1, "echo", "x").status, 0);
}

/// A port held by a connection (here one in TIME_WAIT whose local port it
/// is), not a listener: the gateway cannot bind it, and says what holds
/// it and how to keep its ports out of the ephemeral range.
#[test]
fn a_port_held_by_a_connection_is_named_as_such() {
    let target = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = free_port();
    // A client socket with `port` as its local port, closed first by the
    // client: its side stays in TIME_WAIT, holding the port.
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::from(([127, 0, 0, 1], port)).into())
        .unwrap();
    s.connect(&target.local_addr().unwrap().into()).unwrap();
    let (server_side, _) = target.accept().unwrap();
    drop(s);
    std::thread::sleep(Duration::from_millis(50));
    drop(server_side);
    let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["--demo", "--cores", "1", "--node-id", "gw-tw"])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--admin-listen", &format!("127.0.0.1:{}", free_port())])
        .output()
        .expect("gateway binary runs");
    assert!(
        !out.status.success(),
        "started on a port a connection holds"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("held by a connection") && err.contains("ip_local_reserved_ports"),
        "{err}"
    );
}

/// With NATS unreachable, the log says so once (per core, per outage) and
/// says what to check, instead of a line per reconnection attempt; in JSON
/// when asked; never with ANSI colours when the output is not a terminal.
#[test]
fn logs_are_json_on_request_plain_off_a_terminal_and_not_a_flood() {
    let dead_nats = format!("nats://127.0.0.1:{}", free_port());
    let run = |format: &str| {
        let mut child = Proc(
            Command::new(env!("CARGO_BIN_EXE_gateway"))
                .args(["--demo", "--cores", "2", "--log-format", format])
                .args(["--listen", "127.0.0.1:0", "--admin-listen", ""])
                .args([
                    "--nats-urls",
                    &dead_nats,
                    "--nats-reconnect-delay-max-ms",
                    "200",
                ])
                .env_remove("RUST_LOG")
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("gateway binary starts"),
        );
        let out = child.0.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let t = Instant::now();
        let mut lines = Vec::new();
        while t.elapsed() < Duration::from_secs(8) {
            if let Ok(l) = rx.recv_timeout(Duration::from_millis(100)) {
                lines.push(l);
            }
        }
        drop(child);
        lines
    };
    let json = run("json");
    for l in &json {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{l}");
    }
    let lost = json
        .iter()
        .filter(|l| l.contains("NATS connection lost"))
        .count();
    assert!(lost >= 1, "the documented line appears: {json:#?}");
    // Two cores, each with two NATS connections, 8 s of failed attempts
    // every 200 ms: a line per attempt would be hundreds.
    assert!(json.len() <= 40, "{} lines in 8 s: {json:#?}", json.len());
    let text = run("text");
    assert!(!text.is_empty());
    assert!(
        text.iter().all(|l| !l.contains('\u{1b}')),
        "no ANSI escapes off a terminal: {text:?}"
    );
}
