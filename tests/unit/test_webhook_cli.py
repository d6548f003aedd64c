"""`inbound serve` refuses to start without its secrets (no database needed to find out)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from broadcaster.commands.inbound import app

runner = CliRunner()


@pytest.mark.parametrize("env, missing", [
    ({}, "WHATSAPP_APP_SECRET, WHATSAPP_VERIFY_TOKEN"),
    ({"WHATSAPP_APP_SECRET": "s"}, "WHATSAPP_VERIFY_TOKEN"),
    ({"WHATSAPP_VERIFY_TOKEN": "t"}, "WHATSAPP_APP_SECRET"),
])
def test_serve_names_the_missing_settings(env: dict[str, str], missing: str,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WHATSAPP_APP_SECRET", raising=False)
    monkeypatch.delenv("WHATSAPP_VERIFY_TOKEN", raising=False)
    result = runner.invoke(app, ["serve", "--port", "0"], env=env)
    assert result.exit_code == 1, result.output
    output = " ".join(result.output.split())  # rich wraps long lines
    assert output == f"error: missing required environment variable(s): {missing}"


def test_serve_rejects_a_bad_port() -> None:
    result = runner.invoke(app, ["serve", "--port", "70000"])
    assert result.exit_code == 2
