//! The control-plane side of the NATS bridge (tokio): one async-nats client
//! per core for upstream requests, event publishes and pushes bound for
//! other nodes, and one `Interest` connection per core for the
//! subscriptions (users, rooms, this node). Cores talk to it over bounded
//! flume channels (`nats.bridge_queue_max`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::{client::RequestErrorKind, HeaderMap, Request};
use bytes::Bytes;
use gw_proto::pb;
use gw_proto::ErrorCode;
use prost::Message as _;

use super::contract::{self, Remote, Subjects};
use super::events::Events;
use super::interest::{self, ConnectSpec, Event, Interest};
use super::requests::{self, Requests};
use super::NatsConfig;
use crate::backend::{BackendReply, UndeliveredReason};

/// From a core to its NATS client.
pub enum ToNats {
    /// An upstream frame, as a NATS request on `<p>.up.<route>`.
    Request(Box<Call>),
    /// A session event or other fire-and-forget message.
    Publish { subject: String, payload: Bytes },
}

/// One upstream request and where its answer goes.
pub struct Call {
    pub route: String,
    pub headers: Vec<(&'static str, String)>,
    pub payload: Bytes,
    /// Where the answer goes (back to the core).
    pub reply: Answers,
}

/// Where the answers of a request go: one, or one per item of an
/// aggregated request (an `UpstreamBatch`, answered by a `BatchReply`).
pub enum Answers {
    One(super::replies::ReplyTo),
    Batch(Vec<super::replies::ReplyTo>),
}

impl Answers {
    /// The same answer to every item (an error).
    fn send_all(self, r: BackendReply) {
        match self {
            Answers::One(to) => to.send(r),
            Answers::Batch(tos) => tos.into_iter().for_each(|to| to.send(r.clone())),
        }
    }
}

/// Counters of the bridge, all cores together (read by /metrics).
#[derive(Default)]
pub struct BridgeStats {
    pub requests: AtomicU64,
    pub request_timeouts: AtomicU64,
    pub no_responders: AtomicU64,
    pub unavailable: AtomicU64,
    pub bad_replies: AtomicU64,
    pub remote_publishes: AtomicU64,
    pub publish_errors: AtomicU64,
    pub push_unconfirmed: AtomicU64,
    pub events_dropped: AtomicU64,
    pub events_confirmed: AtomicU64,
    pub events_resent: AtomicU64,
    pub events_unconfirmed: AtomicU64,
    pub inbound_pushes: AtomicU64,
    pub inbound_refused: AtomicU64,
}

impl BridgeStats {
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write as _;
        let rows: [(&str, &AtomicU64, &str); 14] = [
            ("requests", &self.requests, "upstream requests sent to NATS"),
            (
                "request_timeouts",
                &self.request_timeouts,
                "upstream requests no backend answered in time",
            ),
            (
                "no_responders",
                &self.no_responders,
                "upstream requests for routes no backend serves",
            ),
            (
                "unavailable",
                &self.unavailable,
                "upstream requests refused while NATS was unreachable",
            ),
            (
                "bad_replies",
                &self.bad_replies,
                "backend replies that were not a valid BackendReply",
            ),
            (
                "remote_publishes",
                &self.remote_publishes,
                "pushes and commands published for users, rooms and other nodes",
            ),
            (
                "publish_errors",
                &self.publish_errors,
                "publishes that failed",
            ),
            (
                "push_unconfirmed",
                &self.push_unconfirmed,
                "ack-required user pushes that no gateway confirmed",
            ),
            (
                "events_dropped",
                &self.events_dropped,
                "session events dropped because the bridge queue was full",
            ),
            (
                "events_confirmed",
                &self.events_confirmed,
                "session events confirmed (nats.events_confirm)",
            ),
            (
                "events_resent",
                &self.events_resent,
                "session events sent again for want of a confirmation",
            ),
            (
                "events_unconfirmed",
                &self.events_unconfirmed,
                "session events given up unconfirmed, or sent unconfirmed over events_confirm_inflight_max",
            ),
            (
                "inbound_pushes",
                &self.inbound_pushes,
                "pushes and commands received from NATS",
            ),
            (
                "inbound_refused",
                &self.inbound_refused,
                "messages from NATS refused (bad headers or body)",
            ),
        ];
        for (name, v, help) in rows {
            let _ = writeln!(
                out,
                "# HELP gateway_nats_{name}_total {help}\n# TYPE gateway_nats_{name}_total counter\ngateway_nats_{name}_total {}",
                v.load(Ordering::Relaxed)
            );
        }
    }
}

