"""Sandbox webhooks over real sockets, received by a tiny HMAC-checking server on httpserver."""

from __future__ import annotations

import hashlib
import hmac
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import orjson
import trio

from broadcaster.httpserver import Request, Response, serve_http
from broadcaster.sandbox import SandboxConfig, serve_sandbox

NUMBER = "106540352242922"
SECRET = "s3cret"
AUTH = {"authorization": "Bearer t"}
RANK = {"sent": 0, "delivered": 1, "read": 2}


class Receiver:
    """Checks X-Hub-Signature-256 on the raw body, then keeps what arrived.

    `fail_first` POSTs are answered 500 (after the signature check); `hold` makes every POST
    wait until released.
    """

    def __init__(self, *, fail_first: int = 0, always_fail: bool = False) -> None:
        self.posts: list[dict[str, Any]] = []
        self.statuses: list[dict[str, Any]] = []
        self.messages: list[dict[str, Any]] = []
        self.bad_signatures = 0
        self.attempts = 0
        self.fail_first = fail_first
        self.always_fail = always_fail
        self.hold: trio.Event | None = None
        self._changed = trio.Event()

    async def handle(self, request: Request) -> Response:
        expected = "sha256=" + hmac.new(SECRET.encode(), request.body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(request.headers.get("x-hub-signature-256", ""), expected):
            self.bad_signatures += 1
            return Response(401)
        if self.hold is not None:
            await self.hold.wait()
        self.attempts += 1
        if self.always_fail or self.fail_first > 0:
            self.fail_first -= 1
            self._notify()
            return Response(500)
        payload = orjson.loads(request.body)
        self.posts.append(payload)
        assert payload["object"] == "whatsapp_business_account"
        for entry in payload["entry"]:
            for change in entry["changes"]:
                value = change["value"]
                assert change["field"] == "messages" and value["messaging_product"] == "whatsapp"
                self.statuses += value.get("statuses", [])
                self.messages += value.get("messages", [])
        self._notify()
        return Response(200)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, statuses: int = 0, messages: int = 0, attempts: int = 0,
                       timeout: float = 10) -> None:
        with trio.fail_after(timeout):
            while (len(self.statuses) < statuses or len(self.messages) < messages
                   or self.attempts < attempts):
                await self._changed.wait()


@asynccontextmanager
async def world(receiver: Receiver, **config: Any) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    """A receiver and a sandbox posting to it: (a client on the sandbox, the receiver's URL)."""
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_http, receiver.handle)
        hook = f"http://127.0.0.1:{port}/webhook"
        config.setdefault("webhook_url", hook)
        config.setdefault("mps", 0)
        base = await nursery.start(serve_sandbox, SandboxConfig(app_secret=SECRET, **config))
        async with httpx.AsyncClient(base_url=base + "/", headers=AUTH, timeout=5) as client:
            yield client, hook
        nursery.cancel_scope.cancel()


def root(client: httpx.AsyncClient) -> str:
    return str(client.base_url).rstrip("/").rsplit("/", 1)[0]


async def send(client: httpx.AsyncClient, to: str, kind: str = "template",
               callback: str | None = None) -> str:
    payload: dict[str, Any] = {"messaging_product": "whatsapp", "to": to, "type": kind}
    if kind == "template":
        payload["template"] = {"name": "any", "language": {"code": "en"}}
    else:
        payload["text"] = {"body": "hello"}
    if callback:
        payload["biz_opaque_callback_data"] = callback
    r = await client.post(f"{NUMBER}/messages", json=payload)
    assert r.status_code == 200, r.text
    return r.json()["messages"][0]["id"]


async def test_statuses_are_signed_batched_and_shaped_like_meta() -> None:
    receiver = Receiver()
    async with world(receiver, read_rate=1.0, webhook_batch_size=4) as (client, hook):
        wamids = {await send(client, f"+9198000000{i:02d}", callback=f"cmp:{i}"): i
                  for i in range(10)}
        await receiver.wait_for(statuses=30)
        stats = (await client.get(f"{root(client)}/_sandbox/stats")).json()
    assert receiver.bad_signatures == 0
    assert all(sum(len(c["value"]["statuses"]) for e in p["entry"] for c in e["changes"]) <= 4
               for p in receiver.posts)
    assert len(receiver.posts) >= 8
    post = receiver.posts[0]
    assert post["entry"][0]["id"] == SandboxConfig.waba_id
    assert post["entry"][0]["changes"][0]["value"]["metadata"] == {
        "display_phone_number": SandboxConfig.display_phone_number, "phone_number_id": NUMBER}
    by_id: dict[str, list[str]] = {}
    for status in receiver.statuses:
        i = wamids[status["id"]]
        assert status["recipient_id"] == f"9198000000{i:02d}"
        assert status["biz_opaque_callback_data"] == f"cmp:{i}"
        assert isinstance(status["timestamp"], str) and status["timestamp"].isdigit()
        assert ("pricing" in status) == (status["status"] in ("sent", "delivered"))
        by_id.setdefault(status["id"], []).append(status["status"])
    assert {k: sorted(v, key=RANK.get) for k, v in by_id.items()} == {
        w: ["sent", "delivered", "read"] for w in wamids}
    assert stats["webhooks"]["events"] == 30 and stats["webhooks"]["failed"] == 0


async def test_undeliverable_number_gets_one_failed_131026() -> None:
    receiver = Receiver()
    async with world(receiver, undeliverable_suffixes=("0000",)) as (client, hook):
        wamid = await send(client, "+919876500000")
        await receiver.wait_for(statuses=1)
    [status] = receiver.statuses
    assert (status["id"], status["status"]) == (wamid, "failed")
    [error] = status["errors"]
    assert set(error) == {"code", "title", "message", "error_data", "href"}
    assert error["code"] == 131026 and error["error_data"]["details"]


