"""Campaign report extras and exports: the funnel, latency percentiles, sends over time, failures
by code and language; per-recipient CSV; one self-contained HTML page with inline SVG charts.

Every number comes from the ledger (and the inbox for replies), in SQL, when the report is made;
the JSON, the CSV and the HTML of one report are built from the same rows, so they agree.

Funnel stages count recipients who got at least that far (a row failed after delivery still
counts as delivered): audience ⊇ accepted ⊇ sent ⊇ delivered ⊇ read. `skipped` and `failed`
are the rows in those ledger states; `replied` counts recipients with an inbound message linked
to the campaign (None when the inbox is not installed).

What it is not: not a live view (see `campaign watch`), and the HTML loads nothing from outside
(no scripts, fonts or stylesheets): it renders offline and can be mailed as one file.
"""

from __future__ import annotations

import csv
import html
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import trio

from broadcaster.campaigns import get_campaign
from broadcaster.classify import TITLES
from broadcaster.db import Database
from broadcaster.errors import NotFoundError
from broadcaster.logs import mask_phone
from broadcaster.report import campaign_report
from broadcaster.schedule import DEFAULT_TIMEZONE, workspace_timezone

__all__ = ["CSV_COLUMNS", "LATENCY_EDGES_S", "LiveSnapshot", "full_report", "live_snapshot", "render_html",
           "write_csv", "write_html"]

LATENCY_EDGES_S = (1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)  # histogram upper bounds, seconds
TIMELINE_MINUTE_SPAN_S = 48 * 3600  # longer campaigns are charted per hour instead of per minute
CSV_PAGE = 5000                     # rows per round trip when exporting
FUNNEL = ("audience", "accepted", "sent", "delivered", "read", "replied")

_FUNNEL_SQL = """
SELECT count(*) AS audience,
       count(*) FILTER (WHERE state = 'skipped') AS skipped,
       count(*) FILTER (WHERE accepted_at IS NOT NULL
                          OR state IN ('accepted', 'sent', 'delivered', 'read')) AS accepted,
       count(*) FILTER (WHERE sent_at IS NOT NULL OR state IN ('sent', 'delivered', 'read')) AS sent,
       count(*) FILTER (WHERE delivered_at IS NOT NULL OR state IN ('delivered', 'read')) AS delivered,
       count(*) FILTER (WHERE read_at IS NOT NULL OR state = 'read') AS read,
       count(*) FILTER (WHERE state = 'failed') AS failed,
       min(accepted_at) AS first_accepted_at, max(COALESCE(accepted_at, failed_at)) AS last_send_at
FROM ledger WHERE campaign_id = $1
"""

# delivered_at may come from Meta's (whole-second) timestamp: clamp tiny negative gaps to zero
_LATENCY = "GREATEST(0, extract(epoch FROM delivered_at - accepted_at))::float8"
_LATENCY_SQL = f"""
SELECT count(*) AS n,
       percentile_cont(ARRAY[0.5, 0.9, 0.99]::float8[]) WITHIN GROUP (ORDER BY {_LATENCY}) AS p,
       max({_LATENCY}) AS max
FROM ledger WHERE campaign_id = $1 AND delivered_at IS NOT NULL AND accepted_at IS NOT NULL
"""
_HISTOGRAM_SQL = f"""
SELECT width_bucket({_LATENCY}, $2::float8[]) AS bucket, count(*) AS n
FROM ledger WHERE campaign_id = $1 AND delivered_at IS NOT NULL AND accepted_at IS NOT NULL
GROUP BY 1 ORDER BY 1
"""
_TIMELINE_SQL = """
WITH events AS (
    SELECT date_bin(make_interval(secs => $2), accepted_at, TIMESTAMPTZ '2000-01-01 00:00Z') AS t,
           1 AS accepted, 0 AS failed
    FROM ledger WHERE campaign_id = $1 AND accepted_at IS NOT NULL
    UNION ALL
    SELECT date_bin(make_interval(secs => $2), failed_at, TIMESTAMPTZ '2000-01-01 00:00Z'), 0, 1
    FROM ledger WHERE campaign_id = $1 AND state = 'failed' AND failed_at IS NOT NULL
), per AS (
    SELECT t, sum(accepted)::bigint AS accepted, sum(failed)::bigint AS failed FROM events GROUP BY t
)
SELECT g.t, COALESCE(per.accepted, 0) AS accepted, COALESCE(per.failed, 0) AS failed
FROM (SELECT min(t) AS lo, max(t) AS hi FROM per) span
CROSS JOIN LATERAL generate_series(span.lo, span.hi, make_interval(secs => $2)) AS g(t)
LEFT JOIN per ON per.t = g.t
ORDER BY g.t
"""
_FAILURES_SQL = """
SELECT error_code, max(error_title) AS title, count(*)::bigint AS n FROM ledger
WHERE campaign_id = $1 AND state = 'failed' GROUP BY error_code ORDER BY n DESC, error_code
"""
_BY_LANGUAGE_SQL = """
SELECT language, count(*)::bigint AS audience, count(*) FILTER (WHERE state = 'failed')::bigint AS failed
FROM ledger WHERE campaign_id = $1 GROUP BY language ORDER BY audience DESC, language
"""


