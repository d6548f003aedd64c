"""templates.registry: the Graph message_templates list → Template records, and back."""

from __future__ import annotations

import copy
import json
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from templates import Slot, Template, TemplateFormatError, load_message_templates, parse_message_templates


def _shared_templates_path() -> Path:
    """shared/ sits beside the repository (the dev tree and CI's fresh clone alike)."""
    repo = Path(__file__).resolve().parents[2]
    for candidate in (repo.parent / "shared", Path("/work/shared")):
        path = candidate / "data" / "message_templates.json"
        if path.is_file():
            return path
    raise FileNotFoundError(f"shared/data/message_templates.json not found beside {repo}")


SHARED = _shared_templates_path()
RAW: dict[str, Any] = json.loads(SHARED.read_text(encoding="utf-8"))


def _entry(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "t",
        "language": "en",
        "status": "APPROVED",
        "category": "UTILITY",
        "components": [{"type": "BODY", "text": "Hi {{1}}"}],
    }
    base.update(overrides)
    return base


def _error(entry: dict[str, Any]) -> str:
    with pytest.raises(TemplateFormatError) as info:
        parse_message_templates([entry], source="t.json")
    return str(info.value)


# ---------------------------------------------------------------------------------------------
# the 20 shared templates


def test_parses_all_twenty_shared_templates_with_their_statuses() -> None:
    templates = load_message_templates(SHARED)
    assert len(templates) == 20
    assert Counter(t.status for t in templates) == {
        "APPROVED": 16,
        "PAUSED": 1,
        "DISABLED": 1,
        "PENDING": 1,
        "REJECTED": 1,
    }
    assert Counter(t.parameter_format for t in templates) == {"POSITIONAL": 17, "NAMED": 3}
    assert {t.name for t in templates if t.parameter_format == "NAMED"} == {"creator_tips_update"}
    assert Counter(t.name for t in templates)["daily_campaign_invite"] == 11
    assert all(t.template_id and t.template_id.startswith("9000000000000") for t in templates)


def test_shared_template_slots_follow_payload_order() -> None:
    by_key = {t.key: t for t in load_message_templates(SHARED)}
    invite = by_key[("daily_campaign_invite", "hi")]
    assert invite.header_format == "TEXT"
    assert invite.slots == (
        Slot("body", "1"),
        Slot("body", "2"),
        Slot("body", "3"),
        Slot("body", "4"),
        Slot("button", "1", 0, "url"),
        Slot("button", "payload", 1, "quick_reply"),
    )
    assert [s.label for s in by_key[("reactivation_nudge", "en")].slots] == [
        "header.media",
        "body.1",
        "body.2",
    ]
    assert by_key[("reactivation_nudge", "en")].header_format == "IMAGE"
    tips = by_key[("creator_tips_update", "ta")]
    assert [s.key for s in tips.slots] == ["first_name", "tip_link"]
    assert tips.header_format is None and tips.header_text is None


def test_indic_text_survives_parsing_intact() -> None:
    by_key = {t.key: t for t in load_message_templates(SHARED)}
    raw_by_key = {(e["name"], e["language"]): e for e in RAW["data"]}
    for key, template in by_key.items():
        body = next(c for c in raw_by_key[key]["components"] if c["type"] == "BODY")
        assert template.body_text == body["text"]
    hi = by_key[("daily_campaign_invite", "hi")]
    assert hi.header_text == "आज का कैंपेन"
    assert hi.body_text.startswith("नमस्ते {{1}}! आज {{2}} में")
    assert by_key[("daily_campaign_invite", "ta")].header_text == "இன்றைய கேம்பெயின்"
    assert "₹{{2}}" in by_key[("weekly_earnings", "hi")].body_text


def test_to_graph_round_trips_every_shared_template() -> None:
    templates = parse_message_templates(SHARED.read_bytes(), source=SHARED.name)
    assert [t.to_graph() for t in templates] == RAW["data"]
    again = parse_message_templates({"data": [t.to_graph() for t in templates]})
    assert again == templates
    paused = next(t for t in again if t.status == "PAUSED")
    assert paused.extra == {"quality_score": {"score": "RED"}}


