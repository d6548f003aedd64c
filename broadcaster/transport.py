"""The send transport: one httpcore connection per sender lane, to Meta or the sandbox by base URL.

`CloudApiTransport.open_lane()` hands out a `Lane`; each lane owns one keep-alive connection and
carries one request at a time (architecture.md: ~0.8 ms CPU per request vs ~3 ms for a shared
httpx pool). A lane turns every answer into a `SendResult` or one of the SendError subclasses:

    accepted (wamid)          → SendResult
    THROTTLE codes / 429      → ThrottledError(retry_after)
    TRANSIENT codes / 5xx     → TransientSendError      (nothing accepted: safe to retry)
    PERMANENT codes           → PermanentSendError
    HALT codes                → CampaignHaltError
    connect refused/timed out → TransientSendError      (no byte of the request left)
    timeout/reset after write → OutcomeUnknown          (may or may not have been accepted)

Nothing above this module sees an httpcore exception.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpcore
import orjson

from broadcaster.classify import Action, classify, title_for
from broadcaster.errors import (
    CampaignHaltError,
    ConfigError,
    OutcomeUnknown,
    PermanentSendError,
    ProviderUnreachable,
    SendError,
    ThrottledError,
    TransientSendError,
)

_ERROR_BY_ACTION: dict[Action, type[SendError]] = {
    Action.TRANSIENT: TransientSendError,
    Action.PERMANENT: PermanentSendError,
    Action.HALT: CampaignHaltError,
}


@dataclass(frozen=True)
class SendResult:
    wamid: str
    message_status: str  # accepted | held_for_quality_assessment | paused


@dataclass(frozen=True)
class TransportConfig:
    api_url: str                   # base incl. version, e.g. https://graph.facebook.com/v25.0
    token: str | None              # Bearer token; None only for a sandbox that accepts any
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 15.0   # past this the outcome is unknown, never blindly re-sent
    write_timeout_s: float = 10.0


KEEPALIVE_EXPIRY_S = 30.0  # an idle connection older than this is replaced before the next request


class CloudApiTransport:
    """Factory of lanes for one sender number (`phone_number_id`)."""

    def __init__(self, config: TransportConfig, phone_number_id: str) -> None:
        parts = urlsplit(config.api_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"WHATSAPP_API_URL is not a usable URL: {config.api_url!r}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        self._origin = httpcore.Origin(parts.scheme.encode(), parts.hostname.encode(), port)
        self._url = f"{config.api_url.rstrip('/')}/{phone_number_id}/messages"
        self._request_url = httpcore.URL(self._url)  # parsed once, not per request (~6 µs each)
        self._ssl = ssl.create_default_context() if parts.scheme == "https" else None
        headers = [(b"Content-Type", b"application/json"), (b"Host", parts.netloc.encode())]
        if config.token:
            headers.append((b"Authorization", f"Bearer {config.token}".encode()))
        self._headers = headers
        self._timeouts = {"connect": config.connect_timeout_s, "read": config.read_timeout_s,
                          "write": config.write_timeout_s, "pool": config.connect_timeout_s}
        self.phone_number_id = phone_number_id

    def open_lane(self) -> Lane:
        return Lane(self)

    def __repr__(self) -> str:
        return f"<CloudApiTransport {self._url}>"


class Lane:
    """One sender lane: one connection, one request at a time. Connects lazily, reconnects
    after any failure. Use as `async with transport.open_lane() as lane:`.

    Cancellation: a send cancelled after its bytes left has an unknown outcome; the caller records
    the row as `unknown`. The connection is closed either way.
    """

    def __init__(self, transport: CloudApiTransport) -> None:
        self._t = transport
        self._conn: httpcore.AsyncHTTPConnection | None = None
        self.requests = 0

    async def __aenter__(self) -> Lane:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def is_closed(self) -> bool:
        return self._conn is None

    def info(self) -> str:
        return f"{'closed' if self._conn is None else 'open'}, {self.requests} requests"

    def __repr__(self) -> str:
        return f"<Lane {self._t._url} [{self.info()}]>"

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.aclose()

    async def _connection(self) -> httpcore.AsyncHTTPConnection:
        """The lane's connection, reopened when an idle one expired (KEEPALIVE_EXPIRY_S) or the
        server closed it while idle: a request is never written into a connection the server has
        given up on (its failure would leave the outcome unknown although nothing was sent)."""
        if self._conn is not None and self._conn.has_expired():
            await self.aclose()
        if self._conn is None:
            self._conn = httpcore.AsyncHTTPConnection(
                self._t._origin, ssl_context=self._t._ssl, keepalive_expiry=KEEPALIVE_EXPIRY_S)
        return self._conn

    async def send(self, body: bytes) -> SendResult:
        """POST one message payload (orjson bytes).

        Raises:
            ThrottledError / TransientSendError / PermanentSendError / CampaignHaltError:
                the provider answered and did not accept it;
            OutcomeUnknown: the request left but no complete answer came back.
        """
        self.requests += 1
        for attempt in (0, 1):
            conn = await self._connection()
            try:
                resp = await conn.request(
                    b"POST", self._t._request_url, headers=self._t._headers, content=body,
                    extensions={"timeout": self._t._timeouts})
                break
            except httpcore.ConnectionNotAvailable:
                # the idle keep-alive connection was closed by the server: nothing was sent
                await self.aclose()
                if attempt:
                    raise TransientSendError("connection not available") from None
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                await self.aclose()
                raise ProviderUnreachable(f"cannot connect to the Cloud API: {exc!r}",
                                          title="Cloud API unreachable") from exc
            except (httpcore.TimeoutException, httpcore.NetworkError,
                    httpcore.RemoteProtocolError) as exc:
                await self.aclose()
                raise OutcomeUnknown(f"no complete answer after the request was written: {exc!r}") from exc
            except BaseException:
                await self.aclose()
                raise
        return self._interpret(resp.status, resp.content, resp.headers)

    @staticmethod
    def _interpret(status: int, content: bytes, headers: list[tuple[bytes, bytes]]) -> SendResult:
        try:
            doc = orjson.loads(content) if content else {}
        except orjson.JSONDecodeError:
            doc = {}
        if status == 200 and isinstance(doc, dict) and doc.get("messages"):
            msg = doc["messages"][0]
            return SendResult(wamid=msg["id"], message_status=msg.get("message_status", "accepted"))
        if status == 200:
            raise OutcomeUnknown(f"HTTP 200 without a message id: {content[:200]!r}")
        error = doc.get("error", {}) if isinstance(doc, dict) else {}
        code = error.get("code") if isinstance(error, dict) else None
        code = code if isinstance(code, int) else None
        details = ""
        if isinstance(error, dict):
            details = (error.get("error_data") or {}).get("details") or error.get("message") or ""
        action = classify(status, code, is_transient=error.get("is_transient") if error else None)
        message = f"HTTP {status}, code {code} ({title_for(code)}): {details}".rstrip(": ")
        if action is Action.THROTTLE:
            retry_after = None
            for name, value in headers:
                if name.lower() == b"retry-after":
                    try:
                        retry_after = float(value)
                    except ValueError:
                        retry_after = None
            raise ThrottledError(message, retry_after=retry_after, pair=code == 131056,
                                 code=code, title=title_for(code), http_status=status)
        raise _ERROR_BY_ACTION[action](message, code=code, title=title_for(code), http_status=status)
