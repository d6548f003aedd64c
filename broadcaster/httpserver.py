"""A small HTTP/1.1 server on trio + h11, shared by the sandbox and the webhook receiver.

One task per connection; requests on a connection are answered one after another (keep-alive;
pipelined requests are read from the buffer and answered in order). The whole request body is
read before the handler runs, so a handler sees a complete `Request` and returns a complete
`Response`.

Two parsers, one behaviour. The plain case (an HTTP/1.1 request with a Content-Length body or
none, no Transfer-Encoding, no Expect) is parsed by a short strict parser here: h11 costs about
180 µs of CPU per request cycle on the reference machine, more than the rest of the sandbox, and
the sandbox must serve several thousand requests/s on one core. Anything else (chunked bodies,
HTTP/1.0, `Expect: 100-continue`, anything the strict parser does not recognise, including
malformed input) hands the connection to h11 for the rest of its life, so edge cases and error
answers are h11's.

Guarantees:
- A body larger than `max_body` is answered with 413 as soon as its size is known (from
  Content-Length, or while a chunked body streams in) without reading the rest; the connection
  is then closed.
- A handler exception is logged and answered with 500; the connection stays usable.
- A handler that raises or returns `DropConnection` gets its connection closed without a (complete)
  answer: the tool for simulating lost responses.
- A malformed request is answered with 400 (when h11 still can) and the connection closed.

Not provided: TLS, HTTP/2, streaming bodies, request trailers.
"""

from __future__ import annotations

import logging
import math
import re
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import NoReturn
from urllib.parse import parse_qsl, unquote

import h11
import orjson
import trio

__all__ = [
    "DropConnection",
    "Handler",
    "Request",
    "Response",
    "serve_connection",
    "serve_http",
]

logger = logging.getLogger(__name__)

MAX_BODY = 4 * 1024 * 1024  # bytes; default limit on a request body
IDLE_TIMEOUT_S = 300.0  # seconds a keep-alive connection may wait for its next request bytes
RECEIVE_CHUNK = 65536  # bytes per receive_some
MAX_HEADER_BYTES = 64 * 1024  # bytes; limit on a request head (request line + headers)


@dataclass(slots=True)
class Request:
    """One complete HTTP request. Header names are lower-case; the last repeated header wins."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


@dataclass(slots=True)
class Response:
    """One complete HTTP response. `content-length` is always computed by the server."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, obj: object, status: int = 200, headers: dict[str, str] | None = None) -> Response:
        """A JSON response (orjson-encoded, `content-type: application/json`)."""
        all_headers = {"content-type": "application/json"}
        if headers:
            all_headers.update(headers)
        return cls(status, orjson.dumps(obj), all_headers)


class DropConnection(Exception):  # noqa: N818 - a signal, not an error
    """Close the connection instead of answering; raise it or return it from a handler.

    Args:
        partial: if given, its status line, headers (with the full Content-Length) and the first
            `body_bytes` bytes of its body are written, then the connection is closed with a FIN:
            the client sees a response cut mid-body.
        body_bytes: how much of `partial.body` to write.
        abort: with no `partial`, close with a TCP reset (SO_LINGER 0) rather than a FIN; either
            way the client gets no response at all.
    """

    def __init__(self, partial: Response | None = None, *, body_bytes: int = 0,
                 abort: bool = True) -> None:
        super().__init__("connection dropped on purpose")
        self.partial = partial
        self.body_bytes = body_bytes
        self.abort = abort


Handler = Callable[[Request], Awaitable["Response | DropConnection"]]

_REASONS = {s.value: s.phrase for s in HTTPStatus}
_ERROR_500 = Response.json({"error": {"message": "internal server error", "code": 500}}, 500)
_TOKEN = re.compile(r"[-!#$%&'*+.^_`|~0-9A-Za-z]+")
_TARGET = re.compile(r"/[\x21-\x7e]*")
_DIGITS = re.compile(r"[0-9]{1,15}")
_UNSAFE = re.compile(r"[\r\n\x00]")


