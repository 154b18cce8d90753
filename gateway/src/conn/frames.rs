//! What each inbound frame does, by connection state: before auth only
//! `Auth` is accepted; after it `Ping`, `Upstream` and `Ack`. Frames that
//! only the server sends are protocol violations.

use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gw_proto::pb::{self, frame::Body, Frame};
use gw_proto::{CloseReason, ErrorCode, PROTOCOL_VERSION};

use crate::auth::JwtError;
use crate::backend::{BackendReply, SessionOp, UpstreamRequest};
use crate::core::ByKey;
use crate::core::ConnKey;
use crate::core::Core;
use crate::metrics::{CoreMetrics, Reject};

pub use gw_proto::{valid_route, ROUTE_BYTES_MAX};
/// Longest device id, bytes.
pub const DEVICE_BYTES_MAX: usize = 128;
/// Client metadata kept with a session: entries and bytes (keys + values).
pub const METADATA_ENTRIES_MAX: usize = 16;
pub const METADATA_BYTES_MAX: usize = 1024;

pub fn on_frame(core: &Rc<Core>, key: ConnKey, frame: Frame) {
    let Some(authed) = core.with_conn(key, |c| c.authed()) else {
        return;
    };
    let Some(body) = frame.body else { return };
    match (authed, body) {
        (false, Body::Auth(a)) => auth(core, key, a),
        (false, _) => {
            CoreMetrics::inc(&core.metrics.auth_failures);
            let err = auth_error(
                ErrorCode::AuthRequired,
                "the first frame must be Auth".into(),
            );
            core.close(key, CloseReason::ProtocolViolation, Some(err));
        }
        (true, Body::Ping(p)) => ping(core, key, p),
        (true, Body::Upstream(u)) => upstream(core, key, u),
        (true, Body::Ack(a)) => core.ack(key, a.seq),
        (true, Body::Refresh(r)) => refresh(core, key, r),
        (true, Body::Auth(_)) => {
            let err = Core::error_body(ErrorCode::UnexpectedFrame, "already authenticated", 0);
            core.send_frame(key, err);
        }
        (true, _) => {
            let err = Core::error_body(
                ErrorCode::UnexpectedFrame,
                "a server-to-client frame was sent by the client",
                0,
            );
            core.close(key, CloseReason::ProtocolViolation, Some(err));
        }
    }
}

fn auth_error(code: ErrorCode, message: String) -> Body {
    Body::AuthError(pb::AuthError {
        code: code as i32,
        message,
    })
}

fn jwt_code(e: &JwtError) -> ErrorCode {
    match e {
        JwtError::Expired => ErrorCode::TokenExpired,
        JwtError::NotYetValid => ErrorCode::TokenNotYetValid,
        JwtError::AlgorithmRejected(_) => ErrorCode::AlgorithmRejected,
        _ => ErrorCode::TokenInvalid,
    }
}

pub(super) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn auth(core: &Rc<Core>, key: ConnKey, a: pb::Auth) {
    let t = Instant::now();
    login(core, key, a);
    core.metrics.hist.auth.observe(t.elapsed());
}

