"""templates.render: pre-send checks, language choice, per-contact payloads, value cleaning."""

from __future__ import annotations

import csv
import json
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from templates import (
    DEFAULT_LANGUAGE_FALLBACK,
    CompiledCampaign,
    PreflightError,
    Rendered,
    Skip,
    Template,
    build_message,
    clean_text,
    compile_campaign,
    load_message_templates,
)
from templates.render import _CLEAN_RE


def _shared(name: str) -> Path:
    """shared/ sits beside the repository (the dev tree and CI's fresh clone alike)."""
    repo = Path(__file__).resolve().parents[2]
    for candidate in (repo.parent / "shared", Path("/work/shared")):
        if (candidate / "data" / name).is_file():
            return candidate / "data" / name
    raise FileNotFoundError(f"shared/data/{name} not found beside {repo}")


REGISTRY: dict[str, dict[str, Template]] = {}
for _t in load_message_templates(_shared("message_templates.json")):
    REGISTRY.setdefault(_t.name, {})[_t.language] = _t

INVITE_VARS = {
    "1": "contact.first_name",
    "2": "contact.genre_label",
    "3": "#MonsoonMasti",
    "4": "9 PM",
    "button.0": "monsoon-masti",
}


def _template(components: list[dict[str, Any]], *, name: str = "t", language: str = "en", **kw: Any) -> Template:
    return Template.from_graph(
        {"name": name, "language": language, "status": "APPROVED", "components": components, **kw}
    )


def _problems(variants: dict[str, Template], variables: dict[str, str], default: str) -> list[str]:
    with pytest.raises(PreflightError) as info:
        compile_campaign(variants, variables, default_language=default)
    return info.value.problems


# ---------------------------------------------------------------------------------------------
# clean_text


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("Asha      Rao", "Asha Rao"),
        ("Sale starts Monday.\n\nBring a friend.\t!", "Sale starts Monday. Bring a friend. !"),
        ("  padded  ", "padded"),
        ("four    spaces stay", "four    spaces stay"),
        ("line\r\nbreak", "line break"),
        ("tab \t and spaces", "tab and spaces"),
        ("नमस्ते\nदुनिया", "नमस्ते दुनिया"),
        ("\n\t ", ""),
    ],
)
def test_clean_text_examples(raw: str, clean: str) -> None:
    assert clean_text(raw) == clean


@settings(max_examples=500)
@given(st.text(alphabet=st.sampled_from(" \t\n\r\x0b\x0c\u2028\u00a0ab\u0928\u200d"), max_size=40) | st.text())
def test_clean_text_leaves_no_newline_tab_or_five_spaces_and_is_idempotent(raw: str) -> None:
    out = clean_text(raw)
    assert "\n" not in out and "\t" not in out and "\r" not in out
    assert "     " not in out
    assert out == out.strip()
    assert clean_text(out) == out
    assert out == _CLEAN_RE.sub(" ", raw).strip()  # the fast path changes nothing


# ---------------------------------------------------------------------------------------------
# pre-send checks: status


@pytest.mark.parametrize(
    ("name", "language", "variables", "expected"),
    [
        (
            "weekly_earnings",
            "hi",
            {"1": "contact.name", "2": "contact.earnings"},
            "template 'weekly_earnings'/'hi' is PAUSED: run `broadcaster templates sync` or pick another",
        ),
        (
            "old_contest_promo",
            "en",
            {"1": "Holi"},
            "template 'old_contest_promo'/'en' is DISABLED (paused too often, it will not come back): "
            "pick another template",
        ),
        (
            "diwali_special",
            "hi",
            {"1": "contact.name"},
            "template 'diwali_special'/'hi' is PENDING (in review, up to 24 h): wait, run "
            "`broadcaster templates sync` or pick another",
        ),
        (
            "verification_code",
            "en",
            {"1": "123456"},
            "template 'verification_code'/'en' is REJECTED (INVALID_FORMAT): fix and resubmit it in "
            "WhatsApp Manager, or pick another",
        ),
        (
            "creator_tips_update",
            "bn",
            {"first_name": "contact.first_name", "tip_link": "https://creators.example.in/h"},
            "template 'creator_tips_update' has no 'bn' variant (the default language; have en, hi, ta): "
            "run `broadcaster templates sync` or pick a default from those",
        ),
    ],
)
def test_status_refusals(name: str, language: str, variables: dict[str, str], expected: str) -> None:
    assert _problems(REGISTRY[name], variables, language) == [expected]


