"""asyncio client of the gateway (PROTOCOL.md): TCP or TLS, length-prefixed
protobuf frames, JWT auth, heartbeats, request/reply, acked pushes,
resume, reconnects and token refresh. No dependencies.

    import asyncio
    from gateway_client import Client

    async def main():
        async with Client("127.0.0.1:7000", token) as c:
            print((await c.request("echo", b"hi")).payload)

    asyncio.run(main())
"""

from .client import (
    ACK_BATCH_MAX,
    FRAME_BYTES_LIMIT,
    PREAUTH_FRAME_BYTES_MAX,
    Client,
    ClientStats,
    CloseInfo,
    ReceivedPush,
    TokenSource,
    parse_endpoint,
)
from .errors import (
    AuthFailed,
    BackendStatus,
    BackendUnavailable,
    BadRequest,
    Busy,
    ClientClosed,
    ConnectError,
    ConnectionLost,
    DecodeError,
    FrameTooLarge,
    GatewayError,
    InternalError,
    ProtocolError,
    RefreshFailed,
    RequestTimeout,
    ServerRefused,
    TooManyPendingRequests,
    UnknownRoute,
    UpstreamError,
    UpstreamTimeout,
)
from .proto import (
    PROTOCOL_VERSION,
    AuthOk,
    CloseReason,
    Error,
    ErrorCode,
    GoAway,
    Priority,
    RefreshReply,
    TokenExpiring,
    UpstreamReply,
)

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "Client",
    "ClientStats",
    "CloseInfo",
    "ReceivedPush",
    "TokenSource",
    "parse_endpoint",
    "ACK_BATCH_MAX",
    "FRAME_BYTES_LIMIT",
    "PREAUTH_FRAME_BYTES_MAX",
    "PROTOCOL_VERSION",
    "AuthOk",
    "CloseReason",
    "Error",
    "ErrorCode",
    "GoAway",
    "Priority",
    "RefreshReply",
    "TokenExpiring",
    "UpstreamReply",
    "GatewayError",
    "ConnectError",
    "ServerRefused",
    "AuthFailed",
    "ProtocolError",
    "DecodeError",
    "ClientClosed",
    "ConnectionLost",
    "RequestTimeout",
    "TooManyPendingRequests",
    "FrameTooLarge",
    "RefreshFailed",
    "UpstreamError",
    "UnknownRoute",
    "BadRequest",
    "Busy",
    "UpstreamTimeout",
    "BackendUnavailable",
    "InternalError",
    "BackendStatus",
]