/// What a core needs to use its NATS connections.
pub struct CoreLink {
    pub tx: flume::Sender<ToNats>,
    /// Wakes the core (answers to its requests carry it).
    pub wake: std::task::Waker,
    pub interest: Interest,
    pub inbound: flume::Receiver<Event>,
    /// The core's request client (for readiness).
    pub requests: Requests,
}

/// Everything the bridge tasks share.
struct Ctx {
    node: String,
    subjects: Subjects,
    request_timeout: Duration,
    confirm_timeout: Duration,
    retry_after_ms: u32,
    stats: Arc<BridgeStats>,
    events: Arc<Events>,
}

/// The `Interest` connection's options.
fn connect_spec(cfg: &NatsConfig, auth: interest::Auth, name: String) -> ConnectSpec {
    ConnectSpec {
        urls: cfg.urls.clone(),
        auth,
        tls_required: cfg.tls_required,
        tls_ca_file: cfg.tls_ca_file.clone(),
        tls_cert_file: cfg.tls_cert_file.clone(),
        tls_key_file: cfg.tls_key_file.clone(),
        name,
        connect_timeout: Duration::from_millis(cfg.connect_timeout_ms as u64),
        reconnect_delay_max: Duration::from_millis(cfg.reconnect_delay_max_ms as u64),
        ping_interval: Duration::from_millis(cfg.ping_interval_ms as u64),
    }
}