/// Auth: the token, the session, AuthOk or AuthError (and the close).
fn login(core: &Rc<Core>, key: ConnKey, a: pb::Auth) {
    let id = key.id();
    if core.draining.get() {
        // Accepted just before (or, with io_uring's eager accept, while)
        // the core began to drain: told where to go instead of a login.
        core.close(key, CloseReason::Drain, Some(core.drain_goaway()));
        return;
    }
    let fail = |code: ErrorCode, message: String| {
        CoreMetrics::inc(&core.metrics.auth_failures);
        tracing::debug!(conn_id = id, code = code.as_str_name(), %message, "auth failed");
        core.close(
            key,
            CloseReason::AuthFailed,
            Some(auth_error(code, message)),
        );
    };
    if a.protocol_version != PROTOCOL_VERSION {
        return fail(
            ErrorCode::UnsupportedVersion,
            format!(
                "this server speaks protocol version {PROTOCOL_VERSION}, the client sent {}",
                a.protocol_version
            ),
        );
    }
    let claims = match core.verifier().verify(&a.token, unix_now()) {
        Ok(c) => c,
        Err(e) => return fail(jwt_code(&e), e.to_string()),
    };
    let device = claims.device_id.clone().unwrap_or(a.device_id);
    let device = if device.is_empty() {
        "default".to_string()
    } else {
        device
    };
    if device.len() > DEVICE_BYTES_MAX {
        return fail(
            ErrorCode::BadRequest,
            format!("device id longer than {DEVICE_BYTES_MAX} bytes"),
        );
    }
    let meta_bytes: usize = a.metadata.iter().map(|(k, v)| k.len() + v.len()).sum();
    if a.metadata.len() > METADATA_ENTRIES_MAX || meta_bytes > METADATA_BYTES_MAX {
        return fail(
            ErrorCode::BadRequest,
            format!("metadata over {METADATA_ENTRIES_MAX} entries or {METADATA_BYTES_MAX} bytes"),
        );
    }
    let heartbeat_ms = core.cfg().clamp_heartbeat(a.heartbeat_interval_ms);
    if core.reach.is_out() {
        // This node cannot reach NATS: nothing could be pushed to the client.
        CoreMetrics::inc(&core.metrics.auth_failures);
        let err = auth_error(
            ErrorCode::BackendUnavailable,
            "this gateway cannot reach NATS: reconnect (to another node) after a short wait".into(),
        );
        core.close(key, CloseReason::NodeUnavailable, Some(err));
        return;
    }
    let (user, device, ticket) = core.bind_session(key, &claims.sub, &device, heartbeat_ms);
    let metadata = a.metadata;
    let expires = core.session_expiry(claims.exp);
    let batches = a.push_batches;
    core.with_conn(key, |c| {
        c.flags.set_batches(batches);
        if a.resume_seq != 0 || !metadata.is_empty() {
            let extra = c.extra_mut();
            extra.resume_seq = a.resume_seq;
            extra.metadata = metadata;
        }
        core.set_expiry(c, expires);
    });
    core.schedule_expiry(key);
    CoreMetrics::inc(&core.metrics.auth_ok);
    core.send_frame(
        key,
        Body::AuthOk(pb::AuthOk {
            protocol_version: PROTOCOL_VERSION,
            conn_id: id,
            user_id: user.to_string(),
            device_id: device.to_string(),
            heartbeat_interval_ms: heartbeat_ms,
            idle_timeout_ms: core.cfg().idle_timeout_ms(heartbeat_ms),
            frame_bytes_max: core.cfg().frame_bytes_max,
            node_id: core.cfg().node_id.clone(),
            token_expires_at_unix_s: expires.into(),
        }),
    );
    // AuthOk means reachable: with NATS, it (and everything queued after
    // it) is written once the server has confirmed the user's subscription,
    // and the backend hears of the session then (`core/reach.rs`).
    match ticket {
        Some(t) if !core.reach.is_confirmed(t) => core.hold(id, t),
        _ => core.online(key, false),
    }
}

/// A fresh token for a session: verified like Auth, for the same user (and
/// device, when the token names one). Moves the session's end to the new
/// token's expiry; a refusal leaves the old one and the connection.
fn refresh(core: &Rc<Core>, key: ConnKey, r: pb::Refresh) {
    let id = key.id();
    let answer = |code: ErrorCode, message: String, expires: u64| {
        Body::RefreshReply(pb::RefreshReply {
            code: code as i32,
            message,
            expires_at_unix_s: expires,
        })
    };
    let reply = match core.verifier().verify(&r.token, unix_now()) {
        Err(e) => Err((jwt_code(&e), e.to_string())),
        Ok(claims) => {
            let expires = core.session_expiry(claims.exp);
            core.with_conn(key, |c| {
                if c.user.as_deref() != Some(claims.sub.as_str()) {
                    return Err((
                        ErrorCode::TokenInvalid,
                        "the token is for another user".to_string(),
                    ));
                }
                if claims.device_id.is_some() && c.device.as_deref() != claims.device_id.as_deref()
                {
                    return Err((
                        ErrorCode::TokenInvalid,
                        "the token is for another device".to_string(),
                    ));
                }
                core.set_expiry(c, expires);
                Ok(expires)
            })
            .unwrap_or(Err((ErrorCode::AuthRequired, "no session".into())))
        }
    };
    let body = match reply {
        Ok(expires) => {
            CoreMetrics::inc(&core.metrics.refreshes);
            core.schedule_expiry(key);
            answer(ErrorCode::Unspecified, String::new(), expires.into())
        }
        Err((code, message)) => {
            CoreMetrics::inc(&core.metrics.refresh_failures);
            tracing::debug!(conn_id = id, code = code.as_str_name(), %message, "token refresh refused");
            answer(code, message, 0)
        }
    };
    core.send_frame(key, body);
}