async def test_text_outside_the_service_window_fails_131047_until_the_user_writes() -> None:
    receiver = Receiver()
    async with world(receiver, read_rate=0.0) as (client, hook):
        await send(client, "+919800000001", kind="text")
        await receiver.wait_for(statuses=1)
        assert receiver.statuses[0]["errors"][0]["code"] == 131047
        r = await client.post(f"{root(client)}/_sandbox/inbound",
                              json={"from": "919800000001", "text": "hi"})
        assert r.json()["webhook_status"] == 200
        await send(client, "+919800000001", kind="text")
        await receiver.wait_for(statuses=3)
    assert [s["status"] for s in receiver.statuses[1:]] == ["sent", "delivered"]
    assert receiver.statuses[1]["pricing"]["type"] == "free_customer_service"


async def test_inbound_button_reply_is_posted_signed_with_context() -> None:
    receiver = Receiver()
    async with world(receiver, webhook_url=None) as (client, hook):
        body = {"from": "+91 98000 00007", "name": "Ravi", "context_id": "wamid.ABC",
                "button": {"payload": "cmp42:stop", "text": "Stop promotions"}}
        r = await client.post(f"{root(client)}/_sandbox/inbound", json=body)
        assert r.status_code == 409  # no webhook_url yet
        await client.post(f"{root(client)}/_sandbox/config", json={"webhook_url": hook})
        r = await client.post(f"{root(client)}/_sandbox/inbound", json=body)
        assert r.status_code == 200 and r.json()["webhook_status"] == 200
        await receiver.wait_for(messages=1)
    [message] = receiver.messages
    assert message["from"] == "919800000007" and message["id"] == r.json()["id"]
    assert message["type"] == "button"
    assert message["button"] == {"payload": "cmp42:stop", "text": "Stop promotions"}
    assert message["context"] == {"from": SandboxConfig.display_phone_number, "id": "wamid.ABC"}
    value = receiver.posts[0]["entry"][0]["changes"][0]["value"]
    assert value["contacts"] == [{"profile": {"name": "Ravi"}, "wa_id": "919800000007"}]


async def test_failed_posts_are_retried_with_backoff() -> None:
    receiver = Receiver(fail_first=2)
    async with world(receiver, read_rate=0.0) as (client, hook):
        await send(client, "+919800000001")
        await receiver.wait_for(statuses=2)
        stats = (await client.get(f"{root(client)}/_sandbox/stats")).json()
    assert stats["webhooks"]["retries"] >= 2 and stats["webhooks"]["failed"] == 0


async def test_retries_are_bounded() -> None:
    """One worker: the first POST fails both attempts and is dropped; the next one arrives."""
    receiver = Receiver(fail_first=2)
    async with world(receiver, read_rate=0.0, webhook_max_attempts=2,
                     webhook_concurrency=1) as (client, hook):
        first = await send(client, "+919800000001")
        await receiver.wait_for(attempts=1)
        second = await send(client, "+919800000002")
        await receiver.wait_for(statuses=2)
        stats = (await client.get(f"{root(client)}/_sandbox/stats")).json()
    assert {s["id"] for s in receiver.statuses} == {second} != {first}
    assert stats["webhooks"] | {"posts": None} == {"posts": None, "events": 2, "retries": 1,
                                                   "failed": 1, "dropped": 0}


async def test_duplicates_deliver_each_event_twice() -> None:
    receiver = Receiver()
    async with world(receiver, read_rate=0.0, webhook_duplicate_rate=1.0) as (client, hook):
        for i in range(3):
            await send(client, f"+91980000000{i}")
        await receiver.wait_for(statuses=12)
    counts = Counter((s["id"], s["status"]) for s in receiver.statuses)
    assert len(counts) == 6 and set(counts.values()) == {2}


async def test_reorder_shuffles_events_within_a_post() -> None:
    async def arrival_orders(reorder: bool) -> list[list[str]]:
        receiver = Receiver()
        async with world(receiver, read_rate=1.0, webhook_concurrency=1, webhook_reorder=reorder,
                         seed=3) as (client, hook):
            for i in range(20):
                await send(client, f"+9198000000{i:02d}")
            await receiver.wait_for(statuses=60)
        by_id: dict[str, list[str]] = {}
        for s in receiver.statuses:
            by_id.setdefault(s["id"], []).append(s["status"])
        return list(by_id.values())

    assert all(o == ["sent", "delivered", "read"] for o in await arrival_orders(False))
    shuffled = await arrival_orders(True)
    assert any(o != ["sent", "delivered", "read"] for o in shuffled)
    assert all(sorted(o) == ["delivered", "read", "sent"] for o in shuffled)


async def test_full_queue_drops_the_oldest_and_counts_it() -> None:
    receiver = Receiver()
    async with world(receiver, read_rate=1.0, webhook_queue_size=5,
                     webhook_delay_s=30.0) as (client, hook):
        for i in range(4):
            await send(client, f"+91980000000{i}")
        stats = (await client.get(f"{root(client)}/_sandbox/stats")).json()
    assert stats["webhooks_dropped"] == 12 - 5
    assert stats["webhooks_pending"] == 5


async def test_a_stuck_receiver_never_slows_send_answers() -> None:
    receiver = Receiver()
    receiver.hold = trio.Event()
    async with world(receiver, read_rate=0.0) as (client, hook):
        with trio.fail_after(5):
            for i in range(50):
                await send(client, f"+9198000000{i:02d}")
        receiver.hold.set()
        await receiver.wait_for(statuses=100)
