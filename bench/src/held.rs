//! A held connection: a hand-written future of about 200 bytes that
//! heartbeats (or sends echo requests) on schedule, answers NATS server
//! PINGs, and records deliveries and echo replies. Reads go through one
//! scratch buffer per thread ([`crate::net::poll_frames`]), so a held
//! connection owns no buffer. Over TLS and WebSocket the same: the stream
//! ([`crate::transport::Stream`]) and the codec take care of both.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use futures_lite::AsyncWrite;
use glommio::timer::Timer;

use crate::args::Latency;
use crate::conn::{bump, jitter, rx_end_name, ws_close_name, Ctx};
use crate::nats;
use crate::net::{self, mono_ns};
use crate::proto::Event;
use crate::transport::{io_reason, Stream};
use crate::wire::{self, close_reason_name, error_code_name};

/// Why a held connection ended, noted from the last message (no allocation).
#[derive(Clone, Copy)]
enum Note {
    None,
    GoAway(i32),
    Error(i32),
    Refused,
    /// WebSocket close frame (code).
    Closed(u16),
}

/// A held connection: heartbeats (or sends echo requests) on schedule,
/// answers NATS server PINGs, records deliveries and echo replies, until
/// the connection ends. A hand-written future in a task of its own, so the
/// much larger establish state is freed once the handshake is done.
pub struct Held {
    ctx: Rc<Ctx>,
    stream: Stream,
    /// Bytes of an incomplete message (unallocated when idle).
    partial: Vec<u8>,
    timer: Timer,
    /// What is left to write of the current outbound message.
    out: Option<Bytes>,
    pong_due: bool,
    note: Note,
    corr: u32,
    /// Chat: local index of the partner connection.
    peer: u32,
    /// Highest push seq to acknowledge (0: none).
    ack_due: u64,
    /// When the heartbeat now unanswered went out (monotonic ns; 0: none),
    /// for the heartbeat round trip (hold, storm).
    ping_ns: u64,
}

impl Held {
    pub fn new(ctx: Rc<Ctx>, stream: Stream, partial: Vec<u8>, i: u64) -> Held {
        let conns = ctx.set.share.conns;
        let tick_us = ctx.set.tick.as_micros().max(1) as u64;
        Held {
            ctx,
            stream,
            partial,
            timer: Timer::new(Duration::from_micros(jitter(i) % tick_us)),
            out: None,
            pong_due: false,
            note: Note::None,
            corr: 1,
            peer: (i ^ 1).min(conns.saturating_sub(1)) as u32,
            ack_due: 0,
            ping_ns: 0,
        }
    }

    fn tick_frame(&mut self) -> Bytes {
        let sh = &self.ctx.shared;
        if self.ctx.set.echo {
            self.corr = self.corr.wrapping_add(1);
            if sh.measuring.load(Relaxed) {
                self.ctx.echo_sent.set(self.ctx.echo_sent.get() + 1);
            }
            let ts = mono_ns().to_be_bytes().to_vec();
            return self
                .ctx
                .out(wire::upstream_frame(self.corr as u64, "echo", ts));
        }
        if self.ctx.set.chat {
            self.corr = self.corr.wrapping_add(1);
            if sh.measuring.load(Relaxed) {
                self.ctx.echo_sent.set(self.ctx.echo_sent.get() + 1);
            }
            let to = self.ctx.set.share.first_id + self.peer as u64;
            let body = format!(
                "{{\"to\":\"u{to}\",\"text\":\"{}:{}\"}}",
                self.corr,
                mono_ns()
            );
            let frame = wire::upstream_frame(self.corr as u64, "chat.send", body.into_bytes());
            return self.ctx.out(frame);
        }
        sh.pings.fetch_add(1, Relaxed);
        if self.ctx.set.latency == Latency::PingRtt {
            self.ping_ns = mono_ns();
        }
        self.ctx.out(self.ctx.heartbeat.clone())
    }

    /// Ready(reason) when the connection ended.
    fn step(&mut self, cx: &mut Context<'_>) -> Poll<String> {
        let Held {
            ctx,
            stream,
            partial,
            note,
            pong_due,
            ack_due,
            ping_ns,
            ..
        } = self;
        let sh = &*ctx.shared;
        let r = net::poll_frames(stream, ctx.set.codec, partial, cx, 8, &mut |ev| match ev {
            Event::Pong => {
                sh.pongs.fetch_add(1, Relaxed);
                if *ping_ns != 0 {
                    sh.live(mono_ns().saturating_sub(*ping_ns) / 1000);
                    *ping_ns = 0;
                }
            }
            Event::ServerPing => *pong_due = true,
            Event::AckDue(seq) => *ack_due = (*ack_due).max(seq),
            Event::Delivery(p) => ctx.on_delivery(p),
            Event::Reply {
                status, payload, ..
            } => ctx.on_reply(status, payload),
            Event::GoAway(g) => *note = Note::GoAway(g),
            Event::Error(e) => *note = Note::Error(e),
            Event::Refused(_) => *note = Note::Refused,
            Event::Closed(c) => *note = Note::Closed(c),
            Event::Ready | Event::SubAck(_) | Event::Other(_) => {
                sh.other_frames.fetch_add(1, Relaxed);
            }
        });
        match self.note {
            // A well-behaved client leaves on GoAway (a drain waits for it).
            Note::GoAway(r) => return Poll::Ready(format!("goaway:{}", close_reason_name(r))),
            Note::Closed(c) => return Poll::Ready(ws_close_name(c)),
            _ => {}
        }
        match r {
            Poll::Ready(Ok(())) => cx.waker().wake_by_ref(),
            Poll::Ready(Err(e)) => {
                return Poll::Ready(match self.note {
                    Note::GoAway(r) => format!("goaway:{}", close_reason_name(r)),
                    Note::Error(c) => format!("error:{}", error_code_name(c)),
                    Note::Refused => "server_error".into(),
                    Note::Closed(c) => ws_close_name(c),
                    Note::None => rx_end_name("held", e),
                });
            }
            Poll::Pending => {}
        }
        loop {
            if self.out.is_none() {
                if self.pong_due {
                    self.pong_due = false;
                    self.out = Some(Bytes::from_static(nats::PONG));
                } else if self.ack_due > 0 {
                    self.out = Some(self.ctx.out(wire::ack_frame(self.ack_due)));
                    self.ack_due = 0;
                } else if Pin::new(&mut self.timer).poll(cx).is_ready() {
                    self.timer.reset(self.ctx.set.tick);
                    self.out = Some(self.tick_frame());
                } else {
                    // TLS: records rustls still holds go out now or on
                    // the socket's wake-up (Pending registers it).
                    return match Pin::new(&mut self.stream).poll_flush(cx) {
                        Poll::Ready(Err(e)) => Poll::Ready(format!("held:write:{}", io_reason(&e))),
                        _ => Poll::Pending,
                    };
                }
            }
            let Some(out) = self.out.as_mut() else {
                continue;
            };
            match Pin::new(&mut self.stream).poll_write(cx, out) {
                Poll::Ready(Ok(0)) => return Poll::Ready("held:write_zero".into()),
                Poll::Ready(Ok(n)) => {
                    out.advance(n.min(out.len()));
                    if out.is_empty() {
                        self.out = None;
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(format!("held:write:{}", io_reason(&e))),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl Future for Held {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        match this.step(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(why) => {
                let sh = &this.ctx.shared;
                sh.open.fetch_sub(1, Relaxed);
                sh.dropped.fetch_add(1, Relaxed);
                bump(&this.ctx.dropped, why);
                Poll::Ready(())
            }
        }
    }
}
