"""The protobuf codec against the reference encoding (prost, the gateway's
own codec) and against malformed input. The hex vectors are those of
clients/js/test/codec.test.mjs, which were encoded by prost, and the
byte-level examples of PROTOCOL.md §11."""

import random
import struct
import unittest

from gateway_client import proto
from gateway_client.errors import DecodeError, ProtocolError
from gateway_client.proto import (
    Ack,
    Auth,
    AuthError,
    AuthOk,
    CloseReason,
    Error,
    ErrorCode,
    GoAway,
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
    encode_frame,
    frame_bytes,
)

U64_MAX = (1 << 64) - 1


class ProstEncoding(unittest.TestCase):
    def test_client_frames_encode_exactly_as_prost(self):
        auth = Auth(
            protocol_version=1,
            token="t.k.n",
            device_id="d1",
            resume_seq=U64_MAX,
            metadata={"app": "web"},
            heartbeat_interval_ms=30000,
        )
        self.assertEqual(
            encode_frame(auth).hex(),
            "0a2808011205742e6b2e6e1a02643120ffffffffffffffffff012a0a0a03617070120377656230b0ea01",
        )
        up = Upstream(correlation_id=7, route="room.send", client_msg_id="m1", payload=b"x")
        self.assertEqual(encode_frame(up).hex(), "321408071209726f6f6d2e73656e641a026d31220178")
        self.assertEqual(encode_frame(Ack(seq=1 << 60)).hex(), "4a0a08808080808080808010")
        self.assertEqual(encode_frame(Ping()).hex(), "2200")

    def test_protocol_md_section_11_examples(self):
        cases = [
            (Ping(), "000000022200"),
            (Ping(heartbeat_interval_ms=60000), "00000006220408e0d403"),
            (Pong(heartbeat_interval_ms=30000), "000000062a0408b0ea01"),
            (Ack(seq=1), "000000044a020801"),
            (Upstream(correlation_id=1, route="echo", payload=b"hi"), "0000000e320c0801120465636 86f22026869"),
        ]
        for msg, want in cases:
            self.assertEqual(frame_bytes(msg).hex(), want.replace(" ", ""), msg)
        self.assertEqual(
            decode_frame(bytes.fromhex("3a0608011a026869")),
            UpstreamReply(correlation_id=1, payload=b"hi"),
        )
        # The server writes Push.seq (and retransmit) before the other fields.
        self.assertEqual(
            decode_frame(bytes.fromhex("420a08011201721a01782001")),
            Push(seq=1, route="r", payload=b"x", ack_required=True),
        )
        self.assertEqual(
            decode_frame(bytes.fromhex("420c080130011201721a01782001")),
            Push(seq=1, route="r", payload=b"x", ack_required=True, retransmit=True),
        )

    def test_server_frames_decode_with_64_bit_values_intact(self):
        ok = decode_frame(
            bytes.fromhex("122608011081808080808080101a05616c6963652202643128b0ea013090bf053880800442026e31")
        )
        self.assertEqual(
            ok,
            AuthOk(
                protocol_version=1,
                conn_id=(1 << 53) + 1,
                user_id="alice",
                device_id="d1",
                heartbeat_interval_ms=30000,
                idle_timeout_ms=90000,
                frame_bytes_max=65536,
                node_id="n1",
            ),
        )
        push = decode_frame(
            bytes.fromhex("42250881808080808080101208636861742e6d73671a0a7b2274223a22c3a9227d200128013001")
        )
        self.assertEqual(push.seq, (1 << 53) + 1)
        self.assertEqual(push.payload.decode(), '{"t":"é"}')
        self.assertEqual((push.ack_required, push.priority, push.retransmit), (True, Priority.HIGH, True))
        reply = decode_frame(bytes.fromhex("3a1408feffffffffffffffff0110161a030001022064"))
        self.assertEqual(
            reply, UpstreamReply(correlation_id=U64_MAX - 1, status=22, payload=b"\0\1\2", retry_after_ms=100)
        )
        bye = decode_frame(bytes.fromhex("521408091088271a03613a311a03623a322203627965"))
        self.assertEqual(
            bye, GoAway(reason=CloseReason.DRAIN, retry_after_ms=5000, endpoints=["a:1", "b:2"], message="bye")
        )
        self.assertIs(type(bye.reason), CloseReason)
        err = decode_frame(bytes.fromhex("5a0b081612046275737918fa01"))
        self.assertEqual(err, Error(code=ErrorCode.BUSY, message="busy", retry_after_ms=250))

    def test_a_batch_as_the_gateway_writes_it(self):
        # core/rooms.rs encode_batch: each push as field 7, then room (8), then dropped (9).
        b = decode_frame(bytes.fromhex("4210" + "3a061201611a0131" + "42046c697665" + "4802"))
        self.assertEqual(b, Push(room="live", dropped=2, batch=[Push(route="a", payload=b"1")]))
        self.assertEqual(Auth(push_batches=True), decode_frame(bytes.fromhex("0a023801")))
        # Batches inside batches past the nesting bound are refused, not recursed into.
        deep = Push()
        for _ in range(10):
            deep = Push(batch=[deep])
        with self.assertRaises(DecodeError):
            decode_frame(proto.encode_frame(deep))

    def test_defaults_unknown_fields_and_unknown_enum_values(self):
        self.assertEqual(decode_frame(bytes.fromhex("4200")), Push())
        # Unknown varint field 15 and fixed64 field 16 are skipped.
        self.assertEqual(decode_frame(bytes.fromhex("420e0805780181010102030405060708")).seq, 5)
        # An unknown fixed32 (field 14, wire 5) and an unknown group (field 10).
        self.assertEqual(decode_frame(bytes.fromhex("420b0807750102030453080154")).seq, 7)
        # An unknown Frame field before the body is skipped too.
        self.assertEqual(decode_frame(bytes.fromhex("780142020809")), Push(seq=9))
        # Enum values this client does not know are kept as ints (open enums).
        g = decode_frame(bytes.fromhex("52020863"))
        self.assertEqual(g.reason, 99)
        # A body repeated: the same message merges, a different one replaces.
        self.assertEqual(decode_frame(bytes.fromhex("420208034203120172")), Push(seq=3, route="r"))
        self.assertEqual(decode_frame(bytes.fromhex("420208034a020801")), Ack(seq=1))
        # uint32 fields keep the low 32 bits of a wider varint (protobuf rule).
        self.assertEqual(decode_frame(bytes.fromhex("2a060881808080 10".replace(" ", ""))).heartbeat_interval_ms, 1)

    def test_round_trip_of_every_message(self):
        msgs = [
            Auth(protocol_version=1, token="t", device_id="d", resume_seq=5, metadata={"a": "b", "k": ""}),
            AuthOk(protocol_version=1, conn_id=U64_MAX, user_id="u", token_expires_at_unix_s=1 << 40),
            AuthError(code=ErrorCode.TOKEN_EXPIRED, message="token has expired"),
            Ping(heartbeat_interval_ms=1),
            Pong(heartbeat_interval_ms=(1 << 32) - 1),
            Upstream(correlation_id=U64_MAX, route="chat.send", client_msg_id="x", payload=bytes(range(256))),
            UpstreamReply(correlation_id=2, status=1000, payload=b"p", retry_after_ms=3),
            Push(seq=2, route="r", payload=b"\0", ack_required=True, priority=Priority.LOW, retransmit=True),
            Push(room="live", dropped=2, batch=[Push(route="a", payload=b"1"), Push(route="b", priority=Priority.HIGH)]),
            Ack(seq=U64_MAX),
            GoAway(reason=CloseReason.KICKED, endpoints=["h:1", ""], message="m"),
            Error(code=ErrorCode.SERVER_FULL, message="full", retry_after_ms=1000),
            Refresh(token="é" * 10),
            RefreshReply(code=ErrorCode.UNSPECIFIED, expires_at_unix_s=7),
            TokenExpiring(expires_at_unix_s=8),
        ]
        for m in msgs:
            self.assertEqual(decode_frame(encode_frame(m)), m)

    def test_encoding_refuses_out_of_range_values(self):
        with self.assertRaises(ValueError):
            encode_frame(Ack(seq=-1))
        with self.assertRaises(ValueError):
            encode_frame(Ack(seq=1 << 64))
        with self.assertRaises(ValueError):
            encode_frame(Ping(heartbeat_interval_ms=1 << 32))
        with self.assertRaises(TypeError):
            encode_frame(object())  # type: ignore[arg-type]


