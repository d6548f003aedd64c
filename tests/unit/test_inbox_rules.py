"""Inbox rules: the keyword normaliser, opt-out/opt-in/FAQ/complex matching, validation, reload."""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from broadcaster.inbox.rules import (
    Incoming,
    RulesError,
    RulesFile,
    evaluate,
    load_rules,
    normalise,
    parse_rules,
)

EXAMPLE_RULES = Path(__file__).resolve().parents[2] / "examples" / "rules.toml"


EXAMPLE = load_rules(EXAMPLE_RULES)


@pytest.fixture(scope="module")
def rules():
    return EXAMPLE


def decide(rules, text: str, language: str | None = "en", *, type_: str = "text", payload: str | None = None):
    return evaluate(rules, Incoming(type_, text, payload, language))


# --------------------------------------------------------------------------- normaliser properties

decoration = st.text(alphabet=st.sampled_from(list(" \t\n.,!?;:-_\"'()[]{}…।॥¡¿*#@/\\|~“”‘’🙏👍\u200b\u200d")),
                     max_size=6)
words = st.text(alphabet=st.characters(categories=("Lu", "Ll", "Lo", "Mn", "Mc", "Nd")), min_size=1, max_size=8)


@given(st.text())
@example("ＳＴＯＰ")
@example("ß\u0301")
@example("ﬀ")
def test_normalise_is_idempotent(text: str) -> None:
    assert normalise(normalise(text)) == normalise(text)


@given(st.text())
def test_normalise_leaves_no_punctuation_symbols_or_stray_spaces(text: str) -> None:
    out = normalise(text)
    assert out == out.strip()
    assert "  " not in out
    for ch in out:
        category = unicodedata.category(ch)
        assert ch == " " or (category[0] not in "PSZ" and category not in ("Cc", "Cf")), (ch, category)


@given(st.lists(words, min_size=1, max_size=4), decoration, decoration, st.booleans())
def test_normalise_ignores_case_surrounding_punctuation_and_whitespace(parts: list[str], before: str,
                                                                       after: str, upper: bool) -> None:
    phrase = " ".join(parts)
    assume(phrase.upper().casefold() == phrase.casefold())  # upper() is lossy for a few letters (Turkish ı)
    decorated = before + (phrase.upper() if upper else phrase) + after
    assert normalise(decorated) == normalise(phrase)


@given(decoration, decoration, st.sampled_from(["STOP", "stop", "Stop", "sToP", "रोकें", "बंद करो", "Unsubscribe"]))
def test_every_decorated_stop_keyword_opts_out(before: str, after: str, keyword: str) -> None:
    decision = decide(EXAMPLE, before + keyword + after, "hi")
    assert decision.action == "opt_out", decision


@given(st.lists(st.sampled_from(["please", "don't", "ever", "sending", "me", "these", "why"]), min_size=1, max_size=4),
       st.booleans())
def test_stop_inside_a_sentence_is_never_an_opt_out(extra: list[str], stop_first: bool) -> None:
    text = " ".join(["stop", *extra] if stop_first else [*extra, "stop"])
    decision = decide(EXAMPLE, text, "en")
    assert decision.action == "escalate"
    assert decision.rule_id == "consent_complaint"


# --------------------------------------------------------------------------- the cases


@pytest.mark.parametrize("text", ["STOP", "stop ", "Stop.", "  sTOP!! ", "unsubscribe"])
def test_stop_forms_opt_out_in_english(rules, text: str) -> None:
    decision = decide(rules, text, "en")
    assert (decision.action, decision.rule_id) == ("opt_out", "opt_out")
    assert decision.reply is not None and decision.reply.startswith("Done: you will not get campaign messages")


@pytest.mark.parametrize("text", ["रोकें", "रोकें।", " बंद करो ", "STOP", "Stop."])
def test_stop_forms_opt_out_in_hindi_with_hindi_confirmation(rules, text: str) -> None:
    decision = decide(rules, text, "hi")
    assert decision.action == "opt_out"
    assert decision.reply is not None and decision.reply.startswith("ठीक है")


def test_sentence_containing_stop_escalates(rules) -> None:
    decision = decide(rules, "Please stop sending me so many messages", "en")
    assert (decision.action, decision.rule_id) == ("escalate", "consent_complaint")
    assert decision.needs_human


