"""Webhook authentication, pure: the X-Hub-Signature-256 check and the GET verification handshake.

Guarantees:
- the signature is computed over the raw request bytes, before any parsing (re-serialised JSON
  would not match: API doc §4.2), and compared in constant time;
- a missing, malformed or non-ASCII header is simply "not verified", never an exception;
- the handshake answers only `hub.mode=subscribe` with the exact verify token (§4.1).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

__all__ = ["SIGNATURE_HEADER", "handshake_challenge", "sign", "verify_signature"]

SIGNATURE_HEADER = "x-hub-signature-256"  # as the HTTP server hands headers over: lower-case
_PREFIX = "sha256="


def sign(body: bytes, app_secret: str) -> str:
    """The header value Meta sends for `body`: 'sha256=' + lower-case hex HMAC-SHA256."""
    return _PREFIX + hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()


def verify_signature(body: bytes, header: str | None, app_secret: str) -> bool:
    """True iff `header` is 'sha256=<hex HMAC-SHA256(body, app_secret)>' (hex in either case).

    The comparison runs in constant time over bytes, so a header with non-ASCII characters is a
    mismatch rather than a TypeError.
    """
    if not header or not app_secret:
        return False
    header = header.strip()
    if header[: len(_PREFIX)].lower() != _PREFIX:
        return False
    given = header[len(_PREFIX):].lower().encode("utf-8", "replace")
    expected = hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest().encode("ascii")
    return hmac.compare_digest(expected, given)


def handshake_challenge(query: Mapping[str, str], verify_token: str | None) -> str | None:
    """The `hub.challenge` to echo for a valid verification GET, else None (answer 403).

    Valid: `hub.mode` is 'subscribe', `hub.verify_token` equals `verify_token` (constant-time)
    and a challenge is present. With no verify token configured nothing is valid.
    """
    if not verify_token or query.get("hub.mode") != "subscribe":
        return None
    given = query.get("hub.verify_token", "")
    if not hmac.compare_digest(given.encode("utf-8", "replace"), verify_token.encode("utf-8")):
        return None
    challenge = query.get("hub.challenge")
    return challenge if challenge else None