class MalformedInput(unittest.TestCase):
    BAD = [
        "",  # no body
        "42",  # truncated length
        "4205080512",  # body runs past the end
        "08",  # a body field with a varint wire type
        "4202ff",
        "42020801ff",  # trailing truncated varint
        "4a0b08ffffffffffffffffffff01",  # an 11-byte varint
        "4a0b0880808080808080808002",  # a 10-byte varint over 64 bits
        "4202120c",  # a string longer than its message
        "47",  # wire type 7
        "46",  # wire type 6
        "42031201ff",  # a string that is not UTF-8
        "4202 1a05".replace(" ", ""),  # bytes past the end
        "420101",  # a field number 0 inside a message
        "0001",  # field number 0 in the Frame
        "4201 0c".replace(" ", ""),  # an end-group without a start
        "4202 5b08".replace(" ", ""),  # a group that never ends
        "4204 5b0864".replace(" ", ""),  # a group closed by another field's end-group
        "7801",  # only an unknown field: no body
        "42021208",  # string length past the end
        "4202 2001".replace(" ", "") + "4a",  # a second body truncated
        "4201 08".replace(" ", ""),  # seq with no value
        "4a02 0a00".replace(" ", ""),  # Ack.seq with a length-delimited wire type
        "0a05 2a03 0a01ff".replace(" ", ""),  # metadata key not UTF-8
    ]

    def test_malformed_frames_raise_decode_error(self):
        for bad in self.BAD:
            with self.subTest(bad=bad):
                with self.assertRaises(DecodeError):
                    decode_frame(bytes.fromhex(bad))

    def test_decode_error_is_a_protocol_error_and_a_value_error(self):
        self.assertTrue(issubclass(DecodeError, ProtocolError))
        self.assertTrue(issubclass(DecodeError, ValueError))
        self.assertIs(proto.DecodeError, DecodeError)

    def test_deep_groups_are_refused_not_recursed_forever(self):
        body = b"\x5b" * 10_000  # field 11, start group, nested 10,000 deep
        frame = b"\x42" + proto_len(len(body)) + body
        with self.assertRaises(DecodeError):
            decode_frame(frame)

    def test_random_bytes_never_raise_anything_else(self):
        rng = random.Random(1234)
        valid = [
            encode_frame(Push(seq=3, route="chat.msg", payload=b"{}", ack_required=True)),
            encode_frame(GoAway(reason=CloseReason.DRAIN, endpoints=["a:1"], message="m")),
            encode_frame(AuthOk(conn_id=5, user_id="u", node_id="n", frame_bytes_max=65536)),
        ]
        for i in range(20_000):
            if i % 2:
                data = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 40)))
            else:  # mutate a valid frame: flip, cut or splice bytes
                b = bytearray(rng.choice(valid))
                for _ in range(rng.randrange(1, 4)):
                    op = rng.randrange(3)
                    if op == 0 and b:
                        b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
                    elif op == 1 and b:
                        del b[rng.randrange(len(b)) :]
                    else:
                        b.insert(rng.randrange(len(b) + 1), rng.getrandbits(8))
                data = bytes(b)
            try:
                decode_frame(data)
            except DecodeError:
                pass


def proto_len(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


class Framing(unittest.TestCase):
    def test_length_prefix_is_big_endian_u32(self):
        data = frame_bytes(Upstream(correlation_id=1, route="echo", payload=b"x" * 300))
        (n,) = struct.unpack(">I", data[:4])
        self.assertEqual(n, len(data) - 4)
        self.assertEqual(decode_frame(data[4:]).payload, b"x" * 300)


if __name__ == "__main__":
    unittest.main()
