"""The sandbox server: routes, the send path, control endpoints, and `serve_sandbox`.

Graph routes (Bearer auth, Graph error shapes):
    POST /{version}/{phone_number_id}/messages      send (rules.py checks, limits, faults)
    GET  /{version}/{waba_id}/message_templates     configured templates, Graph paging
Control routes (no auth, JSON):
    GET  /_sandbox/stats | /_sandbox/recipients | /_sandbox/messages?limit=N | /_sandbox/faults
    GET  /_sandbox/config | /_sandbox/health
    POST /_sandbox/reset | /_sandbox/faults | /_sandbox/inbound | /_sandbox/config

The send path, in order: count the request → auth (401/190) → JSON (100) → `check_send` →
`throttle_next` (130429) → per-number mps window (130429) → pair spacing (131056) → injected
error → accept (count, record, schedule webhooks) → `slow_ms` → delivery fault (reset, timeout,
cut body) or the §1.5 answer. An accepted send is counted before its answer is written, so a
client that saw a reset or a timeout cannot tell whether it arrived: exactly the ambiguity the
engine must handle.
"""

from __future__ import annotations

import base64
import binascii
import logging
import random
import signal
import threading
import time
from functools import partial
from typing import Any, NoReturn

import orjson
import trio

from broadcaster.errors import ConfigError
from broadcaster.httpserver import DropConnection, Request, Response, serve_http
from broadcaster.sandbox.config import RUNTIME_FIELDS, SandboxConfig
from broadcaster.sandbox.faults import FaultPlan, FaultPlanError
from broadcaster.sandbox.graph import GraphError, WamidFactory, error_body, success_body
from broadcaster.sandbox.rules import Send, check_send, index_templates, normalise_to
from broadcaster.sandbox.state import SandboxState
from broadcaster.sandbox.webhooks import WebhookEmitter, inbound_envelope, status_plan

__all__ = ["Sandbox", "sandbox_main", "serve_sandbox"]

logger = logging.getLogger(__name__)

JSON = {"content-type": "application/json"}
DEFAULT_PAGE = 25  # templates per page when `limit` is not given (Graph's default)
MAX_PAGE = 1000  # largest `limit` accepted on message_templates
DEFAULT_RECENT = 100  # payloads returned by /_sandbox/messages without `limit`


def _graph_error(code: int, details: str | None = None,
                 headers: dict[str, str] | None = None) -> Response:
    err = GraphError(code, details)
    return Response(err.http_status, orjson.dumps(error_body(code, err.details)),
                    {**JSON, **headers} if headers else JSON)


def _control_error(status: int, message: str) -> Response:
    return Response.json({"error": {"message": message}}, status)


def _cursor(index: int) -> str:
    return base64.urlsafe_b64encode(f"idx:{index}".encode()).decode().rstrip("=")


