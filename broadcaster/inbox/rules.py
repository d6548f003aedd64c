"""The inbox rules file (`rules.toml`): parse, validate, match. Pure, except `RulesFile` (stat/read).

A rules file is versioned and ordered; the first rule that matches a message wins:

    version = 3                      # required, an integer >= 1, logged with every rule action
    default_language = "en"          # replies fall back to this language

    [[rules]]
    id = "opt_out"                   # unique, [a-z0-9_]+
    kind = "opt_out"                 # opt_out | opt_in | faq | complex
    keywords.en = ["stop", "unsubscribe"]
    keywords.hi = ["रोकें", "बंद करो"]
    keywords.any = ["stop"]          # `any` applies to every language
    payloads = ["STOP_PROMOTIONS"]   # template button payloads, compared like keywords
    reply.en = "You will not get promotions any more. Send START to join again."

    [[rules]]
    id = "faq_views"
    kind = "faq"
    topic = "views"
    link = "https://creators.example.in/handbook/views"
    keywords.en = ["more views", "views"]
    patterns.hi = ['व्यू(ज़|ज|स)?']
    reply.en = "Tips to grow your views: {link}"

How messages are compared:
- `normalise` (keywords, payloads): NFKC, case-folded, every punctuation/symbol/control character
  turned into a space, format characters (ZWJ, ZWNJ, soft hyphen) dropped, whitespace collapsed.
  So `STOP`, ` stop `, `Stop.` and `stop!!` are all `stop`; `रोकें।` is `रोकें`.
- opt_out / opt_in match only when the WHOLE normalised message equals a keyword: a sentence that
  merely contains "stop" is not an opt-out.
- faq / complex keywords match a whole-word phrase anywhere in the message; `patterns` are Python
  regexes searched (case-insensitive) in `search_form(text)`: NFKC, case-folded, whitespace
  collapsed, punctuation kept.
- Keywords and patterns of the contact's language, of the default language (creators of every
  language write English) and of `any` apply; a contact with no language is matched against every
  language. Replies come in the contact's language, else the default language.

Guarantees: a `RuleSet` is fully validated at load (regexes compiled, replies present for the
default language, links absolute http(s)); every error names the file, the rule (number and id)
and the field. `evaluate` never raises.
"""

from __future__ import annotations

import logging
import os
import re
import tomllib
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from broadcaster.errors import InputError

__all__ = [
    "ANY", "ACTIONS", "KINDS", "Decision", "Incoming", "Rule", "RuleSet", "RulesError", "RulesFile",
    "evaluate", "load_rules", "normalise", "parse_rules", "search_form",
]

logger = logging.getLogger(__name__)

ANY = "any"
KINDS = ("opt_out", "opt_in", "faq", "complex")
# what happens to a message: the rule kinds' actions plus the two outcomes of "no rule matched"
ACTIONS = ("opt_out", "opt_in", "faq", "escalate", "route", "ignore")
_ACTION_OF_KIND = {"opt_out": "opt_out", "opt_in": "opt_in", "faq": "faq", "complex": "escalate"}
# inbound types that are not questions: stored, attached, never routed
IGNORED_TYPES = frozenset({"reaction", "system", "request_welcome", "ephemeral"})
REPLY_MAX = 4096  # chars in a text message body (Cloud API §1.2)

_RULE_ID = re.compile(r"[a-z0-9_]+")
_LANGUAGE = re.compile(r"[a-z]{2,3}(_[A-Z]{2})?|any")
_RULE_FIELDS = frozenset({"id", "kind", "keywords", "patterns", "payloads", "reply", "link", "topic", "note"})
_TOP_FIELDS = frozenset({"version", "default_language", "rules"})


class RulesError(InputError):
    """The rules file is invalid; the message names the file, the rule and the field."""


# --------------------------------------------------------------------------- normalising


def _fold(text: str) -> str:
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())


def normalise(text: str) -> str:
    """The comparison form of keywords and payloads (see the module docstring). Idempotent."""
    folded = _fold(text)
    for _ in range(3):  # casefold/NFKC can expose new foldable characters; settle to a fixpoint
        again = _fold(folded)
        if again == folded:
            break
        folded = again
    out: list[str] = []
    for ch in folded:
        cat = unicodedata.category(ch)
        if cat == "Cf":
            continue  # ZWJ/ZWNJ/soft hyphen sit inside words
        if cat[0] in "PSZ" or cat == "Cc":
            out.append(" ")
        else:
            out.append(ch)
    return " ".join("".join(out).split())