async def inbox_available(db: Database) -> bool:
    """Whether the inbox (inbound messages linked to campaigns) is installed in this database."""
    return bool(await db.fetchval(
        "SELECT to_regclass('inbox_messages') IS NOT NULL AND EXISTS (SELECT 1 FROM pg_attribute"
        " WHERE attrelid = to_regclass('inbox_messages') AND attname = 'campaign_id' AND NOT attisdropped)"))


def failure_title(code: int | None, recorded: str | None) -> str:
    """WhatsApp's title for a code (our table first: the API is dropping titles from answers)."""
    if code is not None and code in TITLES:
        return TITLES[code]
    return recorded or ("No error code" if code is None else "Unknown error")


async def full_report(db: Database, name: str) -> dict[str, Any]:
    """`campaign_report` plus the funnel, replies, latency, timeline and failures by language.

    JSON-ready: times are ISO 8601 UTC strings, latencies seconds (None when nothing was delivered).
    """
    campaign = await get_campaign(db, name)
    report = await campaign_report(db, name)
    cid = campaign.id
    funnel_row = await db.fetchrow(_FUNNEL_SQL, cid)
    assert funnel_row is not None
    funnel = {k: int(funnel_row[k]) for k in ("audience", "skipped", "accepted", "sent", "delivered", "read",
                                               "failed")}
    replied: int | None = None
    if await inbox_available(db):
        replied = int(await db.fetchval(
            "SELECT count(DISTINCT m.wa_id) FROM inbox_messages m JOIN ledger l"
            " ON l.campaign_id = m.campaign_id AND l.wa_id = m.wa_id WHERE m.campaign_id = $1", cid))
    funnel["replied"] = replied  # type: ignore[assignment]

    lat = await db.fetchrow(_LATENCY_SQL, cid)
    assert lat is not None
    p = list(lat["p"]) if lat["p"] is not None else [None, None, None]
    latency = {"n": int(lat["n"]), "p50": p[0], "p90": p[1], "p99": p[2], "max": lat["max"]}
    edges = [float(e) for e in LATENCY_EDGES_S]
    histogram = _histogram({r["bucket"]: int(r["n"]) for r in await db.fetch(_HISTOGRAM_SQL, cid, edges)})

    first, last = funnel_row["first_accepted_at"], funnel_row["last_send_at"]
    span_s = (last - first).total_seconds() if first and last else 0.0
    bucket_s = 60 if span_s <= TIMELINE_MINUTE_SPAN_S else 3600
    timeline = [{"t": _iso(r["t"]), "accepted": int(r["accepted"]), "failed": int(r["failed"])}
                for r in await db.fetch(_TIMELINE_SQL, cid, float(bucket_s))]

    failures = [{"code": r["error_code"], "title": failure_title(r["error_code"], r["title"]), "n": int(r["n"])}
                for r in await db.fetch(_FAILURES_SQL, cid)]
    by_language = [{"language": r["language"], "audience": int(r["audience"]), "failed": int(r["failed"])}
                   for r in await db.fetch(_BY_LANGUAGE_SQL, cid)]

    report.update({
        "timezone": await workspace_timezone(db, campaign.workspace),
        "created_at": _iso(campaign.created_at),
        "started_at": _iso(campaign.started_at),
        "finished_at": _iso(campaign.finished_at),
        "funnel": funnel,
        "replied": replied,
        "failures": failures,
        "failure_titles": {str(f["code"]): f["title"] for f in failures},
        "failures_by_language": {b["language"]: b["failed"] for b in by_language if b["failed"]},
        "audience_by_language": {b["language"]: b["audience"] for b in by_language},
        "latency_s": latency,
        "latency_histogram": histogram,
        "sends_timeline": {"bucket_s": bucket_s, "points": timeline},
    })
    return report


