"""`python -m broadcaster.sandbox`: run the Cloud API sandbox until Ctrl-C.

Prints 'sandbox ready: <base url>' once it accepts connections (use --port 0 for any free port).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from broadcaster.errors import ConfigError
from broadcaster.logs import configure_logging
from broadcaster.sandbox.app import sandbox_main
from broadcaster.sandbox.config import SandboxConfig


def _load_templates(path: str) -> list[dict[str, object]]:
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--templates {path}: cannot read JSON ({exc})") from None
    items = doc.get("data") if isinstance(doc, dict) else doc
    if not isinstance(items, list):
        raise ConfigError(f"--templates {path}: expected a list or an object with 'data'")
    return items


def parse_args(argv: list[str] | None = None) -> tuple[SandboxConfig, bool]:
    """The SandboxConfig described by the command line, and the --verbose flag."""
    p = argparse.ArgumentParser(prog="python -m broadcaster.sandbox", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 = any free port (default)")
    p.add_argument("--mps", type=int, default=80, help="per-number limit; 0 = unlimited")
    p.add_argument("--pair-interval", type=float, default=0.0, metavar="S",
                   help="min seconds between sends to one recipient (131056); 0 = off")
    p.add_argument("--token", default=None, help="required Bearer token (default: any)")
    p.add_argument("--templates", default=None, metavar="FILE",
                   help="Graph message_templates JSON; enables template validation")
    p.add_argument("--webhook-url", default=None)
    p.add_argument("--app-secret", default="sandbox-app-secret")
    p.add_argument("--waba-id", default=SandboxConfig.waba_id)
    p.add_argument("--undeliverable", action="append", default=[], metavar="SUFFIX",
                   help="numbers ending in SUFFIX fail with 131026 (repeatable)")
    p.add_argument("--read-rate", type=float, default=0.5)
    p.add_argument("--webhook-delay", type=float, default=0.0, metavar="S")
    p.add_argument("--webhook-batch", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-v", "--verbose", action="store_true")
    a = p.parse_args(argv)
    config = SandboxConfig(
        host=a.host, port=a.port, mps=a.mps, pair_interval_s=a.pair_interval, token=a.token,
        templates=_load_templates(a.templates) if a.templates else None,
        webhook_url=a.webhook_url, app_secret=a.app_secret, waba_id=a.waba_id,
        undeliverable_suffixes=tuple(a.undeliverable), read_rate=a.read_rate,
        webhook_delay_s=a.webhook_delay, webhook_batch_size=a.webhook_batch, seed=a.seed,
    )
    return config, a.verbose


def main(argv: list[str] | None = None) -> int:
    try:
        config, verbose = parse_args(argv)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    configure_logging(logging.INFO if verbose else logging.WARNING)
    sandbox_main(config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
