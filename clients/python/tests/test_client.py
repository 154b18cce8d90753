"""The client against a real gateway binary ($GATEWAY_BIN, demo mode, the
embedded backend). No mocks: what is asserted comes from the gateway, its
admin API (/connz, /stats, /kick, /drain) or the client's own counters.
Every wait has a timeout."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import signal
import ssl
import struct
import time
import unittest
from typing import Callable, List, Optional

from gateway_proc import Gateway

from gateway_client import (
    AuthFailed,
    Busy,
    Client,
    ClientClosed,
    CloseInfo,
    CloseReason,
    ErrorCode,
    FrameTooLarge,
    RefreshFailed,
    RequestTimeout,
    TooManyPendingRequests,
    UnknownRoute,
)
from gateway_client.demo import demo_token, hs256_token
from gateway_client.proto import Auth, AuthOk, decode_frame, frame_bytes

# The client logs closes and server errors at WARNING; quiet unless asked.
logging.basicConfig(level=os.environ.get("GATEWAY_CLIENT_TEST_LOG", "CRITICAL"))

# The shared gateway: a 300 ms heartbeat and 4 intervals = an idle timeout
# of 1.2 s; acks time out after 500 ms; tokens expire with no leeway and
# TokenExpiring comes 2 s ahead; TLS on the same port.
MAIN_ARGS = [
    "--heartbeat-interval-ms", "300",
    "--heartbeat-interval-min-ms", "100",
    "--idle-timeout-intervals", "4",
    "--ack-timeout-ms", "500",
    "--auth-leeway-s", "0",
    "--auth-refresh-ahead-s", "2",
    "--tls-self-signed",
]  # fmt: skip

MAIN: Optional[Gateway] = None


def setUpModule() -> None:
    global MAIN
    MAIN = Gateway("py-main", *MAIN_ARGS).start()


def tearDownModule() -> None:
    if MAIN is not None:
        MAIN.cleanup()


def main() -> Gateway:
    assert MAIN is not None
    return MAIN


def timeout(seconds: float):
    """Fails the test (instead of hanging) if it takes longer than this."""

    def deco(fn):
        @functools.wraps(fn)
        async def wrapper(self, *a, **kw):
            try:
                return await asyncio.wait_for(fn(self, *a, **kw), seconds)
            except asyncio.TimeoutError:
                self.fail(f"{fn.__name__} did not finish within {seconds} s")

        return wrapper

    return deco


async def eventually(what: str, pred: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        await asyncio.sleep(0.02)


async def in_thread(fn, *args):
    """Blocking admin calls (urllib, subprocess) off the event loop."""
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


class Recorder:
    """Pushes and session events as the client reports them."""

    def __init__(self) -> None:
        self.pushes: "asyncio.Queue" = asyncio.Queue()
        self.handled: List = []
        self.disconnects: List[CloseInfo] = []
        self.connects: List[AuthOk] = []

    async def on_push(self, p) -> None:
        self.handled.append(p)
        await self.pushes.put(p)

    def on_disconnect(self, info: CloseInfo) -> None:
        self.disconnects.append(info)

    def on_connect(self, ok: AuthOk) -> None:
        self.connects.append(ok)

    def kw(self) -> dict:
        return dict(on_push=self.on_push, on_disconnect=self.on_disconnect, on_connect=self.on_connect)

    async def push(self, timeout_s: float = 5.0):
        return await asyncio.wait_for(self.pushes.get(), timeout_s)


def counting(fn: Callable[[], str]):
    """A token provider that counts its calls."""

    def provider() -> str:
        provider.calls += 1  # type: ignore[attr-defined]
        return fn()

    provider.calls = 0  # type: ignore[attr-defined]
    return provider


FAST = dict(reconnect_delay_min_s=0.05, reconnect_delay_max_s=0.5, connect_timeout_s=5.0)


class Basics(unittest.IsolatedAsyncioTestCase):
    @timeout(20)
    async def test_auth_ok_echo_and_typed_errors(self):
        g = main()
        async with Client(g.addr, demo_token("py-basic"), device_id="laptop", metadata={"app": "py"}) as c:
            ok = c.auth_ok
            self.assertEqual((ok.user_id, ok.device_id, ok.node_id), ("py-basic", "laptop", g.node_id))
            self.assertEqual(ok.heartbeat_interval_ms, 300)
            self.assertEqual(ok.idle_timeout_ms, 1200)
            self.assertEqual(ok.frame_bytes_max, 65536)
            self.assertGreater(ok.token_expires_at_unix_s, time.time() + 3000)
            conns = await in_thread(g.connz, "py-basic")
            self.assertEqual([x["conn_id"] for x in conns], [ok.conn_id])

            blob = bytes(range(256)) * 40
            self.assertEqual((await c.request("echo", blob, timeout_s=5)).payload, blob)
            self.assertEqual((await c.request("echo", "héllo", timeout_s=5)).payload, "héllo".encode())
            # Concurrent requests are matched by correlation id, whatever the order.
            payloads = [f"n{i}".encode() * (i + 1) for i in range(50)]
            replies = await asyncio.gather(*(c.request("echo", p, timeout_s=5) for p in payloads))
            self.assertEqual([r.payload for r in replies], payloads)
            self.assertEqual(len({r.correlation_id for r in replies}), 50)

            with self.assertRaises(UnknownRoute) as cm:
                await c.request("no.such.route", b"", timeout_s=5)
            self.assertEqual(cm.exception.status, ErrorCode.UNKNOWN_ROUTE)
            self.assertIn(b"echo", cm.exception.payload)  # the demo lists its routes
            with self.assertRaises(ValueError):
                await c.request("bad route!", b"")
            with self.assertRaises(FrameTooLarge):
                await c.request("echo", b"x" * 70_000)
            # Still the same connection after all of that.
            self.assertEqual((await c.request("echo", b"ok", timeout_s=5)).payload, b"ok")
            self.assertEqual(c.conn_id, ok.conn_id)
            self.assertEqual(c.stats.connects, 1)

    @timeout(20)
    async def test_bad_token_is_a_typed_error_and_never_retried(self):
        g = main()
        before = await in_thread(g.closes, "AUTH_FAILED")
        forged = counting(lambda: hs256_token({"sub": "py-forged", "exp": int(time.time()) + 600}, "x" * 40, "demo"))
        c = Client(g.addr, forged, **FAST)
        with self.assertRaises(AuthFailed) as cm:
            await c.connect()
        self.assertEqual(cm.exception.code, ErrorCode.TOKEN_INVALID)
        self.assertFalse(cm.exception.retryable)
        await asyncio.sleep(1.0)  # a reconnect loop would call the provider again
        self.assertEqual(forged.calls, 1)
        self.assertEqual(c.stats.reconnect_attempts, 0)
        await eventually("one AUTH_FAILED close", lambda: g.closes("AUTH_FAILED") == before + 1)
        with self.assertRaises(AuthFailed) as cm:
            await Client(g.addr, demo_token("py-expired", ttl_s=-60)).connect()
        self.assertEqual(cm.exception.code, ErrorCode.TOKEN_EXPIRED)
        await eventually("two AUTH_FAILED closes", lambda: g.closes("AUTH_FAILED") == before + 2)
        await asyncio.sleep(0.3)
        self.assertEqual(await in_thread(g.closes, "AUTH_FAILED"), before + 2)

    @timeout(20)
    async def test_login_refused_on_reconnect_stops_the_client(self):
        g = main()
        tokens = counting(lambda: demo_token("py-revoked") if tokens.calls == 1 else "not.a.jwt")
        rec = Recorder()
        c = Client(g.addr, tokens, reconnect_after_kick=True, **FAST, **rec.kw())
        await c.connect()
        self.assertEqual(await in_thread(g.kick, "py-revoked"), 1)
        info = await asyncio.wait_for(c.wait_closed(), 5)
        self.assertEqual(info.reason, CloseReason.AUTH_FAILED)
        self.assertIsInstance(info.error, AuthFailed)
        self.assertEqual(info.error.code, ErrorCode.TOKEN_INVALID)
        self.assertEqual([d.reason for d in rec.disconnects], [CloseReason.KICKED])
        await asyncio.sleep(1.0)
        self.assertEqual(tokens.calls, 2)  # the first login and one reconnect: no loop
        with self.assertRaises(ClientClosed):
            await c.request("echo", b"x", timeout_s=1)
        await c.close()

    @timeout(20)
    async def test_close_is_clean(self):
        g = main()
        before = await in_thread(g.closes, "CLIENT_CLOSED")
        c = Client(g.addr, demo_token("py-close"))
        await c.connect()
        await c.close()
        info = await asyncio.wait_for(c.wait_closed(), 2)
        self.assertEqual(info.reason, CloseReason.CLIENT_CLOSED)
        self.assertTrue(c.closed)
        with self.assertRaises(ClientClosed):
            await c.request("echo", b"x", timeout_s=1)
        await eventually("the gateway saw a client close", lambda: g.closes("CLIENT_CLOSED") == before + 1)
        self.assertEqual(await in_thread(g.connz, "py-close"), [])

    @timeout(20)
    async def test_tls_on_the_same_port(self):
        g = main()
        cert = g.self_signed_cert()
        self.assertIsNotNone(cert, "the gateway did not log where its self-signed certificate is")
        ctx = ssl.create_default_context(cafile=cert)
        async with Client(g.addr, demo_token("py-tls"), ssl=ctx, server_hostname="localhost") as c:
            self.assertEqual((await c.request("echo", b"over tls", timeout_s=5)).payload, b"over tls")
            conns = await in_thread(g.connz, "py-tls")
            self.assertEqual([x["transport"] for x in conns], ["tls"])


class Pushes(unittest.IsolatedAsyncioTestCase):
    @timeout(20)
    async def test_push_is_handled_then_acked(self):
        g = main()
        release = asyncio.Event()
        got: "asyncio.Queue" = asyncio.Queue()

        async def slow_handler(p):
            await got.put(p)
            await release.wait()

        async with Client(g.addr, demo_token("py-push"), device_id="d1", on_push=slow_handler) as c:
            await c.request("chat.send", json.dumps({"to": "py-push", "text": "hi"}), timeout_s=5)
            p = await asyncio.wait_for(got.get(), 5)
            self.assertEqual((p.route, p.seq, p.ack_required, p.retransmit), ("chat.msg", 1, True, False))
            self.assertEqual(p.json()["from"], "py-push")
            self.assertEqual(p.json()["text"], "hi")
            self.assertEqual(p.conn_id, c.conn_id)
            # Not acked while the handler runs...
            conn = (await in_thread(g.connz, "py-push"))[0]
            self.assertEqual(conn["unacked"], 1)
            release.set()
            # ...and acked once it returns.
            await eventually("the gateway saw the ack", lambda: g.connz("py-push")[0]["unacked"] == 0)
            self.assertEqual(c.stats.acks_sent, 1)
            # Acked in time: no retransmission (ack timeout 500 ms) follows.
            await asyncio.sleep(1.2)
            self.assertEqual(c.stats.duplicate_pushes, 0)
            self.assertTrue(got.empty())

    @timeout(20)
    async def test_manual_ack_and_retransmissions_dispatched_once(self):
        g = main()
        rec = Recorder()
        async with Client(g.addr, demo_token("py-manual"), auto_ack=False, **rec.kw()) as c:
            await c.request("chat.send", json.dumps({"to": "py-manual", "text": 1}), timeout_s=5)
            p = await rec.push()
            # Unacked, the gateway resends it (same seq, retransmit) after 500 ms;
            # the client recognises the duplicate and does not dispatch it again.
            await eventually("a retransmission arrived", lambda: c.stats.duplicate_pushes >= 1, 3)
            self.assertEqual(len(rec.handled), 1)
            self.assertTrue(await c.ack(p))
            await eventually("the gateway saw the ack", lambda: g.connz("py-manual")[0]["unacked"] == 0)

    @timeout(20)
    async def test_room_push_without_ack(self):
        g = main()
        rec = Recorder()
        async with Client(g.addr, demo_token("py-room"), **rec.kw()) as c:
            await c.request("room.join", json.dumps({"room": "py-lobby"}), timeout_s=5)
            await c.request("room.send", json.dumps({"room": "py-lobby", "text": "all"}), timeout_s=5)
            p = await rec.push()
            self.assertEqual((p.route, p.seq, p.ack_required), ("room.msg", 0, False))
            self.assertEqual(p.json(), {"from": "py-room", "room": "py-lobby", "text": "all"})
            self.assertEqual(c.stats.acks_sent, 0)


def n_of(p) -> Optional[int]:
    """The backend-defined sequence these tests put in chat payloads."""
    text = p.json().get("text")
    return text.get("n") if isinstance(text, dict) else None


class Reconnects(unittest.IsolatedAsyncioTestCase):
    @timeout(20)
    async def test_kick_stops_the_client_by_default(self):
        g = main()
        rec = Recorder()
        c = Client(g.addr, demo_token("py-kicked"), **FAST, **rec.kw())
        await c.connect()
        self.assertEqual(await in_thread(g.kick, "py-kicked", "bye now"), 1)
        info = await asyncio.wait_for(c.wait_closed(), 5)
        self.assertEqual(info.reason, CloseReason.KICKED)
        self.assertEqual(info.message, "bye now")
        self.assertFalse(info.will_reconnect)
        await asyncio.sleep(0.5)
        self.assertEqual(c.stats.connects, 1)
        self.assertEqual(await in_thread(g.connz, "py-kicked"), [])
        with self.assertRaises(ClientClosed) as cm:
            await c.request("echo", b"x", timeout_s=1)
        self.assertEqual(cm.exception.info.reason, CloseReason.KICKED)

    @timeout(25)
    async def test_kick_then_reconnect_and_resume(self):
        g = main()
        rec = Recorder()
        c = Client(
            g.addr,
            lambda: demo_token("py-resume"),
            resume_seq=5,
            resume_seq_of=n_of,
            reconnect_after_kick=True,
            **FAST,
            **rec.kw(),
        )
        async with c:
            first = c.conn_id
            conns = await in_thread(g.connz, "py-resume")
            self.assertEqual([(x["conn_id"], x["resume_seq"]) for x in conns], [(first, 5)])
            await c.request("chat.send", json.dumps({"to": "py-resume", "text": {"n": 41}}), timeout_s=5)
            p = await rec.push()
            self.assertEqual(p.seq, 1)
            await eventually("resume_seq follows the handled push", lambda: c.resume_seq == 41)

            self.assertEqual(await in_thread(g.kick, "py-resume"), 1)
            await eventually("reconnected", lambda: c.stats.connects == 2 and c.connected)
            self.assertEqual(rec.disconnects[0].reason, CloseReason.KICKED)
            self.assertTrue(rec.disconnects[0].will_reconnect)
            self.assertNotEqual(c.conn_id, first)
            # The new connection announced the stored sequence to the backend.
            conns = await in_thread(g.connz, "py-resume")
            self.assertEqual([(x["conn_id"], x["resume_seq"]) for x in conns], [(c.conn_id, 41)])
            # Push seqs restart at 1 on the new connection and are not mistaken for duplicates.
            await c.request("chat.send", json.dumps({"to": "py-resume", "text": {"n": 42}}), timeout_s=5)
            p = await rec.push()
            self.assertEqual((p.seq, p.conn_id), (1, c.conn_id))
            await eventually("resume_seq 42", lambda: c.resume_seq == 42)
            self.assertEqual(c.stats.duplicate_pushes, 0)

    @timeout(30)
    async def test_server_restart_reconnect_and_resume(self):
        g = await in_thread(lambda: Gateway("py-restart").start())
        try:
            rec = Recorder()
            c = Client(g.addr, lambda: demo_token("py-restart"), resume_seq_of=n_of, **FAST, **rec.kw())
            async with c:
                await c.request("chat.send", json.dumps({"to": "py-restart", "text": {"n": 7}}), timeout_s=5)
                await rec.push()
                await eventually("resume_seq 7", lambda: c.resume_seq == 7)
                first = c.conn_id
                await in_thread(g.stop, signal.SIGKILL)
                await eventually("the client saw the connection drop", lambda: len(rec.disconnects) == 1)
                info = rec.disconnects[0]
                self.assertIsNone(info.reason)  # no frame: a bare close
                self.assertTrue(info.will_reconnect)
                # A request made while the gateway is down waits for the reconnect.
                pending = asyncio.ensure_future(c.request("echo", b"after restart", timeout_s=15))
                await asyncio.sleep(0.5)
                self.assertFalse(pending.done())
                await in_thread(g.start)
                self.assertEqual((await asyncio.wait_for(pending, 15)).payload, b"after restart")
                self.assertEqual(c.stats.connects, 2)
                self.assertGreater(c.stats.reconnect_attempts, 1)  # refused while it was down
                conns = await in_thread(g.connz, "py-restart")
                self.assertEqual([x["resume_seq"] for x in conns], [7])
                self.assertEqual(conns[0]["conn_id"], c.conn_id)
                self.assertNotEqual(c.conn_id, 0)
                del first
        finally:
            await in_thread(g.cleanup)

    @timeout(30)
    async def test_silent_server_is_detected_and_requests_time_out(self):
        g = await in_thread(lambda: Gateway("py-stopped", "--heartbeat-interval-min-ms", "100").start())
        try:
            rec = Recorder()
            c = Client(
                g.addr,
                lambda: demo_token("py-stopped"),
                heartbeat_interval_ms=200,
                pong_timeout_s=1.0,
                pending_requests_max=2,
                reconnect_delay_min_s=0.05,
                reconnect_delay_max_s=0.3,
                connect_timeout_s=1.0,
                **rec.kw(),
            )
            async with c:
                self.assertEqual(c.auth_ok.heartbeat_interval_ms, 200)
                await in_thread(g.pause)
                try:
                    t0 = time.monotonic()
                    with self.assertRaises(RequestTimeout):
                        await c.request("echo", b"x", timeout_s=0.5)
                    self.assertLess(time.monotonic() - t0, 1.5)
                    # The bound on pending requests holds while they wait.
                    waiting = [asyncio.ensure_future(c.request("echo", b"w", timeout_s=20)) for _ in range(2)]
                    await asyncio.sleep(0.05)
                    with self.assertRaises(TooManyPendingRequests):
                        await c.request("echo", b"third", timeout_s=1)
                    # No Pong within pong_timeout_s of a Ping: the connection is dropped.
                    await eventually("the dead connection was dropped", lambda: len(rec.disconnects) == 1, 10)
                    self.assertIn("no frame from the server", rec.disconnects[0].message)
                finally:
                    g.resume()
                await eventually("reconnected once the server answers", lambda: c.stats.connects == 2, 10)
                for w in waiting:  # lost with the connection, or answered after the reconnect
                    try:
                        self.assertEqual((await asyncio.wait_for(w, 20)).payload, b"w")
                    except Exception as e:
                        self.assertEqual(type(e).__name__, "ConnectionLost")
                self.assertEqual((await c.request("echo", b"back", timeout_s=5)).payload, b"back")
        finally:
            await in_thread(g.cleanup)

    @timeout(30)
    async def test_drain_moves_to_the_goaway_endpoint(self):
        b = await in_thread(lambda: Gateway("py-b").start())
        a = Gateway(
            "py-a",
            "--goaway-endpoints", b.addr,
            "--drain-spread-ms", "200",
            "--goaway-retry-after-ms", "300",
            "--goaway-retry-jitter-ms", "0",
            "--drain-deadline-ms", "8000",
        )  # fmt: skip
        try:
            await in_thread(a.start)
            rec = Recorder()
            goaways = []
            c = Client(a.addr, lambda: demo_token("py-drain"), on_goaway=goaways.append, **FAST, **rec.kw())
            async with c:
                self.assertEqual(c.node_id, a.node_id)
                status, _ = await in_thread(a.http, "POST", "/drain")
                self.assertIn(status, (200, 202))
                await eventually("reconnected to the other node", lambda: c.stats.connects == 2 and c.connected, 10)
                self.assertEqual(c.node_id, b.node_id)
                self.assertEqual(len(goaways), 1)
                self.assertEqual((goaways[0].reason, goaways[0].endpoints), (CloseReason.DRAIN, [b.addr]))
                info = rec.disconnects[0]
                self.assertEqual(info.reason, CloseReason.DRAIN)
                self.assertGreaterEqual(info.reconnect_delay_s, 0.0)
                self.assertEqual((await c.request("echo", b"on b", timeout_s=5)).payload, b"on b")
                # The drained node exits once its clients have left: this one did.
                code = await in_thread(lambda: a.proc.wait(8))
                self.assertEqual(code, 0)
        finally:
            await in_thread(a.cleanup)
            await in_thread(b.cleanup)


class Limits(unittest.IsolatedAsyncioTestCase):
    @timeout(25)
    async def test_busy_is_typed_and_retried_after_retry_after(self):
        g = await in_thread(
            lambda: Gateway(
                "py-busy", "--overload-upstream-rate-per-conn-per-s", "2", "--overload-upstream-burst", "2"
            ).start()
        )
        try:
            async with Client(g.addr, demo_token("py-busy")) as c:
                results = await asyncio.gather(
                    *(c.request("echo", b"%d" % i, timeout_s=5) for i in range(4)), return_exceptions=True
                )
                busy = [r for r in results if isinstance(r, Busy)]
                self.assertTrue(busy, results)
                self.assertEqual(busy[0].status, ErrorCode.BUSY)
                self.assertTrue(busy[0].retryable)
                self.assertGreater(busy[0].retry_after_ms, 0)
                # With retries, BUSY is waited out (retry_after_ms) and the request succeeds.
                t0 = time.monotonic()
                for i in range(3):
                    r = await c.request("echo", b"r%d" % i, timeout_s=10, retries=5)
                    self.assertEqual(r.payload, b"r%d" % i)
                self.assertGreater(time.monotonic() - t0, 0.3)  # it did have to wait
        finally:
            await in_thread(g.cleanup)


class Rooms(unittest.IsolatedAsyncioTestCase):
    @timeout(25)
    async def test_a_hot_rooms_pushes_come_in_batches_and_each_is_handled(self):
        g = await in_thread(
            lambda: Gateway("py-hot", "--rooms-hot", "live", "--rooms-coalesce-window-ms", "300").start()
        )
        try:
            got: dict = {"batched": [], "plain": []}
            done = asyncio.Event()

            def collect(key: str) -> Callable:
                def on_push(p) -> None:
                    got[key].append((p.room, json.loads(p.payload)["text"], p.ack_required))
                    if len(got["batched"]) == 3 and len(got["plain"]) == 3:
                        done.set()

                return on_push

            async with Client(g.addr, demo_token("py-hot-a"), on_push=collect("batched")) as a, Client(
                g.addr, demo_token("py-hot-b"), on_push=collect("plain"), push_batches=False
            ) as b:
                for c in (a, b):
                    await c.request("room.join", json.dumps({"room": "live"}), timeout_s=5)
                for text in ("1", "2", "3"):
                    await a.request("room.send", json.dumps({"room": "live", "text": text}), timeout_s=5)
                await asyncio.wait_for(done.wait(), 10)
                self.assertEqual(got["batched"], [("live", t, False) for t in "123"])
                self.assertEqual(got["plain"], [("", t, False) for t in "123"])
                # Gathered: fewer frames than pushes for the client that reads batches.
                self.assertGreaterEqual(a.stats.batches, 1)
                self.assertLess(a.stats.batches, 3)
                self.assertEqual(a.stats.pushes, 3)
                self.assertEqual(b.stats.batches, 0)
        finally:
            await in_thread(g.cleanup)

    @timeout(25)
    async def test_requests_naming_a_room_are_aggregated_and_answered_each(self):
        g = await in_thread(
            lambda: Gateway("py-rooms", "--rooms-aggregate-routes", "echo", "--rooms-coalesce-window-ms", "200").start()
        )
        try:
            async with Client(g.addr, demo_token("py-rooms")) as c:
                replies = await asyncio.gather(
                    *(c.request("echo", b"a%d" % i, room="quiz", timeout_s=5) for i in range(5))
                )
                self.assertEqual([r.payload for r in replies], [b"a%d" % i for i in range(5)])
                # Without a room: one by one, as always.
                self.assertEqual((await c.request("echo", b"x", timeout_s=5)).payload, b"x")
            _, metrics = await in_thread(lambda: g.http("GET", "/metrics"))
            aggregated = sum(
                int(line.split()[-1]) for line in metrics.splitlines() if line.startswith("gateway_upstream_aggregated_total{")
            )
            gathered = sum(
                int(line.split()[-1]) for line in metrics.splitlines() if line.startswith("gateway_upstream_aggregates_total{")
            )
            self.assertEqual(aggregated, 5)
            self.assertGreaterEqual(gathered, 1)
            self.assertLess(gathered, 5)  # sent together, not one by one
        finally:
            await in_thread(g.cleanup)


class Heartbeats(unittest.IsolatedAsyncioTestCase):
    @timeout(20)
    async def test_heartbeats_keep_an_idle_connection_past_the_idle_timeout(self):
        g = main()
        stale_before = await in_thread(g.closes, "STALE_HEARTBEAT")

        async def silent_raw_client() -> float:
            """Control: a connection that authenticates and then says nothing."""
            r, w = await asyncio.open_connection("127.0.0.1", g.port)
            w.write(frame_bytes(Auth(protocol_version=1, token=demo_token("py-silent"))))
            (n,) = struct.unpack(">I", await asyncio.wait_for(r.readexactly(4), 5))
            self.assertIsInstance(decode_frame(await r.readexactly(n)), AuthOk)
            t0 = time.monotonic()
            self.assertEqual(await asyncio.wait_for(r.read(), 5), b"")  # closed, no frame
            w.close()
            return time.monotonic() - t0

        async with Client(g.addr, demo_token("py-idle"), heartbeat_interval_ms=200) as c:
            ok = c.auth_ok
            self.assertEqual((ok.heartbeat_interval_ms, ok.idle_timeout_ms), (200, 800))
            silent_for = asyncio.ensure_future(silent_raw_client())
            await asyncio.sleep(3.0)  # idle, well past the 0.8 s idle timeout
            self.assertLess(await asyncio.wait_for(silent_for, 5), 2.0)
            self.assertEqual(c.stats.connects, 1)
            self.assertTrue(c.connected)
            self.assertGreaterEqual(c.stats.pings_sent, 8)
            self.assertGreaterEqual(c.stats.pongs, 8)
            conns = await in_thread(g.connz, "py-idle")
            self.assertEqual([x["conn_id"] for x in conns], [ok.conn_id])
            self.assertLess(conns[0]["idle_ms"], 800)
        # The silent control connection, and only it, was reaped as stale.
        await eventually("one STALE_HEARTBEAT close", lambda: g.closes("STALE_HEARTBEAT") == stale_before + 1)


class TokenRefresh(unittest.IsolatedAsyncioTestCase):
    @timeout(30)
    async def test_refresh_before_expiry_keeps_the_session(self):
        g = main()
        # The timer client's 6 s tokens are refreshed at half their life
        # (~3 s), before the gateway's TokenExpiring (2 s ahead, ~4 s): only
        # its own timer keeps it alive. The notice client's 4 s tokens are
        # refreshed on TokenExpiring only. The control does not refresh.
        ttl = {"py-rf-timer": 6, "py-rf-notice": 4, "py-rf-none": 4}
        short = {u: counting(functools.partial(demo_token, u, t)) for u, t in ttl.items()}
        recs = {u: Recorder() for u in short}
        timer = Client(g.addr, short["py-rf-timer"], **FAST, **recs["py-rf-timer"].kw())
        notice = Client(g.addr, short["py-rf-notice"], refresh_margin_s=None, **FAST, **recs["py-rf-notice"].kw())
        control = Client(g.addr, short["py-rf-none"], auto_refresh=False, **FAST, **recs["py-rf-none"].kw())
        clients = (timer, notice, control)
        await asyncio.gather(*(c.connect() for c in clients))
        try:
            first = {c: (c.conn_id, c.token_expires_at) for c in clients}
            # Every first token expires (no leeway on this gateway) during this.
            await asyncio.sleep(6.8)
            for c in (timer, notice):
                self.assertEqual(c.stats.connects, 1)
                self.assertEqual(c.conn_id, first[c][0])
                self.assertGreaterEqual(c.stats.refreshes, 2)
                self.assertEqual(c.stats.refresh_failures, 0)
                self.assertGreater(c.token_expires_at, first[c][1])
                self.assertEqual((await c.request("echo", b"alive", timeout_s=5)).payload, b"alive")
            self.assertEqual(timer.stats.token_expiring_notices, 0)
            self.assertGreaterEqual(notice.stats.token_expiring_notices, 2)
            # Without refresh the session ends with its token, and the client
            # comes back with a fresh one from the provider.
            self.assertEqual(recs["py-rf-none"].disconnects[0].reason, CloseReason.TOKEN_EXPIRED)
            self.assertGreaterEqual(control.stats.connects, 2)
            self.assertEqual(control.stats.refreshes, 0)

            # A refused refresh is typed and leaves the session as it was.
            before = timer.token_expires_at
            with self.assertRaises(RefreshFailed) as cm:
                await timer.refresh_token("not.a.jwt")
            self.assertEqual(cm.exception.code, ErrorCode.TOKEN_INVALID)
            with self.assertRaises(RefreshFailed):
                await timer.refresh_token(demo_token("someone-else", 60))
            self.assertEqual(timer.token_expires_at, before)
            self.assertEqual((await timer.request("echo", b"still", timeout_s=5)).payload, b"still")
            self.assertEqual(timer.stats.connects, 1)
        finally:
            await asyncio.gather(*(c.close() for c in clients))


if __name__ == "__main__":
    unittest.main()
