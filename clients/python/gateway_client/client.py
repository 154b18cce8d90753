"""asyncio client of the gateway's TCP (and TLS) protocol, PROTOCOL.md.

One :class:`Client` holds at most one authenticated connection (a
*session*) at a time and replaces it when it ends: reconnects with
jittered exponential backoff, honouring ``GoAway`` (drain: finish, then go
to another endpoint after ``retry_after_ms``; kick: stop) and refusing to
loop on a login the server refused.

Tasks per session: a reader (frames in, replies matched, pushes queued),
a heartbeat task (``Ping`` when nothing was sent for the server's interval,
and a watchdog that drops a connection whose server went silent), a push
dispatcher (runs ``on_push`` in order, then acks), and a token refresher.

Every queue is bounded; the limits are constructor arguments:

==========================  ==============================================
``pending_requests_max``    requests waiting for a reply or a session
                            (count); one more raises TooManyPendingRequests
``push_queue_max``          pushes received and not yet handled (count);
                            when full the reader stops reading, so the
                            server holds further pushes (its window)
``send_buffer_bytes_max``   bytes queued in the transport before a writer
                            waits (asyncio's write-buffer high-water mark)
inbound frame size          ``AuthOk.frame_bytes_max`` bytes (64 KiB
                            before ``AuthOk``); a larger length prefix is a
                            ProtocolError, checked before reading the body
==========================  ==============================================
"""

from __future__ import annotations

import asyncio
import inspect
import json as _json
import logging
import random
import re
import ssl as _ssl
import struct
import time
import uuid
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Dict, List, Optional, Sequence, Set, Tuple, Union

from .errors import (
    AuthFailed,
    BackendUnavailable,
    Busy,
    ClientClosed,
    ConnectError,
    ConnectionLost,
    FrameTooLarge,
    GatewayError,
    ProtocolError,
    RefreshFailed,
    RequestTimeout,
    ServerRefused,
    TooManyPendingRequests,
    UpstreamTimeout,
    upstream_error,
)
from .proto import (
    PROTOCOL_VERSION,
    Ack,
    Auth,
    AuthError,
    AuthOk,
    CloseReason,
    Error,
    ErrorCode,
    GoAway,
    Message,
    Ping,
    Pong,
    Priority,
    Push,
    Refresh,
    RefreshReply,
    TokenExpiring,
    Upstream,
    UpstreamReply,
    decode_frame,
    frame_bytes,
)

__all__ = ["Client", "ReceivedPush", "CloseInfo", "ClientStats", "TokenSource"]

log = logging.getLogger("gateway_client")

#: A token, or a function (plain or async) returning a fresh one. A function
#: is called for every connection attempt and every refresh.
TokenSource = Union[str, Callable[[], Union[str, Awaitable[str]]]]

#: Largest frame accepted from the server before ``AuthOk``, bytes. The
#: server sends only AuthOk, AuthError, Error or GoAway before it.
PREAUTH_FRAME_BYTES_MAX = 64 * 1024
#: Largest ``frame_bytes_max`` a gateway can be configured with, bytes.
FRAME_BYTES_LIMIT = 16 * 1024 * 1024
#: A session that lasted this long resets the reconnect backoff, seconds.
STABLE_SESSION_S = 10.0
#: Pushes handled before an Ack is sent even while more wait, count.
ACK_BATCH_MAX = 32
#: Least time between two automatic refreshes, seconds.
REFRESH_INTERVAL_MIN_S = 1.0

_ROUTE = re.compile(r"[A-Za-z0-9._-]{1,64}\Z")
_RETRYABLE = (Busy, UpstreamTimeout, BackendUnavailable, ConnectionLost)


@dataclass
class ReceivedPush:
    """A ``Push`` as handed to ``on_push``, with the connection it came on."""

    seq: int
    route: str
    payload: bytes
    ack_required: bool
    priority: Union[Priority, int]
    retransmit: bool
    conn_id: int
    node_id: str
    #: The room, for a push that came in a hot room's batch; else "".
    room: str = ""

    def text(self) -> str:
        return self.payload.decode("utf-8")

    def json(self) -> Any:
        return _json.loads(self.payload)


@dataclass
class CloseInfo:
    """Why a session (or the whole client) ended.

    ``reason`` is the ``GoAway`` reason when the server sent one,
    ``CLIENT_CLOSED`` after :meth:`Client.close`, ``AUTH_FAILED`` when a
    login was refused, and ``None`` for a close without a frame (EOF,
    reset, dead connection, protocol error: see ``error``).
    """

    reason: Union[CloseReason, int, None] = None
    message: str = ""
    error: Optional[BaseException] = None
    goaway: Optional[GoAway] = None
    server_error: Optional[Error] = None
    conn_id: int = 0
    node_id: str = ""
    will_reconnect: bool = False
    reconnect_delay_s: Optional[float] = None

    @property
    def reason_name(self) -> str:
        if self.reason is None:
            return "NONE"
        try:
            return CloseReason(self.reason).name
        except ValueError:
            return str(self.reason)


@dataclass
class ClientStats:
    """Counters since the client was made."""

    connects: int = 0
    reconnect_attempts: int = 0
    pushes: int = 0
    duplicate_pushes: int = 0
    acks_sent: int = 0
    pings_sent: int = 0
    pongs: int = 0
    refreshes: int = 0
    refresh_failures: int = 0
    token_expiring_notices: int = 0
    goaways: int = 0
    server_errors: int = 0
    #: Hot rooms' batches received (each push in one also counts in ``pushes``).
    batches: int = 0
    #: Pushes of hot rooms the gateway shed before sending (``Push.dropped``).
    room_pushes_dropped: int = 0


