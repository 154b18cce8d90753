//! `chat-backend`: the reference NATS backend. It serves the demo routes
//! (echo, chat.send, room.join, room.leave, room.send) over the NATS
//! contract in PROTOCOL.md with the answers `gateway --demo` gives
//! (`gateway::backend::embedded`): it takes `<prefix>.up.>` requests in a
//! queue group and answers each with a `BackendReply` protobuf. Run several
//! for more throughput; they share the work through the queue group.
//!
//! - `chat.send` publishes the `chat.msg` push itself, as a request to
//!   `<prefix>.user.<to>` (PROTOCOL.md §14.4): "no responders" means `to`
//!   has no connection anywhere, and the sender gets BAD_REQUEST "`<to>` is
//!   not online" instead of an OK for a message nobody gets. The sender's
//!   other connections get a copy (not ack-required).
//! - `room.send` from a connection that has not joined the room answers
//!   BAD_REQUEST.
//!
//! For the copies and the room check every instance follows the session
//! events (`<prefix>.evt.>`) and every join and leave
//! (`<prefix>.up.room.join` and `.leave`, plain subscriptions next to the
//! queue group), so any instance can answer. What an instance did not see
//! (sessions that logged in before it started) it does not check: it
//! answers as if the sender had joined, and sends no copies to those
//! sessions.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use clap::Parser;
use futures_util::StreamExt as _;
use gateway::backend::embedded::{
    self, not_in_room, not_online, parse_request, plain_reply, DemoRequest, Directory, Memberships,
};
use gateway::backend::{BackendReply, PushOrder, UpstreamRequest};
use gateway::nats::contract::{
    self, header_value, Subjects, H_ACK, H_BATCH, H_CONN, H_DEVICE, H_MSG_ID, H_NODE, H_ROOM,
    H_ROUTE, H_USER,
};
use gw_proto::pb::{self, push_order};
use gw_proto::ErrorCode;
use prost::Message as _;

/// Users whose sessions an instance follows (for copies of their direct
/// messages); past it, new users get no copies.
const USERS_TRACKED_MAX: usize = 100_000;
/// Sessions whose rooms an instance follows; past it, `room.send` from new
/// sessions is not checked.
const SESSIONS_WITH_ROOMS_MAX: usize = 100_000;
/// How long a direct message waits for a gateway to confirm it (below the
/// gateways' `upstream_timeout_ms`, 5 s by default).
const DM_CONFIRM_TIMEOUT: Duration = Duration::from_millis(1_000);

/// A session: its gateway node and connection id (unique per node).
type Session = (String, u64);

/// What the instance knows of sessions, from events and joins.
struct State {
    users: Directory<Session>,
    rooms: Memberships<Session>,
}

type Shared = Rc<RefCell<State>>;

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
    let state: Shared = Rc::new(RefCell::new(State {
        users: Directory::new(USERS_TRACKED_MAX),
        rooms: Memberships::new(SESSIONS_WITH_ROOMS_MAX, false),
    }));
    // Joins and leaves first, then events, then the requests: a session
    // whose login event arrives has every join of its life seen.
    let events_client = connect(&args, "chat-backend events").await?;
    let joins = events_client
        .subscribe(format!("{}.up.room.join", args.prefix))
        .await?;
    let leaves = events_client
        .subscribe(format!("{}.up.room.leave", args.prefix))
        .await?;
    let events = events_client
        .subscribe(format!("{}.evt.>", args.prefix))
        .await?;
    // Written to the server before the request subscriptions exist.
    events_client.flush().await?;
    let mut serving = Vec::new();
    for i in 0..args.connections.max(1) {
        let client = connect(&args, &format!("chat-backend {i}")).await?;
        let subject = format!("{}.up.>", args.prefix);
        let sub = client.queue_subscribe(subject, args.queue.clone()).await?;
        serving.push(serve(client, sub, &args, counts.clone(), state.clone()));
    }
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
        _ = count_events(events, &args, &counts, &state) => {}
        _ = observe(futures_util::stream::select(joins, leaves), &args, &state) => {}
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
    state: Shared,
) {
    let prefix = format!("{}.up.", args.prefix);
    let subjects = Subjects::new(&args.prefix);
    while let Some(m) = sub.next().await {
        counts.requests.fetch_add(1, Ordering::Relaxed);
        let Some(reply_to) = m.reply.clone() else {
            counts.bad.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let batch = m.headers.as_ref().is_some_and(|h| h.get(H_BATCH).is_some());
        let answer = if batch {
            // An aggregated request (PROTOCOL.md §14.2.1): each item answered
            // as if it had come alone, in order.
            match batch_items(&m, &prefix) {
                Some((items, node)) => {
                    let mut replies = Vec::with_capacity(items.len());
                    for req in &items {
                        replies.push(handle(&client, &subjects, &state, req, node.clone()).await);
                    }
                    pb::BatchReply { replies }.encode_to_vec()
                }
                None => {
                    // Without items there is nothing to answer one by one:
                    // the gateway turns a wrong count into INTERNAL.
                    counts.bad.fetch_add(1, Ordering::Relaxed);
                    pb::BatchReply::default().encode_to_vec()
                }
            }
        } else {
            match request(&m, &prefix) {
                Some((req, node)) => handle(&client, &subjects, &state, &req, node).await,
                None => {
                    counts.bad.fetch_add(1, Ordering::Relaxed);
                    contract::encode_reply(&gateway::backend::BackendReply::error(
                        gw_proto::ErrorCode::BadRequest,
                        "request without the Gw-* headers",
                    ))
                }
            }
            .encode_to_vec()
        };
        if args.delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(args.delay_ms)).await;
        }
        if let Err(e) = client.publish(reply_to, Bytes::from(answer)).await {
            tracing::warn!(error = %e, "reply not sent");
        }
    }
}

