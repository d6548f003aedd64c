"""FRT and resolution for a scripted set of conversations, with injected timestamps, against
hand-computed numbers (no sleeps: every time comes from the script)."""

from __future__ import annotations

from datetime import timedelta

from broadcaster.db import Database
from broadcaster.inbox import directory
from broadcaster.inbox.conversations import resolve_conversation
from broadcaster.inbox.reply import send_agent_reply
from broadcaster.inbox.report import inbox_report
from tests.integration.test_inbox_handler import T0, add_contact, make_env, text, value_for
from tests.integration.test_inbox_slack import FakeSender


def at(minutes: float):
    return T0 + timedelta(minutes=minutes)


async def test_frt_and_resolution_match_hand_computed_values(db: Database, uniq: str, phone_factory) -> None:
    env = await make_env(db, uniq)
    await directory.add_team(db, env.workspace, "hindi", routes=[(None, "hi")])
    for name in ("asha", "bilal"):
        await directory.add_agent(db, env.workspace, name)
        await directory.join_team(db, env.workspace, "hindi", name)
    p1, p2, p3, p4 = (phone_factory() for _ in range(4))
    for p in (p1, p2, p3, p4):
        await add_contact(db, env, p, language="hi")
    sender = FakeSender()

    async def inbound(phone: str, body: str, minutes: float, processed: float | None = None):
        [out] = await env.inbox.handle_messages(db, value_for(env, phone, text(body), at=at(minutes)),
                                                now=at(processed if processed is not None else minutes))
        return out

    a = await inbound(p1, "hello", 0)                        # → asha (round robin)
    b = await inbound(p2, "namaste", 10)                     # → bilal
    await inbound(p2, "are you there?", 12)                  # same conversation, FRT still from minute 10
    c = await inbound(p3, "need help with a video", 20)      # → asha
    d = await inbound(p4, "व्यूज कैसे बढ़ाएं?", 30, processed=30.05)  # FAQ: bot answers 3 s later
    assert [o.assignment.agent_id is not None for o in (a, b, c)] == [True, True, True]
    assert d.action == "faq"

    await send_agent_reply(db, sender, a.conversation_id, "Hi!", now=at(5))            # FRT 300 s (asha)
    await send_agent_reply(db, sender, c.conversation_id, "Which one?", now=at(21))    # FRT 60 s (asha)
    await send_agent_reply(db, sender, b.conversation_id, "Yes, here", now=at(25))     # FRT 900 s (bilal)
    await resolve_conversation(db, c.conversation_id, now=at(50))                      # 1800 s (asha)
    await resolve_conversation(db, a.conversation_id, now=at(60))                      # 3600 s (asha)
    await resolve_conversation(db, b.conversation_id, now=at(130))                     # 7200 s (bilal)
    e = await inbound(p1, "one more question", 180)          # reopened: a new measurement; bilal's turn
    await send_agent_reply(db, sender, e.conversation_id, "Sure", now=at(182))         # FRT 120 s (bilal)
    assert e.conversation_id != a.conversation_id
    assert await db.fetchval("SELECT reopens FROM inbox_conversations WHERE id = $1", e.conversation_id) \
        == a.conversation_id

    report = await inbox_report(db, workspace=env.workspace)
    assert report["conversations"] == 5
    # human FRT: 60, 120, 300, 900 → mean 345, median (120+300)/2, p90 nearest rank = 4th value
    assert report["human"]["frt"] == {"count": 4, "mean_s": 345.0, "median_s": 210.0, "p90_s": 900.0,
                                      "max_s": 900.0}
    # human resolution: 1800, 3600, 7200
    assert report["human"]["resolution"] == {"count": 3, "mean_s": 4200.0, "median_s": 3600.0, "p90_s": 7200.0,
                                             "max_s": 7200.0}
    assert report["bot"]["frt"] == {"count": 1, "mean_s": 3.0, "median_s": 3.0, "p90_s": 3.0, "max_s": 3.0}
    assert report["bot"]["resolution"]["count"] == 1
    # round robin: a → asha, b → bilal, c → asha, e → bilal
    assert report["agents"]["asha"] == {
        "frt": {"count": 2, "mean_s": 180.0, "median_s": 180.0, "p90_s": 300.0, "max_s": 300.0},
        "resolution": {"count": 2, "mean_s": 2700.0, "median_s": 2700.0, "p90_s": 3600.0, "max_s": 3600.0}}
    assert report["agents"]["bilal"] == {
        "frt": {"count": 2, "mean_s": 510.0, "median_s": 510.0, "p90_s": 900.0, "max_s": 900.0},
        "resolution": {"count": 1, "mean_s": 7200.0, "median_s": 7200.0, "p90_s": 7200.0, "max_s": 7200.0}}
    team = report["teams"]["hindi"]
    assert (team["conversations"], team["open"], team["queued"]) == (5, 1, 0)
    assert (team["frt"]["count"], team["bot_frt"]["count"], team["resolution"]["count"]) == (4, 1, 3)
    # --since counts conversations opened from then on: only the reopened one
    later = await inbox_report(db, workspace=env.workspace, since=at(179))
    assert later["conversations"] == 1 and later["human"]["frt"]["median_s"] == 120.0
