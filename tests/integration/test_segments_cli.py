"""`broadcaster segments …` through typer's CliRunner against the session database."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from broadcaster.commands.contacts import app as contacts_app
from broadcaster.commands.segments import app

runner = CliRunner()


def _ok(args: list[str]) -> str:
    result = runner.invoke(app, args, terminal_width=200)
    assert result.exit_code == 0, result.output
    return result.output


def test_segment_lifecycle(db_url: str, uniq: str, tmp_path: Path) -> None:
    ws = f"segcli_{uniq}"
    path = tmp_path / "c.csv"
    path.write_text("phone,genre,language,tags,opted_in\n9800000004,Comedy,Hindi,verified,yes\n"
                    "9800000005,humor,hi,,no\n9800000006,news,hi,verified,yes\n", encoding="utf-8")
    assert runner.invoke(contacts_app, ["import", str(path), "-w", ws]).exit_code == 0
    name = f"s_{uniq}"
    out = _ok(["create", name, "-w", ws, "-g", "humor", "--language", "hi"])
    assert out.strip().endswith("2 contacts now")
    assert _ok(["count", name]).split()[0] == "2"
    assert _ok(["edit", name, "--opted-in"]).strip().endswith("1 contacts now")
    assert _ok(["edit", name, "--clear", "genres", "--tag-all", "verified"]).strip().endswith("2 contacts now")
    shown = _ok(["show", name])
    body = shown[shown.index("{"):shown.rindex("}") + 1]
    assert json.loads(body) == {"workspace": ws, "languages": ["hi"], "opted_in": True, "tags_all": ["verified"]}
    preview = _ok(["preview", name, "--limit", "5"])
    assert "********0004" in preview and "********0006" in preview and "9800000004" not in preview
    assert name in _ok(["list", "-w", ws, "--count"])
    assert _ok(["delete", name]).strip() == f"segment {name} deleted"


def test_errors_are_one_line_with_exit_codes(db_url: str, uniq: str) -> None:
    result = runner.invoke(app, ["count", f"nope_{uniq}"])
    assert result.exit_code == 1
    assert result.output.startswith(f"error: segment 'nope_{uniq}' does not exist: create it with")
    result = runner.invoke(app, ["create", f"x_{uniq}", "-w", "w", "--followers-min", "10", "--followers-max", "5"])
    assert result.exit_code == 2
    assert result.output.startswith("error: segment filter field 'followers_max': must be ≥ followers_min (10)")
    result = runner.invoke(app, ["edit", f"nope_{uniq}", "--clear", "bogus"])
    assert result.exit_code == 1  # the segment is looked up first


def test_an_empty_value_never_widens_a_segment(db_url: str, uniq: str, tmp_path: Path) -> None:
    """`--language "$LANG"` with LANG unset must not turn into "every language"."""
    ws = f"segempty_{uniq}"
    path = tmp_path / "c.csv"
    path.write_text("phone,genre,language\n9800000004,comedy,hi\n9800000005,news,ta\n", encoding="utf-8")
    assert runner.invoke(contacts_app, ["import", str(path), "-w", ws]).exit_code == 0
    name = f"e_{uniq}"
    _ok(["create", name, "-w", ws, "--language", "hi"])
    for args in (["create", f"e2_{uniq}", "-w", ws, "--language", ""], ["edit", name, "--language", " , "],
                 ["edit", name, "--genre", ""]):
        result = runner.invoke(app, args, terminal_width=200)
        assert result.exit_code == 2, result.output
        assert "no value given; to drop this condition use `segments edit NAME --clear" in result.output
    assert _ok(["count", name]).split()[0] == "1"  # unchanged