def search_form(text: str) -> str:
    """The form regex `patterns` are searched in: NFKC, case-folded, whitespace collapsed."""
    return " ".join(_fold(text).split())


# --------------------------------------------------------------------------- the rule set


@dataclass(frozen=True)
class Rule:
    """One validated rule. Keywords and payloads are stored normalised."""

    index: int  # 1-based position in the file
    id: str
    kind: str
    keywords: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    patterns: Mapping[str, tuple[re.Pattern[str], ...]] = field(default_factory=dict)
    payloads: frozenset[str] = frozenset()
    reply: Mapping[str, str] = field(default_factory=dict)
    link: str | None = None
    topic: str | None = None

    @property
    def action(self) -> str:
        return _ACTION_OF_KIND[self.kind]

    @staticmethod
    def _for(table: Mapping[str, tuple[Any, ...]], languages: tuple[str, ...] | None) -> tuple[Any, ...]:
        if languages is None:
            return tuple(item for items in table.values() for item in items)
        return tuple(item for lang in languages for item in table.get(lang, ()))

    def match(self, texts: tuple[tuple[str, str], ...], payload: str | None,
              languages: tuple[str, ...] | None) -> str | None:
        """The keyword/pattern/payload that matches, or None.

        texts: (normalised, search form) of each text; `languages` None = every language.
        """
        if payload is not None and self.payloads:
            norm = normalise(payload)
            if norm in self.payloads:
                return f"payload {norm!r}"
        keywords = self._for(self.keywords, languages)
        patterns = self._for(self.patterns, languages)
        for norm, searchable in texts:
            if not norm:
                continue
            if self.kind in ("opt_out", "opt_in"):
                if norm in keywords:
                    return f"keyword {norm!r}"
                continue
            padded = f" {norm} "
            for kw in keywords:
                if f" {kw} " in padded:
                    return f"keyword {kw!r}"
            for pattern in patterns:
                if pattern.search(searchable):
                    return f"pattern {pattern.pattern!r}"
        return None

    def reply_for(self, language: str | None, default_language: str) -> str | None:
        text = self.reply.get(language or "", self.reply.get(default_language))
        if text is None:
            return None
        return text.replace("{link}", self.link or "")


@dataclass(frozen=True)
class RuleSet:
    """A validated, ordered rules file."""

    version: int
    default_language: str
    rules: tuple[Rule, ...]
    source: str = "<memory>"

    def rule(self, rule_id: str) -> Rule:
        for rule in self.rules:
            if rule.id == rule_id:
                return rule
        raise KeyError(rule_id)


def _where(source: str, index: int | None = None, rule_id: object = None, fld: str | None = None) -> str:
    parts = [source]
    if index is not None:
        parts.append(f"rule {index}" + (f" ({rule_id!r})" if isinstance(rule_id, str) else ""))
    if fld is not None:
        parts.append(f"field {fld}")
    return ", ".join(parts)