def test_preflight_message_lists_problems() -> None:
    with pytest.raises(
        PreflightError,
        match=r"^1 problem before sending:\n- template 'weekly_earnings'/'hi' is PAUSED: run ",
    ):
        compile_campaign(REGISTRY["weekly_earnings"], {"1": "a", "2": "b"}, default_language="hi")


def test_non_approved_other_language_is_a_warning_and_falls_back() -> None:
    variants = dict(REGISTRY["daily_campaign_invite"])
    variants["ta"] = replace(variants["ta"], status="PAUSED")
    campaign = compile_campaign(variants, INVITE_VARS, default_language="hi")
    assert campaign.warnings == (
        "template 'daily_campaign_invite'/'ta' is PAUSED: run `broadcaster templates sync` or pick "
        "another (contacts in 'ta' get a fallback language)",
    )
    assert "ta" not in campaign.languages and len(campaign.languages) == 10
    assert campaign.choose_language("ta") == "hi"


def test_every_problem_is_reported_at_once() -> None:
    problems = _problems(REGISTRY["weekly_earnings"], {"1": "contact.name", "3": "x"}, "hi")
    assert problems == [
        "template 'weekly_earnings'/'hi' is PAUSED: run `broadcaster templates sync` or pick another",
        "template 'weekly_earnings'/'hi' body placeholder {{2}} has no value: add variable "
        "`2=contact.<field>` or a constant",
        "variable `3` matches no placeholder in template 'weekly_earnings' (hi): remove it; the template takes 1, 2",
    ]


# ---------------------------------------------------------------------------------------------
# pre-send checks: slots


def test_too_few_variables() -> None:
    variables = {k: v for k, v in INVITE_VARS.items() if k != "4"}
    assert _problems(REGISTRY["daily_campaign_invite"], variables, "hi") == [
        "template 'daily_campaign_invite' in 11 languages (bn, en, gu, hi, kn, ml, mr, pa, ta, te, ur) "
        "body placeholder {{4}} has no value: add variable `4=contact.<field>` or a constant"
    ]


def test_too_many_variables() -> None:
    variables = {**INVITE_VARS, "5": "contact.city"}
    assert _problems(REGISTRY["daily_campaign_invite"], variables, "hi") == [
        "variable `5` matches no placeholder in template 'daily_campaign_invite' (bn, en, gu, hi, kn, "
        "ml, mr, pa, ta, te, ur): remove it; the template takes 1, 2, 3, 4, button.0, button.1 (optional)"
    ]


def test_positional_keys_for_a_named_template_fail_both_ways() -> None:
    problems = _problems(REGISTRY["creator_tips_update"], {"1": "contact.name", "2": "x"}, "hi")
    assert problems == [
        "template 'creator_tips_update' in 3 languages (en, hi, ta) body placeholder {{first_name}} has "
        "no value: add variable `first_name=contact.<field>` or a constant",
        "template 'creator_tips_update' in 3 languages (en, hi, ta) body placeholder {{tip_link}} has "
        "no value: add variable `tip_link=contact.<field>` or a constant",
        "variable `1` matches no placeholder in template 'creator_tips_update' (en, hi, ta): remove it; "
        "the template takes first_name, tip_link",
        "variable `2` matches no placeholder in template 'creator_tips_update' (en, hi, ta): remove it; "
        "the template takes first_name, tip_link",
    ]


def test_header_placeholder_without_value() -> None:
    t = _template([{"type": "HEADER", "format": "TEXT", "text": "For {{1}}"}, {"type": "BODY", "text": "Hi {{1}}"}])
    with pytest.raises(
        PreflightError,
        match=r"^1 problem before sending:\n- template 't'/'en' header placeholder \{\{1\}\} has no "
        r"value: add variable `header\.1`$",
    ):
        compile_campaign({"en": t}, {"1": "contact.name"}, default_language="en")


