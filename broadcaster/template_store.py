"""The template registry in Postgres, keyed by (name, language) exactly as WhatsApp has them.

Import from a Graph `message_templates` file, or sync from the Graph API following `paging.next`.
Both upsert: a template that changed status (e.g. APPROVED → PAUSED) is updated in place.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
import tenacity
import trio

from broadcaster.config import Settings
from broadcaster.db import Database
from broadcaster.errors import BroadcasterError, ConfigError, InputError, NotFoundError
from templates import Template, TemplateFormatError, parse_message_templates

_UPSERT = """
INSERT INTO templates (name, language, template_id, status, category, parameter_format, components, updated_at)
SELECT * , now() FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::jsonb[])
ON CONFLICT (name, language) DO UPDATE SET
    template_id = EXCLUDED.template_id, status = EXCLUDED.status, category = EXCLUDED.category,
    parameter_format = EXCLUDED.parameter_format, components = EXCLUDED.components, updated_at = now()
"""


@dataclass(frozen=True)
class TemplateImportSummary:
    read: int
    by_status: dict[str, int]


async def upsert_templates(db: Database, items: Sequence[Template]) -> TemplateImportSummary:
    """Upsert templates in one statement."""
    if items:
        await db.execute(
            _UPSERT,
            [t.name for t in items], [t.language for t in items], [t.template_id for t in items],
            [t.status for t in items], [t.category for t in items],
            [t.parameter_format for t in items],
            [orjson.dumps(list(t.components)).decode() for t in items],
        )
    by_status: dict[str, int] = {}
    for t in items:
        by_status[t.status] = by_status.get(t.status, 0) + 1
    return TemplateImportSummary(read=len(items), by_status=by_status)


def read_template_file(path: str | Path) -> list[Template]:
    """Parse a Graph `message_templates` JSON file; errors name the file, entry and field."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read templates file {p}: {exc.strerror}") from exc
    try:
        templates = parse_message_templates(raw, source=p.name)  # decodes once: a JSON string stays one
    except TemplateFormatError as exc:
        raise InputError(str(exc)) from exc
    if not templates:
        raise InputError(f"{p.name}: no templates in the file (an empty 'data' list): nothing imported")
    return templates


async def import_templates(db: Database, path: str | Path) -> TemplateImportSummary:
    return await upsert_templates(db, read_template_file(path))


async def list_templates(db: Database) -> list[Template]:
    rows = await db.fetch(
        "SELECT name, language, template_id, status, category, parameter_format, components"
        " FROM templates ORDER BY name, language")
    return [_row_to_template(r) for r in rows]


async def load_variants(db: Database, name: str) -> dict[str, Template]:
    """Every language variant of template `name`, keyed by language code."""
    rows = await db.fetch(
        "SELECT name, language, template_id, status, category, parameter_format, components"
        " FROM templates WHERE name = $1", name)
    if not rows:
        raise NotFoundError(
            f"template '{name}' is not in the registry: run `broadcaster templates import FILE` "
            "or `broadcaster templates sync`, then check `broadcaster templates list`")
    return {r["language"]: _row_to_template(r) for r in rows}


def _row_to_template(r: object) -> Template:
    entry = {
        "name": r["name"], "language": r["language"], "status": r["status"],  # type: ignore[index]
        "category": r["category"], "parameter_format": r["parameter_format"],  # type: ignore[index]
        "components": orjson.loads(r["components"]),  # type: ignore[index]
    }
    if r["template_id"]:  # type: ignore[index]
        entry["id"] = r["template_id"]  # type: ignore[index]
    return parse_message_templates({"data": [entry]}, source="registry")[0]


class _SyncHttpError(BroadcasterError):
    pass


async def fetch_remote_templates(settings: Settings, *, page_limit: int = 100) -> list[Template]:
    """GET /{WABA_ID}/message_templates from the Graph API (or sandbox), following paging.next."""
    settings.require("whatsapp_waba_id")
    url: str | None = f"{settings.whatsapp_api_url}/{settings.whatsapp_waba_id}/message_templates"
    params: dict[str, str] | None = {"limit": str(page_limit)}
    headers = {"Authorization": f"Bearer {settings.whatsapp_token}"} if settings.whatsapp_token else {}
    out: list[Template] = []
    retrying = tenacity.AsyncRetrying(
        sleep=trio.sleep, reraise=True, stop=tenacity.stop_after_attempt(4),
        wait=tenacity.wait_exponential_jitter(multiplier=0.5, max=8),
        retry=tenacity.retry_if_exception_type((httpx.TransportError, _SyncHttpError)),
    )
    async with httpx.AsyncClient(timeout=20.0, headers=headers) as client:
        pages = 0
        while url:
            async for attempt in retrying:
                with attempt:
                    resp = await client.get(url, params=params)
                    if resp.status_code >= 500:
                        raise _SyncHttpError(f"template sync: HTTP {resp.status_code} from {url}")
            if resp.status_code in (401, 403):
                raise ConfigError(f"template sync refused (HTTP {resp.status_code}): check WHATSAPP_TOKEN")
            if resp.status_code != 200:
                raise InputError(f"template sync: HTTP {resp.status_code}: {resp.text[:200]}")
            doc = resp.json()
            pages += 1
            try:
                out.extend(parse_message_templates(doc, source=f"message_templates page {pages}"))
            except TemplateFormatError as exc:
                raise InputError(str(exc)) from exc
            url = (doc.get("paging") or {}).get("next")
            params = None  # `next` is a complete URL
    return out


async def sync_templates(db: Database, settings: Settings) -> TemplateImportSummary:
    return await upsert_templates(db, await fetch_remote_templates(settings))
