"""The webhook receiver: routes on the lean trio HTTP server, group commit, the apply worker.

    GET  /webhook   verification handshake → 200 + raw hub.challenge, else 403
    POST /webhook   X-Hub-Signature-256 over the raw bytes → 401 (nothing stored, counted) or
                    stored durably → 200 (→ 503 when the database failed: Meta delivers again)
    GET  /healthz   200 with counters when the database answers, else 503
    body > 4 MB     413 from the HTTP server, before the body is read

Guarantees: a 200 is sent only after the body is committed; nothing is parsed before the
signature is checked; authentic bodies are never refused for their content (unrecognised parts
become dead letters when applied). Other routes can be added (`add_route`) before serving, so
the inbox's endpoints share this server.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import NoReturn

import trio

from broadcaster import metrics
from broadcaster.config import Settings
from broadcaster.db import Database
from broadcaster.errors import ConfigError, DatabaseError
from broadcaster.httpserver import MAX_BODY, Request, Response, serve_http
from broadcaster.inbound.apply import ApplyStatistics, ApplyWorker, Hooks
from broadcaster.inbound.ingest import GroupCommitter, IngestStatistics
from broadcaster.inbound.signature import SIGNATURE_HEADER, handshake_challenge, verify_signature

__all__ = ["WEBHOOK_PATH", "InboundService", "InboundStatistics", "serve_inbound"]

logger = logging.getLogger(__name__)

WEBHOOK_PATH = "/webhook"
HEALTH_PATH = "/healthz"
HEALTH_DB_TIMEOUT_S = 2.0  # seconds the health check waits for `SELECT 1`

Route = Callable[[Request], Awaitable[Response]]

_RECEIVED = Response(200, b"EVENT_RECEIVED", {"content-type": "text/plain"})


def _error(status: int, message: str) -> Response:
    return Response.json({"error": {"message": message, "code": status}}, status)


@dataclass(frozen=True, slots=True)
class InboundStatistics:
    accepted: int  # POSTs stored and answered 200
    bad_signature: int  # POSTs answered 401
    store_failed: int  # POSTs answered 503
    verified: int  # handshakes answered 200
    verify_failed: int  # handshakes answered 403
    ingest: IngestStatistics
    apply: ApplyStatistics


class InboundService:
    """One receiver: the HTTP routes, the group committer and the apply worker.

        service = InboundService(db, app_secret=…, verify_token=…)
        port = await nursery.start(service.serve, "127.0.0.1", 0)
        …
        await service.worker.wait_applied()   # everything answered 200 so far is applied

    Args:
        app_secret: WHATSAPP_APP_SECRET, the HMAC key (required).
        verify_token: WHATSAPP_VERIFY_TOKEN for the GET handshake (None: every handshake is 403).
        hooks: who takes inbound messages / other changes (default: discovered on first use).
        max_body: bodies larger than this get 413.
    """

    def __init__(self, db: Database, *, app_secret: str, verify_token: str | None,
                 hooks: Hooks | None = None, max_body: int = MAX_BODY) -> None:
        if not app_secret:
            raise ConfigError("WHATSAPP_APP_SECRET is required to receive webhooks "
                              "(the X-Hub-Signature-256 key)")
        self._db = db
        self._secret = app_secret
        self._verify_token = verify_token
        self._max_body = max_body
        self.worker = ApplyWorker(db, hooks=hooks)
        self.ingest = GroupCommitter(db, on_commit=self.worker.wake)
        self._routes: dict[tuple[str, str], Route] = {}
        self._counts = {"accepted": 0, "bad_signature": 0, "store_failed": 0, "verified": 0,
                        "verify_failed": 0}

    def add_route(self, method: str, path: str, handler: Route) -> None:
        """Serve `handler` for `method path` too (e.g. the inbox's agent endpoints)."""
        if path in (WEBHOOK_PATH, HEALTH_PATH):
            raise ValueError(f"route {path} belongs to the webhook receiver")
        self._routes[(method.upper(), path)] = handler

    def statistics(self) -> InboundStatistics:
        return InboundStatistics(**self._counts, ingest=self.ingest.statistics(),
                                 apply=self.worker.statistics())

    async def serve(self, host: str = "127.0.0.1", port: int = 0, *,
                    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> NoReturn:
        """Run everything; reports the bound port once it accepts connections.

        Never returns unless cancelled. Cancellation: the listener closes, requests in flight are
        cancelled (their bodies may or may not be stored; unanswered, Meta delivers them again),
        an apply transaction in flight is rolled back.
        """
        async with trio.open_nursery() as nursery:
            await nursery.start(self.ingest.run)
            await nursery.start(self.worker.run)
            bound = await nursery.start(partial(serve_http, self.handle, host, port,
                                                max_body=self._max_body))
            logger.info("inbound: receiving webhooks on http://%s:%d%s", host, bound, WEBHOOK_PATH)
            task_status.started(bound)
        raise AssertionError("unreachable")  # pragma: no cover

    # ----- routes

    async def handle(self, request: Request) -> Response:
        if request.path == WEBHOOK_PATH:
            if request.method == "POST":
                return await self._receive(request)
            if request.method == "GET":
                return self._handshake(request)
            return Response(405, b"", {"allow": "GET, POST"})
        if request.path == HEALTH_PATH and request.method == "GET":
            return await self._health()
        route = self._routes.get((request.method, request.path))
        if route is not None:
            return await route(request)
        return _error(404, f"no route for {request.method} {request.path}")

    async def _receive(self, request: Request) -> Response:
        started = time.perf_counter()
        if not verify_signature(request.body, request.headers.get(SIGNATURE_HEADER), self._secret):
            self._counts["bad_signature"] += 1
            metrics.record_webhook("bad_signature")
            if self._counts["bad_signature"] & (self._counts["bad_signature"] - 1) == 0:  # 1, 2, 4 …
                logger.warning("inbound: %d POST(s) with a missing or wrong X-Hub-Signature-256 "
                               "refused so far", self._counts["bad_signature"])
            return _error(401, "X-Hub-Signature-256 missing or wrong")
        try:
            await self.ingest.store(request.body)
        except DatabaseError as exc:
            self._counts["store_failed"] += 1
            logger.error("inbound: could not store a webhook (answered 503, Meta retries): %s", exc)
            return _error(503, "could not store the event; deliver it again")
        self._counts["accepted"] += 1
        metrics.record_webhook("ok", time.perf_counter() - started)
        return _RECEIVED

    def _handshake(self, request: Request) -> Response:
        challenge = handshake_challenge(request.query, self._verify_token)
        if challenge is None:
            self._counts["verify_failed"] += 1
            metrics.record_webhook("verify_failed")
            return _error(403, "verification failed: hub.mode, hub.verify_token or hub.challenge is wrong or missing")
        self._counts["verified"] += 1
        metrics.record_webhook("verified")
        return Response(200, challenge.encode(), {"content-type": "text/plain"})

    async def _health(self) -> Response:
        stats = self.statistics()
        body = {"ok": True, "accepted": stats.accepted, "bad_signature": stats.bad_signature,
                "queued": stats.ingest.queued, "stored": stats.ingest.stored,
                "applied_bodies": stats.apply.bodies, "unmatched": stats.apply.unmatched,
                "dead_letters": stats.apply.dead_letters}
        with trio.move_on_after(HEALTH_DB_TIMEOUT_S):
            try:
                await self._db.fetchval("SELECT 1")
            except DatabaseError as exc:
                return Response.json({**body, "ok": False, "error": str(exc)}, 503)
            return Response.json(body)
        return Response.json({**body, "ok": False, "error": "database did not answer"}, 503)


async def serve_inbound(db: Database, settings: Settings, host: str = "127.0.0.1", port: int = 0, *,
                        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> NoReturn:
    """Serve the webhook receiver with the apply worker; reports the bound port.

    Never returns unless cancelled (see `InboundService.serve`).

    Raises:
        ConfigError: WHATSAPP_APP_SECRET or WHATSAPP_VERIFY_TOKEN is not set.
    """
    settings.require("whatsapp_app_secret", "whatsapp_verify_token")
    assert settings.whatsapp_app_secret is not None
    service = InboundService(db, app_secret=settings.whatsapp_app_secret,
                             verify_token=settings.whatsapp_verify_token)
    await service.serve(host, port, task_status=task_status)
