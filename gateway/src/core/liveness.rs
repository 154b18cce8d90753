//! When a connection must hear from its client, as pure functions of its
//! state and the clock: the auth deadline, the deadline of a login held
//! for its subscription, the idle (heartbeat) deadline, and the token's
//! lifetime. The sweep (`sweep.rs`, `expiry.rs`) applies them to the
//! core's connections; the simulation (`tests/sim.rs`) to its own.

use super::wheel::Tick;

/// Where a session is, as far as its deadlines go.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Phase {
    /// No valid Auth yet.
    Unauthenticated,
    /// Authenticated, AuthOk held until the user's subscription is confirmed.
    Held,
    /// Authenticated and told so.
    Live,
}

/// What a connection's clock says.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Due {
    /// Nothing yet: look again at this tick.
    At(Tick),
    /// No Auth within `auth_timeout_ms`.
    AuthTimeout,
    /// A held login's subscription was not confirmed within `auth_timeout_ms`.
    Unreachable,
    /// Nothing heard for the idle timeout (`idle_timeout_intervals` heartbeats).
    Stale,
    /// Alive; the idle deadline is this tick.
    Live(Tick),
}

/// The deadline check of a connection created at `created` that last
/// sent bytes at `last_in`.
pub fn due(
    phase: Phase,
    created: Tick,
    last_in: Tick,
    auth_ticks: Tick,
    idle_ticks: Tick,
    now: Tick,
) -> Due {
    let auth_deadline = created.saturating_add(auth_ticks);
    match phase {
        Phase::Unauthenticated if now >= auth_deadline => Due::AuthTimeout,
        Phase::Held if now >= auth_deadline => Due::Unreachable,
        Phase::Unauthenticated | Phase::Held => Due::At(auth_deadline),
        Phase::Live => {
            let idle = last_in.saturating_add(idle_ticks);
            if now >= idle {
                Due::Stale
            } else {
                Due::Live(idle)
            }
        }
    }
}

/// A token's lifetime settings (`[auth]`), in seconds.
#[derive(Clone, Copy, Debug)]
pub struct TokenTimes {
    pub leeway_s: u64,
    pub refresh_ahead_s: u64,
}

/// What a session's token says at a given time.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Token {
    /// The session does not end with its token.
    Endless,
    /// Past `exp` + leeway: end the session (TOKEN_EXPIRED).
    Ended,
    /// Send the TokenExpiring notice now; look again at this unix second.
    Notice(u64),
    /// Nothing to do; look again at this unix second.
    At(u64),
}

/// The token check of a session whose token expires at `expires` (unix
/// seconds, 0 = never) and which was `noticed` already.
pub fn token(expires: u32, noticed: bool, t: TokenTimes, now_unix: u64) -> Token {
    if expires == 0 {
        return Token::Endless;
    }
    let exp = u64::from(expires);
    let end = exp.saturating_add(t.leeway_s);
    if now_unix > end {
        return Token::Ended;
    }
    if noticed {
        return Token::At(end + 1);
    }
    let notice_at = exp.saturating_sub(t.refresh_ahead_s);
    if now_unix >= notice_at {
        Token::Notice(end + 1)
    } else {
        Token::At(notice_at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_by_phase() {
        let d = |p, now| due(p, 10, 50, 100, 30, now);
        assert_eq!(d(Phase::Unauthenticated, 109), Due::At(110));
        assert_eq!(d(Phase::Unauthenticated, 110), Due::AuthTimeout);
        assert_eq!(d(Phase::Held, 60), Due::At(110));
        assert_eq!(d(Phase::Held, 200), Due::Unreachable);
        assert_eq!(d(Phase::Live, 79), Due::Live(80));
        assert_eq!(d(Phase::Live, 80), Due::Stale);
    }

    #[test]
    fn token_notice_then_end() {
        let t = TokenTimes {
            leeway_s: 5,
            refresh_ahead_s: 60,
        };
        assert_eq!(token(0, false, t, 1_000), Token::Endless);
        assert_eq!(token(1_000, false, t, 900), Token::At(940));
        assert_eq!(token(1_000, false, t, 940), Token::Notice(1_006));
        assert_eq!(token(1_000, true, t, 1_005), Token::At(1_006));
        assert_eq!(token(1_000, true, t, 1_006), Token::Ended);
    }
}
