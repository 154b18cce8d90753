//! `chat-backend`: the reference NATS backend. It serves the embedded demo
//! backend's routes (echo, chat.send, room.join, room.leave, room.send) over
//! the NATS contract in PROTOCOL.md: it takes `<prefix>.up.>` requests in a
//! queue group, answers each with a `BackendReply` protobuf, and counts the
//! gateway's session events. Run several for more throughput; they share
//! the work through the queue group.

use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use clap::Parser;
use futures_util::StreamExt as _;
use gateway::backend::embedded::Embedded;
use gateway::backend::UpstreamRequest;
use gateway::nats::contract::{self, header_value, H_CONN, H_DEVICE, H_MSG_ID, H_USER};
use prost::Message as _;

#[derive(Parser, Debug)]
#[command(
    name = "chat-backend",
    version,
    about = "Reference NATS backend for the gateway (the demo routes over NATS)."
)]
struct Args {
    /// NATS server URLs, comma-separated.
    #[arg(long, default_value = "nats://127.0.0.1:4222", value_delimiter = ',')]
    nats_urls: Vec<String>,
    /// Subject prefix (the gateways' nats.prefix).
    #[arg(long, default_value = "gw")]
    prefix: String,
    /// Queue group shared by all instances.
    #[arg(long, default_value = "chat-backend")]
    queue: String,
    /// NATS token, if the servers want one.
    #[arg(long, env = "NATS_TOKEN")]
    nats_token: Option<String>,
    /// NATS connections (each with its own queue subscription).
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Log every session event at info level (they are counted either way).
    #[arg(long)]
    log_events: bool,
    /// Delay every answer by this long, ms (to try slow-backend behaviour).
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
}

#[derive(Default)]
struct Counts {
    requests: AtomicU64,
    bad: AtomicU64,
    online: AtomicU64,
    offline: AtomicU64,
    undelivered: AtomicU64,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(args))
}

async fn connect(args: &Args, name: &str) -> anyhow::Result<async_nats::Client> {
    let mut o = match &args.nats_token {
        Some(t) => async_nats::ConnectOptions::with_token(t.clone()),
        None => async_nats::ConnectOptions::new(),
    };
    o = o
        .name(name)
        .retry_on_initial_connect()
        .event_callback(|ev| async move {
            tracing::warn!(event = %ev, "NATS");
        });
    o.connect(args.nats_urls.clone())
        .await
        .with_context(|| format!("connecting to {:?}", args.nats_urls))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let counts = Arc::new(Counts::default());
    let mut serving = Vec::new();
    for i in 0..args.connections.max(1) {
        let client = connect(&args, &format!("chat-backend {i}")).await?;
        let subject = format!("{}.up.>", args.prefix);
        let sub = client.queue_subscribe(subject, args.queue.clone()).await?;
        serving.push(serve(client, sub, &args, counts.clone()));
    }
    let events_client = connect(&args, "chat-backend events").await?;
    let events = events_client
        .subscribe(format!("{}.evt.>", args.prefix))
        .await?;
    tracing::info!(urls = ?args.nats_urls, prefix = %args.prefix, queue = %args.queue, "chat-backend serving");
    let report = async {
        let mut last = 0;
        loop {
            tokio::time::sleep(Duration::from_secs(10)).await;
            let n = counts.requests.load(Ordering::Relaxed);
            if n != last {
                tracing::info!(
                    requests = n,
                    bad = counts.bad.load(Ordering::Relaxed),
                    online = counts.online.load(Ordering::Relaxed),
                    offline = counts.offline.load(Ordering::Relaxed),
                    undelivered = counts.undelivered.load(Ordering::Relaxed),
                    "totals"
                );
                last = n;
            }
        }
    };
    tokio::select! {
        _ = futures_util::future::join_all(serving) => {}
        _ = count_events(events, &args, &counts) => {}
        _ = report => {}
        _ = tokio::signal::ctrl_c() => tracing::info!("stopping"),
    }
    Ok(())
}

/// Answers requests from one queue subscription, one at a time.
async fn serve(
    client: async_nats::Client,
    mut sub: async_nats::Subscriber,
    args: &Args,
    counts: Arc<Counts>,
) {
    let prefix = format!("{}.up.", args.prefix);
    let backend = Embedded;
    while let Some(m) = sub.next().await {
        counts.requests.fetch_add(1, Ordering::Relaxed);
        let Some(reply_to) = m.reply.clone() else {
            counts.bad.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let answer = match request(&m, &prefix) {
            Some(req) => contract::encode_reply(&backend.handle(&req)),
            None => {
                counts.bad.fetch_add(1, Ordering::Relaxed);
                contract::encode_reply(&gateway::backend::BackendReply::error(
                    gw_proto::ErrorCode::BadRequest,
                    "request without the Gw-* headers",
                ))
            }
        };
        if args.delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(args.delay_ms)).await;
        }
        if let Err(e) = client
            .publish(reply_to, Bytes::from(answer.encode_to_vec()))
            .await
        {
            tracing::warn!(error = %e, "reply not sent");
        }
    }
}

/// The request as the demo routes see it, from the subject and headers.
fn request(m: &async_nats::Message, prefix: &str) -> Option<UpstreamRequest> {
    let route = m.subject.as_str().strip_prefix(prefix)?.to_string();
    let h = m.headers.as_ref()?;
    let get = |k: &str| h.get(k).map(|v| v.as_str().to_string());
    Some(UpstreamRequest {
        conn_id: header_value(get(H_CONN).as_deref())?,
        user: Rc::from(get(H_USER)?.as_str()),
        device: Rc::from(get(H_DEVICE).unwrap_or_default().as_str()),
        route,
        client_msg_id: get(H_MSG_ID).unwrap_or_default(),
        payload: m.payload.clone(),
    })
}

async fn count_events(mut events: async_nats::Subscriber, args: &Args, counts: &Counts) {
    use gw_proto::pb;
    while let Some(m) = events.next().await {
        let kind = m.subject.as_str().rsplit('.').next().unwrap_or("");
        match kind {
            "online" => {
                counts.online.fetch_add(1, Ordering::Relaxed);
                if let (true, Ok(e)) = (args.log_events, pb::OnlineEvent::decode(m.payload)) {
                    tracing::info!(node = %e.node, conn_id = e.conn_id, user = %e.user, device = %e.device, "online");
                }
            }
            "offline" => {
                counts.offline.fetch_add(1, Ordering::Relaxed);
                if let (true, Ok(e)) = (args.log_events, pb::OfflineEvent::decode(m.payload)) {
                    let reason = gw_proto::CloseReason::try_from(e.reason)
                        .map(|r| r.as_str_name())
                        .unwrap_or("?");
                    tracing::info!(node = %e.node, conn_id = e.conn_id, user = %e.user, reason, "offline");
                }
            }
            "undelivered" => {
                counts.undelivered.fetch_add(1, Ordering::Relaxed);
                if let Ok(e) = pb::UndeliveredEvent::decode(m.payload) {
                    tracing::info!(node = %e.node, user = %e.user, room = %e.room, pushes = e.pushes.len(), "undelivered (the demo keeps no offline store)");
                }
            }
            _ => {}
        }
    }
}