fn ping(core: &Rc<Core>, key: ConnKey, p: pb::Ping) {
    CoreMetrics::inc(&core.metrics.heartbeats);
    let hb = core.with_conn(key, |c| {
        if p.heartbeat_interval_ms != 0 {
            c.heartbeat_ms = core.cfg().clamp_heartbeat(p.heartbeat_interval_ms);
        }
        (c.heartbeat_ms, c.last_in)
    });
    if let Some((hb, last_in)) = hb {
        // A shorter interval brings the idle deadline forward.
        core.schedule(key, last_in + core.ticks(core.cfg().idle_timeout_ms(hb)));
        core.send_frame(
            key,
            Body::Pong(pb::Pong {
                heartbeat_interval_ms: hb,
            }),
        );
    }
}

fn reply_body(correlation_id: u64, r: &BackendReply) -> Body {
    Body::UpstreamReply(pb::UpstreamReply {
        correlation_id,
        status: r.status,
        payload: r.payload.clone(),
        retry_after_ms: r.retry_after_ms,
    })
}

fn upstream(core: &Rc<Core>, key: ConnKey, u: pb::Upstream) {
    let id = key.id();
    let corr = u.correlation_id;
    if !valid_route(&u.route) {
        let r = BackendReply::error(
            ErrorCode::BadRequest,
            &format!(
                "route must be 1 to {ROUTE_BYTES_MAX} bytes of A-Z, a-z, 0-9, '.', '_' and '-'"
            ),
        );
        core.send_frame(key, reply_body(corr, &r));
        return;
    }
    if !u.room.is_empty() && !crate::nats::contract::valid_name(&u.room) {
        // The room keys a bucket and becomes a NATS header: a name, not bytes.
        let r = BackendReply::error(
            ErrorCode::BadRequest,
            &format!(
                "room must be 1 to {} bytes with no spaces, control characters, '*' or '>', and no empty '.'-separated part",
                crate::nats::contract::NAME_BYTES_MAX
            ),
        );
        core.send_frame(key, reply_body(corr, &r));
        return;
    }
    let (user, device) = match admit(core, key, &u.route, &u.room) {
        Ok(Some(who)) => who,
        Ok(None) => return, // closed meanwhile
        Err((reason, retry_after_ms)) => {
            CoreMetrics::inc(&core.metrics.upstream_busy);
            core.metrics.rejected(reason);
            let why = match reason {
                Reject::UpstreamRate => "over upstream_rate_per_conn_per_s; retry later",
                Reject::RoomUpstreamRate => "the room is over its upstream rate; retry later",
                Reject::OverloadShed => "server overloaded; retry later",
                _ => "too many requests in flight; retry later",
            };
            let r = BackendReply::retry(ErrorCode::Busy, why, retry_after_ms);
            core.send_frame(key, reply_body(corr, &r));
            return;
        }
    };
    CoreMetrics::inc(&core.metrics.upstreams);
    let req = UpstreamRequest {
        conn_id: id,
        user,
        device,
        route: u.route,
        client_msg_id: u.client_msg_id,
        payload: u.payload,
        room: u.room,
    };
    let core = core.clone();
    crate::core::wake::spawn(async move { run_upstream(core, key, corr, req).await }).detach();
}

/// The user and device of an admitted upstream frame.
type Who = (Rc<str>, Rc<str>);