class _Close(Exception):  # noqa: N818 - internal control flow
    """End the connection loop (peer gone, protocol error, idle, or must-close)."""


class _NotPlain(Exception):  # noqa: N818 - internal control flow
    """The request is not on the fast path; h11 takes over the connection."""


# --------------------------------------------------------------------------- pure helpers


def _split_target(method: str, target: str, headers: dict[str, str], body: bytes) -> Request:
    path, _, qs = target.partition("?")
    if "%" in path:
        path = unquote(path)
    query = dict(parse_qsl(qs, keep_blank_values=True)) if qs else {}
    return Request(method, path, query, headers, body)


def _parse_plain_head(head: str) -> tuple[str, str, dict[str, str], int, bool]:
    """Parse a request head (no final blank line) of the plain kind.

    Returns (method, target, headers, content_length, close). Raises `_NotPlain` for anything
    else, valid or not: h11 then parses it again and answers errors itself.
    """
    lines = head.split("\r\n")
    breaks = len(lines) - 1
    if head.count("\n") != breaks or head.count("\r") != breaks or "\x00" in head:
        raise _NotPlain  # bare CR/LF or NUL: h11 decides
    parts = lines[0].split(" ")
    if (len(parts) != 3 or parts[2] != "HTTP/1.1" or not _TOKEN.fullmatch(parts[0])
            or not _TARGET.fullmatch(parts[1])):
        raise _NotPlain
    headers: dict[str, str] = {}
    length: str | None = None
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not _TOKEN.fullmatch(name):
            raise _NotPlain  # includes obs-fold continuation lines and "name :" forms
        name = name.lower()
        value = value.strip(" \t")
        if name == "content-length":
            if length is not None and length != value or not _DIGITS.fullmatch(value):
                raise _NotPlain
            length = value
        elif name in ("transfer-encoding", "expect", "upgrade"):
            raise _NotPlain
        headers[name] = value
    if "host" not in headers:
        raise _NotPlain
    close = "close" in headers.get("connection", "").lower()
    return parts[0], parts[1], headers, int(length) if length else 0, close


def _plain_response(response: Response, close: bool) -> bytes:
    """Serialise a response; header names/values with CR, LF or NUL are refused (ValueError)."""
    lines = [f"HTTP/1.1 {response.status} {_REASONS.get(response.status, '')}\r\n"]
    for name, value in response.headers.items():
        lowered = name.lower()
        if lowered in ("content-length", "connection", "transfer-encoding"):
            continue
        if _UNSAFE.search(name) or _UNSAFE.search(value):
            raise ValueError(f"response header {name!r} contains CR, LF or NUL")
        lines.append(f"{name}: {value}\r\n")
    lines.append(f"content-length: {len(response.body)}\r\n")
    if close:
        lines.append("connection: close\r\n")
    lines.append("\r\n")
    return "".join(lines).encode("latin-1") + response.body


async def _answer(handler: Handler, request: Request) -> Response | DropConnection:
    try:
        result = await handler(request)
    except DropConnection as drop:
        return drop
    except Exception:
        logger.exception("http handler failed on %s %s", request.method, request.path)
        return _ERROR_500
    if not isinstance(result, Response | DropConnection):
        logger.error("http handler returned %s for %s %s, not a Response",
                     type(result).__name__, request.method, request.path)
        return _ERROR_500
    return result


# --------------------------------------------------------------------------- connection I/O