def test_to_graph_returns_a_copy() -> None:
    template = Template.from_graph(_entry())
    out = template.to_graph()
    out["components"][0]["text"] = "changed"
    assert template.to_graph()["components"][0]["text"] == "Hi {{1}}"


def test_accepts_bare_list_json_text_and_bytes() -> None:
    entries = [_entry()]
    for doc in (entries, {"data": entries}, json.dumps(entries), orjson.dumps({"data": entries})):
        assert [t.key for t in parse_message_templates(doc)] == [("t", "en")]


def test_format_inferred_when_parameter_format_is_absent() -> None:
    named = Template.from_graph(_entry(components=[{"type": "BODY", "text": "Hi {{first_name}}"}]))
    assert named.parameter_format == "NAMED"
    assert Template.from_graph(_entry()).parameter_format == "POSITIONAL"


def test_repeated_and_out_of_order_positional_placeholders() -> None:
    t = Template.from_graph(_entry(components=[{"type": "BODY", "text": "{{2}} then {{1}}, again {{2}}"}]))
    assert [s.key for s in t.slots] == ["1", "2"]


def test_unsupported_parts_are_listed_not_refused() -> None:
    t = Template.from_graph(
        _entry(
            components=[
                {"type": "HEADER", "format": "LOCATION"},
                {"type": "BODY", "text": "Hi {{1}}"},
                {"type": "CAROUSEL", "cards": []},
            ]
        )
    )
    assert t.unsupported == ("LOCATION header", "component CAROUSEL")


# ---------------------------------------------------------------------------------------------
# errors name source, entry, template and field


def test_error_names_source_entry_template_and_field() -> None:
    doc = copy.deepcopy(RAW)
    doc["data"][3]["components"][1]["text"] = 42
    with pytest.raises(
        TemplateFormatError,
        match=r"^message_templates\.json entry 3 \('daily_campaign_invite'/'bn'\), "
        r"field components\[1\]\.text: expected a string, got int$",
    ) as info:
        parse_message_templates(doc, source="message_templates.json")
    assert (info.value.index, info.value.field) == (3, "components[1].text")


def test_mixed_positional_and_named_placeholders_are_refused() -> None:
    entry = _entry(
        parameter_format="POSITIONAL",
        components=[
            {"type": "HEADER", "format": "TEXT", "text": "For {{first_name}}"},
            {"type": "BODY", "text": "Hi {{1}}"},
        ],
    )
    assert _error(entry) == (
        "t.json entry 0 ('t'/'en'), field components[1].text: mixes positional {{1}} and named "
        "{{first_name}} placeholders; a template uses one format only"
    )


def test_mixed_within_the_body_is_refused() -> None:
    msg = _error(_entry(components=[{"type": "BODY", "text": "Hi {{name}}, order {{2}}"}]))
    assert msg.endswith(
        "field components[0].text: mixes positional {{2}} and named {{name}} "
        "placeholders; a template uses one format only"
    )


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"name": None}, r"field name: expected a string, got null$"),
        ({"name": "Diwali Promo"}, r"field name: 'Diwali Promo' is not a template name"),
        ({"language": "en-US"}, r"field language: 'en-US' is not a language code \(codes use '_', not '-'\)$"),
        ({"status": ""}, r"field status: empty status$"),
        ({"parameter_format": "mixed"}, r"field parameter_format: expected 'POSITIONAL' or 'NAMED'"),
        ({"components": []}, r"field components: expected a non-empty list, got a list$"),
        ({"components": [{"type": "FOOTER", "text": "x"}]}, r"field components: no BODY component"),
        (
            {"components": [{"type": "BODY", "text": "Hi {{1}} {{3}}"}]},
            r"field components\[0\]\.text: placeholders must be numbered \{\{1\}\}…\{\{n\}\} without "
            r"gaps: \{\{2\}\} is missing$",
        ),
        (
            {"components": [{"type": "BODY", "text": "Hi {{First Name}}"}]},
            r"field components\[0\]\.text: invalid placeholder '\{\{First Name\}\}'",
        ),
        (
            {"parameter_format": "NAMED"},
            r"field components\[0\]\.text: parameter_format is NAMED but the text uses positional "
            r"placeholder \{\{1\}\}$",
        ),
        (
            {"components": [{"type": "HEADER", "format": "GIF"}, {"type": "BODY", "text": "x"}]},
            r"field components\[0\]\.format: expected one of DOCUMENT, IMAGE, LOCATION, TEXT, VIDEO",
        ),
        (
            {
                "components": [
                    {"type": "HEADER", "format": "TEXT", "text": "{{1}} {{2}}"},
                    {"type": "BODY", "text": "x"},
                ]
            },
            r"field components\[0\]\.text: a text header allows at most one placeholder$",
        ),
        (
            {"components": [{"type": "BODY", "text": "x"}, {"type": "BODY", "text": "y"}]},
            r"field components\[1\]\.type: second BODY component \(first at components\[0\]\)$",
        ),
        (
            {"components": [{"type": "BODY", "text": "x"}, {"type": "FOOTER", "text": "{{1}}"}]},
            r"field components\[1\]\.text: a footer cannot have placeholders$",
        ),
        (
            {
                "components": [
                    {"type": "BODY", "text": "x"},
                    {"type": "BUTTONS", "buttons": [{"type": "URL", "url": "https://x/{{1}}/y"}]},
                ]
            },
            r"field components\[1\]\.buttons\[0\]\.url: the URL placeholder must be at the end$",
        ),
    ],
)
def test_field_errors(overrides: dict[str, Any], expected: str) -> None:
    assert _error(_entry(**overrides)).startswith("t.json entry 0 (")
    with pytest.raises(TemplateFormatError, match=r"^t\.json entry 0 \(.*?\), " + expected):
        parse_message_templates([_entry(**overrides)], source="t.json")


