"""A segment filter value that can only match nobody is refused, naming the flag, the value and
the closest known one; `--allow-unknown` stores it anyway. Against real Postgres and the CLI."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import trio

from broadcaster.db import Database
from broadcaster.errors import InputError
from broadcaster.segment_store import create_segment, get_segment, update_segment
from segments.canon import closest_genre, closest_language
from segments.filters import SegmentFilter
from tests.integration.factories import add_contacts

ROOT = Path(__file__).resolve().parents[2]


async def workspace_with_data(db: Database, uniq: str, phone_factory) -> str:
    ws = f"ws_{uniq}"
    await add_contacts(db, ws, [phone_factory() for _ in range(3)], language="ta", genre="asmr")
    await db.execute("UPDATE contacts SET tags = '{verified}', city = 'Chennai' WHERE workspace = $1", ws)
    return ws


async def test_values_no_contact_has_are_refused_with_every_problem_named(
        db: Database, uniq: str, phone_factory) -> None:
    ws = await workspace_with_data(db, uniq, phone_factory)
    f = SegmentFilter(workspace=ws, genres=("comdy",), languages=("ta", "tamill"), tags_any=("verifed",),
                      cities=("Chenai",))
    with pytest.raises(InputError) as info:
        await create_segment(db, f"s_{uniq}", f)
    text = str(info.value)
    assert "--genre 'comdy': no contact in workspace" in text and "(did you mean 'humor'?)" in text
    assert "--language 'tamill'" in text and "(did you mean 'ta'?)" in text
    assert "--tag-any 'verifed'" in text and "--city 'chenai'" in text
    assert "--language 'ta'" not in text, "a value the contacts have is fine"
    assert await db.fetchval("SELECT count(*) FROM segments WHERE name = $1", f"s_{uniq}") == 0


async def test_values_the_contacts_carry_pass_even_when_not_canonical(db: Database, uniq: str, phone_factory) -> None:
    ws = await workspace_with_data(db, uniq, phone_factory)
    # 'asmr' is no known genre, but the import kept it on these contacts: a segment may target it
    f = SegmentFilter(workspace=ws, genres=("asmr",), tags_all=("verified",), cities=("chennai",))
    await create_segment(db, f"s_{uniq}", f)
    with pytest.raises(InputError, match="--genre 'sprots'"):
        await update_segment(db, f"s_{uniq}", SegmentFilter(workspace=ws, genres=("sprots",)))
    assert (await get_segment(db, f"s_{uniq}")).genres == ("asmr",), "a refused edit changes nothing"
    await update_segment(db, f"s_{uniq}", SegmentFilter(workspace=ws, genres=("sprots",)), allow_unknown=True)
    assert (await get_segment(db, f"s_{uniq}")).genres == ("sprots",)


async def test_cli_refuses_with_exit_code_1_and_allow_unknown_stores(
        db: Database, db_url: str, uniq: str, phone_factory) -> None:
    ws = await workspace_with_data(db, uniq, phone_factory)
    env = {**os.environ, "DATABASE_URL": db_url}
    args = [sys.executable, "-m", "cli", "segments", "create", f"s_{uniq}", "--workspace", ws, "--genre", "comdy"]
    refused = await trio.run_process(args, capture_stdout=True, capture_stderr=True, check=False, env=env, cwd=ROOT)
    assert refused.returncode == 1
    assert b"--genre 'comdy': no contact in workspace" in refused.stderr
    stored = await trio.run_process([*args, "--allow-unknown"], capture_stdout=True, capture_stderr=True,
                                    check=False, env=env, cwd=ROOT)
    assert stored.returncode == 0, stored.stderr
    assert (await get_segment(db, f"s_{uniq}")).genres == ("comdy",)


def test_suggestions() -> None:
    assert closest_genre("comdy") == "humor"
    assert closest_genre("sprots") == "sports"
    assert closest_genre("zzzz") is None
    assert closest_language("hindee") == "hi"
    assert closest_language("tamill") == "ta"
    assert closest_language("qqqq") is None
