"""Log lines: one event per line whatever the text carries; noisy libraries stay quiet."""

from __future__ import annotations

import io
import logging

from hypothesis import given
from hypothesis import strategies as st

from broadcaster.logs import MAX_MESSAGE_CHARS, OneLineFormatter, configure_logging


def _format(message: str, *args: object) -> str:
    record = logging.LogRecord("broadcaster.test", logging.WARNING, __file__, 1, message, args, None)
    return OneLineFormatter("%(levelname)s %(message)s").format(record)


def test_a_webhook_id_cannot_forge_a_second_log_line() -> None:
    line = _format("inbound %s: duplicate", "wamid.X\n2026-12-04 ERROR broadcaster FORGED LINE\r")
    assert "\n" not in line and "\r" not in line
    assert line == "WARNING inbound wamid.X\\n2026-12-04 ERROR broadcaster FORGED LINE\\r: duplicate"


@given(st.text())
def test_any_message_formats_to_one_bounded_line(text: str) -> None:
    line = _format("got %s", text)
    assert line.splitlines() == [line]
    assert len(line) <= MAX_MESSAGE_CHARS + 40


def test_a_traceback_keeps_its_lines() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        import sys
        record = logging.LogRecord("b", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    text = OneLineFormatter("%(message)s").format(record)
    assert text.startswith("failed\nTraceback") and text.endswith("ValueError: boom")


def test_verbose_logging_keeps_http_libraries_at_warning() -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging(logging.DEBUG, stream=stream)
        logging.getLogger("httpx").info("HTTP Request: POST https://hooks.slack.com/services/T0/B0/SECRET")
        logging.getLogger("broadcaster.x").debug("kept")
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
        logging.getLogger("httpx").setLevel(logging.NOTSET)
    assert "SECRET" not in stream.getvalue()
    assert "kept" in stream.getvalue()