/// Starts the NATS connections of every core (one waker each) on the
/// current tokio runtime. The tasks end (after flushing) when `stop` turns
/// true.
pub async fn start(
    cfg: &crate::Config,
    wakes: Vec<std::task::Waker>,
    stats: Arc<BridgeStats>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<(Vec<CoreLink>, Vec<tokio::task::JoinHandle<()>>)> {
    let n = &cfg.nats;
    let ctx = Arc::new(Ctx {
        node: cfg.node_id.clone(),
        subjects: Subjects::new(&n.prefix),
        request_timeout: Duration::from_millis(cfg.upstream_timeout_ms as u64),
        confirm_timeout: Duration::from_millis(n.push_confirm_timeout_ms as u64),
        retry_after_ms: cfg.busy_retry_after_ms,
        events: Arc::new(Events::new(n, &cfg.node_id, stats.clone())),
        stats,
    });
    let auth = requests::read_auth(n)?;
    let mut links = Vec::with_capacity(wakes.len());
    let mut tasks = Vec::with_capacity(wakes.len());
    for (core, wake) in wakes.into_iter().enumerate() {
        let name = format!("gateway {} core {core}", cfg.node_id);
        let spec = requests::ClientSpec {
            cfg: n.clone(),
            auth: auth.clone(),
            name: name.clone(),
            node: cfg.node_id.clone(),
            core,
        };
        let client = requests::connect(&spec, n.urls.clone(), false).await?;
        let requests = Requests::new(client);
        let queue = n.bridge_queue_max as usize;
        let (tx, rx) = flume::bounded(queue);
        let (in_tx, in_rx) = flume::bounded(queue);
        let (status_tx, status_rx) = flume::bounded(16);
        let interest = Interest::spawn(
            connect_spec(n, auth.clone(), format!("{name} interest")),
            crate::core::WakeTx::new(in_tx, wake.clone()),
            status_tx,
        );
        let node_subject = ctx.subjects.node(&cfg.node_id);
        interest.sub(&node_subject, Some(&node_subject));
        tokio::spawn(log_status(status_rx, core));
        tokio::spawn(requests::supervise(
            requests.clone(),
            spec,
            interest.clone(),
            stop.clone(),
        ));
        tasks.push(tokio::spawn(run_core(
            requests.clone(),
            rx,
            ctx.clone(),
            stop.clone(),
        )));
        links.push(CoreLink {
            tx,
            wake,
            interest,
            inbound: in_rx,
            requests,
        });
    }
    Ok((links, tasks))
}

async fn log_status(rx: flume::Receiver<interest::Status>, core: usize) {
    while let Ok(s) = rx.recv_async().await {
        match s {
            interest::Status::Connected => tracing::info!(core, "NATS subscriptions connected"),
            interest::Status::Disconnected(why) => {
                tracing::warn!(core, %why, "NATS subscriptions lost; pushes to this core's users wait until they are restored")
            }
        }
    }
}

/// Serves what one core queues for NATS.
async fn run_core(
    requests: Requests,
    rx: flume::Receiver<ToNats>,
    ctx: Arc<Ctx>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let client = requests.current();
        let msg = tokio::select! {
            m = rx.recv_async() => match m {
                Ok(m) => Some(m),
                Err(_) => break,
            },
            _ = stop.wait_for(|s| *s) => None,
        };
        let Some(msg) = msg else {
            // The cores are gone: what they queued last still goes out.
            let left: Vec<ToNats> = rx.drain().collect();
            for m in left {
                if let ToNats::Publish { subject, payload } = m {
                    ctx.events.send(&requests, subject, payload).await;
                }
            }
            break;
        };
        match msg {
            ToNats::Request(call) => {
                if client.connection_state() != async_nats::connection::State::Connected {
                    ctx.stats.unavailable.fetch_add(1, Ordering::Relaxed);
                    let r = BackendReply::retry(
                        ErrorCode::BackendUnavailable,
                        "NATS is unreachable from this gateway; retry later",
                        ctx.retry_after_ms,
                    );
                    call.reply.send_all(r);
                    continue;
                }
                tokio::spawn(request(requests.clone(), ctx.clone(), *call));
            }
            ToNats::Publish { subject, payload } => {
                ctx.events.send(&requests, subject, payload).await;
            }
        }
    }
    // The core is gone: send what is buffered (its last offline and
    // undelivered events) before the connection closes.
    ctx.events.settle(FLUSH_AT_EXIT).await;
    let client = requests.current();
    let connected = client.connection_state() == async_nats::connection::State::Connected;
    if connected
        && tokio::time::timeout(FLUSH_AT_EXIT, client.flush())
            .await
            .is_err()
    {
        tracing::warn!("NATS flush at exit timed out: the last session events may be lost");
    }
}

/// How long a stopping bridge waits to flush its last messages.
const FLUSH_AT_EXIT: Duration = Duration::from_secs(2);

async fn request(requests: Requests, ctx: Arc<Ctx>, call: Call) {
    let client = requests.current();
    let Call {
        route,
        headers,
        payload,
        reply,
    } = call;
    ctx.stats.requests.fetch_add(1, Ordering::Relaxed);
    // The server would close the connection over a message past its
    // max_payload (async-nats does not check requests): refused here.
    let max_payload = client.server_info().max_payload;
    if max_payload > 0 && payload.len() > max_payload {
        tracing::warn!(%route, bytes = payload.len(), max_payload, "upstream request larger than the NATS server's max_payload: the client gets INTERNAL; lower rooms.aggregate_bytes_max or frame_bytes_max, or raise max_payload");
        return reply.send_all(BackendReply::error(
            ErrorCode::Internal,
            "request larger than the NATS server's max_payload",
        ));
    }
    let mut h = HeaderMap::new();
    for (k, v) in headers {
        h.insert(k, v.as_str());
    }
    let req = Request::new()
        .headers(h)
        .payload(payload)
        .timeout(Some(ctx.request_timeout));
    let answer = client.send_request(ctx.subjects.up(&route), req).await;
    match reply {
        Answers::One(to) => {
            let r = match answer {
                Ok(m) => match pb::BackendReply::decode(m.payload) {
                    Ok(r) => local(&requests, &ctx, &route, &r).await,
                    Err(e) => malformed(&ctx, &route, &e.to_string()),
                },
                Err(e) => failed(&ctx, &route, e.kind()),
            };
            to.send(r);
        }
        Answers::Batch(tos) => {
            let replies = match answer {
                Ok(m) => match pb::BatchReply::decode(m.payload) {
                    Ok(b) if b.replies.len() == tos.len() => Ok(b.replies),
                    Ok(b) => {
                        let why = format!("{} replies for {} items", b.replies.len(), tos.len());
                        Err(malformed(&ctx, &route, &why))
                    }
                    Err(e) => Err(malformed(&ctx, &route, &e.to_string())),
                },
                Err(e) => Err(failed(&ctx, &route, e.kind())),
            };
            match replies {
                Ok(replies) => {
                    for (to, r) in tos.into_iter().zip(replies) {
                        to.send(local(&requests, &ctx, &route, &r).await);
                    }
                }
                Err(r) => Answers::Batch(tos).send_all(r),
            }
        }
    }
}