/// The request as the demo routes see it, from the subject and headers,
/// and the node it came from.
fn request(m: &async_nats::Message, prefix: &str) -> Option<(UpstreamRequest, String)> {
    let route = m.subject.as_str().strip_prefix(prefix)?.to_string();
    let h = m.headers.as_ref()?;
    let get = |k: &str| h.get(k).map(|v| v.as_str().to_string());
    let req = UpstreamRequest {
        conn_id: header_value(get(H_CONN).as_deref())?,
        user: Rc::from(get(H_USER)?.as_str()),
        device: Rc::from(get(H_DEVICE).unwrap_or_default().as_str()),
        route,
        client_msg_id: get(H_MSG_ID).unwrap_or_default(),
        payload: m.payload.clone(),
        room: get(H_ROOM).unwrap_or_default(),
    };
    Some((req, get(H_NODE).unwrap_or_default()))
}

/// The items of an aggregated request, as the demo routes see them, and
/// the node it came from.
fn batch_items(m: &async_nats::Message, prefix: &str) -> Option<(Vec<UpstreamRequest>, String)> {
    let route = m.subject.as_str().strip_prefix(prefix)?.to_string();
    let h = m.headers.as_ref()?;
    let get = |k: &str| h.get(k).map(|v| v.as_str().to_string());
    let room = get(H_ROOM).unwrap_or_default();
    let batch = pb::UpstreamBatch::decode(m.payload.clone()).ok()?;
    let items = batch
        .items
        .into_iter()
        .map(|i| UpstreamRequest {
            conn_id: i.conn_id,
            user: Rc::from(i.user.as_str()),
            device: Rc::from(i.device.as_str()),
            route: route.clone(),
            client_msg_id: i.client_msg_id,
            payload: i.payload,
            room: room.clone(),
        })
        .collect();
    Some((items, get(H_NODE).unwrap_or_default()))
}

/// The answer to one request.
async fn handle(
    client: &async_nats::Client,
    subjects: &Subjects,
    state: &Shared,
    req: &UpstreamRequest,
    node: String,
) -> pb::BackendReply {
    let r = match parse_request(req) {
        Ok(r) => r,
        Err(e) => return contract::encode_reply(&e),
    };
    let session = (node, req.conn_id);
    match &r {
        DemoRequest::Chat { to, push } => {
            if let Err(e) = send_direct(client, subjects, to, push).await {
                return contract::encode_reply(&e);
            }
            let ok = BackendReply::ok(Bytes::from_static(b"{\"ok\":true}"));
            let mut reply = contract::encode_reply(&ok);
            if **to != *req.user {
                let others = state.borrow().users.others(&req.user, &session);
                reply
                    .pushes
                    .extend(others.into_iter().map(|s| sender_copy(push, s)));
            }
            return reply;
        }
        DemoRequest::Join(room) => state.borrow_mut().rooms.join(session, room),
        DemoRequest::Leave(room) => state.borrow_mut().rooms.leave(&session, room),
        DemoRequest::RoomSend { room, .. } => {
            if state.borrow().rooms.member(&session, room) == Some(false) {
                return contract::encode_reply(&not_in_room(room));
            }
        }
        DemoRequest::Echo(_) => {}
    }
    contract::encode_reply(&plain_reply(req, r))
}

