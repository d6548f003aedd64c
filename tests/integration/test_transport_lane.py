"""A lane against a real HTTP server on 127.0.0.1 that closes idle connections."""

from __future__ import annotations

import trio

from broadcaster.httpserver import Request, Response, serve_http
from broadcaster.transport import CloudApiTransport, TransportConfig


async def test_a_connection_the_server_closed_while_idle_is_replaced_not_written_into() -> None:
    """The sandbox (and Meta) close keep-alive connections idle too long. Writing the next message
    into such a connection fails with no answer, an `unknown` outcome for a message that never left;
    the lane must notice the close and reconnect first."""
    seen: list[bytes] = []

    async def handler(request: Request) -> Response:
        seen.append(request.body)
        return Response.json({"messaging_product": "whatsapp", "messages": [{"id": f"wamid.{len(seen)}"}]})

    async with trio.open_nursery() as nursery:
        port = await nursery.start(lambda task_status: serve_http(handler, idle_timeout=0.3, task_status=task_status))
        transport = CloudApiTransport(TransportConfig(api_url=f"http://127.0.0.1:{port}/v25.0", token="t"), "123")
        async with transport.open_lane() as lane:
            first = await lane.send(b'{"to": "1"}')
            await trio.sleep(0.8)  # the server has closed the idle connection by now
            second = await lane.send(b'{"to": "2"}')
        nursery.cancel_scope.cancel()
    assert (first.wamid, second.wamid) == ("wamid.1", "wamid.2")
    assert seen == [b'{"to": "1"}', b'{"to": "2"}']
