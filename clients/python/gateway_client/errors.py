"""Typed errors of the client. Every one derives from :class:`GatewayError`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict, List, Optional, Type

if TYPE_CHECKING:  # pragma: no cover
    from .client import CloseInfo

__all__ = [
    "GatewayError",
    "ConnectError",
    "ProtocolError",
    "DecodeError",
    "AuthFailed",
    "ServerRefused",
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
    "upstream_error",
]


def _name(code: int) -> str:
    from .proto import ErrorCode  # not at import time: proto imports this module

    try:
        return ErrorCode(code).name
    except ValueError:
        return str(code)


class GatewayError(Exception):
    """Base class of every error this package raises."""


class ConnectError(GatewayError):
    """No session could be opened: TCP/TLS connect failed, timed out, or the
    server closed before answering ``Auth``."""


class ProtocolError(GatewayError):
    """The server sent something this client cannot accept (a frame over
    the size limit, bytes that do not decode, a frame not allowed in this
    state). The connection is closed; the client reconnects with backoff."""


class DecodeError(ProtocolError, ValueError):
    """Bytes that are not a well-formed ``Frame`` of gateway.proto."""


class AuthFailed(GatewayError):
    """The server answered ``Auth`` with ``AuthError`` (PROTOCOL.md §5, §9).

    ``code`` is the :class:`ErrorCode`; ``retryable`` is true only for
    ``BACKEND_UNAVAILABLE`` (the node could not confirm the session on NATS).
    """

    def __init__(self, code: int, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"auth failed: {_name(code)}: {message}")

    @property
    def retryable(self) -> bool:
        return self.code == 24  # ErrorCode.BACKEND_UNAVAILABLE


class ServerRefused(ConnectError):
    """The server refused the connection before ``AuthOk``: an ``Error``
    frame (``SERVER_FULL``, ``BUSY``) or a ``GoAway`` (a draining node).
    Retry after ``retry_after_ms`` (the client's reconnect loop does)."""

    def __init__(
        self,
        message: str,
        *,
        code: Optional[int] = None,
        reason: object = None,
        retry_after_ms: int = 0,
        endpoints: Optional[List[str]] = None,
    ) -> None:
        self.code = code
        self.reason = reason
        self.retry_after_ms = retry_after_ms
        self.endpoints = list(endpoints or [])
        super().__init__(message)


class ClientClosed(GatewayError):
    """The client is closed (``close()`` was called, or it stopped for good,
    e.g. after a kick or a refused login). ``info`` says why, when known."""

    def __init__(self, message: str = "client is closed", info: "Optional[CloseInfo]" = None) -> None:
        self.info = info
        super().__init__(message)


class ConnectionLost(GatewayError):
    """The connection closed while the request was in flight. The backend
    may or may not have acted: retry with the same ``client_msg_id``."""


class RequestTimeout(GatewayError, TimeoutError):
    """No reply (or no session to send on) within the request's timeout.
    The backend may still act: retry with the same ``client_msg_id``."""


class TooManyPendingRequests(GatewayError):
    """``pending_requests_max`` requests are already waiting for replies."""


class FrameTooLarge(GatewayError, ValueError):
    """The frame would exceed the server's ``AuthOk.frame_bytes_max``."""


class RefreshFailed(GatewayError):
    """The server refused a ``Refresh`` (``RefreshReply.code`` != 0), or the
    token provider failed. The session's old expiry stands."""

    def __init__(self, code: Optional[int], message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"refresh failed: {_name(code) if code is not None else 'client'}: {message}")


class UpstreamError(GatewayError):
    """An ``UpstreamReply`` with a status other than 0 (PROTOCOL.md §4).

    ``status`` is the raw status (an :class:`ErrorCode` value, or a
    backend-defined status >= 1000), ``payload`` the reply's bytes (for
    gateway errors a UTF-8 message), ``retry_after_ms`` the server's
    advice for retryable statuses.
    """

    retryable = False

    def __init__(
        self, status: int, payload: bytes, retry_after_ms: int = 0, route: str = "", correlation_id: int = 0
    ) -> None:
        self.status = status
        self.payload = payload
        self.retry_after_ms = retry_after_ms
        self.route = route
        self.correlation_id = correlation_id
        text = payload[:200].decode("utf-8", "replace")
        extra = f", retry after {retry_after_ms} ms" if retry_after_ms else ""
        super().__init__(f"{route}: status {_name(status)}{extra}: {text}")

    @property
    def retry_after_s(self) -> float:
        return self.retry_after_ms / 1000.0


class UnknownRoute(UpstreamError):
    """Status 20: the backend has no such route."""


class BadRequest(UpstreamError):
    """Status 21: bad route name, or the backend refused the payload."""


class Busy(UpstreamError):
    """Status 22: refused by a limit before any backend saw it; retry after
    ``retry_after_ms``."""

    retryable = True


class UpstreamTimeout(UpstreamError):
    """Status 23: the backend did not answer in time; it may still have
    acted. Retry after ``retry_after_ms`` with the same ``client_msg_id``."""

    retryable = True


class BackendUnavailable(UpstreamError):
    """Status 24: NATS unreachable or no backend serves the route."""

    retryable = True


class InternalError(UpstreamError):
    """Status 25: the backend's reply was malformed or too large."""


class BackendStatus(UpstreamError):
    """A backend-defined status (>= 1000), or a code this client does not know."""


# ErrorCode values of the upstream statuses (PROTOCOL.md §4).
_BY_STATUS: Dict[int, Type[UpstreamError]] = {
    20: UnknownRoute,
    21: BadRequest,
    22: Busy,
    23: UpstreamTimeout,
    24: BackendUnavailable,
    25: InternalError,
}


def upstream_error(
    status: int, payload: bytes, retry_after_ms: int = 0, route: str = "", correlation_id: int = 0
) -> UpstreamError:
    """The typed error for a non-zero ``UpstreamReply.status``."""
    cls = _BY_STATUS.get(status, BackendStatus)
    return cls(status, payload, retry_after_ms, route, correlation_id)