/// Publishes a direct message to every connection of `to` as a request:
/// Ok once a gateway took it, else the answer for the sender.
async fn send_direct(
    client: &async_nats::Client,
    subjects: &Subjects,
    to: &str,
    push: &PushOrder,
) -> Result<(), BackendReply> {
    if !contract::valid_name(to) {
        // The gateways subscribe for no such name: nobody can hold it.
        return Err(not_online(to));
    }
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(H_ROUTE, push.route.as_str());
    headers.insert(H_ACK, "1");
    let request = async_nats::Request::new()
        .headers(headers)
        .payload(push.payload.clone())
        .timeout(Some(DM_CONFIRM_TIMEOUT));
    use async_nats::RequestErrorKind as Kind;
    match client.send_request(subjects.user(to), request).await {
        Ok(_) => Ok(()),
        Err(e) => Err(match e.kind() {
            Kind::NoResponders => not_online(to),
            Kind::TimedOut => BackendReply::error(
                ErrorCode::Timeout,
                &format!(
                    "no gateway confirmed the message to {to} within {} ms; it may have arrived",
                    DM_CONFIRM_TIMEOUT.as_millis()
                ),
            ),
            Kind::Other => BackendReply::retry(
                ErrorCode::BackendUnavailable,
                &format!("the message to {to} could not be sent: {e}"),
                1_000,
            ),
        }),
    }
}

/// A copy of a direct message for another session of the sender.
fn sender_copy(push: &PushOrder, (node, conn_id): Session) -> pb::PushOrder {
    let copy = embedded::sender_copy(push, gateway::backend::Target::Conn(conn_id));
    let mut order = contract::encode_push(&copy);
    order.target = Some(push_order::Target::Conn(pb::ConnRef { node, conn_id }));
    order
}

/// Follows the joins and leaves every instance serves.
async fn observe(
    mut requests: impl futures_util::Stream<Item = async_nats::Message> + Unpin,
    args: &Args,
    state: &Shared,
) {
    let prefix = format!("{}.up.", args.prefix);
    while let Some(m) = requests.next().await {
        let Some((req, node)) = request(&m, &prefix) else {
            continue;
        };
        let session = (node, req.conn_id);
        match parse_request(&req) {
            Ok(DemoRequest::Join(room)) => state.borrow_mut().rooms.join(session, &room),
            Ok(DemoRequest::Leave(room)) => state.borrow_mut().rooms.leave(&session, &room),
            _ => {}
        }
    }
}

/// Counts the session events and follows who is online.
async fn count_events(
    mut events: async_nats::Subscriber,
    args: &Args,
    counts: &Counts,
    state: &Shared,
) {
    while let Some(m) = events.next().await {
        let kind = m.subject.as_str().rsplit('.').next().unwrap_or("");
        match kind {
            "online" => {
                counts.online.fetch_add(1, Ordering::Relaxed);
                let Ok(e) = pb::OnlineEvent::decode(m.payload) else {
                    continue;
                };
                if args.log_events {
                    tracing::info!(node = %e.node, conn_id = e.conn_id, user = %e.user, device = %e.device, resync = e.resync, "online");
                }
                let session = (e.node, e.conn_id);
                let mut st = state.borrow_mut();
                st.users.online(&e.user, session.clone());
                // A resync is a session that may have logged in before
                // this instance started: its joins are not known.
                if !e.resync {
                    st.rooms.online(session);
                }
            }
            "offline" => {
                counts.offline.fetch_add(1, Ordering::Relaxed);
                let Ok(e) = pb::OfflineEvent::decode(m.payload) else {
                    continue;
                };
                if args.log_events {
                    let reason = gw_proto::CloseReason::try_from(e.reason)
                        .map(|r| r.as_str_name())
                        .unwrap_or("?");
                    tracing::info!(node = %e.node, conn_id = e.conn_id, user = %e.user, reason, "offline");
                }
                let session = (e.node, e.conn_id);
                let mut st = state.borrow_mut();
                st.users.offline(&e.user, &session);
                st.rooms.offline(&session);
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