class _Conn:
    """One accepted connection: its stream, receive buffer and idle deadline scope."""

    def __init__(self, stream: trio.abc.Stream, handler: Handler, max_body: int,
                 idle_timeout: float) -> None:
        self.stream = stream
        self.handler = handler
        self.max_body = max_body
        self.idle_timeout = idle_timeout
        self.buf = bytearray()
        self.idle = trio.CancelScope()

    def arm_idle(self) -> None:
        """Start the idle clock: the peer has `idle_timeout` s to deliver the next request."""
        self.idle.deadline = trio.current_time() + self.idle_timeout

    def disarm_idle(self) -> None:
        """Stop the idle clock (a handler may take as long as it likes)."""
        self.idle.deadline = math.inf

    async def receive(self) -> bytes:
        """The next chunk from the peer (b"" on EOF); raises `_Close` if it is gone."""
        try:
            return await self.stream.receive_some(RECEIVE_CHUNK)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise _Close from exc

    async def send(self, data: bytes) -> None:
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise _Close from exc

    async def drop(self, drop: DropConnection, head: bytes | None) -> None:
        """Write what `drop` asks for (maybe nothing), then close; never raises for a gone peer."""
        try:
            if drop.partial is not None and head is not None:
                await self.stream.send_all(head + drop.partial.body[: max(0, drop.body_bytes)])
            elif drop.abort:
                sock = getattr(self.stream, "socket", None)
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        raise _Close

    async def reject_plain(self, status: int, text: str) -> NoReturn:
        body = orjson.dumps({"error": {"message": text, "code": status}})
        await self.send(_plain_response(
            Response(status, body, {"content-type": "application/json"}), close=True))
        raise _Close

    # ----- fast path

    async def serve_plain(self) -> None:
        """Serve plain requests until the connection ends; `_NotPlain` hands over to h11."""
        buf = self.buf
        while True:
            end = buf.find(b"\r\n\r\n")
            self.arm_idle()  # the peer has idle_timeout s to deliver this request
            while end < 0:
                if len(buf) > MAX_HEADER_BYTES:
                    raise _NotPlain  # h11 answers 431/400
                data = await self.receive()
                if not data:
                    raise _Close
                buf += data
                end = buf.find(b"\r\n\r\n", max(0, len(buf) - len(data) - 3))
            method, target, headers, length, close = _parse_plain_head(buf[:end].decode("latin-1"))
            if length > self.max_body:
                await self.reject_plain(413, f"request body over {self.max_body} bytes")
            need = end + 4 + length
            while len(buf) < need:
                data = await self.receive()
                if not data:
                    raise _Close
                buf += data
            body = bytes(buf[end + 4:need])
            del buf[:need]
            self.disarm_idle()
            result = await _answer(self.handler, _split_target(method, target, headers, body))
            if isinstance(result, DropConnection):
                head = None
                if result.partial is not None:
                    full = _plain_response(result.partial, close=True)
                    head = full[: len(full) - len(result.partial.body)]
                await self.drop(result, head)
            try:
                data = _plain_response(result, close)
            except ValueError:
                logger.exception("http handler gave a bad header on %s %s", method, target)
                data = _plain_response(_ERROR_500, close)
            await self.send(data)
            if close:
                raise _Close

    # ----- h11 path

    async def h11_event(self, conn: h11.Connection) -> object:
        while True:
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            conn.receive_data(await self.receive())

    async def h11_send(self, conn: h11.Connection, response: Response, close: bool = False) -> None:
        await self.send(self.h11_head(conn, response, close)
                        + (conn.send(h11.Data(data=response.body)) or b"")
                        + (conn.send(h11.EndOfMessage()) or b""))

    @staticmethod
    def h11_head(conn: h11.Connection, response: Response, close: bool) -> bytes:
        headers = [(k, v) for k, v in response.headers.items() if k.lower() != "content-length"]
        headers.append(("content-length", str(len(response.body))))
        if close:
            headers.append(("connection", "close"))
        return conn.send(h11.Response(status_code=response.status, headers=headers,
                                      reason=_REASONS.get(response.status, ""))) or b""

    async def h11_reject(self, conn: h11.Connection, status: int, text: str) -> NoReturn:
        if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            body = orjson.dumps({"error": {"message": text, "code": status}})
            try:
                await self.h11_send(conn, Response(status, body, {
                    "content-type": "application/json"}), close=True)
            except h11.LocalProtocolError:
                pass
        raise _Close

    async def h11_body(self, conn: h11.Connection, event: h11.Request) -> bytes:
        for name, value in event.headers:
            if name == b"content-length" and int(value) > self.max_body:
                await self.h11_reject(conn, 413, f"request body over {self.max_body} bytes")
        chunks: list[bytes] = []
        size = 0
        while True:
            ev = await self.h11_event(conn)
            if type(ev) is h11.Data:
                size += len(ev.data)
                if size > self.max_body:
                    await self.h11_reject(conn, 413, f"request body over {self.max_body} bytes")
                chunks.append(ev.data)
            elif type(ev) is h11.EndOfMessage:
                return b"".join(chunks)
            else:
                raise _Close  # peer closed mid-body

    async def serve_h11(self) -> None:
        """Serve the rest of the connection with h11, starting from the buffered bytes."""
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
        conn.receive_data(bytes(self.buf))
        self.buf.clear()
        while True:
            self.arm_idle()
            try:
                event = await self.h11_event(conn)
                if type(event) is not h11.Request:
                    raise _Close  # ConnectionClosed
                body = await self.h11_body(conn, event)
            except h11.RemoteProtocolError as exc:
                await self.h11_reject(conn, exc.error_status_hint, f"bad request: {exc}")
            self.disarm_idle()
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in event.headers}
            request = _split_target(event.method.decode("ascii"), event.target.decode("latin-1"),
                                    headers, body)
            result = await _answer(self.handler, request)
            if isinstance(result, DropConnection):
                head = None
                if result.partial is not None:
                    head = self.h11_head(conn, result.partial, close=True)
                await self.drop(result, head)
            try:
                await self.h11_send(conn, result)
            except h11.LocalProtocolError:
                logger.exception("http handler gave a bad response on %s %s",
                                 request.method, request.path)
                raise _Close from None
            if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                conn.start_next_cycle()
            else:
                raise _Close  # Connection: close, HTTP/1.0, ...


