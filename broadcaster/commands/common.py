"""What every command shares: running async engine code, error → exit code, printing."""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import trio
import typer
from rich.console import Console

from broadcaster.config import Settings
from broadcaster.db import Database, open_db
from broadcaster.errors import BroadcasterError
from broadcaster.logs import configure_logging

T = TypeVar("T")

# Piped or under cron there is no terminal width: don't cut names or wrap error lines at 80.
console = Console(highlight=False, width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def settings() -> Settings:
    return Settings.from_env()


@asynccontextmanager
async def database(max_size: int = 4) -> AsyncIterator[Database]:
    """The configured database (DATABASE_URL), as a pool for the command's lifetime."""
    async with open_db(settings().database_url, max_size=max_size) as db:
        yield db


def run(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Run an async engine call under trio; a BroadcasterError becomes one line on stderr + exit code.

    Unexpected errors keep their traceback (locals off); Ctrl-C exits 130 without a traceback.
    """
    try:
        return trio.run(fn, *args)
    except BroadcasterError as exc:
        err_console.print(f"error: {exc}", markup=False)
        raise typer.Exit(exc.exit_code) from None
    except BaseExceptionGroup as group:
        inner: BaseException = group
        while isinstance(inner, BaseExceptionGroup) and len(inner.exceptions) == 1:
            inner = inner.exceptions[0]
        if isinstance(inner, BroadcasterError):
            err_console.print(f"error: {inner}", markup=False)
            raise typer.Exit(inner.exit_code) from None
        if isinstance(inner, KeyboardInterrupt):
            raise typer.Exit(130) from None
        raise
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def setup_logging(verbose: bool) -> None:
    """Structured one-line logs on stderr; quiet (warnings only) unless --verbose."""
    configure_logging(logging.DEBUG if verbose else logging.WARNING)


def maybe_start_metrics() -> None:
    """Serve /metrics from a thread when BROADCASTER_METRICS_PORT is set (a scrape never stalls trio)."""
    port = settings().metrics_port
    if port:
        from broadcaster.metrics import start_metrics_server

        start_metrics_server(port)
