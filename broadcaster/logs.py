"""Log hygiene: phone numbers are masked (last 4 digits kept); tokens never logged; one event, one line.

The masking itself lives with the phone rules in `segments.phones`; the engine imports it from here.
"""

from __future__ import annotations

import logging
import re
import sys

from segments.phones import mask_phone

__all__ = ["OneLineFormatter", "configure_logging", "mask_phone"]

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
# Libraries whose INFO/DEBUG lines carry full URLs (a Slack webhook URL is a secret) or request
# internals: kept at WARNING even with --verbose.
QUIET_LIBRARIES = ("httpx", "httpcore", "hpack", "h11", "asyncio", "trio_asyncio", "hypercorn")
MAX_MESSAGE_CHARS = 2000
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _escape(match: re.Match[str]) -> str:
    return repr(match.group())[1:-1]


class OneLineFormatter(logging.Formatter):
    """A message never spans lines (control characters escaped, so text from a webhook cannot
    forge a log line) and is cut at MAX_MESSAGE_CHARS; tracebacks still follow on their own lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        message = _CONTROL.sub(_escape, record.message)
        if len(message) > MAX_MESSAGE_CHARS:
            message = f"{message[:MAX_MESSAGE_CHARS]}… ({len(message)} characters)"
        record.message = message
        return super().formatMessage(record)


def configure_logging(level: int, *, stream: object = None) -> None:
    """Root logging to stderr with OneLineFormatter; noisy libraries held at WARNING."""
    handler = logging.StreamHandler(stream or sys.stderr)  # type: ignore[arg-type]
    handler.setFormatter(OneLineFormatter(LOG_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(max(level, logging.WARNING))