@pytest.mark.parametrize(("text", "language"), [("START", "en"), ("start", "hi"), ("Start!", "ta"), ("शुरू करें", "hi")])
def test_start_opts_back_in(rules, text: str, language: str) -> None:
    assert decide(rules, text, language).action == "opt_in"


def test_keywords_of_one_language_do_not_apply_to_another_but_any_does() -> None:
    scoped = parse_rules(
        'version = 1\n[[rules]]\nid = "out"\nkind = "opt_out"\nkeywords.any = ["stop"]\n'
        'keywords.hi = ["रोकें"]\nreply.en = "ok"\n', "r.toml")
    assert decide(scoped, "रोकें", "hi").action == "opt_out"
    assert decide(scoped, "रोकें", "ta").action == "route"  # listed for hi only: a human reads it
    assert decide(scoped, "stop", "ta").action == "opt_out"  # `any`


@pytest.mark.parametrize("language", ["bho", "mr", "raj", "hne", "ta", "en", "as"])
@pytest.mark.parametrize("text", ["बंद करो", "रोकें", "band karo", "mat bhejo"])
def test_example_consent_words_opt_out_whatever_language_is_on_file(rules, text: str, language: str) -> None:
    assert decide(rules, text, language).action == "opt_out"


def test_unknown_language_matches_every_language(rules) -> None:
    assert decide(rules, "रोकें", None).action == "opt_out"
    assert decide(rules, "रोकें", None).reply.startswith("Done")  # default language reply


@pytest.mark.parametrize(("text", "topic", "link_tail"), [
    ("How do I get more views?", "views", "views"),
    ("my likes and comments dropped", "engagement", "engagement"),
    ("when is the payout for monetization", "monetisation", "monetisation"),
    ("I forgot my password", "account", "account"),
    ("what are the campaign rules?", "campaign rules", "campaign-rules"),
])
def test_faq_in_english_answers_with_the_handbook_link(rules, text: str, topic: str, link_tail: str) -> None:
    decision = decide(rules, text, "en")
    assert decision.action == "faq" and decision.topic == topic
    assert decision.reply.endswith(f"https://creators.example.in/handbook/{link_tail}")


@pytest.mark.parametrize(("text", "topic"), [
    ("व्यूज कैसे बढ़ाएं?", "views"),
    ("मेरे व्यूज़ कम हो गए", "views"),
    ("फॉलोअर्स कैसे बढ़ाएं", "engagement"),
    ("कमाई कब होगी", "monetisation"),
    ("पासवर्ड भूल गया", "account"),
    ("कैंपेन के नियम क्या हैं", "campaign rules"),
])
def test_faq_in_hindi_answers_in_hindi(rules, text: str, topic: str) -> None:
    decision = decide(rules, text, "hi")
    assert decision.action == "faq" and decision.topic == topic, decision
    assert "https://creators.example.in/handbook/" in decision.reply
    assert any("\u0900" <= ch <= "\u097f" for ch in decision.reply)  # Devanagari reply


def test_default_language_keywords_apply_to_everyone_and_replies_fall_back(rules) -> None:
    decision = decide(rules, "views?", "mr")  # an English keyword from a Marathi contact
    assert decision.action == "faq"
    assert decision.reply.startswith("How to grow your views")  # no Marathi reply: the default


def test_urgent_rule_wins_over_faq_by_order(rules) -> None:
    decision = decide(rules, "my account was hacked", "en")
    assert (decision.action, decision.rule_id) == ("escalate", "urgent")


def test_no_match_routes_to_a_human(rules) -> None:
    decision = decide(rules, "hello, can we collaborate?", "en")
    assert (decision.action, decision.rule_id) == ("route", None)


def test_button_payload_matching_a_rule_and_one_matching_none(rules) -> None:
    assert decide(rules, "Stop promotions", "hi", type_="button", payload="STOP_PROMOTIONS").action == "opt_out"
    unmatched = decide(rules, "Count me in", "hi", type_="button", payload="JOIN_MONSOON")
    assert unmatched.action == "escalate" and unmatched.rule_id is None
    assert unmatched.reason == "button payload 'JOIN_MONSOON' matches no rule"


