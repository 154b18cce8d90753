"""Tokens for a gateway started with ``--demo``. Development only.

``gateway --demo`` accepts HS256 tokens signed with a key that is public
(PROTOCOL.md §5, kid ``demo``): anyone can mint any user's token with it.
This helper exists so examples and tests need no JWT library; a real
deployment mints tokens on its own auth server and hands them to the client
through the token provider.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any, Dict, Optional

__all__ = ["DEMO_SECRET", "DEMO_KID", "demo_token", "hs256_token"]

#: The public demo key of ``gateway --demo``. Never use it in production.
DEMO_SECRET = "demo-secret-not-for-production-0123456789"
DEMO_KID = "demo"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def hs256_token(claims: Dict[str, Any], secret: str, kid: Optional[str] = None) -> str:
    """A compact HS256 JWT of ``claims`` signed with ``secret``."""
    header = {"alg": "HS256", "typ": "JWT"}
    if kid is not None:
        header["kid"] = kid
    signing_input = (
        _b64(json.dumps(header, separators=(",", ":")).encode())
        + "."
        + _b64(json.dumps(claims, separators=(",", ":")).encode())
    )
    sig = hmac.new(secret.encode(), signing_input.encode("ascii"), hashlib.sha256).digest()
    return signing_input + "." + _b64(sig)


def demo_token(sub: str, ttl_s: float = 3600, did: Optional[str] = None) -> str:
    """A token for user ``sub`` that ``gateway --demo`` accepts, expiring
    ``ttl_s`` seconds from now (negative: already expired)."""
    claims: Dict[str, Any] = {"sub": sub, "exp": int(time.time() + ttl_s)}
    if did is not None:
        claims["did"] = did
    return hs256_token(claims, DEMO_SECRET, DEMO_KID)