def test_image_header_without_media() -> None:
    assert _problems(REGISTRY["reactivation_nudge"], {"1": "contact.name", "2": "12"}, "en") == [
        "template 'reactivation_nudge' in 2 languages (en, hi) has an IMAGE header but no media: add "
        "variable `header.link=https://…` or `header.id=<media id>`"
    ]


def test_media_link_must_be_a_url_and_not_doubled() -> None:
    base = {"1": "contact.name", "2": "12"}
    assert _problems(REGISTRY["reactivation_nudge"], {**base, "header.link": "cdn/p.jpg"}, "en") == [
        "template 'reactivation_nudge' in 2 languages (en, hi) header.link 'cdn/p.jpg' is not an http(s) URL"
    ]
    both = {**base, "header.link": "https://cdn.example.com/p.jpg", "header.id": "1234"}
    assert _problems(REGISTRY["reactivation_nudge"], both, "en") == [
        "template 'reactivation_nudge' in 2 languages (en, hi) media header: give header.link or header.id, not both"
    ]


def test_bad_variable_keys_and_sources() -> None:
    t = _template([{"type": "BODY", "text": "Hi {{1}}"}])
    problems = _problems({"en": t}, {"1": "contact.", "body.1": "x", "First Name": "y", "2": " \n "}, "en")
    assert problems == [
        "variable `1`: 'contact.' names no contact field: use contact.<field> such as contact.name or contact.city",
        "variable key 'First Name' is not recognised: use 1, 2… or a placeholder name for the body, "
        "header.1 / header.<name> / header.link / header.id for the header, button.<index> for a button",
        "variable `2` is empty after cleaning: give a value or contact.<field>",
    ]
    dup = _problems({"en": t}, {"1": "a", "body.1": "b"}, "en")
    assert dup == ["variables `1` and `body.1` fill the same placeholder: keep one"]


def test_constants_already_over_the_limit() -> None:
    t = _template([{"type": "HEADER", "format": "TEXT", "text": "{{1}}"}, {"type": "BODY", "text": "x"}])
    assert _problems({"en": t}, {"header.1": "y" * 61}, "en") == [
        "template 't'/'en' header is 61 characters with the constant values alone (limit 60): shorten the constants"
    ]


def test_unsupported_default_is_refused() -> None:
    t = _template([{"type": "HEADER", "format": "LOCATION"}, {"type": "BODY", "text": "x"}])
    assert _problems({"en": t}, {}, "en") == [
        "template 't'/'en' uses LOCATION header, which this sender cannot fill: pick another template"
    ]


# ---------------------------------------------------------------------------------------------
# language choice


@pytest.fixture(scope="module")
def invite() -> CompiledCampaign:
    return compile_campaign(REGISTRY["daily_campaign_invite"], INVITE_VARS, default_language="hi")


@pytest.mark.parametrize(
    ("contact_language", "chosen"),
    [("bho", "hi"), ("hne", "hi"), ("raj", "hi"), ("as", "bn"), ("or", "hi")],
)
def test_fallback_for_languages_whatsapp_lacks(invite: CompiledCampaign, contact_language: str, chosen: str) -> None:
    assert contact_language not in invite.languages
    assert invite.choose_language(contact_language) == chosen


def test_fallback_chain_order() -> None:
    nudge = compile_campaign(
        REGISTRY["reactivation_nudge"],
        {"1": "contact.first_name", "2": "contact.days_idle", "header.link": "https://cdn.example.com/p.jpg"},
        default_language="en",
    )
    assert nudge.languages == {"en", "hi"}
    assert nudge.choose_language("hi") == "hi"  # exact
    assert nudge.choose_language("bho") == "hi"  # fallback map
    assert nudge.choose_language("as") == "en"  # map says bn, which this template lacks → default
    assert nudge.choose_language("en_IN") == "en"
    assert nudge.choose_language("ta") == "en"  # no variant → default
    assert nudge.choose_language(None) == "en" and nudge.choose_language("") == "en"
    assert nudge.choose_language(" HI") == "hi" and nudge.choose_language("BHO") == "hi"
    assert nudge.choose_language("en-GB") == "en"
    custom = compile_campaign(
        REGISTRY["reactivation_nudge"],
        {"1": "a", "2": "b", "header.id": "55"},
        default_language="hi",
        fallback={**DEFAULT_LANGUAGE_FALLBACK, "ta": "en"},
    )
    assert custom.choose_language("ta") == "en" and custom.choose_language("kn") == "hi"


