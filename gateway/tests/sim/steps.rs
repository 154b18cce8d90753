//! One tick of one session: the wire both ways, the client, and the
//! sweep's pass, in the order the core runs them.

use gateway::core::delivery;
use gateway::core::liveness::Phase;
use gw_proto::pb::{self, frame::Body, Frame};
use gw_proto::Decoded;

use crate::model::{id_of, Kind};
use crate::*;

impl Sim {
    /// Gateway to client: the client reads what its kind reads per tick;
    /// written room lets waiting pushes out (as the I/O loop does).
    pub(crate) fn wire_down(&mut self, i: usize) {
        let s = &mut self.sessions[i];
        if s.torn_down.is_some() {
            return;
        }
        let budget = match s.client.kind {
            Kind::SlowReader(b) => b,
            Kind::GoesSilent(t) if self.now >= t => 0,
            _ => usize::MAX,
        };
        let g = &mut s.gw.link;
        if g.write(budget, &mut s.client.rx) && g.backlog.is_some() {
            let due = delivery::pump(g, &LIMITS, self.now);
            self.schedule(i, due);
            self.after_sends(i);
        }
    }

    /// The client: decodes what arrived, acks, pings, authenticates,
    /// refreshes, leaves.
    pub(crate) fn client(&mut self, i: usize) {
        let now = self.now;
        let s = &mut self.sessions[i];
        if s.torn_down.is_some() {
            return;
        }
        let kind = s.client.kind;
        let silent = matches!(kind, Kind::GoesSilent(t) if now >= t);
        let mut used = 0;
        loop {
            let frame = match gw_proto::decode(&s.client.rx[used..], FRAME_BYTES_MAX) {
                Ok(Decoded::Frame(f, n)) => {
                    used += n;
                    f
                }
                Ok(Decoded::Incomplete(_)) => break,
                Err(e) => panic!("session {i}: the client got a bad frame: {e:?}"),
            };
            match frame.body {
                Some(Body::Push(p)) => {
                    let id = id_of(&p.payload);
                    let c = &mut s.client;
                    if p.retransmit {
                        assert_eq!(
                            c.first_seq.get(&p.seq),
                            Some(&id),
                            "session {i}: retransmit"
                        );
                    } else {
                        assert!(id > c.last_first_id, "session {i}: push {id} out of order");
                        c.last_first_id = id;
                        if p.seq != 0 {
                            c.first_seq.insert(p.seq, id);
                        }
                    }
                    if p.seq == 0 {
                        continue;
                    }
                    let delay = match kind {
                        Kind::LateAcker => self.rng.range(10, 40),
                        Kind::StopsAcking(t) if now >= t => continue,
                        Kind::LossyAcker if self.rng.percent(30) => continue,
                        _ => self.rng.range(0, 4),
                    };
                    c.acks.push_back((now + delay, p.seq));
                }
                Some(Body::TokenExpiring(_)) if kind != Kind::NoRefresh => {
                    s.client.refresh_at = Some(now + self.rng.range(1, 50));
                }
                _ => {}
            }
        }
        s.client.rx.drain(..used);
        if silent {
            return;
        }
        let c = &mut s.client;
        let mut send = |b: Body| {
            c.up.push_back((now + 1, gw_proto::encode(&Frame { body: Some(b) })))
        };
        if c.auth_at == Some(now) {
            send(Body::Auth(pb::Auth::default()));
        }
        if c.refresh_at == Some(now) {
            send(Body::Refresh(pb::Refresh::default()));
        }
        if now >= c.next_ping && c.auth_at.is_some_and(|t| now > t) {
            c.next_ping = now + PING_EVERY;
            send(Body::Ping(pb::Ping::default()));
        }
        // Acks in arrival order; an ack may be sent late, never reordered.
        let mut acks = std::mem::take(&mut c.acks);
        while acks.front().is_some_and(|&(t, _)| t <= now) {
            if let Some((_, seq)) = acks.pop_front() {
                send(Body::Ack(pb::Ack { seq }));
            }
        }
        c.acks = acks;
        if c.leaves_at == Some(now) {
            s.gw.close(CloseReason::ClientClosed);
        }
        if now >= DRAIN_AT && c.leaves_at.is_none() && s.gw.phase == Phase::Live {
            // The GoAway of the drain: clients leave over the next ticks.
            c.leaves_at = Some(now + self.rng.range(1, 400));
        }
    }

    /// Client to gateway: frames decoded and applied as the core does.
    pub(crate) fn wire_up(&mut self, i: usize) {
        let now = self.now;
        loop {
            let s = &mut self.sessions[i];
            if s.torn_down.is_some() || s.gw.reason().is_some() {
                return;
            }
            if s.client.up.front().is_none_or(|(t, _)| *t > now) {
                return;
            }
            let Some((_, bytes)) = s.client.up.pop_front() else {
                return;
            };
            let Ok(Decoded::Frame(f, _)) = gw_proto::decode(&bytes, FRAME_BYTES_MAX) else {
                panic!("session {i}: the gateway got a bad frame");
            };
            s.gw.last_in = now;
            match f.body {
                Some(Body::Auth(_)) => {
                    let lifetime = match s.client.kind {
                        Kind::NoRefresh => self.rng.range(5, 15),
                        _ => self.rng.range(5, 40),
                    };
                    let unix = 1_000_000 + u64::from(now) * TICK_MS / 1000;
                    s.gw.expires = (unix + u64::from(lifetime)) as u32;
                    if self.rng.percent(10) {
                        s.gw.phase = Phase::Held;
                        s.gw.held_until = now + self.rng.range(1, 70);
                    } else {
                        s.gw.phase = Phase::Live;
                    }
                    s.gw.due = now;
                }
                Some(Body::Refresh(_)) => {
                    let unix = 1_000_000 + u64::from(now) * TICK_MS / 1000;
                    s.gw.expires = (unix + u64::from(self.rng.range(5, 40))) as u32;
                    s.gw.noticed = false;
                    s.gw.due = now;
                }
                Some(Body::Ping(_)) => {
                    let pong = Body::Pong(pb::Pong::default());
                    s.gw.send_frame(pong);
                }
                Some(Body::Ack(a)) => self.ack(i, a.seq),
                _ => {}
            }
        }
    }
}