def parse_endpoint(ep: Union[str, Tuple[str, int]]) -> Tuple[str, int]:
    """``"host:port"``, ``"[v6]:port"`` or ``(host, port)`` to ``(host, port)``."""
    if isinstance(ep, tuple):
        return str(ep[0]), int(ep[1])
    host, sep, port_s = ep.rpartition(":")
    if not sep or not host or not port_s.isdigit() or not 0 < int(port_s) < 65536:
        raise ValueError(f"endpoint {ep!r} is not host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port_s)


async def _read_frame(reader: asyncio.StreamReader, limit: int) -> Message:
    head = await reader.readexactly(4)
    (n,) = struct.unpack(">I", head)
    if n > limit:
        raise ProtocolError(f"the server sent a frame of {n} bytes, over the limit of {limit}")
    return decode_frame(await reader.readexactly(n))


def _abort(writer: asyncio.StreamWriter) -> None:
    try:
        writer.transport.abort()
    except Exception:  # pragma: no cover - already closed
        pass


class _Session:
    """One authenticated connection and its tasks."""

    def __init__(
        self,
        client: "Client",
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        ok: AuthOk,
        endpoint: Tuple[str, int],
    ) -> None:
        self.c = client
        self.loop = asyncio.get_running_loop()
        self.reader, self.writer, self.ok, self.endpoint = reader, writer, ok, endpoint
        self.started = self.last_send = self.last_recv = self.loop.time()
        self.ping_sent_at: Optional[float] = None
        self.interval_s = (ok.heartbeat_interval_ms or 30_000) / 1000.0
        self.frame_max_out = ok.frame_bytes_max or 65_536
        self.frame_max_in = min(ok.frame_bytes_max or FRAME_BYTES_LIMIT, FRAME_BYTES_LIMIT)
        self.expires_at = ok.token_expires_at_unix_s
        self.usable = True
        self.pending: Set[int] = set()
        self.send_lock = asyncio.Lock()
        self.pushes: "asyncio.Queue[ReceivedPush]" = asyncio.Queue(maxsize=client._push_queue_max)
        self.highest_seen = 0  # highest ack-required seq received on this connection
        self.handled_upto = 0  # highest seq whose handler has returned
        self.acked_upto = 0  # highest seq acked
        self.handling = False
        self.stop_dispatch = False
        self.refresh_lock = asyncio.Lock()
        self.refresh_waiter: Optional["asyncio.Future[RefreshReply]"] = None
        self.refresh_wake = asyncio.Event()
        self.notice_exp = 0  # expires_at_unix_s of the latest TokenExpiring
        self.hb_wake = asyncio.Event()
        self.goaway: Optional[GoAway] = None
        self.goaway_at = 0.0
        self.server_error: Optional[Error] = None
        self.done: "asyncio.Future[CloseInfo]" = self.loop.create_future()
        self.tasks: List["asyncio.Task[Any]"] = []
        self.dispatcher: Optional["asyncio.Task[Any]"] = None

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self.tasks.append(self.loop.create_task(self._read_loop()))
        self.tasks.append(self.loop.create_task(self._heartbeat_loop()))
        self.dispatcher = self.loop.create_task(self._dispatch_loop())
        self.tasks.append(self.dispatcher)
        if self.c._auto_refresh and callable(self.c._token):
            self.tasks.append(self.loop.create_task(self._refresh_loop()))

    def finish(
        self,
        error: Optional[BaseException] = None,
        *,
        reason: Union[CloseReason, int, None] = None,
        graceful: bool = False,
    ) -> None:
        """Ends the session (idempotent): tasks stop, requests in flight
        fail with ConnectionLost, the socket closes."""
        if self.done.done():
            return
        if reason is None and self.goaway is not None:
            reason = self.goaway.reason
        message = self.goaway.message if self.goaway is not None else ""
        if not message and error is not None:
            message = str(error) or type(error).__name__
        if not message and reason is None:
            message = "the server closed the connection without a frame"
        info = CloseInfo(
            reason=reason,
            message=message,
            error=error,
            goaway=self.goaway,
            server_error=self.server_error,
            conn_id=self.ok.conn_id,
            node_id=self.ok.node_id,
        )
        self.usable = False
        me = asyncio.current_task()
        for t in self.tasks:
            if t is not me and not t.done():
                t.cancel()
        lost = ConnectionLost(f"connection {self.ok.conn_id} closed ({info.reason_name}: {info.message})")
        for corr in list(self.pending):
            entry = self.c._pending.get(corr)
            if entry is not None and not entry[0].done():
                entry[0].set_exception(lost)
        self.pending.clear()
        if self.refresh_waiter is not None and not self.refresh_waiter.done():
            self.refresh_waiter.set_exception(lost)
        if graceful:
            try:
                self.writer.close()
            except Exception:  # pragma: no cover
                _abort(self.writer)
        else:
            _abort(self.writer)
        self.done.set_result(info)
        self.c._session_ended(self)

    async def shutdown(self, reason: Union[CloseReason, int], handler_wait_s: float) -> None:
        """A clean close by the client: let the handler finish the push it
        is on, ack what was handled, close the socket (TLS: close_notify)."""
        if self.done.done():
            return
        self.usable = False
        self.c._session_unusable(self)
        self.stop_dispatch = True
        d = self.dispatcher
        if d is not None and not d.done():
            if self.handling:
                await asyncio.wait({d}, timeout=handler_wait_s)
            if not d.done():
                d.cancel()
        if self.handled_upto > self.acked_upto and not self.done.done():
            try:
                await asyncio.wait_for(self._send_ack(self.handled_upto), timeout=1.0)
            except (asyncio.TimeoutError, GatewayError):
                pass
        self.finish(reason=reason, graceful=True)
        try:
            await asyncio.wait_for(self.writer.wait_closed(), timeout=1.0)
        except (asyncio.TimeoutError, OSError, _ssl.SSLError):
            _abort(self.writer)
        except Exception:  # pragma: no cover
            _abort(self.writer)

    # ------------------------------------------------------------ sending

    async def send(self, msg: Message) -> None:
        if self.done.done():
            raise ConnectionLost(f"connection {self.ok.conn_id} is closed")
        data = frame_bytes(msg)
        if len(data) - 4 > self.frame_max_out:
            raise FrameTooLarge(
                f"{type(msg).__name__} frame of {len(data) - 4} bytes is over the server's "
                f"frame_bytes_max of {self.frame_max_out}"
            )
        async with self.send_lock:
            if self.done.done():
                raise ConnectionLost(f"connection {self.ok.conn_id} is closed")
            self.writer.write(data)
            self.last_send = self.loop.time()
            try:
                await asyncio.wait_for(self.writer.drain(), self.c._write_timeout_s)
            except asyncio.TimeoutError:
                err = ConnectionError(f"the server has not read what was sent for {self.c._write_timeout_s} s")
                self.finish(err)
                raise ConnectionLost(str(err)) from None
            except (OSError, _ssl.SSLError, RuntimeError) as e:
                self.finish(e)
                raise ConnectionLost(f"write failed: {e!r}") from e

    async def _send_ack(self, seq: int, force: bool = False) -> None:
        if seq <= self.acked_upto and not force:
            return
        self.acked_upto = max(self.acked_upto, seq)
        await self.send(Ack(seq=seq))
        self.c.stats.acks_sent += 1

    # ------------------------------------------------------------ reading

    async def _read_loop(self) -> None:
        try:
            while True:
                msg = await _read_frame(self.reader, self.frame_max_in)
                self.last_recv = self.loop.time()
                self.ping_sent_at = None
                await self._on_frame(msg)
        except asyncio.CancelledError:
            raise
        except asyncio.IncompleteReadError:
            self.finish(None)  # EOF: the reason is the GoAway's, if any
        except ProtocolError as e:
            log.warning("conn %s: %s; closing", self.ok.conn_id, e)
            self.finish(e)
        except (OSError, _ssl.SSLError) as e:
            self.finish(e)
        except Exception as e:  # a bug here must not leave a half-dead session
            log.exception("conn %s: reader failed", self.ok.conn_id)
            self.finish(e)

    async def _on_frame(self, msg: Message) -> None:
        c = self.c
        if isinstance(msg, UpstreamReply):
            entry = c._pending.get(msg.correlation_id)
            if entry is not None and entry[1] is self and not entry[0].done():
                entry[0].set_result(msg)
            else:
                log.debug("reply to unknown or abandoned request %s", msg.correlation_id)
        elif isinstance(msg, Push):
            await self._on_push(msg)
        elif isinstance(msg, Pong):
            c.stats.pongs += 1
            if msg.heartbeat_interval_ms and msg.heartbeat_interval_ms / 1000.0 != self.interval_s:
                self.interval_s = msg.heartbeat_interval_ms / 1000.0
                self.hb_wake.set()
        elif isinstance(msg, GoAway):
            await self._on_goaway(msg)
        elif isinstance(msg, RefreshReply):
            w = self.refresh_waiter
            if w is not None and not w.done():
                w.set_result(msg)
            else:
                log.warning("conn %s: RefreshReply nobody asked for", self.ok.conn_id)
        elif isinstance(msg, TokenExpiring):
            c.stats.token_expiring_notices += 1
            log.info("conn %s: token expires at %s", self.ok.conn_id, msg.expires_at_unix_s)
            await c._emit(c._on_token_expiring, msg)
            self.notice_exp = msg.expires_at_unix_s
            self.refresh_wake.set()
        elif isinstance(msg, Error):
            c.stats.server_errors += 1
            self.server_error = msg
            log.warning("conn %s: server error %s: %s", self.ok.conn_id, _code_name(msg.code), msg.message)
            await c._emit(c._on_error, msg)
        else:
            raise ProtocolError(f"unexpected {type(msg).__name__} frame from the server after AuthOk")

    async def _on_goaway(self, msg: GoAway) -> None:
        c = self.c
        c.stats.goaways += 1
        self.goaway, self.goaway_at = msg, self.loop.time()
        log.info(
            "conn %s: GoAway %s retry_after_ms=%s endpoints=%s: %s",
            self.ok.conn_id,
            _reason_name(msg.reason),
            msg.retry_after_ms,
            msg.endpoints,
            msg.message,
        )
        # New requests wait for the next session (or fail if there is none).
        self.usable = False
        c._session_unusable(self)
        await c._emit(c._on_goaway, msg)
        # DRAIN, NODE_UNAVAILABLE: the connection keeps working; finish what
        # is in flight, then leave. KICKED, TOKEN_EXPIRED: the server closes
        # right after (and if it did not, this closes it after the grace).
        self.tasks.append(self.loop.create_task(self._leave()))

    async def _leave(self) -> None:
        deadline = self.loop.time() + self.c._drain_grace_s
        futs = [self.c._pending[corr][0] for corr in self.pending if corr in self.c._pending]
        if futs:
            await asyncio.wait(futs, timeout=max(0.0, deadline - self.loop.time()))
        try:
            await asyncio.wait_for(self.pushes.join(), timeout=max(0.0, deadline - self.loop.time()))
        except asyncio.TimeoutError:
            pass
        reason = self.goaway.reason if self.goaway is not None else CloseReason.DRAIN
        await self.shutdown(reason, handler_wait_s=max(0.0, deadline - self.loop.time()))

    async def _on_push(self, p: Push) -> None:
        c = self.c
        if p.batch or p.room:
            # A hot room's batch (PROTOCOL.md §7.5): never acked; each push
            # in it is handled as if it had come alone, naming the room.
            c.stats.batches += 1
            c.stats.room_pushes_dropped += p.dropped
            for q in p.batch:
                if q.ack_required or q.batch:
                    raise ProtocolError("a batch may hold only plain pushes")
                await self._on_one(q, p.room)
            return
        await self._on_one(p, "")

    async def _on_one(self, p: Push, room: str) -> None:
        c = self.c
        c.stats.pushes += 1
        if p.ack_required:
            if p.seq == 0:
                raise ProtocolError("ack-required push without a seq")
            if p.seq <= self.highest_seen:
                # A resend of a seq already seen on this connection: never
                # dispatched twice; acked again once it has been handled.
                c.stats.duplicate_pushes += 1
                upto = self.handled_upto if c._auto_ack else self.acked_upto
                if 0 < p.seq <= upto:
                    await self._send_ack(upto, force=True)
                return
            self.highest_seen = p.seq
        rp = ReceivedPush(
            seq=p.seq,
            route=p.route,
            payload=p.payload,
            ack_required=p.ack_required,
            priority=p.priority,
            retransmit=p.retransmit,
            conn_id=self.ok.conn_id,
            node_id=self.ok.node_id,
            room=room,
        )
        await self.pushes.put(rp)  # bounded: a slow handler stops the reader

    async def _dispatch_loop(self) -> None:
        c = self.c
        while not self.stop_dispatch:
            p = await self.pushes.get()
            self.handling = True
            try:
                await c._handle_push(p)
                if p.ack_required and p.seq > self.handled_upto:
                    self.handled_upto = p.seq
                if (
                    c._auto_ack
                    and self.handled_upto > self.acked_upto
                    and (
                        self.pushes.empty()
                        or self.stop_dispatch
                        or self.handled_upto - self.acked_upto >= ACK_BATCH_MAX
                    )
                ):
                    await self._send_ack(self.handled_upto)
            except ConnectionLost:
                return
            finally:
                self.handling = False
                self.pushes.task_done()

    # ------------------------------------------------------------ heartbeats

    async def _heartbeat_loop(self) -> None:
        pong_timeout = self.c._pong_timeout_s
        while True:
            now = self.loop.time()
            if self.ping_sent_at is not None and now - self.ping_sent_at >= pong_timeout:
                self.finish(ConnectionError(f"no frame from the server within {pong_timeout} s of a Ping"))
                return
            due = min(self.last_send, self.last_recv if self.ping_sent_at is None else now) + self.interval_s
            if now >= due:
                if self.ping_sent_at is None:
                    self.ping_sent_at = now
                try:
                    await self.send(Ping())
                except GatewayError:
                    return
                self.c.stats.pings_sent += 1
                continue
            wake = due
            if self.ping_sent_at is not None:
                wake = min(wake, self.ping_sent_at + pong_timeout)
            self.hb_wake.clear()
            try:
                await asyncio.wait_for(self.hb_wake.wait(), timeout=max(0.0, wake - now))
            except asyncio.TimeoutError:
                pass

    # ------------------------------------------------------------ refresh

    async def refresh(self, token: Optional[str] = None) -> RefreshReply:
        c = self.c
        async with self.refresh_lock:
            if token is None:
                try:
                    token = await asyncio.wait_for(c._fetch_token(), c._request_timeout_s)
                except Exception as e:
                    c.stats.refresh_failures += 1
                    raise RefreshFailed(None, f"token provider failed: {e!r}") from e
            fut: "asyncio.Future[RefreshReply]" = self.loop.create_future()
            self.refresh_waiter = fut
            try:
                await self.send(Refresh(token=token))
                reply = await asyncio.wait_for(fut, c._request_timeout_s)
            except asyncio.TimeoutError:
                c.stats.refresh_failures += 1
                raise RequestTimeout(f"no RefreshReply within {c._request_timeout_s} s") from None
            finally:
                self.refresh_waiter = None
                if fut.done() and not fut.cancelled():
                    fut.exception()
            if reply.code != 0:
                c.stats.refresh_failures += 1
                raise RefreshFailed(reply.code, reply.message)
            self.expires_at = reply.expires_at_unix_s
            c.stats.refreshes += 1
            self.refresh_wake.set()
            log.info("conn %s: token refreshed, session ends at %s", self.ok.conn_id, self.expires_at)
            await c._emit(c._on_refresh, reply)
            return reply

    async def _refresh_loop(self) -> None:
        margin = self.c._refresh_margin_s
        failures = 0
        last = -1e9
        while True:
            self.refresh_wake.clear()
            remaining = self.expires_at - time.time() if self.expires_at else None
            if self.notice_exp and self.notice_exp < self.expires_at:
                self.notice_exp = 0  # a notice about a token already replaced
            if self.notice_exp:
                delay: Optional[float] = 0.0
            elif remaining is None or margin is None or remaining <= 0:
                delay = None  # nothing to schedule: wait for a TokenExpiring notice
            elif failures:
                delay = min(max(remaining / 2, 0.0), float(2**failures))
            else:
                delay = max(0.0, remaining - min(margin, remaining / 2))
            if delay is not None:
                delay = max(delay, last + REFRESH_INTERVAL_MIN_S - self.loop.time())
            if delay is None or delay > 0:
                try:
                    await asyncio.wait_for(self.refresh_wake.wait(), timeout=delay)
                    continue  # woken: recompute
                except asyncio.TimeoutError:
                    pass
            self.notice_exp = 0
            last = self.loop.time()
            try:
                await self.refresh()
                failures = 0
            except ConnectionLost:
                return
            except (RefreshFailed, RequestTimeout, FrameTooLarge) as e:
                failures += 1
                left = self.expires_at - time.time() if self.expires_at else 0
                log.warning("conn %s: %s (%.1f s of the session left)", self.ok.conn_id, e, left)
                if self.expires_at and left < REFRESH_INTERVAL_MIN_S:
                    # Too late: the server ends the session (GoAway
                    # TOKEN_EXPIRED) and the client reconnects with a new token.
                    return


def _code_name(code: int) -> str:
    try:
        return ErrorCode(code).name
    except ValueError:
        return str(code)


def _reason_name(reason: int) -> str:
    try:
        return CloseReason(reason).name
    except ValueError:
        return str(reason)


class Client:
    """A gateway client with reconnects, heartbeats, acks and token refresh.

    ``endpoints``: ``"host:port"`` (or a list of them, or ``(host, port)``
    tuples), tried in order; the next one after a failed attempt.
    ``token``: a JWT, or a function (plain or async) returning a fresh one;
    with a function, tokens are fetched for every connection attempt and
    refreshed in band before they expire.

    Typical use::

        async with Client("127.0.0.1:7000", get_token, on_push=handle) as c:
            reply = await c.request("echo", b"hi")

    See README.md for every option.
    """

    def __init__(
        self,
        endpoints: Union[str, Tuple[str, int], Sequence[Union[str, Tuple[str, int]]]],
        token: TokenSource,
        *,
        device_id: str = "",
        metadata: Optional[Dict[str, str]] = None,
        ssl: Optional[_ssl.SSLContext] = None,
        server_hostname: Optional[str] = None,
        on_push: Optional[Callable[[ReceivedPush], Any]] = None,
        auto_ack: bool = True,
        resume_seq: int = 0,
        resume_seq_of: Optional[Callable[[ReceivedPush], Optional[int]]] = None,
        heartbeat_interval_ms: int = 0,
        push_batches: bool = True,
        pong_timeout_s: float = 10.0,
        connect_timeout_s: float = 10.0,
        request_timeout_s: float = 10.0,
        write_timeout_s: float = 10.0,
        reconnect: bool = True,
        reconnect_delay_min_s: float = 0.5,
        reconnect_delay_max_s: float = 30.0,
        reconnect_attempts_max: Optional[int] = None,
        reconnect_after_kick: bool = False,
        auto_refresh: bool = True,
        refresh_margin_s: Optional[float] = 60.0,
        drain_grace_s: float = 5.0,
        pending_requests_max: int = 1024,
        push_queue_max: int = 256,
        send_buffer_bytes_max: int = 256 * 1024,
        on_connect: Optional[Callable[[AuthOk], Any]] = None,
        on_disconnect: Optional[Callable[[CloseInfo], Any]] = None,
        on_closed: Optional[Callable[[CloseInfo], Any]] = None,
        on_goaway: Optional[Callable[[GoAway], Any]] = None,
        on_error: Optional[Callable[[Error], Any]] = None,
        on_token_expiring: Optional[Callable[[TokenExpiring], Any]] = None,
        on_refresh: Optional[Callable[[RefreshReply], Any]] = None,
    ) -> None:
        if isinstance(endpoints, (str, tuple)):
            endpoints = [endpoints]
        self._endpoints = [parse_endpoint(e) for e in endpoints]
        if not self._endpoints:
            raise ValueError("no endpoint")
        if not isinstance(token, str) and not callable(token):
            raise TypeError("token must be a str or a function returning one")
        if not 0 < reconnect_delay_min_s <= reconnect_delay_max_s:
            raise ValueError("need 0 < reconnect_delay_min_s <= reconnect_delay_max_s")
        for name, v in (
            ("pending_requests_max", pending_requests_max),
            ("push_queue_max", push_queue_max),
            ("send_buffer_bytes_max", send_buffer_bytes_max),
        ):
            if v < 1:
                raise ValueError(f"{name} must be at least 1")
        for name, f in (
            ("pong_timeout_s", pong_timeout_s),
            ("connect_timeout_s", connect_timeout_s),
            ("request_timeout_s", request_timeout_s),
            ("write_timeout_s", write_timeout_s),
        ):
            if not f > 0:
                raise ValueError(f"{name} must be above 0")
        self._token = token
        self._device_id = device_id
        self._metadata = dict(metadata or {})
        self._ssl = ssl
        self._server_hostname = server_hostname
        self._on_push = on_push
        self._auto_ack = auto_ack
        self._resume_seq = resume_seq
        self._resume_seq_of = resume_seq_of
        self._heartbeat_interval_ms = heartbeat_interval_ms
        self._push_batches = push_batches
        self._pong_timeout_s = pong_timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._request_timeout_s = request_timeout_s
        self._write_timeout_s = write_timeout_s
        self._reconnect = reconnect
        self._delay_min_s = reconnect_delay_min_s
        self._delay_max_s = reconnect_delay_max_s
        self._attempts_max = reconnect_attempts_max
        self._reconnect_after_kick = reconnect_after_kick
        self._auto_refresh = auto_refresh
        self._refresh_margin_s = refresh_margin_s
        self._drain_grace_s = drain_grace_s
        self._pending_max = pending_requests_max
        self._push_queue_max = push_queue_max
        self._send_buffer_bytes_max = send_buffer_bytes_max
        self._on_connect = on_connect
        self._on_disconnect = on_disconnect
        self._on_closed = on_closed
        self._on_goaway = on_goaway
        self._on_error = on_error
        self._on_token_expiring = on_token_expiring
        self._on_refresh = on_refresh

        self.stats = ClientStats()
        self._ep_i = 0
        self._preferred: List[Tuple[str, int]] = []
        self._corr = 0
        self._pending: Dict[int, Tuple["asyncio.Future[UpstreamReply]", _Session]] = {}
        self._waiting = 0
        self._session: Optional[_Session] = None
        self._live: Set[_Session] = set()
        self._auth_ok: Optional[AuthOk] = None
        self._started = False
        self._closing = False
        self._final: Optional[CloseInfo] = None
        self._supervisor: Optional["asyncio.Task[Any]"] = None
        # asyncio objects are made on the running loop, in connect().
        self._changed: Optional[asyncio.Event] = None
        self._close_event: Optional[asyncio.Event] = None
        self._closed_fut: Optional["asyncio.Future[Any]"] = None

    # ------------------------------------------------------------ public API

    async def __aenter__(self) -> "Client":
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        """True while a session is usable for new requests."""
        s = self._session
        return s is not None and s.usable and not s.done.done()

    @property
    def auth_ok(self) -> Optional[AuthOk]:
        """The ``AuthOk`` of the latest session."""
        return self._auth_ok

    @property
    def conn_id(self) -> int:
        return self._auth_ok.conn_id if self._auth_ok else 0

    @property
    def node_id(self) -> str:
        return self._auth_ok.node_id if self._auth_ok else ""

    @property
    def token_expires_at(self) -> int:
        """When the current session ends unless refreshed, unix seconds (0: never)."""
        s = self._session
        return s.expires_at if s is not None else 0

    @property
    def heartbeat_interval_s(self) -> float:
        """The interval in force on the current session (AuthOk, then Pong)."""
        s = self._session
        return s.interval_s if s is not None else 0.0

    @property
    def resume_seq(self) -> int:
        """Sent as ``Auth.resume_seq`` on every (re)connect: the newest
        backend-defined sequence the application has stored (PROTOCOL.md
        §7.4). Set it, or let ``resume_seq_of`` raise it after each push."""
        return self._resume_seq

    @resume_seq.setter
    def resume_seq(self, value: int) -> None:
        if not 0 <= int(value) < 1 << 64:
            raise ValueError("resume_seq must be a u64")
        self._resume_seq = int(value)

    @property
    def closed(self) -> bool:
        return self._final is not None

    @property
    def close_info(self) -> Optional[CloseInfo]:
        """Why the client stopped for good, once it has."""
        return self._final

    async def connect(self) -> AuthOk:
        """Opens the first session (trying each endpoint once) and starts
        the reconnect loop. Raises AuthFailed when the login is refused
        (no retry), ServerRefused, or ConnectError."""
        if self._closing or self._final is not None:
            raise ClientClosed("client is closed", self._final)
        if self._started:
            s = await self._wait_session(asyncio.get_running_loop().time() + self._connect_timeout_s)
            return s.ok
        if self._changed is None:
            self._changed = asyncio.Event()
            self._close_event = asyncio.Event()
            self._closed_fut = asyncio.get_running_loop().create_future()
        errors: List[BaseException] = []
        for _ in range(len(self._endpoints)):
            try:
                session = await self._open_session(self._endpoints[self._ep_i])
                break
            except (ConnectError, ProtocolError) as e:
                if isinstance(e, ServerRefused):
                    raise
                errors.append(e)
                self._ep_i = (self._ep_i + 1) % len(self._endpoints)
        else:
            if len(errors) == 1:
                raise errors[0]
            raise ConnectError("; ".join(str(e) for e in errors)) from errors[-1]
        self._started = True
        self._supervisor = asyncio.get_running_loop().create_task(self._supervise(session))
        return session.ok

    async def request(
        self,
        route: str,
        payload: Union[bytes, bytearray, memoryview, str] = b"",
        *,
        timeout_s: Optional[float] = None,
        client_msg_id: Optional[str] = None,
        retries: int = 0,
        room: str = "",
    ) -> UpstreamReply:
        """Sends an ``Upstream`` and returns its ``UpstreamReply`` (status 0).

        A non-zero status raises the matching :class:`UpstreamError`
        (``Busy``, ``UpstreamTimeout``, ``UnknownRoute``, ...). Waits for a
        session while reconnecting. Raises ``RequestTimeout`` after
        ``timeout_s`` (default ``request_timeout_s``) in all, and
        ``ConnectionLost`` if the connection closes with the request in
        flight. With ``retries`` > 0, BUSY, TIMEOUT, BACKEND_UNAVAILABLE and
        lost connections are retried after the server's ``retry_after_ms``
        (plus jitter) with the same ``client_msg_id``, within the timeout.
        ``room`` names the room the request is about (a quiz answer, a
        like: PROTOCOL.md §7.5): it counts against the room's upstream rate
        and, for the gateway's ``rooms.aggregate_routes``, is gathered with
        the room's other requests into one backend call (§14.2.1).
        """
        if not isinstance(route, str) or not _ROUTE.match(route):
            raise ValueError(f"route {route!r} is not 1..=64 bytes of [A-Za-z0-9._-]")
        data = payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)
        loop = asyncio.get_running_loop()
        timeout = self._request_timeout_s if timeout_s is None else timeout_s
        deadline = loop.time() + timeout
        cmid = uuid.uuid4().hex if client_msg_id is None else client_msg_id
        attempt = 0
        while True:
            try:
                return await self._request_once(route, data, cmid, deadline, timeout, room)
            except _RETRYABLE as e:
                if attempt >= retries:
                    raise
                attempt += 1
                wait = getattr(e, "retry_after_s", 0.0)
                wait += random.uniform(0, min(1.0, wait / 2 + 0.05))
                if loop.time() + wait >= deadline:
                    raise
                log.debug("%s: %s; retry %d in %.2f s", route, e, attempt, wait)
                await asyncio.sleep(wait)

    async def ack(self, push: ReceivedPush) -> bool:
        """Acks ``push`` and every earlier one of its connection (acks are
        cumulative). For ``auto_ack=False``. False when its connection is
        gone (the server then resends or reports it; nothing to do)."""
        if not push.ack_required or not push.seq:
            return False
        for s in list(self._live):
            if s.ok.conn_id == push.conn_id and not s.done.done():
                try:
                    await s._send_ack(push.seq)
                except ConnectionLost:
                    return False
                return True
        return False

    async def refresh_token(self, token: Optional[str] = None) -> RefreshReply:
        """Sends ``Refresh`` with ``token`` (default: from the token
        provider) and returns the ``RefreshReply``; raises RefreshFailed if
        the server refuses it (the old expiry stands)."""
        loop = asyncio.get_running_loop()
        s = await self._wait_session(loop.time() + self._request_timeout_s)
        return await s.refresh(token)

    async def close(self, timeout_s: float = 5.0) -> None:
        """Closes for good: no reconnect. The push being handled may finish
        (up to ``timeout_s``) and handled pushes are acked; pushes still
        queued are neither handled nor acked (the server reports them to the
        backend as undelivered). Pending requests fail with ConnectionLost."""
        if self._closing:
            if self._closed_fut is not None:
                await asyncio.shield(self._closed_fut)
            return
        self._closing = True
        if self._close_event is not None:
            self._close_event.set()
        for s in list(self._live):
            await s.shutdown(CloseReason.CLIENT_CLOSED, handler_wait_s=timeout_s)
        sup = self._supervisor
        if sup is not None and not sup.done() and sup is not asyncio.current_task():
            sup.cancel()
            try:
                await sup
            except (asyncio.CancelledError, Exception):
                pass
        for s in list(self._live):  # one the supervisor opened meanwhile
            await s.shutdown(CloseReason.CLIENT_CLOSED, handler_wait_s=timeout_s)
        if self._final is None:
            ok = self._auth_ok
            await self._stop(
                CloseInfo(
                    reason=CloseReason.CLIENT_CLOSED,
                    message="closed by the client",
                    conn_id=ok.conn_id if ok else 0,
                    node_id=ok.node_id if ok else "",
                )
            )

    async def wait_closed(self) -> CloseInfo:
        """Waits until the client stops for good; returns why."""
        if self._closed_fut is None:
            raise GatewayError("connect() has not been called")
        return await asyncio.shield(self._closed_fut)

    # ------------------------------------------------------------ internals

    async def _emit(self, cb: Optional[Callable[..., Any]], *args: Any) -> None:
        if cb is None:
            return
        try:
            r = cb(*args)
            if inspect.isawaitable(r):
                await r
        except Exception:
            log.exception("callback %r raised", cb)

    async def _handle_push(self, p: ReceivedPush) -> None:
        if self._on_push is not None:
            try:
                r = self._on_push(p)
                if inspect.isawaitable(r):
                    await r
            except Exception:
                # Still acked: acks are cumulative, so holding this one back
                # would hold back every later push too.
                log.exception("on_push raised for push seq=%s route=%s; acking it anyway", p.seq, p.route)
        if self._resume_seq_of is not None:
            try:
                v = self._resume_seq_of(p)
                if v is not None and int(v) > self._resume_seq:
                    self.resume_seq = int(v)
            except Exception:
                log.exception("resume_seq_of raised for push seq=%s", p.seq)

    async def _fetch_token(self) -> str:
        src = self._token
        t: object = src() if callable(src) else src
        if inspect.isawaitable(t):
            t = await t
        if not isinstance(t, str) or not t:
            raise TypeError(f"the token provider returned {type(t).__name__}, not a non-empty str")
        return t

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = asyncio.Event()

    def _session_unusable(self, s: _Session) -> None:
        if self._session is s:
            self._session = None
            self._notify()

    def _session_ended(self, s: _Session) -> None:
        self._live.discard(s)
        self._session_unusable(s)

    async def _wait_session(self, deadline: float) -> _Session:
        loop = asyncio.get_running_loop()
        if not self._started:
            raise GatewayError("connect() has not been called")
        while True:
            if self._final is not None or self._closing:
                raise ClientClosed(
                    f"client is closed ({self._final.reason_name if self._final else 'CLIENT_CLOSED'})",
                    self._final,
                )
            s = self._session
            if s is not None and s.usable and not s.done.done():
                return s
            ev = self._changed
            assert ev is not None
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise RequestTimeout("no connection to the gateway within the timeout (reconnecting)")
            try:
                await asyncio.wait_for(ev.wait(), remaining)
            except asyncio.TimeoutError:
                raise RequestTimeout("no connection to the gateway within the timeout (reconnecting)") from None

    async def _request_once(
        self, route: str, payload: bytes, cmid: str, deadline: float, timeout: float, room: str = ""
    ) -> UpstreamReply:
        loop = asyncio.get_running_loop()
        if len(self._pending) + self._waiting >= self._pending_max:
            raise TooManyPendingRequests(f"{self._pending_max} requests are already pending")
        self._waiting += 1
        try:
            s = await self._wait_session(deadline)
        finally:
            self._waiting -= 1
        self._corr = (self._corr + 1) & ((1 << 64) - 1) or 1
        corr = self._corr
        fut: "asyncio.Future[UpstreamReply]" = loop.create_future()
        self._pending[corr] = (fut, s)
        s.pending.add(corr)
        try:
            try:
                await asyncio.wait_for(
                    s.send(Upstream(correlation_id=corr, route=route, client_msg_id=cmid, payload=payload, room=room)),
                    max(0.0, deadline - loop.time()),
                )
                reply: UpstreamReply = await asyncio.wait_for(fut, max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                raise RequestTimeout(f"{route}: no reply within {timeout} s") from None
        finally:
            self._pending.pop(corr, None)
            s.pending.discard(corr)
            if fut.done() and not fut.cancelled():
                fut.exception()  # retrieved: no "never retrieved" warning if it was not awaited
        if reply.status:
            raise upstream_error(reply.status, reply.payload, reply.retry_after_ms, route, corr)
        return reply

    async def _open_session(self, ep: Tuple[str, int]) -> _Session:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._connect_timeout_s

        def left() -> float:
            return max(0.0, deadline - loop.time())

        try:
            token = await asyncio.wait_for(self._fetch_token(), left())
        except asyncio.TimeoutError:
            raise ConnectError("the token provider did not answer within connect_timeout_s") from None
        except Exception as e:
            raise ConnectError(f"the token provider failed: {e!r}") from e
        host, port = ep
        where = f"{host}:{port}"
        try:
            kw: Dict[str, Any] = {}
            if self._ssl is not None:
                kw["ssl"] = self._ssl
                if self._server_hostname is not None:
                    kw["server_hostname"] = self._server_hostname
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port, **kw), left())
        except asyncio.TimeoutError:
            raise ConnectError(f"connecting to {where} timed out") from None
        except (OSError, _ssl.SSLError) as e:
            raise ConnectError(f"connecting to {where}: {e}") from e
        try:
            writer.transport.set_write_buffer_limits(high=self._send_buffer_bytes_max)
            auth = Auth(
                protocol_version=PROTOCOL_VERSION,
                token=token,
                device_id=self._device_id,
                resume_seq=self._resume_seq,
                metadata=self._metadata,
                heartbeat_interval_ms=self._heartbeat_interval_ms,
                push_batches=self._push_batches,
            )
            writer.write(frame_bytes(auth))
            await asyncio.wait_for(writer.drain(), left())
            msg = await asyncio.wait_for(_read_frame(reader, PREAUTH_FRAME_BYTES_MAX), left())
        except asyncio.TimeoutError:
            _abort(writer)
            raise ConnectError(f"{where}: no answer to Auth within {self._connect_timeout_s} s") from None
        except asyncio.IncompleteReadError:
            _abort(writer)
            raise ConnectError(f"{where} closed the connection before answering Auth") from None
        except ProtocolError:
            _abort(writer)
            raise
        except (OSError, _ssl.SSLError) as e:
            _abort(writer)
            raise ConnectError(f"{where}: {e}") from e
        except BaseException:
            _abort(writer)
            raise
        if isinstance(msg, AuthOk):
            s = _Session(self, reader, writer, msg, ep)
            self._live.add(s)
            self._session = s
            self._auth_ok = msg
            self.stats.connects += 1
            s.start()
            self._notify()
            log.info(
                "connected to %s (node %s, conn %s, user %s, device %s, heartbeat %s ms)",
                where,
                msg.node_id,
                msg.conn_id,
                msg.user_id,
                msg.device_id,
                msg.heartbeat_interval_ms,
            )
            await self._emit(self._on_connect, msg)
            return s
        _abort(writer)
        if isinstance(msg, AuthError):
            raise AuthFailed(msg.code, msg.message)
        if isinstance(msg, Error):
            raise ServerRefused(
                f"{where} refused the connection: {_code_name(msg.code)}: {msg.message}",
                code=msg.code,
                retry_after_ms=msg.retry_after_ms,
            )
        if isinstance(msg, GoAway):
            raise ServerRefused(
                f"{where} sent GoAway {_reason_name(msg.reason)} before AuthOk: {msg.message}",
                reason=msg.reason,
                retry_after_ms=msg.retry_after_ms,
                endpoints=msg.endpoints,
            )
        raise ProtocolError(f"{where} answered Auth with {type(msg).__name__}")

    def _backoff(self, attempt: int, floor_s: float = 0.0) -> float:
        base = min(self._delay_max_s, self._delay_min_s * 2 ** min(attempt, 32))
        delay = random.uniform(base / 2, base)
        if floor_s > 0:
            # The server's retry_after is a floor (it may exceed the max); jitter on top.
            delay = max(delay, floor_s + random.uniform(0, self._delay_min_s))
        return delay

    def _prefer(self, endpoints: Sequence[str]) -> None:
        eps = []
        for e in endpoints:
            try:
                eps.append(parse_endpoint(e))
            except ValueError:
                log.warning("ignoring GoAway endpoint %r", e)
        random.shuffle(eps)
        self._preferred = eps

    def _plan(self, info: CloseInfo, s: _Session) -> Optional[float]:
        """After a session ended: None = do not reconnect, else the least
        delay the server asked for, seconds."""
        if not self._reconnect:
            return None
        g = info.goaway
        if g is not None:
            if g.reason == CloseReason.KICKED:
                return 0.0 if self._reconnect_after_kick else None
            if g.reason == CloseReason.TOKEN_EXPIRED:
                return 0.0 if callable(self._token) else None
            if g.reason in (CloseReason.DRAIN, CloseReason.NODE_UNAVAILABLE):
                if g.endpoints:
                    self._prefer(g.endpoints)
                elif len(self._endpoints) > 1 and s.endpoint == self._endpoints[self._ep_i]:
                    self._ep_i = (self._ep_i + 1) % len(self._endpoints)  # elsewhere
                left = s.goaway_at + g.retry_after_ms / 1000.0 - s.loop.time()
                return max(0.0, left)
            return g.retry_after_ms / 1000.0
        e = info.server_error
        if e is not None and e.code in (ErrorCode.SERVER_FULL, ErrorCode.BUSY):
            return e.retry_after_ms / 1000.0
        return 0.0

    async def _sleep(self, delay: float) -> None:
        assert self._close_event is not None
        try:
            await asyncio.wait_for(self._close_event.wait(), timeout=delay)
        except asyncio.TimeoutError:
            pass

    async def _stop(self, info: CloseInfo) -> None:
        if self._final is not None:
            return
        info.will_reconnect = False
        info.reconnect_delay_s = None
        self._final = info
        self._session = None
        self._notify()
        if self._closed_fut is not None and not self._closed_fut.done():
            self._closed_fut.set_result(info)
        log.info("client stopped: %s %s", info.reason_name, info.message)
        await self._emit(self._on_closed, info)

    async def _supervise(self, session: _Session) -> None:
        loop = asyncio.get_running_loop()
        attempt = 0
        last: Optional[BaseException] = None
        while True:
            info: CloseInfo = await asyncio.shield(session.done)
            if self._closing:
                return
            if loop.time() - session.started >= STABLE_SESSION_S:
                attempt = 0
            floor = self._plan(info, session)
            log.info(
                "conn %s closed: %s %s%s",
                info.conn_id,
                info.reason_name,
                info.message,
                "" if floor is not None else " (no reconnect)",
            )
            if floor is None:
                await self._emit(self._on_disconnect, info)
                await self._stop(info)
                return
            delay = self._backoff(attempt, floor)
            info.will_reconnect, info.reconnect_delay_s = True, delay
            await self._emit(self._on_disconnect, info)
            expired_once = False
            while True:
                await self._sleep(delay)
                if self._closing:
                    return
                attempt += 1
                self.stats.reconnect_attempts += 1
                from_preferred = bool(self._preferred)
                ep = self._preferred.pop(0) if from_preferred else self._endpoints[self._ep_i]
                floor = 0.0
                try:
                    session = await self._open_session(ep)
                    break
                except AuthFailed as e:
                    retry = e.retryable or (
                        e.code == ErrorCode.TOKEN_EXPIRED and callable(self._token) and not expired_once
                    )
                    expired_once = expired_once or e.code == ErrorCode.TOKEN_EXPIRED
                    log.warning("reconnect to %s:%s: %s%s", ep[0], ep[1], e, "" if retry else " (giving up)")
                    if not retry:
                        await self._stop(CloseInfo(reason=CloseReason.AUTH_FAILED, message=e.message, error=e))
                        return
                    last = e
                except ServerRefused as e:
                    log.info("reconnect to %s:%s: %s", ep[0], ep[1], e)
                    floor = e.retry_after_ms / 1000.0
                    if e.endpoints:
                        self._prefer(e.endpoints)
                    elif not from_preferred:
                        self._ep_i = (self._ep_i + 1) % len(self._endpoints)
                    last = e
                except (ConnectError, ProtocolError) as e:
                    log.info("reconnect to %s:%s failed: %s", ep[0], ep[1], e)
                    if not from_preferred:
                        self._ep_i = (self._ep_i + 1) % len(self._endpoints)
                    last = e
                except asyncio.CancelledError:
                    raise
                except Exception as e:  # pragma: no cover - a bug; keep trying, bounded by backoff
                    log.exception("reconnect failed")
                    last = e
                if self._closing:
                    return
                if self._attempts_max is not None and attempt >= self._attempts_max:
                    await self._stop(
                        CloseInfo(message=f"gave up after {attempt} reconnect attempts: {last}", error=last)
                    )
                    return
                delay = self._backoff(attempt, floor)