def test_reactions_are_ignored_and_media_without_caption_routes(rules) -> None:
    assert decide(rules, None, "en", type_="reaction").action == "ignore"
    assert decide(rules, None, "en", type_="image").action == "route"
    assert decide(rules, "views?", "en", type_="image").action == "faq"  # caption


# --------------------------------------------------------------------------- validation


def test_bad_version_is_named() -> None:
    with pytest.raises(RulesError, match=r"^r\.toml, field version: must be an integer >= 1, got 'two'$"):
        parse_rules('version = "two"\n', "r.toml")


def test_bad_regex_names_rule_language_and_index() -> None:
    text = 'version = 1\n[[rules]]\nid = "x"\nkind = "complex"\npatterns.hi = ["ok", "(unclosed"]\n'
    with pytest.raises(RulesError, match=r"^r\.toml, rule 1 \('x'\), field patterns\.hi\[1\]: invalid regex"):
        parse_rules(text, "r.toml")


def test_unknown_field_is_refused() -> None:
    text = 'version = 1\n[[rules]]\nid = "x"\nkind = "complex"\nkeywrods.en = ["a"]\n'
    with pytest.raises(RulesError, match=r"^r\.toml, rule 1 \('x'\), field keywrods: unknown field"):
        parse_rules(text, "r.toml")


def test_faq_needs_link_and_default_reply() -> None:
    base = 'version = 1\n[[rules]]\nid = "f"\nkind = "faq"\nkeywords.en = ["a"]\n'
    with pytest.raises(RulesError, match=r"^r\.toml, rule 1 \('f'\), field reply\.en: a faq rule needs a reply"):
        parse_rules(base + 'link = "https://x.in/a"\n', "r.toml")
    with pytest.raises(RulesError, match=r"^r\.toml, rule 1 \('f'\), field link: a faq rule needs the handbook link"):
        parse_rules(base + 'reply.en = "see"\n', "r.toml")


def test_duplicate_ids_and_opt_out_patterns_are_refused() -> None:
    rule = '[[rules]]\nid = "a"\nkind = "complex"\nkeywords.en = ["x"]\n'
    with pytest.raises(RulesError, match=r"^r\.toml, rule 2 \('a'\), field id: duplicate of rule 1$"):
        parse_rules("version = 1\n" + rule + rule, "r.toml")
    text = 'version = 1\n[[rules]]\nid = "o"\nkind = "opt_out"\npatterns.en = ["stop"]\nreply.en = "ok"\n'
    with pytest.raises(RulesError, match=r"opt_out rules match whole messages by keyword only"):
        parse_rules(text, "r.toml")


def test_bad_language_code_is_named() -> None:
    text = 'version = 1\n[[rules]]\nid = "a"\nkind = "complex"\nkeywords.Hindi = ["x"]\n'
    with pytest.raises(RulesError, match=r"^r\.toml, rule 1 \('a'\), field keywords\.Hindi: 'Hindi' is not a language"):
        parse_rules(text, "r.toml")


# --------------------------------------------------------------------------- reload


def _write(path: Path, version: int, keyword: str, mtime_ns: int) -> None:
    path.write_text(f'version = {version}\n[[rules]]\nid = "o"\nkind = "opt_out"\nkeywords.en = ["{keyword}"]\n'
                    'reply.en = "bye"\n', encoding="utf-8")
    os.utime(path, ns=(mtime_ns, mtime_ns))


def test_rules_file_reloads_on_mtime_change_and_keeps_last_good(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    _write(path, 1, "halt", 1_000_000_000)
    live = RulesFile(path)
    assert live.current().version == 1
    assert live.current() is live.current()  # unchanged file: same object, no re-parse
    _write(path, 2, "quit", 2_000_000_000)
    assert live.current().version == 2
    assert evaluate(live.current(), Incoming("text", "QUIT", None, "en")).action == "opt_out"
    path.write_text("version = [", encoding="utf-8")
    os.utime(path, ns=(3_000_000_000, 3_000_000_000))
    assert live.current().version == 2  # a broken edit never takes the rules away
    path.unlink()
    assert live.current().version == 2


def test_first_load_of_a_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(RulesError, match=r"rules file not found"):
        RulesFile(tmp_path / "nope.toml").current()
