"""The lean HTTP server, driven over in-memory streams (no sockets), parsed back with h11."""

from __future__ import annotations

import h11
import orjson
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from broadcaster.httpserver import (
    DropConnection,
    Request,
    Response,
    _NotPlain,
    _parse_plain_head,
    serve_connection,
)

HEAD = b"POST /v1/x?a=1&b=two HTTP/1.1\r\nHost: t\r\nX-Thing: Yes\r\nContent-Length: %d\r\n\r\n"


def post(body: bytes = b"{}", target: bytes = b"/v1/x?a=1&b=two", extra: bytes = b"") -> bytes:
    return (b"POST " + target + b" HTTP/1.1\r\nHost: t\r\nX-Thing: Yes\r\n" + extra
            + b"Content-Length: %d\r\n\r\n" % len(body) + body)


async def echo(request: Request) -> Response:
    """Answers with what it saw, so tests can check parsing."""
    return Response.json({"method": request.method, "path": request.path, "query": request.query,
                          "headers": request.headers, "body": request.body.decode()})


class Peer:
    """The client end of a memory stream, reading responses with an h11 client."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.leftover = b""

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def response(self) -> tuple[h11.Response, bytes]:
        """The next full response; fails the test if the server closes first."""
        conn = h11.Connection(h11.CLIENT)  # one per response: requests are written raw
        conn.send(h11.Request(method="GET", target="/", headers=[("host", "t")]))
        conn.send(h11.EndOfMessage())
        if self.leftover:
            conn.receive_data(self.leftover)  # (b"" would mean EOF to h11)
        head = None
        body = b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await self.stream.receive_some(65536))
                continue
            if isinstance(event, h11.Response):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert head is not None
                self.leftover = conn.trailing_data[0]
                return head, body
            else:
                raise AssertionError(f"connection ended instead of a response: {event!r}")

    async def read_all(self) -> bytes:
        """Everything until the server closes."""
        data = b""
        while chunk := await self.stream.receive_some(65536):
            data += chunk
        return data


async def serve(nursery: trio.Nursery, handler=echo, **kw) -> Peer:  # noqa: ANN001
    client, server = trio.testing.memory_stream_pair()
    nursery.start_soon(lambda: serve_connection(server, handler, **kw))
    return Peer(client)


async def test_request_fields_reach_the_handler() -> None:
    async with trio.open_nursery() as nursery:
        peer = await serve(nursery)
        await peer.send(post(b'{"k": 1}'))
        head, body = await peer.response()
        assert head.status_code == 200
        seen = orjson.loads(body)
        assert seen["method"] == "POST" and seen["path"] == "/v1/x"
        assert seen["query"] == {"a": "1", "b": "two"}
        assert seen["headers"]["x-thing"] == "Yes" and seen["body"] == '{"k": 1}'
        nursery.cancel_scope.cancel()


async def test_keep_alive_and_pipelined_requests_are_answered_in_order() -> None:
    async with trio.open_nursery() as nursery:
        peer = await serve(nursery)
        for i in range(50):  # one connection, sequential requests
            await peer.send(post(b"%d" % i))
            _, body = await peer.response()
            assert b'"body":"%d"' % i in body
        await peer.send(post(b"a") + post(b"b") + post(b"c"))  # three in one write
        bodies = [(await peer.response())[1] for _ in range(3)]
        assert [b'"body":"a"' in bodies[0], b'"body":"b"' in bodies[1],
                b'"body":"c"' in bodies[2]] == [True, True, True]
        nursery.cancel_scope.cancel()


async def test_body_split_across_writes_is_reassembled() -> None:
    async with trio.open_nursery() as nursery:
        peer = await serve(nursery)
        data = post(b"x" * 1000)
        for i in range(0, len(data), 7):
            await peer.send(data[i:i + 7])
        _, body = await peer.response()
        assert b'"body":"' + b"x" * 1000 in body
        nursery.cancel_scope.cancel()


async def test_oversized_content_length_gets_413_without_reading_the_body() -> None:
    async with trio.open_nursery() as nursery:
        peer = await serve(nursery, max_body=100)
        await peer.send(HEAD % 101 + b"only a little")  # the rest never comes
        head, body = await peer.response()
        assert head.status_code == 413 and b"over 100 bytes" in body
        assert await peer.read_all() == b""  # closed


async def test_oversized_chunked_body_gets_413() -> None:
    async with trio.open_nursery() as nursery:
        peer = await serve(nursery, max_body=10)
        await peer.send(b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                        b"8\r\n12345678\r\n8\r\n12345678\r\n")
        head, _ = await peer.response()
        assert head.status_code == 413


async def test_chunked_body_goes_through_h11_and_the_connection_stays_usable() -> None:
    async with trio.open_nursery() as nursery:
        peer = await serve(nursery)
        await peer.send(b"POST /c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                        b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
        head, body = await peer.response()
        assert head.status_code == 200 and b'"body":"abcde"' in body
        await peer.send(post(b"next"))
        _, body = await peer.response()
        assert b'"body":"next"' in body
        nursery.cancel_scope.cancel()


async def test_handler_exception_is_500_and_the_connection_survives(
        caplog: pytest.LogCaptureFixture) -> None:
    calls = 0

    async def flaky(request: Request) -> Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("boom")
        return Response(204)

    async with trio.open_nursery() as nursery:
        peer = await serve(nursery, flaky)
        await peer.send(post())
        head, _ = await peer.response()
        assert head.status_code == 500
        await peer.send(post())
        head, _ = await peer.response()
        assert head.status_code == 204
        nursery.cancel_scope.cancel()
    assert "http handler failed on POST /v1/x" in caplog.text


@pytest.mark.parametrize("how", ["raise", "return"])
async def test_drop_connection_closes_without_an_answer(how: str) -> None:
    async def dropper(request: Request) -> Response | DropConnection:
        if how == "raise":
            raise DropConnection()
        return DropConnection()

    async with trio.open_nursery() as nursery:
        peer = await serve(nursery, dropper)
        await peer.send(post())
        assert await peer.read_all() == b""


async def test_drop_connection_with_partial_cuts_the_body() -> None:
    async def cutter(request: Request) -> DropConnection:
        return DropConnection(Response(200, b"0123456789"), body_bytes=4)

    async with trio.open_nursery() as nursery:
        peer = await serve(nursery, cutter)
        await peer.send(post())
        data = await peer.read_all()
        assert data.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"content-length: 10\r\n" in data and data.endswith(b"\r\n\r\n0123")


async def test_connection_close_is_honoured() -> None:
    async with trio.open_nursery() as nursery:
        peer = await serve(nursery)
        await peer.send(post(extra=b"Connection: close\r\n"))
        data = await peer.read_all()
        assert data.startswith(b"HTTP/1.1 200 OK") and b"connection: close\r\n" in data


async def test_http10_request_is_answered_then_closed() -> None:
    async with trio.open_nursery() as nursery:
        peer = await serve(nursery)
        await peer.send(b"GET /old HTTP/1.0\r\n\r\n")
        data = await peer.read_all()
        assert data.startswith(b"HTTP/1.1 200") and b'"path":"/old"' in data


@pytest.mark.parametrize("raw", [
    b"NOT A REQUEST\r\n\r\n",
    b"GET / HTTP/1.1\r\n\r\n",  # no Host
    b"GET / HTTP/1.1\r\nHost: t\r\nBad Header: x\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: nope\r\n\r\n",
])
async def test_malformed_request_gets_400_and_close(raw: bytes) -> None:
    async with trio.open_nursery() as nursery:
        peer = await serve(nursery)
        await peer.send(raw)
        data = await peer.read_all()
        assert data.startswith(b"HTTP/1.1 400 ")


async def test_bad_response_header_is_500_not_injected() -> None:
    async def injector(request: Request) -> Response:
        return Response(200, b"x", {"x-evil": "a\r\nset-cookie: y"})

    async with trio.open_nursery() as nursery:
        peer = await serve(nursery, injector)
        await peer.send(post())
        head, _ = await peer.response()
        assert head.status_code == 500
        nursery.cancel_scope.cancel()


async def test_idle_connection_is_closed_after_idle_timeout(autojump_clock: object) -> None:
    async with trio.open_nursery() as nursery:
        peer = await serve(nursery, idle_timeout=30.0)
        await peer.send(post())
        await peer.response()
        start = trio.current_time()
        assert await peer.read_all() == b""
        assert trio.current_time() - start == pytest.approx(30.0)


async def test_slow_handler_is_not_cut_by_the_idle_timeout(autojump_clock: object) -> None:
    async def slow(request: Request) -> Response:
        await trio.sleep(100)
        return Response(200, b"late")

    async with trio.open_nursery() as nursery:
        peer = await serve(nursery, slow, idle_timeout=5.0)
        await peer.send(post())
        _, body = await peer.response()
        assert body == b"late"
        nursery.cancel_scope.cancel()


# --------------------------------------------------------------------------- plain parser vs h11

_token = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-ABCXYZ0123456789", min_size=1, max_size=12)
_value = st.text(alphabet=st.one_of(st.characters(min_codepoint=0x20, max_codepoint=0x7E),
                                    st.sampled_from("\t\x7f\xe9\x00\r\n")), max_size=20)


@settings(max_examples=300, deadline=None)
@given(method=st.sampled_from(["GET", "POST", "PUT", "DELETE"]),
       path=st.text(alphabet="abc/%?=&19", max_size=20),
       headers=st.lists(st.tuples(_token, _value), max_size=6),
       length=st.integers(0, 50), close=st.booleans())
def test_plain_parser_agrees_with_h11(method: str, path: str, headers: list[tuple[str, str]],
                                      length: int, close: bool) -> None:
    """Whenever the fast parser accepts a head, h11 reads the same request from it."""
    lines = [f"{method} /{path} HTTP/1.1", "Host: t"]
    lines += [f"{k}: {v}" for k, v in headers if k.lower() not in
              ("host", "content-length", "connection", "transfer-encoding")]
    lines.append(f"Content-Length: {length}")
    if close:
        lines.append("Connection: close")
    head = "\r\n".join(lines)
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(head.encode("latin-1") + b"\r\n\r\n" + b"x" * length)
    try:
        event = conn.next_event()
    except h11.RemoteProtocolError:
        event = None
    try:
        parsed = _parse_plain_head(head)
    except _NotPlain:
        return  # h11 handles it
    assert isinstance(event, h11.Request), "the plain parser accepted what h11 rejects"
    m, target, hdrs, n, want_close = parsed
    assert (m, target, n, want_close) == (event.method.decode(), event.target.decode(), length,
                                          close)
    assert hdrs == {k.decode(): v.decode("latin-1") for k, v in event.headers}
