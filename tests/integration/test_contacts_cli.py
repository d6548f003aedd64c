"""`broadcaster contacts …` through typer's CliRunner against the session database."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from broadcaster.commands.contacts import app

runner = CliRunner()


def test_import_prints_summary_and_writes_rejects(db_url: str, uniq: str, tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text("phone,name,language\n+91 98000 00004,A,Hindi\n09800000004,A again,hi\n12345,B,hi\n"
                    "98000 00005,C,Klingon\n", encoding="utf-8")
    result = runner.invoke(app, ["import", str(path), "--workspace", f"cli_{uniq}",
                                 "--rejects", str(tmp_path / "r.csv")])
    assert result.exit_code == 0, result.output
    lines = {" ".join(line.split()[:-1]): line.split()[-1] for line in result.output.splitlines()
             if line.split() and line.split()[-1].isdigit()}
    assert (lines["read"], lines["inserted"], lines["collapsed duplicates"], lines["rejected"]) == ("4", "2", "1", "1")
    assert "unknown languages (kept): klingon 1" in result.output
    assert "c.csv row 4, field phone: phone_too_short" in result.output
    assert "98000" not in result.output  # numbers never printed
    assert (tmp_path / "r.csv").read_text(encoding="utf-8").splitlines()[1].startswith("4,phone_too_short,phone,")


def test_unparseable_file_exits_1_with_one_line(db_url: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_bytes(b"name\nA\n")
    result = runner.invoke(app, ["import", str(path)])
    assert result.exit_code == 1, result.output
    assert result.output.startswith("error: bad.csv row 1: no phone column")


def test_opt_out_then_opt_in(db_url: str, uniq: str, tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text(f"phone,workspace\n9800000004,cli_{uniq}\n", encoding="utf-8")
    assert runner.invoke(app, ["import", str(path)]).exit_code == 0
    result = runner.invoke(app, ["opt-out", "+91 98000 00004", "-w", f"cli_{uniq}", "--note", "asked by phone"])
    assert (result.exit_code, result.output.strip()) == (0, "********0004: opted out")
    result = runner.invoke(app, ["opt-in", "9800000004", "-w", f"cli_{uniq}"])
    assert (result.exit_code, result.output.strip()) == (0, "********0004: opted in")
    result = runner.invoke(app, ["opt-out", "12345", "-w", f"cli_{uniq}"])
    assert result.exit_code == 1 and result.output.startswith(
        "error: the NUMBER argument is not a mobile number: not a valid number for country code +91 (too_short)")


def test_a_file_whose_every_row_is_rejected_exits_1_and_says_why(db_url: str, tmp_path: Path, uniq: str) -> None:
    path = tmp_path / "no_workspace.csv"
    path.write_text("phone,name\n9800000004,Asha\n9800000005,Ravi\n", encoding="utf-8")
    result = runner.invoke(app, ["import", str(path)])
    assert result.exit_code == 1, result.output
    assert (f"error: every row of {path} was rejected, most as missing_workspace (give --workspace); "
            "nothing was imported") in " ".join(result.output.split())
    # with some rows good, rejections are part of a normal import
    path.write_text(f"phone,workspace\n9800000004,cli_{uniq}\n12345,cli_{uniq}\n", encoding="utf-8")
    assert runner.invoke(app, ["import", str(path)]).exit_code == 0


def test_a_file_with_a_header_and_no_rows_exits_1(db_url: str, tmp_path: Path, uniq: str) -> None:
    path = tmp_path / "header_only.csv"
    path.write_text("phone,name,workspace\n\n", encoding="utf-8")
    result = runner.invoke(app, ["import", str(path)])
    assert result.exit_code == 1, result.output
    assert f"error: {path} has no contact rows" in " ".join(result.output.split())