/// A backend's reply as the core applies it: orders for other nodes and
/// rooms are published from here, the rest goes back with the reply.
async fn local(
    requests: &Requests,
    ctx: &Arc<Ctx>,
    route: &str,
    r: &pb::BackendReply,
) -> BackendReply {
    let mut orders = contract::split(r.pushes.clone(), r.ops.clone(), &ctx.node, true);
    for why in orders.refused.drain(..) {
        tracing::warn!(%route, %why, "backend reply: order refused");
    }
    for remote in orders.remote.drain(..) {
        publish_remote(requests, ctx, remote).await;
    }
    contract::local_reply(r, &mut orders)
}

/// The answer to a request whose reply did not decode.
fn malformed(ctx: &Ctx, route: &str, error: &str) -> BackendReply {
    ctx.stats.bad_replies.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(%route, %error, "backend reply is not a BackendReply (or, to Gw-Batch, a BatchReply with one reply per item) protobuf: the client gets INTERNAL");
    BackendReply::error(ErrorCode::Internal, "the backend sent a malformed reply")
}

/// The answer to a request NATS could not complete.
fn failed(ctx: &Ctx, route: &str, kind: RequestErrorKind) -> BackendReply {
    match kind {
        RequestErrorKind::NoResponders => {
            ctx.stats.no_responders.fetch_add(1, Ordering::Relaxed);
            BackendReply::retry(
                ErrorCode::BackendUnavailable,
                &format!("no backend serves route {route:?}"),
                ctx.retry_after_ms,
            )
        }
        RequestErrorKind::TimedOut => {
            ctx.stats.request_timeouts.fetch_add(1, Ordering::Relaxed);
            BackendReply::retry(
                ErrorCode::Timeout,
                "the backend did not answer within upstream_timeout_ms",
                ctx.retry_after_ms,
            )
        }
        RequestErrorKind::Other => {
            ctx.stats.unavailable.fetch_add(1, Ordering::Relaxed);
            BackendReply::retry(
                ErrorCode::BackendUnavailable,
                "NATS request failed; retry later",
                ctx.retry_after_ms,
            )
        }
    }
}

/// Sends work that leaves this node: user and room pushes, user kicks,
/// orders for other nodes. Ack-required user pushes go as requests so that
/// a push no gateway holds is reported undelivered, not lost.
async fn publish_remote(requests: &Requests, ctx: &Arc<Ctx>, remote: Remote) {
    let client = &requests.current();
    ctx.stats.remote_publishes.fetch_add(1, Ordering::Relaxed);
    let push_headers = |o: &crate::backend::PushOrder| {
        let mut h = HeaderMap::new();
        h.insert(contract::H_ROUTE, o.route.as_str());
        if o.ack_required {
            h.insert(contract::H_ACK, "1");
        }
        h.insert(
            contract::H_PRIORITY,
            match o.priority {
                pb::Priority::High => "high",
                pb::Priority::Low => "low",
                pb::Priority::Normal => "normal",
            },
        );
        h
    };
    let result = match remote {
        Remote::UserPush { user, order } => {
            push(requests, ctx, ctx.subjects.user(&user), order, push_headers).await
        }
        Remote::RoomPush { room, order } => {
            push(requests, ctx, ctx.subjects.room(&room), order, push_headers).await
        }
        Remote::KickUser { user, message } => {
            let mut h = HeaderMap::new();
            h.insert(contract::H_KICK, message.as_str());
            client
                .publish_with_headers(ctx.subjects.user(&user), h, Bytes::new())
                .await
        }
        Remote::RoomMode { room, hot } => {
            let mut h = HeaderMap::new();
            h.insert(contract::H_ROOM_MODE, contract::room_mode_header(hot));
            client
                .publish_with_headers(ctx.subjects.room(&room), h, Bytes::new())
                .await
        }
        Remote::Node { node, cmd } => command_node(requests, ctx, node, cmd).await,
    };
    if let Err(e) = result {
        ctx.stats.publish_errors.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(error = %e, "NATS publish of a push or command failed");
    }
}

