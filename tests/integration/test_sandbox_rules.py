"""The sandbox's pure parts, no sockets: send rules, limits, fault draws, webhook shapes, config.

(Kept beside the sandbox's socket tests; nothing here touches the network.)
"""

from __future__ import annotations

import hashlib
import hmac
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broadcaster.errors import ConfigError
from broadcaster.sandbox import SandboxConfig
from broadcaster.sandbox.faults import FaultPlan
from broadcaster.sandbox.graph import GraphError, WamidFactory, error_body
from broadcaster.sandbox.rules import check_send, index_templates, normalise_to, placeholders
from broadcaster.sandbox.state import SandboxState
from broadcaster.sandbox.webhooks import sign, status_plan


def template_send(name: str, lang: str, components: list[dict[str, Any]]) -> dict[str, Any]:
    return {"messaging_product": "whatsapp", "to": "+919876543210", "type": "template",
            "template": {"name": name, "language": {"code": lang}, "components": components}}


def body(*texts: str) -> dict[str, Any]:
    return {"type": "body", "parameters": [{"type": "text", "text": t} for t in texts]}


def code_of(payload: Any, specs: Any = None) -> int | None:
    try:
        check_send(payload, specs)
    except GraphError as err:
        return err.code
    return None


SPECS = index_templates([
    {"name": "solo", "language": "en", "status": "APPROVED", "category": "UTILITY",
     "components": [{"type": "BODY", "text": "Hi {{1}}, code {{2}} ({{1}})"}]},
    {"name": "framed", "language": "en", "status": "APPROVED",
     "components": [{"type": "HEADER", "format": "TEXT", "text": "Hello {{1}}"},
                    {"type": "BODY", "text": "Body {{1}}"},
                    {"type": "FOOTER", "text": "f"}]},
    {"name": "gone", "language": "en", "status": "DISABLED",
     "components": [{"type": "BODY", "text": "x"}]},
])


def test_placeholders_are_distinct_in_order_of_appearance() -> None:
    assert placeholders("Hi {{2}} {{ 1 }} {{2}} {{first_name}}") == ("2", "1", "first_name")
    assert placeholders("no slots") == ()


@given(digits=st.from_regex(r"[1-9][0-9]{7,14}", fullmatch=True), plus=st.booleans(),
       seps=st.lists(st.sampled_from([" ", "-", "(", ")", "."]), max_size=4))
def test_normalise_to_keeps_only_the_digits(digits: str, plus: bool, seps: list[str]) -> None:
    decorated = digits
    for i, sep in enumerate(seps):
        cut = 1 + (i * 3) % (len(decorated) - 1)
        decorated = decorated[:cut] + sep + decorated[cut:]
    assert normalise_to(("+" if plus else "") + decorated) == digits


@pytest.mark.parametrize("bad", ["1234567", "1234567890123456", "+0123456789", "91abc45678",
                                 "+", 919876543210, "٩١٩٨٧٦٥٤٣٢١٠"])
def test_normalise_to_rejects_non_numbers_with_131009(bad: object) -> None:
    with pytest.raises(GraphError) as info:
        normalise_to(bad)
    assert info.value.code == 131009


@settings(max_examples=100)
@given(prefix=st.text(max_size=5), bad=st.sampled_from(["\n", "\t", "     ", "a\r\nb"]),
       suffix=st.text(max_size=5))
def test_param_text_with_newline_tab_or_five_spaces_is_132018(prefix: str, bad: str,
                                                              suffix: str) -> None:
    payload = template_send("solo", "en", [body(prefix + bad + suffix or "x", "2")])
    assert code_of(payload) == 132018
    assert code_of(payload, SPECS) == 132018


def test_four_spaces_are_fine() -> None:
    assert code_of(template_send("solo", "en", [body("a    b", "2")]), SPECS) is None


@pytest.mark.parametrize(("components", "code"), [
    ([body("a", "b")], None),
    ([body("a")], 132000),
    ([body("a", "b", "c")], 132000),
    ([body("a", "")], 131008),
    ([body("a", "b" * 1100)], None),  # body-only: 32,768 allowed
    ([body("a", "b" * 33000)], 132005),
    ([{"type": "footer", "parameters": []}], 100),
    ([{"type": "body", "parameters": [{"type": "text", "text": "a"}, {"type": "hologram"}]}],
     100),
])
def test_body_only_template_rules(components: list[dict[str, Any]], code: int | None) -> None:
    assert code_of(template_send("solo", "en", components), SPECS) == code


@pytest.mark.parametrize(("components", "code"), [
    ([{"type": "header", "parameters": [{"type": "text", "text": "Ravi"}]}, body("x")], None),
    ([body("x")], 132000),  # header slot not filled
    ([{"type": "header", "parameters": [{"type": "text", "text": "R" * 60}]}, body("x")], 132005),
    ([{"type": "header", "parameters": [{"type": "text", "text": "Ravi"}]}, body("x" * 1020)],
     132005),  # hydrated body over 1,024 with other components
])
def test_header_and_hydrated_length_rules(components: list[dict[str, Any]],
                                          code: int | None) -> None:
    assert code_of(template_send("framed", "en", components), SPECS) == code


def test_disabled_template_is_132016_and_unknown_language_132001() -> None:
    assert code_of(template_send("gone", "en", []), SPECS) == 132016
    assert code_of(template_send("solo", "hi", [body("a", "b")]), SPECS) == 132001


def test_without_templates_only_the_shape_is_checked() -> None:
    assert code_of(template_send("anything", "xx", [body("a")])) is None
    assert code_of(template_send("anything", "xx", [])) is None


