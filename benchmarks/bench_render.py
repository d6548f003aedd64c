"""µs per CompiledCampaign.render (and + build_message) over the shared 5k contacts.

Run: .venv/bin/python benchmarks/bench_render.py [path/to/shared]
Target (docs/architecture: 1,000 msg/s per number in one process): well under 50 µs per render.
"""

from __future__ import annotations

import csv
import sys
import timeit
from pathlib import Path
from typing import Any

from templates import Rendered, build_message, compile_campaign, load_message_templates


def _shared() -> Path:
    if len(sys.argv) > 1:
        return Path(sys.argv[1])
    return Path(__file__).resolve().parents[1].parent / "shared"


def main() -> None:
    shared = _shared()
    registry: dict[str, dict[str, Any]] = {}
    for t in load_message_templates(shared / "data" / "message_templates.json"):
        registry.setdefault(t.name, {})[t.language] = t
    with (shared / "data" / "contacts_5k.csv").open(encoding="utf-8") as fh:
        contacts = list(csv.DictReader(fh))

    cases = {
        "positional, 4 body + URL button": compile_campaign(
            registry["daily_campaign_invite"],
            {
                "1": "contact.first_name",
                "2": "contact.genre_label",
                "3": "#MonsoonMasti",
                "4": "9 PM",
                "button.0": "contact.external_id",
                "button.1": "stop",
            },
            default_language="hi",
        ),
        "named, 2 body": compile_campaign(
            registry["creator_tips_update"],
            {"first_name": "contact.name", "tip_link": "https://creators.example.in/handbook/views"},
            default_language="hi",
        ),
        "image header + 2 body": compile_campaign(
            registry["reactivation_nudge"],
            {"header.link": "https://cdn.example.com/p.jpg", "1": "contact.name", "2": "contact.followers"},
            default_language="hi",
        ),
    }
    print(f"{'case':36} {'render µs':>10} {'build_message µs':>19} {'choose_language µs':>19}")
    for label, campaign in cases.items():
        work = [(c, campaign.choose_language(c["language"])) for c in contacts]
        rendered = [campaign.render(c, lang) for c, lang in work]
        ready = [
            (c["phone"], r.template)
            for c, r in zip(contacts, rendered, strict=True)
            if isinstance(r, Rendered) and 6 <= sum(ch.isdigit() for ch in c["phone"]) <= 15
        ]  # the raw CSV has some unusable phones; segments rejects those at import

        def render_all(work: list[Any] = work, campaign: Any = campaign) -> None:
            for contact, lang in work:
                campaign.render(contact, lang)

        def build_all(ready: list[Any] = ready) -> None:
            for phone, obj in ready:
                build_message(phone, obj, "c1:r1")

        def choose_all(work: list[Any] = work, campaign: Any = campaign) -> None:
            for contact, _ in work:
                campaign.choose_language(contact["language"])

        results = []
        for fn, n in ((render_all, len(work)), (build_all, len(ready)), (choose_all, len(work))):
            best = min(timeit.repeat(fn, number=1, repeat=5))
            results.append(best / n * 1e6)
        print(f"{label:36} {results[0]:>10.2f} {results[1]:>19.2f} {results[2]:>19.2f}")


if __name__ == "__main__":
    main()