/// Publishes a user or room push. Ack-required ones go as requests: a
/// gateway that placed the push answers, so a push nobody holds (no
/// responders) or nobody confirmed is reported undelivered, never lost.
async fn push(
    requests: &Requests,
    ctx: &Arc<Ctx>,
    subject: String,
    order: crate::backend::PushOrder,
    headers: impl Fn(&crate::backend::PushOrder) -> HeaderMap,
) -> Result<(), async_nats::PublishError> {
    if !order.ack_required {
        return requests
            .current()
            .publish_with_headers(subject, headers(&order), order.payload)
            .await;
    }
    let req = Request::new()
        .headers(headers(&order))
        .payload(order.payload.clone())
        .timeout(Some(ctx.confirm_timeout));
    confirm(requests, ctx, subject, req, ctx.node.clone(), vec![order]);
    Ok(())
}

/// Sends a command to another node. One with ack-required pushes goes as a
/// request: the node answers once it has routed them (its owning core then
/// delivers or reports each); if no node answers, each is reported here.
async fn command_node(
    requests: &Requests,
    ctx: &Arc<Ctx>,
    node: String,
    cmd: pb::NodeCommand,
) -> Result<(), async_nats::PublishError> {
    let subject = ctx.subjects.node(&node);
    let payload = Bytes::from(cmd.encode_to_vec());
    if !cmd.pushes.iter().any(|p| p.ack_required) {
        return requests.current().publish(subject, payload).await;
    }
    let req = Request::new()
        .payload(payload)
        .timeout(Some(ctx.confirm_timeout));
    let ack: Vec<_> = contract::split(cmd.pushes, Vec::new(), &node, false)
        .pushes
        .into_iter()
        .filter(|p| p.ack_required)
        .collect();
    // The connections live on `node`: reports name them there.
    confirm(requests, ctx, subject, req, node, ack);
    Ok(())
}

/// Sends a confirmation request on its own task (the reply is not held
/// up); if nobody answers, reports each push in `lost`, named on `node`.
fn confirm(
    requests: &Requests,
    ctx: &Arc<Ctx>,
    subject: String,
    req: Request,
    node: String,
    lost: Vec<crate::backend::PushOrder>,
) {
    let (requests, ctx) = (requests.clone(), ctx.clone());
    tokio::spawn(async move {
        let reason = match requests.current().send_request(subject, req).await {
            Ok(_) => return,
            Err(e) => confirm_failure(e.kind()),
        };
        for order in &lost {
            ctx.stats.push_unconfirmed.fetch_add(1, Ordering::Relaxed);
            let ev = contract::unplaced_event(&node, &order.target, order, reason);
            let subject = ctx.subjects.event("undelivered");
            ctx.events
                .send(&requests, subject, contract::to_bytes(&ev))
                .await;
        }
    });
}

/// Why a confirmation request failed, as an undelivered reason.
fn confirm_failure(kind: RequestErrorKind) -> UndeliveredReason {
    match kind {
        RequestErrorKind::NoResponders => UndeliveredReason::NoConnection,
        RequestErrorKind::TimedOut => UndeliveredReason::Unconfirmed,
        RequestErrorKind::Other => UndeliveredReason::NatsUnavailable,
    }
}
