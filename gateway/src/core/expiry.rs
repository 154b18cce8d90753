//! Token lifetime: with `auth.expire_sessions` (the default) a session ends
//! when its token does (`exp` + `auth.leeway_s`), with `GoAway
//! {TOKEN_EXPIRED}`, unless the client sends a fresh token in band
//! (`Refresh`). `auth.refresh_ahead_s` before `exp` the client gets one
//! `TokenExpiring` so it can refresh without reconnecting. The deadlines
//! ride on the connection's timing-wheel entry like the idle deadline:
//! no timer per connection. Times are wall-clock seconds (`exp` is).

use std::time::{SystemTime, UNIX_EPOCH};

use gw_proto::pb::{self, frame::Body};
use gw_proto::CloseReason;

use super::liveness::{self, Token, TokenTimes};
use super::wheel::Tick;
use super::{Conn, ConnKey, Core};
use crate::metrics::CoreMetrics;

/// Seconds since the Unix epoch now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// What the expiry check of a connection decided.
pub(super) enum Expiry {
    /// Nothing due; check again at this tick (None: no expiry).
    Next(Option<Tick>),
    /// The token expired: end the session.
    Ended,
}

impl Core {
    /// The `Conn::expires` for a token expiring at `exp`: 0 when sessions
    /// outlive tokens. `exp` lies within `auth.token_lifetime_max_s` of now
    /// (the verifier checked), so it fits in 32 bits until 2106.
    pub fn session_expiry(&self, exp: u64) -> u32 {
        if !self.cfg().auth.expire_sessions {
            return 0;
        }
        exp.clamp(1, u32::MAX as u64) as u32
    }

    /// The tick of `unix_s`, from now (at least the next tick).
    fn tick_of_unix(&self, unix_s: u64, now_unix: u64) -> Tick {
        let ms = unix_s.saturating_sub(now_unix).saturating_mul(1000);
        let ticks = ms
            .div_ceil(self.cfg().tick_ms as u64)
            .min(u32::MAX as u64 / 2) as Tick;
        self.now().saturating_add(ticks.max(1))
    }

    /// Sets a session's token expiry (at Auth and Refresh) and schedules
    /// its next check. A token presented with less than
    /// `auth.refresh_ahead_s` left gets no notice: the client learns its
    /// expiry from AuthOk or RefreshReply, and a notice at once would make
    /// a client whose tokens are that short refresh in a loop.
    pub fn set_expiry(&self, c: &mut Conn, expires: u32) {
        c.expires = expires;
        let now_unix = unix_now();
        let short = u64::from(expires) <= now_unix.saturating_add(self.cfg().auth.refresh_ahead_s);
        c.flags.set_expiry_noticed(short);
    }

    /// Schedules the connection's next expiry check (after Auth and
    /// Refresh); the sweep sends the notice, after what is queued now.
    pub fn schedule_expiry(&self, key: ConnKey) {
        let next = self
            .with_conn(key, |c| {
                let now_unix = unix_now();
                let at = match liveness::token(
                    c.expires,
                    c.flags.expiry_noticed(),
                    self.token_times(),
                    now_unix,
                ) {
                    Token::Endless => return None,
                    // Due now: the sweep sends the notice or ends the session.
                    Token::Ended | Token::Notice(_) => now_unix,
                    Token::At(t) => t,
                };
                Some(self.tick_of_unix(at, now_unix))
            })
            .flatten();
        if let Some(due) = next {
            self.schedule(key, due);
        }
    }

    /// Sends the TokenExpiring notice when it is due, and says what comes
    /// next. Called with the state borrowed (from the sweep).
    pub(super) fn expiry_check(&self, c: &mut Conn, now_unix: u64) -> Expiry {
        if !c.authed() {
            return Expiry::Next(None);
        }
        let next = match liveness::token(
            c.expires,
            c.flags.expiry_noticed(),
            self.token_times(),
            now_unix,
        ) {
            Token::Endless => return Expiry::Next(None),
            Token::Ended => return Expiry::Ended,
            Token::At(t) => t,
            Token::Notice(t) => {
                c.flags.set_expiry_noticed(true);
                CoreMetrics::inc(&self.metrics.expiry_notices);
                let notice = Body::TokenExpiring(pb::TokenExpiring {
                    expires_at_unix_s: u64::from(c.expires),
                });
                let bytes = gw_proto::encode(&pb::Frame { body: Some(notice) });
                self.enqueue(c, super::push::Out::frame(bytes));
                t
            }
        };
        Expiry::Next(Some(self.tick_of_unix(next, now_unix)))
    }

    fn token_times(&self) -> TokenTimes {
        TokenTimes {
            leeway_s: self.cfg().auth.leeway_s,
            refresh_ahead_s: self.cfg().auth.refresh_ahead_s,
        }
    }

    /// Ends a session whose token expired: GoAway{TOKEN_EXPIRED}, then close.
    pub(super) fn token_expired(&self, key: ConnKey) {
        let goaway = Body::GoAway(pb::GoAway {
            reason: CloseReason::TokenExpired as i32,
            retry_after_ms: 0,
            endpoints: Vec::new(),
            message: "the session's token expired: reconnect with a fresh token (or send Refresh before it expires)".into(),
        });
        self.close(key, CloseReason::TokenExpired, Some(goaway));
    }
}
