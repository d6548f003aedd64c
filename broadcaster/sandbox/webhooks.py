"""Webhooks the sandbox sends: status and inbound payloads (§4.3-4.5), signed, batched, retried.

Pure builders (`sign`, `status_plan`, `status_envelope`, `inbound_envelope`) and one service,
`WebhookEmitter`, which owns the pending events and the tasks that POST them.

Guarantees of the emitter:
- `schedule()` never blocks and never waits on the network, so a send answer is never delayed by
  webhook delivery. Pending events are bounded by `webhook_queue_size`: when full, the event due
  soonest ("oldest") is dropped and counted in stats as `webhooks_dropped`.
- Each POST carries up to `webhook_batch_size` status events, grouped per phone_number_id, signed
  `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(raw body, app_secret)>`.
- Any answer but 200 (as at Meta, a 204 counts as a failure) or a connection error is retried up
  to `webhook_max_attempts` times with exponential backoff (0.2, 0.4, 0.8 … s); a POST that
  still fails is counted in `failed` and dropped. Meta retries for 7 days; the sandbox does not.
- Duplicates (a second copy of an event, 50 ms after the first) and reordering (shuffled events
  within one POST) are opt-in, to exercise a receiver's idempotence.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import trio

from broadcaster.sandbox.config import SandboxConfig
from broadcaster.sandbox.graph import webhook_error
from broadcaster.sandbox.state import SandboxState

__all__ = ["WebhookEmitter", "inbound_envelope", "sign", "status_envelope", "status_plan"]

logger = logging.getLogger(__name__)

RETRY_BASE_S = 0.2  # seconds before the first retry of a failed POST; doubles each attempt
DUPLICATE_LAG_S = 0.05  # seconds between an event and its injected duplicate


def sign(body: bytes, app_secret: str) -> str:
    """The X-Hub-Signature-256 header value for `body`: 'sha256=' + lower-case hex HMAC."""
    return "sha256=" + hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()


def _pricing(category: str) -> dict[str, Any]:
    if category == "service":
        return {"billable": False, "pricing_model": "PMP", "type": "free_customer_service",
                "category": "service"}
    return {"billable": True, "pricing_model": "PMP", "type": "regular", "category": category}


def status_plan(wamid: str, wa_id: str, accepted_at: float, delay_s: float, *,
                callback_data: str | None, category: str, fail_code: int | None,
                read: bool) -> list[tuple[float, dict[str, Any]]]:
    """The status events one accepted message produces, as (seconds after accept, event).

    sent → delivered (→ read), `delay_s` apart; or a single `failed` with `fail_code`.
    `timestamp` is a string of epoch seconds; `pricing` rides on sent and delivered (§4.4).
    """

    def event(status: str, offset: float, pricing: bool) -> dict[str, Any]:
        ev: dict[str, Any] = {"id": wamid, "status": status,
                              "timestamp": str(int(accepted_at + offset)), "recipient_id": wa_id}
        if callback_data is not None:
            ev["biz_opaque_callback_data"] = callback_data
        if pricing:
            ev["pricing"] = _pricing(category)
        return ev

    if fail_code is not None:
        failed = event("failed", delay_s, pricing=False)
        failed["errors"] = [webhook_error(fail_code)]
        return [(delay_s, failed)]
    plan = [(delay_s, event("sent", delay_s, True)),
            (2 * delay_s, event("delivered", 2 * delay_s, True))]
    if read:
        plan.append((3 * delay_s, event("read", 3 * delay_s, False)))
    return plan


def _metadata(config: SandboxConfig, phone_number_id: str) -> dict[str, str]:
    return {"display_phone_number": config.display_phone_number,
            "phone_number_id": phone_number_id}


def status_envelope(config: SandboxConfig,
                    events: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """One webhook body for (phone_number_id, status event) pairs: one change per number."""
    by_number: dict[str, list[dict[str, Any]]] = {}
    for phone_number_id, ev in events:
        by_number.setdefault(phone_number_id, []).append(ev)
    changes = [{"field": "messages",
                "value": {"messaging_product": "whatsapp",
                          "metadata": _metadata(config, number), "statuses": statuses}}
               for number, statuses in by_number.items()]
    return {"object": "whatsapp_business_account",
            "entry": [{"id": config.waba_id, "changes": changes}]}


def inbound_envelope(config: SandboxConfig, phone_number_id: str, message: dict[str, Any],
                     name: str) -> dict[str, Any]:
    """One webhook body carrying one inbound message (§4.5) with its contact."""
    value = {"messaging_product": "whatsapp", "metadata": _metadata(config, phone_number_id),
             "contacts": [{"profile": {"name": name}, "wa_id": message["from"]}],
             "messages": [message]}
    return {"object": "whatsapp_business_account",
            "entry": [{"id": config.waba_id, "changes": [{"field": "messages", "value": value}]}]}


@dataclass(order=True, slots=True)
class _Pending:
    due: float  # trio clock
    seq: int
    phone_number_id: str = field(compare=False)
    event: dict[str, Any] = field(compare=False)


class WebhookEmitter:
    """Pending status events and the tasks that deliver them (see the module guarantees).

    Args:
        state: where posts, events, retries, failures and drops are counted.
        get_config: the current config (webhook_url and options may change at run time).
        rng: seeded randomness for duplicates and reordering.
    """

    def __init__(self, state: SandboxState, get_config: Callable[[], SandboxConfig],
                 rng: random.Random) -> None:
        self._state = state
        self._config = get_config
        self._rng = rng
        self._heap: list[_Pending] = []
        self._seq = 0
        self._lot = trio.lowlevel.ParkingLot()
        self._client: httpx.AsyncClient | None = None

    def pending(self) -> int:
        """How many events wait for delivery."""
        return len(self._heap)

    def schedule(self, phone_number_id: str, plan: list[tuple[float, dict[str, Any]]]) -> None:
        """Queue events due `offset` seconds from now. Never blocks; drops the oldest if full."""
        config = self._config()
        now = trio.current_time()
        heap = self._heap
        for offset, event in plan:
            copies = 2 if (config.webhook_duplicate_rate
                           and self._rng.random() < config.webhook_duplicate_rate) else 1
            for copy in range(copies):
                if len(heap) >= config.webhook_queue_size:
                    if not heap:
                        self._state.webhooks["dropped"] += 1
                        continue
                    heapq.heappop(heap)
                    self._state.webhooks["dropped"] += 1
                self._seq += 1
                due = now + offset + copy * DUPLICATE_LAG_S
                heapq.heappush(heap, _Pending(due, self._seq, phone_number_id, event))
        self._lot.unpark()

    def clear(self) -> None:
        """Forget every pending event (POSTs in flight finish)."""
        self._heap.clear()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Deliver events until cancelled; reports ready once the HTTP client is open.

        Cancellation: pending events are abandoned; POSTs in flight are cancelled.
        """
        config = self._config()
        limits = httpx.Limits(max_connections=config.webhook_concurrency + 2,
                              max_keepalive_connections=config.webhook_concurrency + 2)
        async with httpx.AsyncClient(limits=limits) as client, trio.open_nursery() as nursery:
            self._client = client
            for _ in range(config.webhook_concurrency):
                nursery.start_soon(self._worker, client)
            task_status.started()

    async def post(self, body: dict[str, Any]) -> int | None:
        """Sign and POST one webhook body now, with retries; the last HTTP status or None."""
        if self._client is None:
            raise RuntimeError("WebhookEmitter.post() before run() started")
        return await self._post(self._client, orjson.dumps(body), events=1)

    async def _worker(self, client: httpx.AsyncClient) -> None:
        while True:
            batch = await self._next_batch()
            config = self._config()
            if config.webhook_reorder:
                self._rng.shuffle(batch)
            if config.webhook_url is None:
                self._state.webhooks["dropped"] += len(batch)
                continue
            body = orjson.dumps(status_envelope(
                config, [(p.phone_number_id, p.event) for p in batch]))
            await self._post(client, body, events=len(batch))

    async def _next_batch(self) -> list[_Pending]:
        heap = self._heap
        while True:
            if heap and heap[0].due <= trio.current_time():
                now = trio.current_time()
                size = self._config().webhook_batch_size
                batch = []
                while heap and heap[0].due <= now and len(batch) < size:
                    batch.append(heapq.heappop(heap))
                if heap and heap[0].due <= now:
                    self._lot.unpark()  # more is due: wake another worker
                return batch
            if heap:
                with trio.move_on_at(heap[0].due):
                    await self._lot.park()
            else:
                await self._lot.park()

    async def _post(self, client: httpx.AsyncClient, body: bytes, *, events: int) -> int | None:
        config = self._config()
        url = config.webhook_url
        if url is None:
            return None
        headers = {"content-type": "application/json",
                   "x-hub-signature-256": sign(body, config.app_secret)}
        status: int | None = None
        for attempt in range(config.webhook_max_attempts):
            if attempt:
                self._state.webhooks["retries"] += 1
                await trio.sleep(RETRY_BASE_S * 2 ** (attempt - 1))
            try:
                response = await client.post(url, content=body, headers=headers,
                                             timeout=config.webhook_timeout_s)
                status = response.status_code
            except httpx.HTTPError as exc:
                logger.debug("webhook post attempt %d failed: %s", attempt + 1, exc)
                continue
            if status == 200:
                self._state.webhooks["posts"] += 1
                self._state.webhooks["events"] += events
                return status
        self._state.webhooks["failed"] += 1
        logger.warning("webhook post of %d events failed after %d attempts (last status %s)",
                       events, config.webhook_max_attempts, status)
        return status