def _uncursor(cursor: str) -> int:
    """The list position in a paging cursor; ValueError if it is not one of ours."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise ValueError(cursor) from None
    if not text.startswith("idx:"):
        raise ValueError(cursor)
    return int(text[4:])


class Sandbox:
    """One sandbox instance: its config, state, faults and webhook emitter.

    `handle` is the `httpserver` handler. Run `emitter.run` in a nursery before serving
    (`serve_sandbox` does both).
    """

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self.specs = index_templates(config.templates) if config.templates is not None else None
        self.state = SandboxState()
        self.faults = FaultPlan()
        self.rng = random.Random(config.seed)
        self.wamid = WamidFactory()
        self.emitter = WebhookEmitter(self.state, lambda: self.config, self.rng)
        self._release = trio.Event()  # set to end every `timeout` stall (on reset)

    # ----- routing

    async def handle(self, request: Request) -> Response | DropConnection:
        """Route one request. Never raises for bad input: every problem is an answer."""
        path = request.path
        if path.startswith("/_sandbox/"):
            return await self._control(request, path[len("/_sandbox/"):])
        parts = path.split("/")
        if len(parts) == 4 and parts[1][:1] == "v" and parts[1][1:2].isdigit():
            if parts[3] == "messages" and request.method == "POST":
                return await self._send(request, parts[2])
            if parts[3] == "message_templates" and request.method == "GET":
                return self._templates(request, parts[2])
        if len(parts) > 1 and parts[1][:1] == "v" and parts[1][1:2].isdigit():
            return _graph_error(100, f"Unsupported {request.method} request to {path}.")
        return _control_error(404, f"no route for {request.method} {path}")

    def _authorised(self, request: Request) -> bool:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return False
        return self.config.token is None or token.strip() == self.config.token

    # ----- POST /messages

    def _reject(self, code: int, details: str | None = None,
                headers: dict[str, str] | None = None) -> Response:
        self.state.record_reject(code)
        return _graph_error(code, details, headers)

    async def _send(self, request: Request, phone_number_id: str) -> Response | DropConnection:
        state, config, faults = self.state, self.config, self.faults
        state.record_request()
        if not self._authorised(request):
            return self._reject(190, "Invalid OAuth access token - Cannot parse access token")
        try:
            payload = orjson.loads(request.body)
        except orjson.JSONDecodeError:
            return self._reject(100, "The request body is not valid JSON.")
        try:
            send = check_send(payload, self.specs, faults.template_status)
        except GraphError as err:
            return self._reject(err.code, err.details)
        if faults.take_throttle():
            return self._reject(130429, headers=faults.retry_after_header)
        now = time.time()
        if state.over_mps(phone_number_id, now, config.mps):
            return self._reject(130429)
        if state.pair_too_soon(phone_number_id, send.wa_id, now, config.pair_interval_s):
            return self._reject(131056)
        injected = faults.pick_error(self.rng)
        if injected is not None:
            return self._reject(injected, headers=faults.retry_after_header
                                if injected == 130429 else None)
        wamid = self.wamid()
        state.record_accept(phone_number_id, send.wa_id, payload, now, config.pair_interval_s > 0)
        if config.webhook_url is not None:
            self._schedule_statuses(phone_number_id, send, wamid, now)
        response = Response(200, orjson.dumps(success_body(send.to, send.wa_id, wamid)), JSON)
        return await self._deliver(response)

    def _schedule_statuses(self, phone_number_id: str, send: Send, wamid: str,
                           now: float) -> None:
        config = self.config
        fail_code = None
        if config.undeliverable_suffixes and send.wa_id.endswith(config.undeliverable_suffixes):
            fail_code = 131026
        elif (send.type != "template" and config.enforce_service_window
              and not self.state.in_service_window(send.wa_id, now)):
            fail_code = 131047
        read = fail_code is None and self.rng.random() < config.read_rate
        self.emitter.schedule(phone_number_id, status_plan(
            wamid, send.wa_id, now, config.webhook_delay_s, callback_data=send.callback_data,
            category=send.category, fail_code=fail_code, read=read))

    async def _deliver(self, response: Response) -> Response | DropConnection:
        faults, state = self.faults, self.state
        if faults.slow_ms:
            state.faults["slow"] += 1
            await trio.sleep(faults.slow_ms / 1000)
        kind = faults.pick_delivery(self.rng)
        if kind == "answer":
            return response
        if kind == "reset":
            state.faults["resets"] += 1
            return DropConnection(abort=True)
        if kind == "cut":
            state.faults["cut_bodies"] += 1
            return DropConnection(response, body_bytes=len(response.body) // 2)
        state.faults["timeouts"] += 1
        with trio.move_on_after(self.config.stall_s):
            await self._release.wait()
        return DropConnection(abort=True)

    # ----- GET /message_templates

    def _templates(self, request: Request, waba_id: str) -> Response:
        if not self._authorised(request):
            return _graph_error(190, "Invalid OAuth access token - Cannot parse access token")
        if waba_id != self.config.waba_id:
            return _graph_error(100, f"Unsupported get request. Object with ID '{waba_id}' does "
                                "not exist.")
        overrides = self.faults.template_status  # a template paused at run time lists as such
        docs = [{**d, "status": overrides.get(f"{d.get('name')}/{d.get('language')}", d.get("status"))}
                if overrides else d for d in self.config.templates or ()]
        try:
            limit = int(request.query.get("limit", DEFAULT_PAGE))
            start = _uncursor(request.query["after"]) if "after" in request.query else 0
        except ValueError:
            return _graph_error(100, "Invalid limit or after cursor.")
        if not 1 <= limit <= MAX_PAGE or start < 0:
            return _graph_error(100, f"limit must be 1-{MAX_PAGE}; cursor must be ours.")
        page = docs[start:start + limit]
        end = start + len(page)
        paging: dict[str, Any] = {"cursors": {"before": _cursor(start), "after": _cursor(end)}}
        if end < len(docs):
            host = request.headers.get("host", f"{self.config.host}:{self.config.port}")
            paging["next"] = (f"http://{host}{request.path}?limit={limit}"
                              f"&after={_cursor(end)}")
        return Response.json({"data": page, "paging": paging})

    # ----- /_sandbox/*

    async def _control(self, request: Request, name: str) -> Response:
        method = request.method
        if method == "GET":
            if name == "stats":
                stats = self.state.stats()
                stats["webhooks_pending"] = self.emitter.pending()
                return Response.json(stats)
            if name == "recipients":
                return Response.json(self.state.recipients)
            if name == "messages":
                try:
                    limit = int(request.query.get("limit", DEFAULT_RECENT))
                except ValueError:
                    return _control_error(400, "messages: limit must be an integer")
                return Response.json(self.state.recent_messages(limit))
            if name == "faults":
                return Response.json(self.faults.to_json())
            if name == "config":
                return Response.json(self._public_config())
            if name == "health":
                return Response.json({"ok": True})
        elif method == "POST":
            if name == "reset":
                self.reset()
                return Response.json({"ok": True})
            try:
                body = orjson.loads(request.body or b"{}")
            except orjson.JSONDecodeError:
                return _control_error(400, f"{name}: body is not valid JSON")
            if name == "faults":
                try:
                    self.faults = FaultPlan.from_json(body)
                except FaultPlanError as exc:
                    return _control_error(400, str(exc))
                return Response.json(self.faults.to_json())
            if name == "config":
                return self._set_config(body)
            if name == "inbound":
                return await self._inbound(body)
        return _control_error(404, f"no control route {method} /_sandbox/{name}")

    def reset(self) -> None:
        """Forget counts, payloads, faults and pending webhooks; end every stalled answer."""
        self.state.reset()
        self.faults = FaultPlan()
        self.rng.seed(self.config.seed)
        self.emitter.clear()
        self._release.set()
        self._release = trio.Event()

    def _public_config(self) -> dict[str, Any]:
        c = self.config
        return {name: getattr(c, name) for name in sorted(RUNTIME_FIELDS)} | {
            "waba_id": c.waba_id, "phone_number_id": c.phone_number_id,
            "api_version": c.api_version, "templates": len(c.templates or ()),
        }

    def _set_config(self, body: object) -> Response:
        if not isinstance(body, dict):
            return _control_error(400, "config: body must be a JSON object")
        bad = sorted(set(body) - RUNTIME_FIELDS)
        if bad:
            return _control_error(400, f"config field {bad[0]}: cannot be changed at run time "
                                  f"(can: {sorted(RUNTIME_FIELDS)})")
        try:
            self.config = self.config.replace(**body)
        except (ConfigError, TypeError) as exc:
            return _control_error(400, str(exc))
        return Response.json(self._public_config())

    async def _inbound(self, body: object) -> Response:
        config = self.config
        if not isinstance(body, dict):
            return _control_error(400, "inbound: body must be a JSON object")
        if config.webhook_url is None:
            return _control_error(409, "inbound: webhook_url is not set (POST /_sandbox/config)")
        try:
            wa_id = normalise_to(body.get("from"))
        except GraphError as err:
            return _control_error(400, f"inbound field from: {err.details}")
        now = time.time()
        message: dict[str, Any] = {"from": wa_id, "id": self.wamid(),
                                   "timestamp": str(int(now))}
        button = body.get("button")
        if isinstance(body.get("text"), str) and body["text"]:
            message |= {"type": "text", "text": {"body": body["text"]}}
        elif isinstance(button, dict) and isinstance(button.get("text"), str):
            payload = button.get("payload", button["text"])
            message |= {"type": "button", "button": {"payload": payload, "text": button["text"]}}
        else:
            return _control_error(400, "inbound: give text (a string) or button "
                                  "({payload, text})")
        if body.get("context_id"):
            message["context"] = {"from": config.display_phone_number,
                                  "id": str(body["context_id"])}
        phone_number_id = str(body.get("phone_number_id") or config.phone_number_id)
        self.state.record_inbound(wa_id, now)
        status = await self.emitter.post(inbound_envelope(
            config, phone_number_id, message, str(body.get("name") or "Sandbox User")))
        return Response.json({"id": message["id"], "webhook_status": status})


def _display_host(host: str) -> str:
    if host in ("0.0.0.0", "", "::"):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


async def serve_sandbox(config: SandboxConfig, *,
                        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> NoReturn:
    """Run a sandbox until cancelled; reports its base URL, e.g. 'http://127.0.0.1:PORT/v25.0'.

    Cancellation: the listener closes, in-flight answers (including stalls) are dropped and
    pending webhooks are abandoned.
    """
    sandbox = Sandbox(config)
    async with trio.open_nursery() as nursery:
        await nursery.start(sandbox.emitter.run)
        port = await nursery.start(partial(serve_http, sandbox.handle, config.host, config.port))
        url = f"http://{_display_host(config.host)}:{port}/{config.api_version}"
        logger.info("sandbox serving %s (mps %s, webhooks %s)", url, config.mps or "unlimited",
                    "on" if config.webhook_url else "off")
        task_status.started(url)
    raise AssertionError("sandbox nursery exited without cancellation")  # pragma: no cover


def sandbox_main(config: SandboxConfig, *, announce: bool = True) -> None:
    """Run a sandbox in this thread until Ctrl-C or SIGTERM; both exit cleanly.

    Signals are caught only on the main thread; elsewhere it runs until the process ends.

    With `announce`, prints 'sandbox ready: <base url>' to stdout once it accepts connections.
    """

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            url = await nursery.start(serve_sandbox, config)
            if announce:
                print(f"sandbox ready: {url}", flush=True)
            if threading.current_thread() is threading.main_thread():
                with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for signum in signals:
                        logger.info("sandbox stopping on signal %d", signum)
                        nursery.cancel_scope.cancel()
                        break

    try:
        trio.run(main)
    except* KeyboardInterrupt:  # a Ctrl-C that lands before the signal receiver is installed
        pass