def _histogram(counts: dict[int, int]) -> list[dict[str, Any]]:
    """width_bucket indexes → labelled buckets: 0 is [0, 1 s), i is [edge[i-1], edge[i]), last open."""
    out = []
    lows = (0, *LATENCY_EDGES_S)
    for i, low in enumerate(lows):
        high = LATENCY_EDGES_S[i] if i < len(LATENCY_EDGES_S) else None
        if high is None:
            label = f"≥{_dur(low)}"
        elif low == 0:
            label = f"<{_dur(high)}"
        else:
            label = f"{_dur(low)}–{_dur(high)}" if _unit(low) != _unit(high) else f"{_num(low)}–{_dur(high)}"
        out.append({"from_s": low, "to_s": high, "label": label, "n": counts.get(i, 0)})
    return out


def _unit(seconds: float) -> str:
    return "h" if seconds >= 3600 and seconds % 3600 == 0 else "m" if seconds >= 60 and seconds % 60 == 0 else "s"


def _num(seconds: float) -> str:
    return f"{seconds / {'h': 3600, 'm': 60, 's': 1}[_unit(seconds)]:g}"


def _dur(seconds: float) -> str:
    """Compact: 1s, 30s, 2m, 1h."""
    return f"{_num(seconds)}{_unit(seconds)}"


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value is not None else None


# ----- CSV: one row per recipient

CSV_COLUMNS = ("ledger_id", "wa_id", "external_id", "language", "state", "skip_reason", "error_code", "error_title",
               "attempts", "unknown_resolution", "accepted_at", "sent_at", "delivered_at", "read_at", "failed_at",
               "delivery_latency_s", "replied")


async def write_csv(db: Database, name: str, path: str | Path, *, mask_numbers: bool = False) -> int:
    """Write every recipient's outcome to `path` (UTF-8, header row); returns the rows written.

    `mask_numbers` keeps only the last 4 digits of each WhatsApp number. `replied` is empty when
    the inbox is not installed. Rows are read in pages of CSV_PAGE, in ledger order.
    """
    campaign = await get_campaign(db, name)
    replied_sql = ("EXISTS (SELECT 1 FROM inbox_messages m WHERE m.campaign_id = l.campaign_id AND m.wa_id = l.wa_id)"
                   if await inbox_available(db) else "NULL::boolean")
    sql = f"""
        SELECT l.id, l.wa_id, c.external_id, l.language, l.state, l.skip_reason, l.error_code, l.error_title,
               l.attempts, l.unknown_resolution, l.accepted_at, l.sent_at, l.delivered_at, l.read_at, l.failed_at,
               CASE WHEN l.delivered_at IS NOT NULL AND l.accepted_at IS NOT NULL THEN {_LATENCY} END AS latency,
               {replied_sql} AS replied
        FROM ledger l JOIN contacts c ON c.id = l.contact_id
        WHERE l.campaign_id = $1 AND l.id > $2 ORDER BY l.id LIMIT $3"""
    written = 0
    after = 0
    async with await trio.open_file(path, "w", encoding="utf-8", newline="") as out:
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(CSV_COLUMNS)
        while True:
            rows = await db.fetch(sql, campaign.id, after, CSV_PAGE)
            for r in rows:
                title = failure_title(r["error_code"], r["error_title"]) if r["state"] == "failed" else r["error_title"]
                writer.writerow((
                    r["id"], mask_phone(r["wa_id"]) if mask_numbers else r["wa_id"], r["external_id"] or "",
                    r["language"], r["state"], r["skip_reason"] or "",
                    "" if r["error_code"] is None else r["error_code"], title or "", r["attempts"],
                    r["unknown_resolution"] or "",
                    *(_iso(r[k]) or "" for k in ("accepted_at", "sent_at", "delivered_at", "read_at", "failed_at")),
                    "" if r["latency"] is None else f"{r['latency']:.3f}",
                    "" if r["replied"] is None else ("yes" if r["replied"] else "no"),
                ))
            await out.write(buf.getvalue())
            buf.seek(0)
            buf.truncate()
            written += len(rows)
            if len(rows) < CSV_PAGE:
                break
            after = rows[-1]["id"]
    return written


