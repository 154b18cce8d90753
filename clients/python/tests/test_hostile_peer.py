"""Bad input from the server side: a typed error, never a hang.

The gateway never sends malformed frames, so these tests need a peer that
does: a small asyncio server in this file that misbehaves in one way per
test. It is not a stand-in for the gateway (the behaviour of the client
against the gateway is tested on the real binary in test_client.py); it
only produces bytes the real one cannot be made to produce."""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import time
import unittest
from typing import Awaitable, Callable

from gateway_client import Client, ConnectError, DecodeError, ProtocolError
from gateway_client.proto import Ack, AuthOk, Push, decode_frame, frame_bytes

# The client logs closes and server errors at WARNING; quiet unless asked.
logging.basicConfig(level=os.environ.get("GATEWAY_CLIENT_TEST_LOG", "CRITICAL"))

Behaviour = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_auth(r: asyncio.StreamReader) -> None:
    (n,) = struct.unpack(">I", await r.readexactly(4))
    decode_frame(await r.readexactly(n))


def auth_ok(**kw) -> bytes:
    fields = dict(protocol_version=1, conn_id=1, user_id="u", heartbeat_interval_ms=200, frame_bytes_max=65536)
    fields.update(kw)
    return frame_bytes(AuthOk(**fields))


class HostilePeer(unittest.IsolatedAsyncioTestCase):
    async def serve(self, behaviour: Behaviour) -> str:
        handlers = set()

        async def handle(r, w):
            handlers.add(asyncio.current_task())
            try:
                await behaviour(r, w)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            except asyncio.CancelledError:  # the test is over; end quietly
                pass
            finally:
                w.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        self.addAsyncCleanup(self._close, server, handlers)
        return "127.0.0.1:%d" % server.sockets[0].getsockname()[1]

    @staticmethod
    async def _close(server, handlers) -> None:
        server.close()
        for t in handlers:
            t.cancel()
        await asyncio.wait_for(asyncio.gather(*handlers, return_exceptions=True), 5)
        # From Python 3.12 on this also waits for the connections to end.
        await asyncio.wait_for(server.wait_closed(), 5)

    def client(self, addr: str, **kw) -> Client:
        opts = dict(connect_timeout_s=0.5, pong_timeout_s=0.5, reconnect=False)
        opts.update(kw)
        return Client(addr, "t.k.n", **opts)

    async def connect_fails(self, behaviour: Behaviour, exc: type) -> BaseException:
        addr = await self.serve(behaviour)
        t0 = time.monotonic()
        with self.assertRaises(exc) as cm:
            await asyncio.wait_for(self.client(addr).connect(), 5)
        self.assertLess(time.monotonic() - t0, 2.0)
        return cm.exception

    async def session_fails(self, behaviour: Behaviour) -> BaseException:
        addr = await self.serve(behaviour)
        c = self.client(addr)
        await asyncio.wait_for(c.connect(), 5)
        info = await asyncio.wait_for(c.wait_closed(), 5)
        self.assertFalse(info.will_reconnect)
        self.assertIsNotNone(info.error)
        return info.error

    async def test_huge_length_prefix_is_refused_before_reading(self):
        async def b(r, w):
            await read_auth(r)
            w.write(b"\xff\xff\xff\xff")
            await asyncio.sleep(10)

        e = await self.connect_fails(b, ProtocolError)
        self.assertIn("over the limit", str(e))

    async def test_undecodable_answer_is_a_decode_error(self):
        async def b(r, w):
            await read_auth(r)
            w.write(b"\x00\x00\x00\x03\xff\xff\xff")
            await asyncio.sleep(10)

        await self.connect_fails(b, DecodeError)

    async def test_no_answer_to_auth_times_out(self):
        async def b(r, w):
            await read_auth(r)
            await asyncio.sleep(10)

        e = await self.connect_fails(b, ConnectError)
        self.assertIn("no answer to Auth", str(e))

    async def test_close_before_answer(self):
        async def b(r, w):
            w.close()

        await self.connect_fails(b, ConnectError)

    async def test_unexpected_first_frame(self):
        async def b(r, w):
            await read_auth(r)
            w.write(frame_bytes(Push(route="x")))
            await asyncio.sleep(10)

        e = await self.connect_fails(b, ProtocolError)
        self.assertIn("Push", str(e))

    async def test_garbage_after_auth_ok_ends_the_session(self):
        async def b(r, w):
            await read_auth(r)
            w.write(auth_ok() + b"\x00\x00\x00\x02\x42\x05")
            await asyncio.sleep(10)

        self.assertIsInstance(await self.session_fails(b), DecodeError)

    async def test_frame_over_the_announced_limit(self):
        async def b(r, w):
            await read_auth(r)
            w.write(auth_ok(frame_bytes_max=256) + struct.pack(">I", 1000) + b"\0" * 1000)
            await asyncio.sleep(10)

        e = await self.session_fails(b)
        self.assertIsInstance(e, ProtocolError)
        self.assertIn("1000 bytes", str(e))

    async def test_client_only_frame_from_the_server(self):
        async def b(r, w):
            await read_auth(r)
            w.write(auth_ok() + frame_bytes(Ack(seq=1)))
            await asyncio.sleep(10)

        self.assertIsInstance(await self.session_fails(b), ProtocolError)

    async def test_ack_required_push_without_seq(self):
        async def b(r, w):
            await read_auth(r)
            w.write(auth_ok() + frame_bytes(Push(route="r", ack_required=True)))
            await asyncio.sleep(10)

        self.assertIsInstance(await self.session_fails(b), ProtocolError)

    async def test_an_ack_required_push_inside_a_batch(self):
        async def b(r, w):
            await read_auth(r)
            bad = Push(room="live", batch=[Push(seq=1, route="r", ack_required=True)])
            w.write(auth_ok() + frame_bytes(bad))
            await asyncio.sleep(10)

        self.assertIsInstance(await self.session_fails(b), ProtocolError)

    async def test_half_a_frame_then_silence_is_a_dead_connection(self):
        async def b(r, w):
            await read_auth(r)
            w.write(auth_ok() + b"\x00\x00\x00\x10\x42")
            await asyncio.sleep(10)  # reads the client's pings, answers nothing

        t0 = time.monotonic()
        e = await self.session_fails(b)
        self.assertIsInstance(e, ConnectionError)
        self.assertIn("no frame from the server", str(e))
        self.assertLess(time.monotonic() - t0, 3.0)


if __name__ == "__main__":
    unittest.main()