def test_render_refuses_a_language_outside_the_campaign(invite: CompiledCampaign) -> None:
    with pytest.raises(ValueError, match=r"^template 'daily_campaign_invite' has no approved 'bho' variant"):
        invite.render({"name": "x"}, "bho")


# ---------------------------------------------------------------------------------------------
# payloads, compared byte for byte with whatsapp-cloud-api.md §1.3 and §1.4

# §1.3, verbatim.
DOC_POSITIONAL = """{
  "messaging_product": "whatsapp",
  "recipient_type": "individual",
  "to": "+919876543210",
  "type": "template",
  "template": {
    "name": "order_update",
    "language": { "code": "hi" },
    "components": [
      { "type": "header",
        "parameters": [ { "type": "image", "image": { "link": "https://cdn.example.com/p.jpg" } } ] },
      { "type": "body",
        "parameters": [ { "type": "text", "text": "Ravi" },
                        { "type": "text", "text": "ORD-5521" } ] },
      { "type": "button", "sub_type": "quick_reply", "index": "0",
        "parameters": [ { "type": "payload", "payload": "cmp42:stop" } ] },
      { "type": "button", "sub_type": "url", "index": "1",
        "parameters": [ { "type": "text", "text": "ORD-5521" } ] }
    ]
  }
}"""

# §1.4, verbatim (the components list).
DOC_NAMED_COMPONENTS = """[
  { "type": "body",
    "parameters": [
      { "type": "text", "parameter_name": "first_name",   "text": "Ravi" },
      { "type": "text", "parameter_name": "order_number", "text": "ORD-5521" } ] }
]"""


def test_positional_payload_matches_the_api_doc_byte_for_byte() -> None:
    order_update = _template(
        [
            {"type": "HEADER", "format": "IMAGE"},
            {"type": "BODY", "text": "नमस्ते {{1}}, आपका ऑर्डर {{2}} भेज दिया गया है।"},
            {"type": "FOOTER", "text": "Shop"},
            {
                "type": "BUTTONS",
                "buttons": [
                    {"type": "QUICK_REPLY", "text": "Stop"},
                    {"type": "URL", "text": "Track", "url": "https://shop.example/t/{{1}}"},
                ],
            },
        ],
        name="order_update",
        language="hi",
    )
    campaign = compile_campaign(
        {"hi": order_update},
        {
            "header.link": "https://cdn.example.com/p.jpg",
            "1": "contact.first_name",
            "2": "contact.order_id",
            "button.0": "cmp42:stop",
            "button.1": "contact.order_id",
        },
        default_language="hi",
    )
    contact = {"name": "Ravi   Kumar", "attributes": {"order_id": "ORD-5521"}}
    rendered = campaign.render(contact, "hi")
    assert isinstance(rendered, Rendered)
    assert rendered.body_text == "नमस्ते Ravi, आपका ऑर्डर ORD-5521 भेज दिया गया है।"
    sent = build_message("919876543210", rendered.template, "c42:r7")
    expected = {**json.loads(DOC_POSITIONAL), "biz_opaque_callback_data": "c42:r7"}
    assert sent == orjson.dumps(expected)


def test_named_payload_matches_the_api_doc_byte_for_byte() -> None:
    t = _template([{"type": "BODY", "text": "Hi {{first_name}}, order {{order_number}} shipped"}])
    campaign = compile_campaign(
        {"en": t},
        {"order_number": "contact.order", "body.first_name": "contact.name"},
        default_language="en",
    )
    rendered = campaign.render({"name": "Ravi", "order": "ORD-5521"}, "en")
    assert isinstance(rendered, Rendered)
    assert orjson.dumps(rendered.template["components"]) == orjson.dumps(json.loads(DOC_NAMED_COMPONENTS))


