"""SandboxThread: a sandbox on its own thread and trio loop, for pytest sessions and the demo."""

from __future__ import annotations

import threading
from types import TracebackType
from typing import Any

import httpx
import trio

from broadcaster.sandbox.app import serve_sandbox
from broadcaster.sandbox.config import SandboxConfig

__all__ = ["SandboxThread"]

START_TIMEOUT_S = 10.0  # seconds to wait for the sandbox to bind
STOP_TIMEOUT_S = 10.0  # seconds to wait for its thread to end


class SandboxThread:
    """Run `serve_sandbox(config)` in a daemon thread with its own `trio.run`.

        with SandboxThread(SandboxConfig(mps=5)) as sandbox:
            sandbox.base_url   # 'http://127.0.0.1:PORT/v25.0'
            sandbox.stats()    # GET /_sandbox/stats

    `start()` returns once the port is bound (or raises RuntimeError with the cause chained);
    `stop()` cancels the sandbox and joins the thread; both are idempotent. The small sync
    helpers (`stats`, `reset`, `set_faults`, `configure`, `inbound`) call the control endpoints.
    """

    def __init__(self, config: SandboxConfig | None = None) -> None:
        self.config = config or SandboxConfig()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._base_url: str | None = None
        self._error: BaseException | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._cancel: trio.CancelScope | None = None

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped" if self._thread else "unstarted"
        return f"<SandboxThread {state} {self._base_url or ''}>"

    # ----- lifecycle

    def start(self) -> SandboxThread:
        """Start the thread and wait until the sandbox accepts connections."""
        if self._thread is not None:
            return self
        self._thread = threading.Thread(target=self._run, name="broadcaster-sandbox",
                                        daemon=True)
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT_S):
            raise RuntimeError(f"sandbox did not start within {START_TIMEOUT_S} s")
        if self._error is not None:
            raise RuntimeError(f"sandbox failed to start: {self._error}") from self._error
        return self

    def stop(self) -> None:
        """Cancel the sandbox and wait for its thread to finish."""
        thread = self._thread
        if thread is None or not thread.is_alive():
            return
        if self._token is not None and self._cancel is not None:
            try:
                trio.from_thread.run_sync(self._cancel.cancel, trio_token=self._token)
            except trio.RunFinishedError:
                pass
        thread.join(STOP_TIMEOUT_S)

    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self._base_url is not None

    def __enter__(self) -> SandboxThread:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        """'http://HOST:PORT/vNN.N', the Cloud API base URL to give a client."""
        if self._base_url is None:
            raise RuntimeError("SandboxThread is not started: use `with SandboxThread(config) "
                               "as sandbox:` or call .start()")
        return self._base_url

    @property
    def root_url(self) -> str:
        """'http://HOST:PORT', where the /_sandbox/ control endpoints live."""
        return self.base_url.rsplit("/", 1)[0]

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:  # noqa: BLE001 - handed to the starting thread
            self._error = exc
        finally:
            self._ready.set()

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as nursery:
            self._cancel = nursery.cancel_scope
            self._base_url = await nursery.start(serve_sandbox, self.config)
            self._ready.set()

    # ----- control helpers (blocking; for tests and the demo)

    def _call(self, method: str, name: str, body: Any = None) -> Any:
        response = httpx.request(method, f"{self.root_url}/_sandbox/{name}", json=body,
                                 timeout=10.0)
        response.raise_for_status()
        return response.json()

    def stats(self) -> dict[str, Any]:
        return self._call("GET", "stats")

    def recipients(self) -> dict[str, int]:
        return self._call("GET", "recipients")

    def messages(self, limit: int = 100) -> list[dict[str, Any]]:
        return self._call("GET", f"messages?limit={limit}")

    def reset(self) -> None:
        self._call("POST", "reset")

    def set_faults(self, **plan: Any) -> dict[str, Any]:
        """Replace the fault plan (see faults.py); no arguments clears every fault."""
        return self._call("POST", "faults", plan)

    def configure(self, **changes: Any) -> dict[str, Any]:
        """Change run-time settings (mps, webhook_url, ...); returns the new settings."""
        return self._call("POST", "config", changes)

    def inbound(self, **message: Any) -> dict[str, Any]:
        """Post an inbound-message webhook (from, text | button, context_id, name)."""
        return self._call("POST", "inbound", message)