# ----- HTML: one page, inline SVG, no external assets

async def write_html(report: dict[str, Any], path: str | Path) -> None:
    await trio.Path(path).write_text(render_html(report), encoding="utf-8")


_GREEN, _BLUE, _RED, _GREY, _AMBER = "#2e9e5b", "#3b6fd6", "#d64545", "#8a94a6", "#d99a22"
_FUNNEL_COLORS = {"audience": _GREY, "accepted": "#5b7fd6", "sent": _BLUE, "delivered": _GREEN,
                  "read": "#1f7a45", "replied": _AMBER}


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(n: float | int | None) -> str:
    if n is None:
        return "–"
    if isinstance(n, int) or float(n).is_integer():
        return f"{int(n):,}"
    return f"{n:,.2f}"


def _pct(part: int | None, whole: int) -> str:
    if part is None or whole <= 0:
        return ""
    return f"{100.0 * part / whole:.1f}%"


def _axis_max(value: float) -> float:
    """A round axis maximum ≥ value with four equal whole-number steps of 1, 2 or 5 × 10^k."""
    raw = max(value, 1.0) / 4
    exp = 10 ** math.floor(math.log10(raw))
    step = next(m * exp for m in (1, 2, 5, 10) if m * exp >= raw)
    return float(max(1, step) * 4)