def test_shared_named_template_payload() -> None:
    campaign = compile_campaign(
        REGISTRY["creator_tips_update"],
        {"first_name": "contact.first_name", "tip_link": "https://creators.example.in/handbook/views"},
        default_language="hi",
    )
    rendered = campaign.render({"name": "प्रिया शर्मा", "language": "ta"}, campaign.choose_language("ta"))
    assert isinstance(rendered, Rendered)
    assert rendered.template == {
        "name": "creator_tips_update",
        "language": {"code": "ta"},
        "components": [
            {
                "type": "body",
                "parameters": [
                    {"type": "text", "parameter_name": "first_name", "text": "प्रिया"},
                    {
                        "type": "text",
                        "parameter_name": "tip_link",
                        "text": "https://creators.example.in/handbook/views",
                    },
                ],
            }
        ],
    }


def test_payload_comes_from_template_slots_with_media_id_and_encoded_url(invite: CompiledCampaign) -> None:
    rendered = invite.render({"name": "Meena  Sundaram", "genre": "sports "}, "ta")
    assert isinstance(rendered, Rendered)
    # The header is static text: no header component; the quick reply is unbound: omitted.
    assert [c["type"] for c in rendered.template["components"]] == ["body", "button"]
    assert rendered.template["components"][0]["parameters"][:2] == [
        {"type": "text", "text": "Meena"},
        {"type": "text", "text": "Sports"},
    ]
    assert rendered.header_text == "இன்றைய கேம்பெயின்"

    url = compile_campaign(
        REGISTRY["daily_campaign_invite"], {**INVITE_VARS, "button.0": "contact.slug"}, default_language="hi"
    )
    out = url.render({"name": "a", "genre": "news", "slug": "मानसून masti/#1?x"}, "en")
    assert isinstance(out, Rendered)
    assert out.template["components"][1] == {
        "type": "button",
        "sub_type": "url",
        "index": "0",
        "parameters": [
            {"type": "text", "text": "%E0%A4%AE%E0%A4%BE%E0%A4%A8%E0%A4%B8%E0%A5%82%E0%A4%A8%20masti/%231%3Fx"}
        ],
    }

    nudge = compile_campaign(
        REGISTRY["reactivation_nudge"],
        {"1": "contact.name", "2": "contact.followers", "header.id": "778899"},
        default_language="en",
    )
    out = nudge.render({"name": "Amit", "followers": 12}, "hi")
    assert isinstance(out, Rendered)
    assert out.template["components"][0] == {
        "type": "header",
        "parameters": [{"type": "image", "image": {"id": "778899"}}],
    }
    assert out.body_text == "Amit, हमें आपकी कमी खल रही है! 12 दिनों से आपने कुछ पोस्ट नहीं किया।"


def test_template_without_values_has_no_components() -> None:
    t = _template([{"type": "BODY", "text": "Hello there"}])
    rendered = compile_campaign({"en": t}, {}, default_language="en").render({}, "en")
    assert rendered == Rendered({"name": "t", "language": {"code": "en"}}, "Hello there", "en", None)


# ---------------------------------------------------------------------------------------------
# per-recipient skips


def test_empty_values_skip_the_recipient(invite: CompiledCampaign) -> None:
    assert invite.render({"name": " \n\t ", "genre": "news"}, "hi") == Skip("empty_value:body.1")
    assert invite.render({"name": "Asha"}, "hi") == Skip("empty_value:body.2")
    slugged = compile_campaign(
        REGISTRY["daily_campaign_invite"], {**INVITE_VARS, "button.0": "contact.slug"}, default_language="hi"
    )
    assert slugged.render({"name": "Asha", "genre": "news", "slug": "  "}, "hi") == Skip("empty_value:button.0")


def test_empty_media_value_skips_with_the_binding_key() -> None:
    nudge = compile_campaign(
        REGISTRY["reactivation_nudge"],
        {"header.link": "contact.avatar_url", "1": "contact.name", "2": "contact.followers"},
        default_language="en",
    )
    assert nudge.render({"name": "Amit", "followers": 3, "avatar_url": ""}, "en") == Skip("empty_value:header.link")
    ok = nudge.render({"name": "Amit", "followers": 0, "attributes": {"avatar_url": "https://c.example/a b.jpg"}}, "en")
    assert isinstance(ok, Rendered)
    assert ok.template["components"][0]["parameters"] == [
        {"type": "image", "image": {"link": "https://c.example/a b.jpg"}}
    ]
    assert ok.body_text == "Amit, we miss you! You haven't posted in 0 days."