async def serve_connection(stream: trio.abc.Stream, handler: Handler, *, max_body: int = MAX_BODY,
                           idle_timeout: float = IDLE_TIMEOUT_S) -> None:
    """Answer requests on one connection until it ends, then close it.

    Returns when the connection is done (peer closed, idle timeout, protocol error,
    `Connection: close`, a 413, or a `DropConnection`). Never raises for peer misbehaviour.

    Cancellation: the stream is closed; an in-flight handler is cancelled with it.
    """
    conn = _Conn(stream, handler, max_body, idle_timeout)
    try:
        with conn.idle:
            try:
                await conn.serve_plain()
            except _NotPlain:
                await conn.serve_h11()
    except _Close:
        pass
    finally:
        with trio.CancelScope(shield=True):
            await stream.aclose()


async def serve_http(
    handler: Handler,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    max_body: int = MAX_BODY,
    idle_timeout: float = IDLE_TIMEOUT_S,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Serve HTTP/1.1 on (host, port); never returns unless cancelled.

    Binds before reporting: `await nursery.start(serve_http, handler)` returns the bound port
    (useful with port=0), and connections are accepted from then on.

    Args:
        handler: `async (Request) -> Response | DropConnection`; may raise `DropConnection`.
        max_body: bodies larger than this many bytes get 413 and a closed connection.
        idle_timeout: seconds a connection may stay silent between requests before it is closed.

    Cancellation: listeners close; every open connection and in-flight handler is cancelled.
    """
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()[1]

    async def on_connection(stream: trio.abc.Stream) -> None:
        await serve_connection(stream, handler, max_body=max_body, idle_timeout=idle_timeout)

    task_status.started(bound)
    await trio.serve_listeners(on_connection, listeners)
    raise AssertionError("serve_listeners returned")  # pragma: no cover - it never returns