def _empty_chart(title: str, message: str, width: int = 520, height: int = 160) -> str:
    return (f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-label="{_e(title)}">'
            f'<rect x="0.5" y="0.5" width="{width - 1}" height="{height - 1}" fill="#fafbfc" stroke="#e3e7ee"/>'
            f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" class="muted">{_e(message)}</text></svg>')


def svg_hbars(title: str, rows: Sequence[tuple[str, int, str, str]], *, width: int = 520,
              label_w: int = 190, chart_id: str = "") -> str:
    """Horizontal bars: (label, value, right-hand note, colour) per row; scaled to the largest."""
    if not rows or max(v for _, v, _, _ in rows) <= 0:
        return _empty_chart(title, "nothing to show yet", width)
    bar_h, gap, top = 24, 10, 8
    height = top + len(rows) * (bar_h + gap)
    vmax = max(v for _, v, _, _ in rows)
    room = width - label_w - 120
    parts = [f'<svg class="chart" id="{_e(chart_id)}" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="{_e(title)}">']
    for i, (label, value, note, color) in enumerate(rows):
        y = top + i * (bar_h + gap)
        w = 0 if value <= 0 else max(2.0, room * value / vmax)
        short = label if len(label) <= 30 else label[:29] + "…"
        parts.append(
            f'<g data-label="{_e(label)}" data-value="{value}">'
            f'<title>{_e(label)}: {_fmt(value)}</title>'
            f'<text x="{label_w - 8}" y="{y + bar_h * 0.7:.1f}" text-anchor="end">{_e(short)}</text>'
            f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="{bar_h}" rx="3" fill="{color}"/>'
            f'<text x="{label_w + w + 6:.1f}" y="{y + bar_h * 0.7:.1f}" class="num">{_fmt(value)}'
            f'{(" · " + _e(note)) if note else ""}</text></g>')
    parts.append("</svg>")
    return "".join(parts)


def svg_columns(title: str, labels: Sequence[str], series: Sequence[tuple[str, Sequence[int], str]], *,
                width: int = 520, height: int = 220, tick_every: int | None = None, stagger: bool = False,
                chart_id: str = "") -> str:
    """Stacked columns: `series` is (name, values, colour), one value per label; y axis with gridlines.
    `stagger` puts every other x label on a second line (many short buckets)."""
    n = len(labels)
    totals = [sum(s[1][i] for s in series) for i in range(n)]
    if n == 0 or max(totals) <= 0:
        return _empty_chart(title, "nothing to show yet", width, height)
    left, right, top, bottom = 48, 10, 10, 44 if stagger else 34
    plot_w, plot_h = width - left - right, height - top - bottom
    ymax = _axis_max(max(totals))
    step = plot_w / n
    bar_w = max(1.0, step * 0.8) if n > 1 else min(60.0, plot_w * 0.5)
    parts = [f'<svg class="chart" id="{_e(chart_id)}" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="{_e(title)}">']
    for k in range(5):  # gridlines and y labels
        v = ymax * k / 4
        y = top + plot_h - plot_h * k / 4
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
                     f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" class="axis">{_fmt(round(v, 2))}</text>')
    tick_every = tick_every or max(1, math.ceil(n / 8))
    for i in range(n):
        x = left + i * step + (step - bar_w) / 2
        base = top + plot_h
        for name, values, color in series:
            v = values[i]
            if v <= 0:
                continue
            h = plot_h * v / ymax
            base -= h
            parts.append(f'<rect x="{x:.2f}" y="{base:.2f}" width="{bar_w:.2f}" height="{h:.2f}" fill="{color}">'
                         f'<title>{_e(labels[i])} {_e(name)}: {_fmt(v)}</title></rect>')
        if i % tick_every == 0:
            y_label = height - bottom + 14 + (10 if stagger and i % 2 else 0)
            parts.append(f'<text x="{x + bar_w / 2:.1f}" y="{y_label}" text-anchor="middle" '
                         f'class="axis">{_e(labels[i])}</text>')
    parts.append(f'<line x1="{left}" x2="{width - right}" y1="{top + plot_h}" y2="{top + plot_h}" class="axisline"/>')
    legend_x = left
    for name, _values, color in series:
        parts.append(f'<rect x="{legend_x}" y="{height - 12}" width="10" height="10" fill="{color}"/>'
                     f'<text x="{legend_x + 14}" y="{height - 3}" class="axis">{_e(name)}</text>')
        legend_x += 14 + 8 * len(name) + 16
    parts.append("</svg>")
    return "".join(parts)


def _timeline_chart(report: dict[str, Any], tz: ZoneInfo) -> str:
    timeline = report["sends_timeline"]
    points = timeline["points"]
    bucket_s = int(timeline["bucket_s"])
    # at most ~180 columns: merge neighbouring buckets for long campaigns
    group = max(1, math.ceil(len(points) / 180))
    labels, accepted, failed = [], [], []
    for i in range(0, len(points), group):
        chunk = points[i:i + group]
        t = datetime.fromisoformat(chunk[0]["t"]).astimezone(tz)
        labels.append(t.strftime("%H:%M" if bucket_s < 3600 else "%d %b %H:%M"))
        accepted.append(sum(p["accepted"] for p in chunk))
        failed.append(sum(p["failed"] for p in chunk))
    return svg_columns("sends over time", labels, [("accepted", accepted, _GREEN), ("failed", failed, _RED)],
                       chart_id="chart-timeline")


def render_html(report: dict[str, Any]) -> str:
    """The whole report as one HTML document (inline CSS and SVG; the report JSON embedded)."""
    tz = ZoneInfo(report.get("timezone") or DEFAULT_TIMEZONE)
    funnel = report["funnel"]
    audience = funnel["audience"]
    lat = report["latency_s"]

    def local(iso: str | None) -> str:
        return datetime.fromisoformat(iso).astimezone(tz).strftime("%Y-%m-%d %H:%M %Z") if iso else "–"

    funnel_rows = [(stage, funnel[stage], _pct(funnel[stage], audience), _FUNNEL_COLORS[stage])
                   for stage in FUNNEL if funnel.get(stage) is not None]
    failure_rows = [(f"{f['code'] if f['code'] is not None else '—'} {f['title']}", f["n"],
                     _pct(f["n"], audience), _RED) for f in report["failures"]]
    lang_rows = [(lang, report["failures_by_language"].get(lang, 0),
                  f"of {_fmt(n)} · {_pct(report['failures_by_language'].get(lang, 0), n)}", _RED)
                 for lang, n in report["audience_by_language"].items()]
    hist = report["latency_histogram"]
    bucket_unit = "minute" if report["sends_timeline"]["bucket_s"] < 3600 else "hour"

    cards = "".join(
        f'<div class="card"><div class="k">{_e(label)}</div>'
        f'<div class="v" data-metric="{_e(key)}">{_fmt(value)}</div>'
        f'<div class="p">{_e(_pct(value, audience) if key != "audience" else "")}</div></div>'
        for key, label, value in (
            ("audience", "audience", audience), ("accepted", "accepted", funnel["accepted"]),
            ("delivered", "delivered", funnel["delivered"]), ("read", "read", funnel["read"]),
            ("replied", "replied", funnel["replied"]), ("failed", "failed", funnel["failed"]),
            ("skipped", "skipped", funnel["skipped"])))
    state_rows = "".join(
        f'<tr><td>{_e(s)}</td><td class="num" data-state="{_e(s)}">{_fmt(report[s])}</td></tr>'
        for s in ("pending", "claimed", "unknown", "accepted", "sent", "delivered", "read", "failed", "skipped"))
    failure_table = "".join(
        f'<tr><td class="num">{_e(f["code"] if f["code"] is not None else "—")}</td><td>{_e(f["title"])}</td>'
        f'<td class="num" data-failure-code="{_e(f["code"])}">{_fmt(f["n"])}</td></tr>' for f in report["failures"]
    ) or '<tr><td colspan="3" class="muted">no failures</td></tr>'
    skipped_table = "".join(
        f'<tr><td>{_e(reason)}</td><td class="num" data-skip-reason="{_e(reason)}">{_fmt(n)}</td></tr>'
        for reason, n in report["skipped_by_reason"].items()) or '<tr><td colspan="2" class="muted">none</td></tr>'
    latency_table = "".join(
        f'<tr><td>{k}</td><td class="num" data-latency="{k}">{_e(_seconds(lat[k]))}</td></tr>'
        for k in ("p50", "p90", "p99", "max"))
    data = orjson.dumps(report).decode().replace("</", "<\\/")
    paused = f" ({_e(report['pause_reason'])})" if report.get("pause_reason") else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Campaign report · {_e(report['campaign'])}</title>
<style>{_CSS}</style></head>
<body><main>
<header><h1>{_e(report['campaign'])}</h1>
<p class="meta">template <b>{_e(report['template'])}</b> · segment <b>{_e(report['segment'])}</b> ·
state <b data-metric="state">{_e(report['state'])}</b>{paused}
· started {_e(local(report.get('started_at')))} · finished {_e(local(report.get('finished_at')))}
· times in {_e(tz.key)}</p></header>
<section class="cards">{cards}</section>
<section class="grid">
<figure><figcaption>Funnel <span class="muted">(recipients who got at least this far)</span></figcaption>
{svg_hbars("funnel", funnel_rows, chart_id="chart-funnel")}</figure>
<figure><figcaption>Sends per {bucket_unit} <span class="muted">({_e(tz.key)})</span></figcaption>
{_timeline_chart(report, tz)}</figure>
<figure><figcaption>Delivery latency <span class="muted">(delivered − accepted, {_fmt(lat['n'])} messages)</span>
</figcaption>
{svg_columns("delivery latency", [h['label'] for h in hist], [("messages", [h['n'] for h in hist], _BLUE)],
             tick_every=1, stagger=True, chart_id="chart-latency")}</figure>
<figure><figcaption>Failures by code</figcaption>
{svg_hbars("failures by code", failure_rows, label_w=250, chart_id="chart-failures")}</figure>
<figure><figcaption>Failures by language</figcaption>
{svg_hbars("failures by language", lang_rows, label_w=80, chart_id="chart-languages")}</figure>
<figure><figcaption>Latency percentiles</figcaption>
<table><tbody>{latency_table}</tbody></table></figure>
</section>
<section class="grid tables">
<div><h2>Recipients by ledger state</h2><table><tbody>{state_rows}</tbody></table></div>
<div><h2>Failures</h2><table><thead><tr><th>code</th><th>WhatsApp title</th><th>recipients</th></tr></thead>
<tbody>{failure_table}</tbody></table>
<h2>Skipped</h2><table><tbody>{skipped_table}</tbody></table></div>
</section>
<footer class="muted">Generated {_e(datetime.now(tz).strftime('%Y-%m-%d %H:%M %Z'))} from the campaign ledger.</footer>
</main>
<script type="application/json" id="report-data">{data}</script>
</body></html>
"""


def _seconds(value: float | None) -> str:
    if value is None:
        return "–"
    if value < 60:
        return f"{value:.2f} s"
    return f"{value / 60:.1f} min"


_CSS = """
*{box-sizing:border-box}
body{margin:0;background:#f3f5f8;color:#1d2433;font:14px/1.45 -apple-system,"Segoe UI",Roboto,"Noto Sans",
"DejaVu Sans",Helvetica,Arial,sans-serif}
main{max-width:1140px;margin:0 auto;padding:24px}
h1{margin:0 0 4px;font-size:24px}h2{font-size:15px;margin:16px 0 8px}
.meta{margin:0;color:#4a5468}
.cards{display:grid;grid-template-columns:repeat(7,1fr);gap:10px;margin:18px 0}
.card{background:#fff;border:1px solid #e3e7ee;border-radius:8px;padding:10px 12px}
.card .k{color:#6b7588;font-size:12px;text-transform:uppercase;letter-spacing:.04em}
.card .v{font-size:22px;font-weight:600;font-variant-numeric:tabular-nums}
.card .p{color:#6b7588;font-size:12px;min-height:16px}
.grid{display:grid;grid-template-columns:1fr 1fr;gap:14px}
figure{margin:0;background:#fff;border:1px solid #e3e7ee;border-radius:8px;padding:12px}
figcaption{font-weight:600;margin-bottom:8px}
.chart{width:100%;height:auto;display:block}
.chart text{font-size:11px;fill:#1d2433}
.chart .num{fill:#4a5468}.chart .axis{fill:#6b7588;font-size:10px}
.chart .grid{stroke:#e9edf3;stroke-width:1}.chart .axisline{stroke:#9aa3b2}
.muted{color:#8a94a6;fill:#8a94a6;font-weight:400}
table{width:100%;border-collapse:collapse;background:#fff}
td,th{padding:5px 8px;border-bottom:1px solid #eef1f5;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.tables>div{background:#fff;border:1px solid #e3e7ee;border-radius:8px;padding:4px 12px 12px;margin-top:14px}
footer{margin-top:18px;font-size:12px}
"""


# ----- live view data (`campaign watch`, `campaign launch`)

RATE_WINDOW_S = 10.0  # "rate now" = recipients settled in this many seconds, per second


@dataclass(frozen=True)
class LiveSnapshot:
    """One refresh of the live view, from the ledger (3 queries)."""

    campaign: str
    state: str
    pause_reason: str | None
    audience: int
    by_state: dict[str, int]
    rate_now: float                         # accepted + failed per second over the last RATE_WINDOW_S
    top_errors: list[tuple[int | None, str, int]]

    @property
    def settled(self) -> int:
        return self.audience - sum(self.by_state.get(s, 0) for s in ("pending", "claimed", "unknown"))

    @property
    def eta_s(self) -> float | None:
        """Seconds left at the current rate (None when nothing is moving)."""
        left = self.audience - self.settled
        if left == 0:
            return 0.0
        return left / self.rate_now if self.rate_now > 0 else None


async def live_snapshot(db: Database, campaign_id: int, *, top: int = 3) -> LiveSnapshot:
    head = await db.fetchrow("SELECT name, state, pause_reason FROM campaigns WHERE id = $1", campaign_id)
    if head is None:
        raise NotFoundError(f"campaign id {campaign_id} does not exist")
    by_state = {r["state"]: int(r["n"]) for r in await db.fetch(
        "SELECT state, count(*)::bigint AS n FROM ledger WHERE campaign_id = $1 GROUP BY 1", campaign_id)}
    recent = await db.fetchval(
        "SELECT count(*) FROM ledger WHERE campaign_id = $1 AND state NOT IN ('pending', 'claimed', 'skipped')"
        " AND GREATEST(accepted_at, failed_at) > now() - make_interval(secs => $2)", campaign_id, RATE_WINDOW_S)
    errors = [(r["error_code"], failure_title(r["error_code"], r["title"]), int(r["n"]))
              for r in (await db.fetch(_FAILURES_SQL, campaign_id))[:top]]
    return LiveSnapshot(head["name"], head["state"], head["pause_reason"], sum(by_state.values()), by_state,
                        int(recent) / RATE_WINDOW_S, errors)