def test_contact_attributes_and_derived_fields() -> None:
    t = _template([{"type": "BODY", "text": "{{1}} {{2}} {{3}} {{4}}"}])
    campaign = compile_campaign(
        {"en": t},
        {"1": "contact.first_name", "2": "contact.genre_label", "3": "contact.city", "4": "contact.tier"},
        default_language="en",
    )
    contact = {
        "name": "Asha Rao",
        "genre": "stand_up comedy",
        "city": "Pune",
        "tier": "",  # an empty column falls through to the attribute
        "attributes": {"tier": "gold"},
    }
    assert campaign.render(contact, "en").body_text == "Asha Stand Up Comedy Pune gold"  # type: ignore[union-attr]
    overridden = {**contact, "attributes": {"tier": "gold", "genre_label": "Comedy"}}
    assert campaign.render(overridden, "en").body_text == "Asha Comedy Pune gold"  # type: ignore[union-attr]


DEVANAGARI = "कमाई बढ़ाने के लिए रोज़ वीडियो पोस्ट करें। "  # mostly 3-byte UTF-8 characters


def test_body_limit_is_crossed_only_after_substitution_with_devanagari() -> None:
    literal = (DEVANAGARI * 25)[:1000]
    body = literal + "{{1}}"  # the template itself: 1,005 characters, under 1,024
    t = _template([{"type": "BODY", "text": body}], language="hi")
    campaign = compile_campaign({"hi": t}, {"1": "contact.name"}, default_language="hi")
    name = "राहुल" * 5  # 25 code points
    fits = campaign.render({"name": name[:24]}, "hi")  # 1,000 + 24 = 1,024
    assert isinstance(fits, Rendered) and len(fits.body_text) == 1024
    assert len(fits.body_text.encode()) > 2500  # counted in characters, not UTF-8 bytes
    assert campaign.render({"name": name}, "hi") == Skip("body_too_long")


def test_header_limit_is_crossed_only_after_substitution() -> None:
    t = _template([{"type": "HEADER", "format": "TEXT", "text": "आपके लिए {{1}}"}, {"type": "BODY", "text": "x"}])
    campaign = compile_campaign({"en": t}, {"header.1": "contact.name"}, default_language="en")
    assert isinstance(campaign.render({"name": "न" * 51}, "en"), Rendered)  # 9 + 51 = 60
    assert campaign.render({"name": "न" * 52}, "en") == Skip("header_too_long")


def test_every_shared_contact_renders_or_skips_with_matching_slots(invite: CompiledCampaign) -> None:
    with _shared("contacts_5k.csv").open(encoding="utf-8") as fh:
        contacts = list(csv.DictReader(fh))
    outcomes: Counter[str] = Counter()
    for contact in contacts:
        language = invite.choose_language(contact["language"])
        assert language in invite.languages
        result = invite.render(contact, language)
        if isinstance(result, Skip):
            outcomes[result.reason] += 1
            continue
        outcomes["rendered"] += 1
        body = result.template["components"][0]
        assert len(body["parameters"]) == 4 and result.template["language"]["code"] == language
        assert all(p["text"] and "\n" not in p["text"] for p in body["parameters"])
    assert sum(outcomes.values()) == len(contacts) == 5000
    assert outcomes["rendered"] >= 4900, outcomes


# ---------------------------------------------------------------------------------------------
# build_message


def test_build_message_normalises_to_and_masks_bad_numbers() -> None:
    obj = {"name": "t", "language": {"code": "en"}}
    msg = orjson.loads(build_message("+91 98765-43210", obj, "r1"))
    assert msg == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": "+919876543210",
        "type": "template",
        "template": obj,
        "biz_opaque_callback_data": "r1",
    }
    with pytest.raises(ValueError, match=r"^recipient …4321 is not a WhatsApp number: need 6–15 digits, got 17$"):
        build_message("98765432109874321", obj, "r1")