def _str_list(value: object, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise RulesError(f"{where}: must be a list of non-empty strings")
    return value


def _per_language(value: object, where: str) -> dict[str, object]:
    if not isinstance(value, dict):
        raise RulesError(f"{where}: must be a table of language code → value (e.g. {where.rsplit(' ', 1)[-1]}.en)")
    for lang in value:
        if not _LANGUAGE.fullmatch(lang):
            raise RulesError(f"{where}.{lang}: {lang!r} is not a language code like 'hi', 'en_US' or 'any'")
    return value


def _parse_rule(raw: object, index: int, source: str, default_language: str) -> Rule:
    where = _where(source, index)
    if not isinstance(raw, dict):
        raise RulesError(f"{where}: must be a table ([[rules]])")
    rule_id = raw.get("id")
    if not isinstance(rule_id, str) or not _RULE_ID.fullmatch(rule_id):
        raise RulesError(f"{_where(source, index, None, 'id')}: must be a string of a-z, 0-9 and _, "
                         f"got {rule_id!r}")

    def w(fld: str) -> str:
        return _where(source, index, rule_id, fld)

    unknown = sorted(set(raw) - _RULE_FIELDS)
    if unknown:
        raise RulesError(f"{w(unknown[0])}: unknown field (allowed: {', '.join(sorted(_RULE_FIELDS))})")
    kind = raw.get("kind")
    if kind not in KINDS:
        raise RulesError(f"{w('kind')}: must be one of {', '.join(KINDS)}, got {kind!r}")

    keywords: dict[str, tuple[str, ...]] = {}
    for lang, items in _per_language(raw.get("keywords", {}), w("keywords")).items():
        norms = tuple(dict.fromkeys(normalise(k) for k in _str_list(items, w(f"keywords.{lang}"))))
        if "" in norms:
            raise RulesError(f"{w(f'keywords.{lang}')}: a keyword is only punctuation or spaces")
        keywords[lang] = norms
    patterns: dict[str, tuple[re.Pattern[str], ...]] = {}
    for lang, items in _per_language(raw.get("patterns", {}), w("patterns")).items():
        compiled = []
        for i, text in enumerate(_str_list(items, w(f"patterns.{lang}"))):
            try:
                compiled.append(re.compile(text, re.IGNORECASE))
            except re.error as exc:
                raise RulesError(f"{w(f'patterns.{lang}[{i}]')}: invalid regex {text!r}: {exc}") from None
        patterns[lang] = tuple(compiled)
    if patterns and kind in ("opt_out", "opt_in"):
        raise RulesError(f"{w('patterns')}: {kind} rules match whole messages by keyword only")
    payloads = frozenset(normalise(p) for p in _str_list(raw.get("payloads", []), w("payloads")))
    if not keywords and not patterns and not payloads:
        raise RulesError(f"{w('keywords')}: the rule matches nothing (give keywords, patterns or payloads)")

    reply: dict[str, str] = {}
    for lang, text in _per_language(raw.get("reply", {}), w("reply")).items():
        if not isinstance(text, str) or not text.strip():
            raise RulesError(f"{w(f'reply.{lang}')}: must be a non-empty string")
        if len(text) > REPLY_MAX - 200:
            raise RulesError(f"{w(f'reply.{lang}')}: {len(text)} chars; keep replies under {REPLY_MAX - 200}")
        reply[lang] = text
    if kind != "complex" and default_language not in reply:
        raise RulesError(f"{w(f'reply.{default_language}')}: a {kind} rule needs a reply in the "
                         f"default language {default_language!r}")

    link = raw.get("link")
    if link is not None and (not isinstance(link, str) or not re.fullmatch(r"https?://\S+", link)):
        raise RulesError(f"{w('link')}: must be an absolute http(s) URL, got {link!r}")
    if kind == "faq" and link is None:
        raise RulesError(f"{w('link')}: a faq rule needs the handbook link for its topic")
    if link is None and any("{link}" in text for text in reply.values()):
        raise RulesError(f"{w('reply')}: uses {{link}} but the rule has no link")
    topic = raw.get("topic")
    if topic is not None and not isinstance(topic, str):
        raise RulesError(f"{w('topic')}: must be a string")
    if raw.get("note") is not None and not isinstance(raw.get("note"), str):
        raise RulesError(f"{w('note')}: must be a string")
    return Rule(index=index, id=rule_id, kind=kind, keywords=keywords, patterns=patterns,
                payloads=payloads, reply=reply, link=link, topic=topic)


def parse_rules(text: str, source: str = "<memory>") -> RuleSet:
    """Validate a rules document. Raises RulesError naming source, rule and field."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RulesError(f"{source}: not valid TOML: {exc}") from None
    unknown = sorted(set(doc) - _TOP_FIELDS)
    if unknown:
        raise RulesError(f"{_where(source, fld=unknown[0])}: unknown top-level field "
                         f"(allowed: {', '.join(sorted(_TOP_FIELDS))})")
    version = doc.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise RulesError(f"{_where(source, fld='version')}: must be an integer >= 1, got {version!r}")
    default_language = doc.get("default_language", "en")
    if not isinstance(default_language, str) or not _LANGUAGE.fullmatch(default_language) \
            or default_language == ANY:
        raise RulesError(f"{_where(source, fld='default_language')}: must be a language code like 'en', "
                         f"got {default_language!r}")
    raw_rules = doc.get("rules", [])
    if not isinstance(raw_rules, list):
        raise RulesError(f"{_where(source, fld='rules')}: must be an array of tables ([[rules]])")
    rules = tuple(_parse_rule(raw, i, source, default_language) for i, raw in enumerate(raw_rules, 1))
    seen: dict[str, int] = {}
    for rule in rules:
        if rule.id in seen:
            raise RulesError(f"{_where(source, rule.index, rule.id, 'id')}: duplicate of rule {seen[rule.id]}")
        seen[rule.id] = rule.index
    return RuleSet(version=version, default_language=default_language, rules=rules, source=source)


def load_rules(path: str | os.PathLike[str]) -> RuleSet:
    """Read and validate a rules file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RulesError(f"{p}: rules file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RulesError(f"{p}: cannot read the rules file: {exc}") from None
    return parse_rules(text, str(p))


class RulesFile:
    """A rules file that reloads itself when its mtime (or size) changes; no restart needed.

    `current()` stats the file on every call (one syscall). A change that fails validation is
    logged once and the last good rules stay in force; only the very first load raises.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._stamp: tuple[int, int] | None = None
        self._rules: RuleSet | None = None
        self._bad_stamp: tuple[int, int] | None = None

    def current(self) -> RuleSet:
        try:
            st = os.stat(self.path)
            stamp = (st.st_mtime_ns, st.st_size)
        except OSError as exc:
            if self._rules is None:
                raise RulesError(f"{self.path}: rules file not found ({exc.strerror})") from None
            if self._bad_stamp != (-1, -1):
                logger.error("rules file %s is gone (%s); keeping version %d", self.path, exc.strerror,
                             self._rules.version)
                self._bad_stamp = (-1, -1)
            return self._rules
        if stamp == self._stamp and self._rules is not None:
            return self._rules
        if stamp == self._bad_stamp and self._rules is not None:
            return self._rules
        try:
            rules = load_rules(self.path)
        except RulesError as exc:
            if self._rules is None:
                raise
            logger.error("rules reload refused, keeping version %d: %s", self._rules.version, exc)
            self._bad_stamp = stamp
            return self._rules
        if self._rules is not None:
            logger.warning("rules reloaded from %s: version %d → %d", self.path, self._rules.version,
                           rules.version)
        self._rules, self._stamp, self._bad_stamp = rules, stamp, None
        return rules


# --------------------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class Incoming:
    """What the rules see of one inbound message.

    text: the text body, button label, interactive title or media caption (None if there is none);
    payload: the template button payload or the interactive reply id.
    """

    type: str
    text: str | None = None
    payload: str | None = None
    language: str | None = None


@dataclass(frozen=True)
class Decision:
    """What to do with a message. `reply` is already in the contact's language (or the default)."""

    action: str  # one of ACTIONS
    rule_id: str | None
    reason: str
    reply: str | None = None
    link: str | None = None
    topic: str | None = None
    kind: str | None = None

    @property
    def needs_human(self) -> bool:
        return self.action in ("route", "escalate")


def evaluate(rules: RuleSet, incoming: Incoming) -> Decision:
    """Apply the rules in order; the first match wins. Never raises.

    No match: a template button tap escalates (its payload is not understood), anything else goes
    to a human through routing. Reactions and system messages are ignored.
    """
    if incoming.type in IGNORED_TYPES:
        return Decision("ignore", None, f"{incoming.type} messages are stored only")
    texts = tuple((normalise(t), search_form(t)) for t in (incoming.payload, incoming.text) if t)
    languages = None if incoming.language is None else tuple(
        dict.fromkeys((incoming.language, rules.default_language, ANY)))
    for rule in rules.rules:
        matched = rule.match(texts, incoming.payload, languages)
        if matched is not None:
            return Decision(rule.action, rule.id, f"rule {rule.index} ({rule.id}) matched {matched}",
                            reply=rule.reply_for(incoming.language, rules.default_language),
                            link=rule.link, topic=rule.topic, kind=rule.kind)
    if incoming.type == "button":
        return Decision("escalate", None, f"button payload {incoming.payload!r} matches no rule")
    if not texts:
        return Decision("route", None, f"a {incoming.type} message without text goes to a human")
    return Decision("route", None, "no rule matched: a human answers")
