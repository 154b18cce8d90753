//! Against nats-server: subscribe, receive, publish, unsubscribe, many
//! subscriptions, close.

use super::*;

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
    assert!(c.no_msgs());
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
    assert!(c.no_msgs());

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

#[test]
fn interest_is_send_sync() {
    fn check<T: Send + Sync + Clone>() {}
    check::<Interest>();
}