/// Admission of one upstream frame, cheapest and most personal check
/// first: the connection's in-flight cap, its rate (a frame refused for
/// the cap spends no token), the core's admission level (overload shedding
/// by priority), the core's in-flight cap. On
/// success the in-flight slots are taken; on refusal: the reason and the
/// retry_after_ms for the BUSY reply. None: no such session any more.
fn admit(core: &Core, key: ConnKey, route: &str, room: &str) -> Result<Option<Who>, (Reject, u32)> {
    let now = core.now();
    let busy_ms = core.cfg().busy_retry_after_ms;
    let mut st = core.state.borrow_mut();
    let core_full = st.upstream_inflight >= core.cfg().upstream_inflight_per_core_max;
    let Some(c) = st.conns.by_key(key) else {
        return Ok(None);
    };
    let (Some(user), Some(device)) = (c.user.clone(), c.device.clone()) else {
        return Ok(None);
    };
    if u32::from(c.inflight) >= core.cfg().upstream_inflight_per_conn_max {
        return Err((Reject::InflightConn, busy_ms));
    }
    if let Err(ms) = core.overload.take_upstream(&mut c.upstream_bucket, now) {
        return Err((Reject::UpstreamRate, ms));
    }
    if !core.overload.admit_upstream(route, &user) {
        // Spread the retries of the shed: busy_retry_after_ms plus up to as much again.
        return Err((
            Reject::OverloadShed,
            busy_ms.saturating_add(core.overload.jitter(busy_ms)),
        ));
    }
    if core_full {
        return Err((Reject::InflightCore, busy_ms));
    }
    if !room.is_empty() {
        // A room's members answering at once (a quiz): the retries are
        // spread over as long again as the wait, so they do not come back
        // together.
        if let Err(ms) = core.take_room_upstream(room, now) {
            let wait = ms.max(busy_ms);
            return Err((
                Reject::RoomUpstreamRate,
                wait.saturating_add(core.overload.jitter(wait)),
            ));
        }
    }
    c.inflight += 1;
    st.upstream_inflight += 1;
    Ok(Some((user, device)))
}

/// Envelope bytes around a reply payload (prefix, tags, ids), at most.
const REPLY_OVERHEAD_BYTES: usize = 64;

async fn run_upstream(core: Rc<Core>, key: ConnKey, corr: u64, req: UpstreamRequest) {
    let id = key.id();
    let route = req.route.clone();
    let sent = Instant::now();
    let fut = if !req.room.is_empty() && core.cfg().rooms.aggregated(&req.route) {
        core.aggregated_upstream(req)
    } else {
        core.backend.upstream(req)
    };
    let timeout = Duration::from_millis(core.cfg().upstream_timeout_ms as u64);
    let reply = futures_lite::future::or(async { Some(fut.await) }, async {
        core.sleep(timeout).await;
        None
    })
    .await;
    if reply.is_some() {
        core.metrics.hist.upstream_rtt.observe(sent.elapsed());
    }
    let mut reply = reply.unwrap_or_else(|| {
        CoreMetrics::inc(&core.metrics.upstream_timeouts);
        BackendReply::retry(
            ErrorCode::Timeout,
            "the backend did not answer within upstream_timeout_ms",
            core.cfg().busy_retry_after_ms,
        )
    });
    if reply.payload.len()
        > (core.cfg().frame_bytes_max as usize).saturating_sub(REPLY_OVERHEAD_BYTES)
    {
        tracing::warn!(%route, bytes = reply.payload.len(), "backend reply larger than frame_bytes_max: the client gets INTERNAL");
        reply.status = ErrorCode::Internal as u32;
        reply.payload = bytes::Bytes::from_static(b"reply larger than frame_bytes_max");
    }
    // Room operations first, so that once the client has its reply the
    // operations on its own connection (room.join, ...) have taken effect;
    // then the reply; then the pushes; then kicks, so a client kicked by its
    // own request still gets the reply and what was pushed with it. The
    // in-flight slot is held until all of it is queued, so a client cannot
    // outrun full inboxes.
    let pushes = std::mem::take(&mut reply.pushes);
    let (kicks, room_ops): (Vec<_>, Vec<_>) = std::mem::take(&mut reply.ops)
        .into_iter()
        .partition(|op| matches!(op, SessionOp::KickUser { .. } | SessionOp::KickConn { .. }));
    if let Some(ticket) = core.execute(Vec::new(), room_ops).await {
        // A join is answered once the room's subscription is in place, so
        // "reply received" means "room pushes reach me" (bounded: a node
        // that cannot confirm is going out, core/reach.rs).
        if !core.wait_ticket(ticket, timeout).await {
            tracing::debug!(conn_id = id, %route, "room subscription not confirmed within upstream_timeout_ms; replying anyway");
        }
    }
    core.send_frame(key, reply_body(corr, &reply));
    core.execute(pushes, kicks).await;
    let mut st = core.state.borrow_mut();
    st.upstream_inflight = st.upstream_inflight.saturating_sub(1);
    if let Some(c) = st.conns.by_key(key) {
        c.inflight = c.inflight.saturating_sub(1);
    }
}
