//! The core side of the subscriptions: messages NATS delivers to this
//! core (pushes to its users and rooms, kicks, commands for this node) are
//! executed here, on the core that owns the connections.

use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gw_proto::pb;
use prost::Message as _;

use super::bridge::BridgeStats;
use super::contract::{self, Addressed, Subjects};
use super::interest::{Event, Inbound, Interest as Subscriptions};
use crate::backend::{PushOrder, SessionOp, Target};
use crate::core::Core;

pub struct InboundCtx {
    pub subjects: Subjects,
    pub subs: Subscriptions,
    pub stats: Arc<BridgeStats>,
}

/// How often an idle inbound task checks whether its core is stopping.
const STOP_CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// Runs until the core stops or the subscription connection closes.
pub async fn run(core: Rc<Core>, rx: flume::Receiver<Event>, ctx: InboundCtx) {
    core.nats_running.set(true);
    serve(&core, rx, ctx).await;
    core.nats_running.set(false);
}

async fn serve(core: &Rc<Core>, rx: flume::Receiver<Event>, ctx: InboundCtx) {
    let restore_deadline = Duration::from_millis(core.cfg().nats.restore_deadline_ms as u64);
    while !core.stopping.get() {
        if core.outage_check(restore_deadline) {
            crate::core::wake::spawn(core.clone().evacuate()).detach();
        }
        // What is queued first; a timer only while waiting on an empty queue.
        let ev = match rx.try_recv() {
            Ok(m) => m,
            Err(flume::TryRecvError::Disconnected) => return,
            Err(flume::TryRecvError::Empty) => {
                let next = futures_lite::future::or(
                    async { Some(crate::core::wake::recv(&rx).await) },
                    async {
                        core.sleep(STOP_CHECK_INTERVAL).await;
                        None
                    },
                )
                .await;
                match next {
                    None => continue,
                    Some(Ok(m)) => m,
                    Some(Err(_)) => return,
                }
            }
        };
        let m = match ev {
            Event::Msg(m) => m,
            Event::Confirmed(n) => {
                core.confirmed(n);
                continue;
            }
            Event::Up => {
                core.nats_up().await;
                continue;
            }
            Event::Down => {
                core.nats_down();
                continue;
            }
        };
        ctx.stats.inbound_pushes.fetch_add(1, Ordering::Relaxed);
        if let Err(why) = handle(core, &ctx, m).await {
            ctx.stats.inbound_refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%why, "message from NATS refused");
        }
    }
}

/// Why a message from NATS was refused (logged with its subject).
#[derive(Debug, thiserror::Error)]
enum Refused {
    #[error("unexpected subject {0:?}")]
    Subject(String),
    #[error("{subject}: {why}")]
    Headers {
        subject: String,
        why: contract::HeaderError,
    },
    #[error("node command is not a NodeCommand protobuf: {0}")]
    NodeCommand(#[from] prost::DecodeError),
}

async fn handle(core: &Rc<Core>, ctx: &InboundCtx, m: Inbound) -> Result<(), Refused> {
    let target = match ctx.subjects.parse(&m.subject) {
        Some(Addressed::User(u)) => Target::User(u.to_string()),
        Some(Addressed::Room(r)) => Target::Room(r.to_string()),
        Some(Addressed::Node(_)) => {
            node_command(core, m.payload).await?;
            // A command sent as a request learns that it was taken.
            if let Some(reply) = m.reply {
                ctx.subs.publish(&reply, &[], Bytes::new());
            }
            return Ok(());
        }
        None => return Err(Refused::Subject(m.subject)),
    };
    if let (Target::Room(room), Some(mode)) =
        (&target, contract::header(&m.headers, contract::H_ROOM_MODE))
    {
        // Every core holding members has its own subscription: mark here only.
        let Some(hot) = contract::parse_room_mode(mode) else {
            return Err(Refused::Headers {
                subject: m.subject,
                why: contract::HeaderError::RoomMode(mode.to_string()),
            });
        };
        core.mark_room(room, hot);
        // With a Gw-Route it is a push too, sent under the new mode.
        if contract::header(&m.headers, contract::H_ROUTE).is_none() {
            return Ok(());
        }
    }
    if let (Target::User(user), Some(message)) =
        (&target, contract::header(&m.headers, contract::H_KICK))
    {
        // Every core holding the user has its own subscription: kick here only.
        core.apply_op(SessionOp::KickUser {
            user: user.clone(),
            message: message.to_string(),
        });
        return Ok(());
    }
    let h = contract::push_headers(&m.headers).map_err(|why| Refused::Headers {
        subject: m.subject.clone(),
        why,
    })?;
    let order = PushOrder {
        target,
        route: h.route,
        payload: m.payload,
        ack_required: h.ack_required,
        priority: h.priority,
    };
    let Some(body) = core.encode_push(&order) else {
        return Ok(());
    };
    let placed = core.deliver(&order.target, &body, order.ack_required, order.priority);
    // A push sent as a request learns that somebody took it. Only cores
    // that placed it answer: the first answer is what the requester sees.
    if let Some(reply) = m.reply.filter(|_| placed > 0) {
        let n = placed.to_string();
        ctx.subs
            .publish(&reply, &[(contract::H_DELIVERED, n.as_str())], Bytes::new());
    }
    Ok(())
}

async fn node_command(core: &Rc<Core>, payload: Bytes) -> Result<(), Refused> {
    let cmd = pb::NodeCommand::decode(payload)?;
    let orders = contract::split(cmd.pushes, cmd.ops, &core.cfg().node_id, false);
    for why in &orders.refused {
        tracing::warn!(%why, "node command: order refused");
    }
    core.execute(orders.pushes, orders.ops).await;
    Ok(())
}
