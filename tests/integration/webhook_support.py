"""Shared helpers for the webhook tests (no tests here): ledger rows built in SQL, payloads built
like the API doc's (§4.3-4.4), signed, and a receiver running on 127.0.0.1."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import trio

from broadcaster.db import Database
from broadcaster.inbound import Hooks, InboundService, sign

SECRET = "test-app-secret"
VERIFY_TOKEN = "test-verify-token"
WABA_ID = "102290129340398"
PHONE_NUMBER_ID = "106540352242922"


@dataclass(frozen=True)
class Row:
    id: int
    contact_id: int
    wa_id: str
    wamid: str  # the wamid this row has or will get


@dataclass(frozen=True)
class Seeded:
    campaign_id: int
    workspace: str
    rows: list[Row]


async def make_ledger(db: Database, uniq: str, n: int, *, state: str = "accepted",
                      with_wamid: bool = True, lease_owner: str | None = None,
                      campaign: Seeded | None = None, tag: str = "") -> Seeded:
    """`n` ledger rows (and contacts) in one campaign, straight in SQL.

    Rows get state `state`; their wamid is `wamid.<uniq><tag>.<wa_id>`, stored only if `with_wamid`.
    Pass `campaign` to add rows to an existing campaign. The campaign is `completed`, so that no
    worker of another test ever claims these rows (statuses apply whatever the campaign state).
    """
    if campaign is None:
        ws = f"wh_{uniq}"
        await db.execute("INSERT INTO workspaces (name) VALUES ($1)", ws)
        await db.execute("INSERT INTO segments (name, workspace, filter) VALUES ($1, $2, '{}')",
                         f"seg_{uniq}", ws)
        campaign_id = await db.fetchval(
            "INSERT INTO campaigns (name, workspace, segment, template_name, default_language, state)"
            " VALUES ($1, $2, $3, 'daily_campaign_invite', 'hi', 'completed') RETURNING id",
            f"camp_{uniq}", ws, f"seg_{uniq}")
    else:
        ws, campaign_id = campaign.workspace, campaign.campaign_id
    offset = await db.fetchval("SELECT count(*) FROM contacts WHERE workspace = $1", ws)
    rows = await db.fetch(
        """
        WITH c AS (
            INSERT INTO contacts (workspace, wa_id, name, marketing_opt_in)
            SELECT $1, '91' || lpad(($2 + i)::text, 10, '0'), 'Creator ' || i, true FROM generate_series(1, $3) AS i
            RETURNING id, wa_id
        )
        INSERT INTO ledger (campaign_id, contact_id, wa_id, language, state, wamid, lease_owner,
                            lease_until, accepted_at)
        SELECT $4, c.id, c.wa_id, 'hi', $5,
               CASE WHEN $6 THEN 'wamid.' || $7 || '.' || c.wa_id END, $8,
               CASE WHEN $8::text IS NOT NULL THEN now() + interval '1 hour' END,
               CASE WHEN $5 NOT IN ('pending', 'claimed', 'unknown') THEN now() - interval '1 minute' END
        FROM c ORDER BY c.id
        RETURNING id, contact_id, wa_id
        """, ws, offset, n, campaign_id, state, with_wamid, uniq + tag, lease_owner)
    return Seeded(campaign_id, ws, [Row(r["id"], r["contact_id"], r["wa_id"],
                                        f"wamid.{uniq + tag}.{r['wa_id']}") for r in rows])


def status(wamid: str, name: str, ts: int, *, recipient: str = "919876543210",
           callback: str | None = None, code: int | None = None) -> dict[str, Any]:
    """One `statuses[]` item shaped like the API doc's examples (§4.4)."""
    item: dict[str, Any] = {"id": wamid, "status": name, "timestamp": str(ts), "recipient_id": recipient}
    if callback is not None:
        item["biz_opaque_callback_data"] = callback
    if name in ("sent", "delivered"):
        item["pricing"] = {"billable": True, "pricing_model": "PMP", "type": "regular",
                           "category": "marketing"}
    if name == "failed":
        item["errors"] = [{"code": code or 131026, "title": f"Error {code or 131026}",
                           "message": f"Error {code or 131026}",
                           "error_data": {"details": "Message failed to send."},
                           "href": "/documentation/business-messaging/whatsapp/support/error-codes"}]
    return item


def change(statuses: list[dict[str, Any]] | None = None, **value: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"messaging_product": "whatsapp",
                            "metadata": {"display_phone_number": "15550783881",
                                         "phone_number_id": PHONE_NUMBER_ID}, **value}
    if statuses is not None:
        body["statuses"] = statuses
    return {"field": "messages", "value": body}


def envelope(*entries: list[dict[str, Any]]) -> dict[str, Any]:
    """A webhook body: one entry per argument, each a list of changes."""
    return {"object": "whatsapp_business_account",
            "entry": [{"id": WABA_ID, "changes": changes} for changes in entries]}


def signed(doc: dict[str, Any] | bytes, secret: str = SECRET) -> tuple[bytes, dict[str, str]]:
    body = doc if isinstance(doc, bytes) else orjson.dumps(doc)
    return body, {"content-type": "application/json", "x-hub-signature-256": sign(body, secret)}


@dataclass
class Receiver:
    service: InboundService
    url: str  # http://127.0.0.1:PORT
    client: httpx.AsyncClient

    async def post(self, doc: dict[str, Any] | bytes, *, secret: str = SECRET) -> httpx.Response:
        body, headers = signed(doc, secret)
        return await self.client.post(f"{self.url}/webhook", content=body, headers=headers)

    async def applied(self) -> None:
        with trio.fail_after(30):
            await self.service.worker.wait_applied()


@asynccontextmanager
async def running_receiver(db: Database, *, hooks: Hooks | None = None) -> AsyncIterator[Receiver]:
    """An InboundService on 127.0.0.1 (any port) with a client; cancelled on exit."""
    service = InboundService(db, app_secret=SECRET, verify_token=VERIFY_TOKEN,
                             hooks=hooks or Hooks())
    async with trio.open_nursery() as nursery, httpx.AsyncClient(timeout=30) as client:
        port = await nursery.start(service.serve, "127.0.0.1", 0)
        yield Receiver(service, f"http://127.0.0.1:{port}", client)
        nursery.cancel_scope.cancel()


async def ledger_rows(db: Database, campaign_id: int) -> dict[int, dict[str, Any]]:
    rows = await db.fetch("SELECT * FROM ledger WHERE campaign_id = $1", campaign_id)
    return {r["id"]: dict(r) for r in rows}


async def last_event_id(db: Database) -> int:
    """The newest stored webhook body's id (0 when none): what a test posts comes after it."""
    return int(await db.fetchval("SELECT COALESCE(max(id), 0) FROM webhook_events"))


async def dead_letters_after(db: Database, event_id: int) -> int:
    """Dead letters of bodies stored after `event_id`: a receiver also applies bodies other tests
    left unprocessed (their dead letters are theirs)."""
    return int(await db.fetchval("SELECT count(*) FROM webhook_dead_letters WHERE webhook_event_id > $1",
                                 event_id))
