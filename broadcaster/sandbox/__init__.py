"""A WhatsApp Cloud API sandbox: the embedded default provider for the demo, tests and benchmarks.

Layering: httpserver (trio + h11) ← app (routes, send path) ← rules / state / faults / webhooks
(pure or self-contained) ← graph (wire shapes). It imports nothing else from `broadcaster` but
`errors` and `httpserver`, and no leaf package.

    serve_sandbox(config, task_status=...)   run in a nursery; reports the base URL
    SandboxThread(config)                    the same on a background thread (context manager)
    sandbox_main(config)                     blocking entry point for the CLI (Ctrl-C exits cleanly)
"""

from broadcaster.sandbox.app import Sandbox, sandbox_main, serve_sandbox
from broadcaster.sandbox.config import SandboxConfig
from broadcaster.sandbox.thread import SandboxThread

__all__ = ["Sandbox", "SandboxConfig", "SandboxThread", "sandbox_main", "serve_sandbox"]