def test_duplicate_name_language_pair_is_refused() -> None:
    with pytest.raises(
        TemplateFormatError,
        match=r"^t\.json entry 1 \('t'/'en'\), field language: duplicate of entry 0: "
        r"\(name, language\) must be unique$",
    ):
        parse_message_templates([_entry(), _entry()], source="t.json")


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        (b"{not json", r"^x\.json: not valid JSON: "),
        ({"paging": {}}, r"^x\.json: expected a 'data' list"),
        ({"data": {}}, r"^x\.json, field data: expected a list, got an object$"),
        (42, r"^x\.json: expected an object with 'data' or a list, got int$"),
        ([7], r"^x\.json entry 0 \(\?/\?\), field \(entry\): expected an object, got int$"),
    ],
)
def test_document_errors(doc: Any, expected: str) -> None:
    with pytest.raises(TemplateFormatError, match=expected):
        parse_message_templates(doc, source="x.json")


def test_unreadable_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    with pytest.raises(TemplateFormatError, match=r"^.*nope\.json: cannot read: "):
        load_message_templates(missing)


# ---------------------------------------------------------------------------------------------
# property: mutated documents fail only with TemplateFormatError

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
_placeholder_text = st.lists(
    st.sampled_from(["Hi ", "{{1}}", "{{2}}", "{{x}}", "{{", "}}", "{{Bad}}", " ", "नमस्ते", "{{3}}"]),
    max_size=6,
).map("".join)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


@st.composite
def _mutated_docs(draw: st.DrawFn) -> Any:
    doc = copy.deepcopy(RAW)
    doc["data"] = draw(st.lists(st.sampled_from(doc["data"]), min_size=1, max_size=3, unique_by=id))
    doc = copy.deepcopy(doc)
    for _ in range(draw(st.integers(1, 4))):
        paths = _paths(doc)[1:]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = doc
        for step in path[:-1]:
            parent = parent[step]
        action = draw(st.sampled_from(["replace", "delete", "text"]))
        if action == "delete":
            del parent[path[-1]]
        elif action == "text":
            parent[path[-1]] = draw(_placeholder_text)
        else:
            parent[path[-1]] = draw(_json)
    return doc


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_mutated_docs())
def test_mutated_documents_fail_only_with_template_format_error(doc: Any) -> None:
    try:
        templates = parse_message_templates(doc, source="m.json")
    except TemplateFormatError as exc:
        assert str(exc).startswith("m.json")
        return
    for t in templates:
        assert Template.from_graph(t.to_graph()) == t


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64) | st.text(max_size=64))
def test_arbitrary_bytes_fail_only_with_template_format_error(raw: bytes | str) -> None:
    try:
        parse_message_templates(raw, source="r.json")
    except TemplateFormatError:
        pass
