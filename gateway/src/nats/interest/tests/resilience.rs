//! Against nats-server and a scripted fake server: reconnects, PINGs,
//! backpressure, protocol errors, failure logging.

use super::*;
use tokio::io::AsyncWriteExt as _;

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
    assert!(c.no_msgs(), "nothing for gw.room.r or the dropped publish");
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
        interest: Interest::spawn(
            spec(server.url(), Auth::None),
            crate::core::WakeTx::plain(itx),
            stx,
        ),
        inbound: irx,
        status: srx,
    };
    c.connected().await;
    let nc = async_nats::connect(server.url()).await.expect("async-nats");
    let t = c.interest.sub("gw.user.slow", None).expect("ticket");
    // The owner takes events as they come (a real core does): past the
    // confirmation, only messages fill the channel.
    c.confirmed(t).await;
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

/// Tickets: a new SUB is pending until a PONG confirms it, a second SUB of
/// the same subject waits for the same ticket, and once confirmed a
/// message published after the confirmation arrives.
#[tokio::test(flavor = "current_thread")]
async fn subscriptions_are_confirmed_by_ticket() {
    let server = NatsServer::start(&[]);
    let c = start_client(spec(server.url(), Auth::None));
    c.connected().await;
    let nc = async_nats::connect(server.url()).await.expect("async-nats");
    let t1 = c
        .interest
        .sub("gw.user.t1", None)
        .expect("a new SUB has a ticket");
    let t2 = c
        .interest
        .sub("gw.user.t2", None)
        .expect("a new SUB has a ticket");
    assert!(t2 > t1);
    assert_eq!(
        c.interest.ticket("gw.user.t1"),
        Some(t1).filter(|&t| t > c.interest.confirmed())
    );
    c.confirmed(t2).await;
    assert!(c.interest.confirmed() >= t2);
    assert_eq!(c.interest.ticket("gw.user.t1"), None, "confirmed");
    assert_eq!(c.interest.sub("gw.user.t1", None), None, "in place already");
    assert_eq!(c.interest.ticket("never.subscribed"), None);
    // Confirmed means the server has it: a publish now is delivered.
    nc.publish("gw.user.t2", "x".into()).await.expect("pub");
    nc.flush().await.expect("flush");
    assert_eq!(c.recv().await.subject, "gw.user.t2");
}

/// While the connection is down every subscription is pending again; the
/// restore confirms them all, with `Down`, `Confirmed` and `Up` in order.
#[tokio::test(flavor = "current_thread")]
async fn a_restore_confirms_every_subscription_after_down() {
    let mut server = NatsServer::start(&[]);
    let c = start_client(spec(server.url(), Auth::None));
    c.connected().await;
    let t = c.interest.sub("gw.user.r", None).expect("ticket");
    c.confirmed(t).await;
    server.kill();
    loop {
        if c.event().await == Event::Down {
            break;
        }
    }
    let pending = c.interest.ticket("gw.user.r").expect("pending while down");
    let t_new = c.interest.sub("gw.user.new", None).expect("ticket");
    server.spawn();
    let before = c.confirmed(pending.max(t_new)).await;
    assert!(
        !before.contains(&Event::Up),
        "Up comes after the confirmation: {before:?}"
    );
    assert_eq!(c.event().await, Event::Up);
    assert_eq!(c.interest.ticket("gw.user.r"), None);
    assert_eq!(c.interest.ticket("gw.user.new"), None);
}

/// A connection given one server of a cluster learns the others from INFO
/// `connect_urls`, and fails over to them when its server dies.
#[tokio::test(flavor = "current_thread")]
async fn learns_the_cluster_and_fails_over() {
    let cports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let routes = cports
        .iter()
        .map(|p| format!("nats://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut servers: Vec<NatsServer> = cports
        .iter()
        .enumerate()
        .map(|(i, cp)| {
            let (name, cluster) = (format!("s{i}"), format!("nats://127.0.0.1:{cp}"));
            NatsServer::start(&[
                "-n",
                &name,
                "--cluster_name",
                "t",
                "--cluster",
                &cluster,
                "--routes",
                &routes,
            ])
        })
        .collect();
    // Wait until the routes are up, so INFO carries the others.
    let probe = async_nats::connect(servers[1].url())
        .await
        .expect("async-nats");
    let c = start_client(spec(servers[0].url(), Auth::None));
    c.connected().await;
    let t = c.interest.sub("gw.user.fo", None).expect("ticket");
    c.confirmed(t).await;
    // The first server may not have sent connect_urls yet: give the
    // cluster a moment to form, then drop the first server.
    let deadline = Instant::now() + WAIT;
    loop {
        let mut sub = probe.subscribe("gw.route.check").await.expect("sub");
        probe.flush().await.expect("flush");
        let nc0 = async_nats::connect(servers[0].url()).await.expect("nc0");
        nc0.publish("gw.route.check", "r".into())
            .await
            .expect("pub");
        nc0.flush().await.expect("flush");
        if tokio::time::timeout(Duration::from_millis(200), sub.next())
            .await
            .is_ok()
        {
            break;
        }
        assert!(Instant::now() < deadline, "cluster routes did not form");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    servers[0].kill();
    loop {
        if c.event().await == Event::Down {
            break;
        }
    }
    // Back up on a learned server, with the subscription restored there.
    loop {
        if c.event().await == Event::Up {
            break;
        }
    }
    assert!(c.interest.is_connected());
    let deadline = Instant::now() + WAIT;
    loop {
        probe
            .publish("gw.user.fo", "after".into())
            .await
            .expect("pub");
        probe.flush().await.expect("flush");
        match tokio::time::timeout(Duration::from_millis(200), c.recv()).await {
            Ok(m) => {
                assert_eq!(m.subject, "gw.user.fo");
                break;
            }
            Err(_) => assert!(Instant::now() < deadline, "no message after failover"),
        }
    }
    drop(servers);
}
