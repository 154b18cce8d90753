"""The client protocol's messages and a self-contained protobuf codec.

This module implements exactly the messages of ``proto/proto/gateway.proto``
(package ``gateway.v1``) and the 4-byte big-endian length prefix of
PROTOCOL.md §1, with no dependency outside the standard library.

Decoding is defensive: any input that is not a well-formed ``Frame`` raises
:class:`DecodeError` (never another exception, never a partial message).
That covers truncated fields, over-long varints, lengths past the end of
the buffer, wire types that do not match a known field, invalid UTF-8 in
string fields, reserved field number 0, nesting deeper than a ``Frame``
can be, and a frame with no known body. Unknown fields inside a known
message are skipped (normal protobuf behaviour), fields may come in any
order, and a field that appears twice follows protobuf's rules (the last
scalar wins, messages merge, repeated fields append).

Encoding follows proto3: fields at their zero value are not written,
fields are written in field-number order, and ``Frame``'s body is always
written (``Ping{}`` is ``22 00``). The output is byte-for-byte what prost,
the gateway's codec, produces; ``tests/test_codec.py`` checks it against
vectors that prost encoded.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field, fields
from typing import Dict, List, Tuple, Type, Union

from .errors import DecodeError

__all__ = [
    "PROTOCOL_VERSION",
    "ErrorCode",
    "CloseReason",
    "Priority",
    "Auth",
    "AuthOk",
    "AuthError",
    "Ping",
    "Pong",
    "Upstream",
    "UpstreamReply",
    "Push",
    "Ack",
    "GoAway",
    "Error",
    "Refresh",
    "RefreshReply",
    "TokenExpiring",
    "Message",
    "DecodeError",
    "encode_frame",
    "decode_frame",
    "frame_bytes",
    "LENGTH_PREFIX_BYTES",
]

PROTOCOL_VERSION = 1
#: Size of the big-endian length prefix in front of every frame, bytes.
LENGTH_PREFIX_BYTES = 4

_U32_MAX = (1 << 32) - 1
_U64_MAX = (1 << 64) - 1
_FIELD_NUMBER_MAX = (1 << 29) - 1
#: Deepest nesting a Frame can have (Frame > Auth > metadata entry) plus
#: room for skipped groups; deeper input is refused.
_DEPTH_MAX = 8


class ErrorCode(enum.IntEnum):
    """``ErrorCode`` of gateway.proto, without the ``ERROR_CODE_`` prefix."""

    UNSPECIFIED = 0
    BAD_FRAME = 1
    FRAME_TOO_LARGE = 2
    UNEXPECTED_FRAME = 3
    UNSUPPORTED_VERSION = 4
    AUTH_REQUIRED = 10
    TOKEN_INVALID = 11
    TOKEN_EXPIRED = 12
    TOKEN_NOT_YET_VALID = 13
    ALGORITHM_REJECTED = 14
    UNKNOWN_ROUTE = 20
    BAD_REQUEST = 21
    BUSY = 22
    TIMEOUT = 23
    BACKEND_UNAVAILABLE = 24
    INTERNAL = 25
    SERVER_FULL = 30


class CloseReason(enum.IntEnum):
    """``CloseReason`` of gateway.proto, without the ``CLOSE_REASON_`` prefix."""

    UNSPECIFIED = 0
    CLIENT_CLOSED = 1
    AUTH_TIMEOUT = 2
    AUTH_FAILED = 3
    STALE_HEARTBEAT = 4
    BAD_FRAME = 5
    FRAME_TOO_LARGE = 6
    SLOW_CONSUMER = 7
    KICKED = 8
    DRAIN = 9
    SHUTDOWN = 10
    IO_ERROR = 11
    CONN_LIMIT = 12
    PROTOCOL_VIOLATION = 13
    DUPLICATE_LOGIN = 14
    TLS_FAILED = 15
    HTTP_ANSWERED = 16
    NODE_UNAVAILABLE = 17
    TOKEN_EXPIRED = 18
    PREAUTH_LIMIT = 19


class Priority(enum.IntEnum):
    """``Priority`` of gateway.proto, without the ``PRIORITY_`` prefix."""

    NORMAL = 0
    HIGH = 1
    LOW = 2


# Field kinds. Each message lists {field number: (attribute, kind)}.
_U32, _U64, _BOOL, _STR, _BYTES, _STRS, _MAP = "u32", "u64", "bool", "str", "bytes", "strs", "map"
#: Repeated ``Push`` messages (``Push.batch``).
_PUSHES = "pushes"
_ENUMS: Dict[str, Type[enum.IntEnum]] = {
    "ErrorCode": ErrorCode,
    "CloseReason": CloseReason,
    "Priority": Priority,
}


class Message:
    """Base of the message dataclasses; ``_FIELDS`` describes the wire form."""

    _FIELDS: Dict[int, Tuple[str, str]] = {}


@dataclass
class Auth(Message):
    protocol_version: int = 0
    token: str = ""
    device_id: str = ""
    resume_seq: int = 0
    metadata: Dict[str, str] = field(default_factory=dict)
    heartbeat_interval_ms: int = 0
    push_batches: bool = False
    _FIELDS = {
        1: ("protocol_version", _U32),
        2: ("token", _STR),
        3: ("device_id", _STR),
        4: ("resume_seq", _U64),
        5: ("metadata", _MAP),
        6: ("heartbeat_interval_ms", _U32),
        7: ("push_batches", _BOOL),
    }


@dataclass
class AuthOk(Message):
    protocol_version: int = 0
    conn_id: int = 0
    user_id: str = ""
    device_id: str = ""
    heartbeat_interval_ms: int = 0
    idle_timeout_ms: int = 0
    frame_bytes_max: int = 0
    node_id: str = ""
    token_expires_at_unix_s: int = 0
    _FIELDS = {
        1: ("protocol_version", _U32),
        2: ("conn_id", _U64),
        3: ("user_id", _STR),
        4: ("device_id", _STR),
        5: ("heartbeat_interval_ms", _U32),
        6: ("idle_timeout_ms", _U32),
        7: ("frame_bytes_max", _U32),
        8: ("node_id", _STR),
        9: ("token_expires_at_unix_s", _U64),
    }


@dataclass
class AuthError(Message):
    code: Union[ErrorCode, int] = ErrorCode.UNSPECIFIED
    message: str = ""
    _FIELDS = {1: ("code", "ErrorCode"), 2: ("message", _STR)}


@dataclass
class Ping(Message):
    heartbeat_interval_ms: int = 0
    _FIELDS = {1: ("heartbeat_interval_ms", _U32)}


@dataclass
class Pong(Message):
    heartbeat_interval_ms: int = 0
    _FIELDS = {1: ("heartbeat_interval_ms", _U32)}


@dataclass
class Upstream(Message):
    correlation_id: int = 0
    route: str = ""
    client_msg_id: str = ""
    payload: bytes = b""
    room: str = ""
    _FIELDS = {
        1: ("correlation_id", _U64),
        2: ("route", _STR),
        3: ("client_msg_id", _STR),
        4: ("payload", _BYTES),
        5: ("room", _STR),
    }


@dataclass
class UpstreamReply(Message):
    correlation_id: int = 0
    status: int = 0
    payload: bytes = b""
    retry_after_ms: int = 0
    _FIELDS = {
        1: ("correlation_id", _U64),
        2: ("status", _U32),
        3: ("payload", _BYTES),
        4: ("retry_after_ms", _U32),
    }


@dataclass
class Push(Message):
    seq: int = 0
    route: str = ""
    payload: bytes = b""
    ack_required: bool = False
    priority: Union[Priority, int] = Priority.NORMAL
    retransmit: bool = False
    #: A hot room's batch (PROTOCOL.md §7.5): its pushes, in order.
    batch: List["Push"] = field(default_factory=list)
    #: The room of a batch.
    room: str = ""
    #: Pushes of the room the gateway dropped since its previous batch.
    dropped: int = 0
    _FIELDS = {
        1: ("seq", _U64),
        2: ("route", _STR),
        3: ("payload", _BYTES),
        4: ("ack_required", _BOOL),
        5: ("priority", "Priority"),
        6: ("retransmit", _BOOL),
        7: ("batch", _PUSHES),
        8: ("room", _STR),
        9: ("dropped", _U32),
    }


@dataclass
class Ack(Message):
    seq: int = 0
    _FIELDS = {1: ("seq", _U64)}


@dataclass
class GoAway(Message):
    reason: Union[CloseReason, int] = CloseReason.UNSPECIFIED
    retry_after_ms: int = 0
    endpoints: List[str] = field(default_factory=list)
    message: str = ""
    _FIELDS = {
        1: ("reason", "CloseReason"),
        2: ("retry_after_ms", _U32),
        3: ("endpoints", _STRS),
        4: ("message", _STR),
    }


@dataclass
class Error(Message):
    code: Union[ErrorCode, int] = ErrorCode.UNSPECIFIED
    message: str = ""
    retry_after_ms: int = 0
    _FIELDS = {1: ("code", "ErrorCode"), 2: ("message", _STR), 3: ("retry_after_ms", _U32)}


@dataclass
class Refresh(Message):
    token: str = ""
    _FIELDS = {1: ("token", _STR)}


@dataclass
class RefreshReply(Message):
    code: Union[ErrorCode, int] = ErrorCode.UNSPECIFIED
    message: str = ""
    expires_at_unix_s: int = 0
    _FIELDS = {1: ("code", "ErrorCode"), 2: ("message", _STR), 3: ("expires_at_unix_s", _U64)}


@dataclass
class TokenExpiring(Message):
    expires_at_unix_s: int = 0
    _FIELDS = {1: ("expires_at_unix_s", _U64)}


#: Frame.body field numbers (the oneof of gateway.proto's Frame).
_BODIES: Dict[int, Type[Message]] = {
    1: Auth,
    2: AuthOk,
    3: AuthError,
    4: Ping,
    5: Pong,
    6: Upstream,
    7: UpstreamReply,
    8: Push,
    9: Ack,
    10: GoAway,
    11: Error,
    12: Refresh,
    13: RefreshReply,
    14: TokenExpiring,
}
_BODY_NUMBER: Dict[Type[Message], int] = {cls: n for n, cls in _BODIES.items()}

# Wire types.
_VARINT, _I64, _LEN, _SGROUP, _EGROUP, _I32 = 0, 1, 2, 3, 4, 5


# ---------------------------------------------------------------- encoding


def _varint(v: int, out: bytearray) -> None:
    while v > 0x7F:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)


def _key(number: int, wire: int, out: bytearray) -> None:
    _varint((number << 3) | wire, out)


def _len_field(number: int, data: bytes, out: bytearray) -> None:
    _key(number, _LEN, out)
    _varint(len(data), out)
    out += data


def _encode_message(msg: Message) -> bytes:
    out = bytearray()
    for number, (name, kind) in sorted(msg._FIELDS.items()):
        v = getattr(msg, name)
        if kind in (_U32, _U64) or kind in _ENUMS:
            v = int(v)
            top = _U64_MAX if kind == _U64 else _U32_MAX
            if v < 0 or v > top:
                raise ValueError(f"{type(msg).__name__}.{name} = {v} is out of range")
            if v:
                _key(number, _VARINT, out)
                _varint(v, out)
        elif kind == _BOOL:
            if v:
                _key(number, _VARINT, out)
                out.append(1)
        elif kind == _STR:
            if not isinstance(v, str):
                raise TypeError(f"{type(msg).__name__}.{name} must be str")
            if v:
                _len_field(number, v.encode("utf-8"), out)
        elif kind == _BYTES:
            if v:
                _len_field(number, bytes(v), out)
        elif kind == _STRS:
            for s in v:
                _len_field(number, s.encode("utf-8"), out)
        elif kind == _PUSHES:
            for item in v:
                _len_field(number, _encode_message(item), out)
        elif kind == _MAP:
            for k, val in v.items():
                entry = bytearray()
                if k:
                    _len_field(1, k.encode("utf-8"), entry)
                if val:
                    _len_field(2, val.encode("utf-8"), entry)
                _len_field(number, bytes(entry), out)
        else:  # pragma: no cover - the schema above has no other kinds
            raise AssertionError(kind)
    return bytes(out)


def encode_frame(msg: Message) -> bytes:
    """Protobuf bytes of one ``Frame`` whose body is ``msg`` (no prefix)."""
    number = _BODY_NUMBER.get(type(msg))
    if number is None:
        raise TypeError(f"{type(msg).__name__} is not a Frame body")
    out = bytearray()
    _len_field(number, _encode_message(msg), out)
    return bytes(out)


def frame_bytes(msg: Message) -> bytes:
    """``msg`` as it goes on a TCP/TLS stream: length prefix, then the Frame."""
    body = encode_frame(msg)
    return struct.pack(">I", len(body)) + body


# ---------------------------------------------------------------- decoding


class _Reader:
    __slots__ = ("buf", "pos", "end")

    def __init__(self, buf: memoryview, pos: int, end: int) -> None:
        self.buf, self.pos, self.end = buf, pos, end

    def varint(self) -> int:
        result, shift = 0, 0
        while True:
            if self.pos >= self.end:
                raise DecodeError("truncated varint")
            b = self.buf[self.pos]
            self.pos += 1
            if shift == 63 and b > 1:
                raise DecodeError("varint over 64 bits")
            result |= (b & 0x7F) << shift
            if b < 0x80:
                return result
            shift += 7

    def take(self, n: int) -> memoryview:
        if n > self.end - self.pos:
            raise DecodeError(f"field of {n} bytes runs past the end ({self.end - self.pos} left)")
        v = self.buf[self.pos : self.pos + n]
        self.pos += n
        return v

    def key(self) -> Tuple[int, int]:
        k = self.varint()
        number, wire = k >> 3, k & 7
        if number == 0 or number > _FIELD_NUMBER_MAX:
            raise DecodeError(f"invalid field number {number}")
        if wire in (6, 7):
            raise DecodeError(f"invalid wire type {wire}")
        return number, wire

    def skip(self, number: int, wire: int, depth: int) -> None:
        if wire == _VARINT:
            self.varint()
        elif wire == _I64:
            self.take(8)
        elif wire == _LEN:
            self.take(self.varint())
        elif wire == _I32:
            self.take(4)
        elif wire == _SGROUP:
            if depth >= _DEPTH_MAX:
                raise DecodeError("groups nested too deep")
            while True:
                n, w = self.key()
                if w == _EGROUP:
                    if n != number:
                        raise DecodeError("group ends with the wrong field number")
                    return
                self.skip(n, w, depth + 1)
        else:  # _EGROUP outside a group
            raise DecodeError("unexpected end-group")


def _utf8(v: memoryview) -> str:
    try:
        return bytes(v).decode("utf-8")
    except UnicodeDecodeError as e:
        raise DecodeError(f"string field is not UTF-8: {e}") from None


def _decode_into(msg: Message, r: _Reader, depth: int) -> None:
    spec = msg._FIELDS
    while r.pos < r.end:
        number, wire = r.key()
        known = spec.get(number)
        if known is None:
            r.skip(number, wire, depth)
            continue
        name, kind = known
        want = _LEN if kind in (_STR, _BYTES, _STRS, _MAP, _PUSHES) else _VARINT
        if wire != want:
            raise DecodeError(f"{type(msg).__name__}.{name}: wire type {wire}, expected {want}")
        if want == _VARINT:
            v = r.varint()
            if kind == _U64:
                setattr(msg, name, v)
            elif kind == _U32:
                setattr(msg, name, v & _U32_MAX)  # protobuf truncates to 32 bits
            elif kind == _BOOL:
                setattr(msg, name, v != 0)
            else:  # an enum: int32 on the wire; unknown values are kept as ints
                v &= _U32_MAX
                if v >= 1 << 31:
                    v -= 1 << 32
                try:
                    setattr(msg, name, _ENUMS[kind](v))
                except ValueError:
                    setattr(msg, name, v)
            continue
        data = r.take(r.varint())
        if kind == _STR:
            setattr(msg, name, _utf8(data))
        elif kind == _BYTES:
            setattr(msg, name, bytes(data))
        elif kind == _STRS:
            getattr(msg, name).append(_utf8(data))
        elif kind == _PUSHES:
            if depth + 1 >= _DEPTH_MAX:
                raise DecodeError("messages nested too deep")
            item = Push()
            _decode_into(item, _Reader(r.buf, r.pos - len(data), r.pos), depth + 1)
            getattr(msg, name).append(item)
        else:  # _MAP: an entry message {1: key, 2: value}
            if depth + 1 >= _DEPTH_MAX:
                raise DecodeError("messages nested too deep")
            er = _Reader(r.buf, r.pos - len(data), r.pos)
            key, value = "", ""
            while er.pos < er.end:
                n, w = er.key()
                if n in (1, 2):
                    if w != _LEN:
                        raise DecodeError(f"map entry field {n}: wire type {w}")
                    s = _utf8(er.take(er.varint()))
                    if n == 1:
                        key = s
                    else:
                        value = s
                else:
                    er.skip(n, w, depth + 1)
            getattr(msg, name)[key] = value


def decode_frame(data: Union[bytes, bytearray, memoryview]) -> Message:
    """Decodes one ``Frame`` (without the length prefix) into its body.

    Raises :class:`DecodeError` for anything but a well-formed frame with a
    known body. If the body field occurs more than once, occurrences of the
    same body merge and a different body replaces the earlier one (protobuf
    ``oneof`` rules).
    """
    buf = memoryview(bytes(data)) if not isinstance(data, bytes) else memoryview(data)
    r = _Reader(buf, 0, len(buf))
    body: Union[Message, None] = None
    while r.pos < r.end:
        number, wire = r.key()
        cls = _BODIES.get(number)
        if cls is None:
            r.skip(number, wire, 0)
            continue
        if wire != _LEN:
            raise DecodeError(f"Frame body {cls.__name__}: wire type {wire}, expected 2")
        n = r.varint()
        start = r.pos
        r.take(n)
        if not isinstance(body, cls):
            body = cls()
        _decode_into(body, _Reader(buf, start, start + n), 1)
    if body is None:
        raise DecodeError("frame has no known body")
    return body


def message_fields(msg: Message) -> Dict[str, object]:
    """The message's fields as a dict (handy for logs)."""
    return {f.name: getattr(msg, f.name) for f in fields(msg)}  # type: ignore[arg-type]