def test_status_override_wins() -> None:
    with pytest.raises(GraphError) as info:
        check_send(template_send("solo", "en", [body("a", "b")]), SPECS, {"solo/en": "PAUSED"})
    assert info.value.code == 132015


def test_index_templates_names_the_broken_entry() -> None:
    with pytest.raises(ConfigError, match=r"^templates\[1\]: field name is missing$"):
        index_templates([{"name": "a", "language": "en"}, {"language": "en"}])


# --------------------------------------------------------------------------- limits and faults


@settings(max_examples=200)
@given(gaps=st.lists(st.floats(0, 0.4), min_size=1, max_size=200), mps=st.integers(1, 10))
def test_mps_window_never_admits_more_than_mps_per_second(gaps: list[float], mps: int) -> None:
    state = SandboxState()
    now = 1_000_000.0
    accepted: list[float] = []
    for gap in gaps:
        now += gap
        if state.over_mps("n", now, mps):
            per = sum(1 for t in accepted if int(t) == int(now))
            assert per == mps, "rejected while the window had room"
            continue
        state.record_accept("n", "91" + str(len(accepted)), {}, now, track_pair=False)
        accepted.append(now)
    per_second: dict[int, int] = {}
    for t in accepted:
        per_second[int(t)] = per_second.get(int(t), 0) + 1
    assert max(per_second.values()) == state.max_per_second["n"] <= mps
    # the strict measure: the most accepts in any 1-s interval (t-1, t], counted the slow way
    sliding = max(sum(1 for u in accepted if t - 1.0 < u <= t) for t in accepted)
    assert state.max_in_any_second["n"] == sliding
    assert [[s, n] for s, n in sorted(per_second.items())] == state.stats()["per_second"]


def test_pair_spacing_is_per_recipient() -> None:
    state = SandboxState()
    state.record_accept("n", "a", {}, 100.0, track_pair=True)
    assert state.pair_too_soon("n", "a", 105.9, 6.0)
    assert not state.pair_too_soon("n", "a", 106.0, 6.0)
    assert not state.pair_too_soon("n", "b", 100.0, 6.0)
    assert not state.pair_too_soon("n", "a", 100.0, 0.0)


def test_fault_draws_repeat_under_a_seed() -> None:
    plan = FaultPlan.from_json({"error_rate": {"131000": 0.1, "131016": 0.2},
                                "reset_rate": 0.1, "timeout_rate": 0.1})
    draws = [[(plan.pick_error(rng), plan.pick_delivery(rng)) for _ in range(2000)]
             for rng in (random.Random(5), random.Random(5))]
    assert draws[0] == draws[1]
    errors = [e for e, _ in draws[0]]
    assert 150 <= errors.count(131000) <= 250 and 320 <= errors.count(131016) <= 480
    assert 150 <= [d for _, d in draws[0]].count("reset") <= 250


def test_throttle_next_counts_down() -> None:
    plan = FaultPlan.from_json({"throttle_next": 2, "retry_after_s": 0.2})
    assert [plan.take_throttle() for _ in range(3)] == [True, True, False]
    assert plan.retry_after_header == {"retry-after": "1"}


# --------------------------------------------------------------------------- wire shapes


def test_error_body_matches_the_doc_example() -> None:
    error = error_body(130429)["error"]
    assert {k: v for k, v in error.items() if k != "fbtrace_id"} == {
        "message": "(#130429) Rate limit hit", "type": "OAuthException", "code": 130429,
        "error_data": {"messaging_product": "whatsapp",
                       "details": "Cloud API message throughput has been reached."},
        "error_subcode": 2494055}
    assert "error_subcode" not in error_body(100)["error"]


def test_wamids_are_unique_across_factories() -> None:
    a, b = WamidFactory(), WamidFactory()
    ids = {a() for _ in range(1000)} | {b() for _ in range(1000)}
    assert len(ids) == 2000 and all(i.startswith("wamid.") for i in ids)


def test_status_plan_stages_and_failure() -> None:
    plan = status_plan("wamid.X", "919800000001", 1750030073.7, 2.0, callback_data="c:1",
                       category="marketing", fail_code=None, read=True)
    assert [(offset, ev["status"], ev["timestamp"]) for offset, ev in plan] == [
        (2.0, "sent", "1750030075"), (4.0, "delivered", "1750030077"),
        (6.0, "read", "1750030079")]
    assert all(ev["biz_opaque_callback_data"] == "c:1" for _, ev in plan)
    [(_, failed)] = status_plan("wamid.X", "9198", 0.0, 0.0, callback_data=None,
                                category="utility", fail_code=131026, read=True)
    assert failed["status"] == "failed" and failed["errors"][0]["code"] == 131026
    assert "biz_opaque_callback_data" not in failed and "pricing" not in failed


@given(body_bytes=st.binary(max_size=200))
def test_signature_is_hex_hmac_sha256_of_the_raw_body(body_bytes: bytes) -> None:
    expected = hmac.new(b"secret", body_bytes, hashlib.sha256).hexdigest()
    assert sign(body_bytes, "secret") == f"sha256={expected}"


@pytest.mark.parametrize(("field", "value", "message"), [
    ("read_rate", 1.5, r"^sandbox config field read_rate: 1.5 is not a probability"),
    ("mps", -1, r"^sandbox config field mps: -1 is negative$"),
    ("webhook_url", "ftp://x", r"^sandbox config field webhook_url: 'ftp://x' is not"),
    ("webhook_batch_size", 0, r"^sandbox config field webhook_batch_size: must be at least 1"),
])
def test_config_errors_name_the_field(field: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SandboxConfig(**{field: value})
