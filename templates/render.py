"""Campaign variables → checked, precompiled per-language renderers → Cloud API payloads.

Two phases, so nothing is discovered mid-campaign that could have been found before it:

1. `compile_campaign(variants, variables, default_language=…)` runs every pre-send check at once
   (status, default language, placeholders covered, no stray variables, media present, constant
   values not too long) and raises `PreflightError` listing *all* problems, or returns a
   `CompiledCampaign` holding one precompiled plan per approved language.
2. `CompiledCampaign.render(contact, language)` fills one recipient's values. It never raises for
   data: a value that would break a per-recipient rule gives `Skip(reason)` (the ledger's
   `skipped` state) instead of a payload Meta would refuse.

The payload's `components` come from the template definition (its slots: count, order, type),
never from whichever variables happen to exist, so a parameter-count mismatch (132000) cannot be
sent. Values are cleaned first (`clean_text`): Meta refuses parameters with newlines, tabs or
more than four consecutive spaces.

Variable bindings (`variables`: key → source):

    key                           fills
    1, 2, … / first_name, …       body placeholder {{1}} / {{first_name}} (also body.1, body.first_name)
    header.1 / header.<name>      the text header's placeholder
    header.link / header.id       an IMAGE/VIDEO/DOCUMENT header: media URL or uploaded media id
    button.<index>                button at 0-based <index>: URL suffix (percent-encoded here),
                                  copy-code coupon, or quick-reply payload (optional)

    source                        value
    contact.<field>               contact[field] (top level: name, genre, language, city,
                                  followers, wa_id, external_id…), else
                                  contact["attributes"][field]; two derived fields exist when no
                                  such field/attribute does: genre_label (genre, title-cased) and
                                  first_name (the first word of name)
    anything else                 a constant, cleaned once at compile time (no escape syntax:
                                  a constant cannot start with "contact.")

Status policy: the default-language variant must be APPROVED (else an error). Another language
whose variant is not APPROVED, or uses parts the renderer cannot fill, is left out with a
*warning* (`CompiledCampaign.warnings`): its contacts fall back like any language without a
variant. An APPROVED variant whose placeholders the variables do not cover is an *error*.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any
from urllib.parse import quote

import orjson

from templates.registry import _PLACEHOLDER_RE, Slot, Template

__all__ = [
    "BODY_MAX_CHARS",
    "CONTACT_FIELDS",
    "DEFAULT_LANGUAGE_FALLBACK",
    "HEADER_MAX_CHARS",
    "CompiledCampaign",
    "PreflightError",
    "Rendered",
    "Skip",
    "build_message",
    "clean_text",
    "compile_campaign",
    "contact_fields_used",
]

BODY_MAX_CHARS = 1024  # rendered body, with values substituted (Meta: 132005 beyond it)
HEADER_MAX_CHARS = 60  # rendered text header

#: Contact languages with no WhatsApp template language of their own → the variant to try next.
#: Odia and Assamese are not in Meta's language lists (whatsapp-cloud-api.md §5); Bhojpuri,
#: Chhattisgarhi and Rajasthani never were. Each step is tried in turn, then the campaign default.
DEFAULT_LANGUAGE_FALLBACK: Mapping[str, str] = MappingProxyType(
    {
        "bho": "hi",
        "hne": "hi",
        "raj": "hi",
        "as": "bn",
        "or": "hi",
        "en_IN": "en",
        "en_US": "en",
        "en_GB": "en",
    }
)

_CHOICE_CACHE_MAX = 4096  # distinct raw contact-language strings remembered per campaign


# --------------------------------------------------------------------------------------------
# values


# Line and tab breaks WhatsApp refuses in a parameter (everything str.splitlines splits on, + tab).
_BREAKS = "\t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85\u2028\u2029"
_CLEAN_RE = re.compile(f"[ {_BREAKS}]*[{_BREAKS}][ {_BREAKS}]*| {{5,}}")


def clean_text(value: str) -> str:
    """Make a value legal as a template parameter.

    Any run of spaces containing a newline or tab (or other line break) becomes one space, a run
    of more than 4 spaces becomes one space, and surrounding whitespace is trimmed. Runs of up to
    4 plain spaces inside the text are kept. Idempotent; the result never contains a newline, a
    tab or 5 consecutive spaces. It may be empty (callers treat that as "no value").

    >>> clean_text("Sale starts Monday.\\n\\nBring a friend.\\t!")
    'Sale starts Monday. Bring a friend. !'
    """
    # Fast path: a printable string has no tab/line break and no non-ASCII whitespace
    # (str.isprintable is False for Cc, Cf, Zl, Zp and Zs other than " "), so with no run of 5
    # spaces and no space at either end there is nothing to change.
    if value.isprintable() and "     " not in value and value[:1] != " " and value[-1:] != " ":
        return value
    return _CLEAN_RE.sub(" ", value).strip()


def _to_str(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _raw_field(contact: Mapping[str, Any], field: str) -> Any:
    # None and "" both mean "not here" (a CSV row has every column, often empty).
    value = contact.get(field)
    if value is None or value == "":
        attrs = contact.get("attributes")
        if isinstance(attrs, Mapping):
            value = attrs.get(field)
    return None if value == "" else value


def _lookup(contact: Mapping[str, Any], field: str) -> str:
    """contact[field], else contact['attributes'][field], else a derived field, else ''.

    Missing, None and "" are all "no value" at each step.
    """
    value = _raw_field(contact, field)
    if value is None:
        derive = _DERIVED.get(field)
        return derive(contact) if derive is not None else ""
    return _to_str(value)


def _genre_label(contact: Mapping[str, Any]) -> str:
    return clean_text(_to_str(_raw_field(contact, "genre")).replace("_", " ")).title()


def _first_name(contact: Mapping[str, Any]) -> str:
    words = clean_text(_to_str(_raw_field(contact, "name"))).split()
    return words[0] if words else ""


_DERIVED = {"genre_label": _genre_label, "first_name": _first_name}

#: The fields every contact has (the engine passes them at the top level) plus the derived ones;
#: any other `contact.<field>` must be an attribute (an extra import column) to ever have a value.
CONTACT_FIELDS: frozenset[str] = frozenset(
    {"name", "genre", "language", "city", "followers", "external_id", "wa_id", *_DERIVED})


def contact_fields_used(variables: Mapping[str, Any]) -> dict[str, str]:
    """variable key → field, for every `contact.<field>` source in `variables`."""
    return {key: source[len("contact."):] for key, source in variables.items()
            if isinstance(source, str) and source.startswith("contact.")}


# --------------------------------------------------------------------------------------------
# results and errors


class PreflightError(ValueError):
    """The campaign cannot start: `.problems` lists every problem found, each with a fix.

    Each problem names the template, the language and the slot or variable concerned.
    `.warnings` carries the non-fatal findings gathered on the way.
    """

    def __init__(self, problems: list[str], warnings: list[str] | None = None) -> None:
        self.problems = list(problems)
        self.warnings = list(warnings or [])
        count = len(self.problems)
        head = f"{count} problem{'s' if count != 1 else ''} before sending"
        super().__init__(head + ":\n" + "\n".join(f"- {p}" for p in self.problems))


@dataclass(frozen=True, slots=True)
class Rendered:
    """A recipient's template object, ready for `build_message`.

    `template` is the Cloud API `template` object (name, language.code, components); treat it as
    read-only. `body_text` / `header_text` are the texts with values substituted (previews).
    """

    template: dict[str, Any]
    body_text: str
    language: str
    header_text: str | None = None


@dataclass(frozen=True, slots=True)
class Skip:
    """This recipient cannot get this template; `reason` is stored on the ledger row.

    Reasons: `empty_value:<slot>` (e.g. `empty_value:body.1`, `empty_value:button.0`),
    `body_too_long` (over 1,024 characters once filled), `header_too_long` (over 60).
    """

    reason: str


# --------------------------------------------------------------------------------------------
# bindings

_KEY_RE = re.compile(r"(?:(?P<section>body|header|button)\.)?(?P<name>[1-9][0-9]*|[a-z_][a-z0-9_]*|0)")
_FIELD_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True, slots=True)
class _Binding:
    key: str  # as written by the user (for messages)
    target: tuple[str, str]  # ("body", "1") | ("header", "link") | ("button", "0")
    field: str | None  # contact field, or None for a constant
    const: str | None  # cleaned constant


def _parse_bindings(variables: Mapping[str, str], problems: list[str]) -> dict[tuple[str, str], _Binding]:
    out: dict[tuple[str, str], _Binding] = {}
    for key, source in variables.items():
        m = _KEY_RE.fullmatch(key) if isinstance(key, str) else None
        section = m.group("section") if m else None
        name = m.group("name") if m else ""
        # button.<n> takes a 0-based index; everything else a placeholder ({{0}} does not exist)
        valid = m is not None and (name.isdigit() if section == "button" else name != "0")
        if not valid:
            problems.append(
                f"variable key {key!r} is not recognised: use 1, 2… or a placeholder name for "
                "the body, header.1 / header.<name> / header.link / header.id for the header, "
                "button.<index> for a button"
            )
            continue
        target = (section or "body", name)
        if not isinstance(source, str):
            problems.append(f"variable `{key}`: the source must be a string, got {source!r:.40}")
            continue
        field: str | None = None
        const: str | None = None
        if source.startswith("contact."):
            field = source[len("contact.") :]
            if not _FIELD_RE.fullmatch(field):
                problems.append(
                    f"variable `{key}`: {source!r} names no contact field: use contact.<field> "
                    "such as contact.name or contact.city"
                )
                continue
        else:
            const = clean_text(source)
            if not const:
                problems.append(f"variable `{key}` is empty after cleaning: give a value or contact.<field>")
                continue
        if target in out:
            problems.append(f"variables `{out[target].key}` and `{key}` fill the same placeholder: keep one")
            continue
        out[target] = _Binding(key, target, field, const)
    return out


# --------------------------------------------------------------------------------------------
# compiled plan for one language

# Parameter kinds; values are looked up by position in the per-render `values` list.
_P_TEXT, _P_NAMED, _P_MEDIA_LINK, _P_MEDIA_ID, _P_PAYLOAD, _P_COUPON = range(6)


@dataclass(frozen=True, slots=True)
class _Source:
    empty_reason: str  # "empty_value:<label>"
    field: str | None
    const: str | None
    encode_url: bool


@dataclass(frozen=True, slots=True)
class _ComponentSpec:
    type: str
    sub_type: str | None
    index: str | None
    params: tuple[tuple[int, int, str | None, str | None], ...]  # (kind, value idx, name, media)


@dataclass(frozen=True, slots=True)
class _Plan:
    name: str
    language: str
    sources: tuple[_Source, ...]
    body_fmt: str
    header_fmt: str | None
    components: tuple[_ComponentSpec, ...]


def _fmt(text: str, index_of: Mapping[str, int]) -> str:
    """Template text → str.format string whose fields are indices into the values list."""
    out: list[str] = []
    pos = 0
    for m in _PLACEHOLDER_RE.finditer(text):
        out.append(text[pos : m.start()].replace("{", "{{").replace("}", "}}"))
        out.append(f"{{{index_of[m.group(1).strip()]}}}")
        pos = m.end()
    out.append(text[pos:].replace("{", "{{").replace("}", "}}"))
    return "".join(out)


def _status_problem(t: Template) -> str:
    who = f"template '{t.name}'/'{t.language}' is {t.status}"
    if t.status == "PAUSED":
        return f"{who}: run `broadcaster templates sync` or pick another"
    if t.status == "DISABLED":
        return f"{who} (paused too often, it will not come back): pick another template"
    if t.status in ("PENDING", "IN_APPEAL"):
        return f"{who} (in review, up to 24 h): wait, run `broadcaster templates sync` or pick another"
    if t.status == "REJECTED":
        reason = t.extra.get("rejected_reason")
        why = f" ({reason})" if isinstance(reason, str) and reason and reason != "NONE" else ""
        return f"{who}{why}: fix and resubmit it in WhatsApp Manager, or pick another"
    return f"{who}, only APPROVED templates can be sent: run `broadcaster templates sync` or pick another"


def _slot_hint(t: Template, slot: Slot) -> str:
    """What is missing and the fix, to follow "template '<name>'/'<lang>' "."""
    if slot.component == "body":
        return (
            f"body placeholder {{{{{slot.key}}}}} has no value: add variable `{slot.key}=contact.<field>` or a constant"
        )
    if slot.component == "header" and slot.key == "media":
        return (
            f"has an {t.header_format} header but no media: add variable "
            "`header.link=https://…` or `header.id=<media id>`"
        )
    if slot.component == "header":
        return f"header placeholder {{{{{slot.key}}}}} has no value: add variable `header.{slot.key}`"
    kind = "URL button" if slot.sub_type == "url" else "copy-code button"
    return f"{kind} {slot.button_index} has no value: add variable `button.{slot.button_index}`"


def _compile_variant(
    t: Template,
    bindings: Mapping[tuple[str, str], _Binding],
    used: set[tuple[str, str]],
) -> tuple[_Plan | None, list[str]]:
    """Check one variant against the bindings.

    Returns its plan (None if it has problems) and its problems, each worded to follow
    "template '<name>'/'<lang>' " so the caller can merge the same problem across languages.
    """
    problems: list[str] = []
    sources: list[_Source] = []
    specs: list[_ComponentSpec] = []
    header_params: list[tuple[int, int, str | None, str | None]] = []
    body_params: list[tuple[int, int, str | None, str | None]] = []
    body_index: dict[str, int] = {}
    header_index: dict[str, int] = {}
    button_specs: list[_ComponentSpec] = []
    named = t.parameter_format == "NAMED"

    def add(b: _Binding, label: str, encode_url: bool = False) -> int:
        used.add(b.target)
        const = b.const
        if const is not None and encode_url:
            const = quote(const, safe="/")
        sources.append(_Source(f"empty_value:{label}", b.field, const, encode_url))
        return len(sources) - 1

    for slot in t.slots:
        if slot.component == "header" and slot.key == "media":
            link, media_id = bindings.get(("header", "link")), bindings.get(("header", "id"))
            used.update(b.target for b in (link, media_id) if b is not None)
            if link is not None and media_id is not None:
                problems.append("media header: give header.link or header.id, not both")
                continue
            b = link or media_id
            if b is None:
                problems.append(_slot_hint(t, slot))
                continue
            if b is link and b.const is not None and not b.const.startswith(("https://", "http://")):
                problems.append(f"header.link {b.const[:60]!r} is not an http(s) URL")
                continue
            i = add(b, f"header.{b.target[1]}")
            kind = _P_MEDIA_LINK if b is link else _P_MEDIA_ID
            header_params.append((kind, i, None, t.header_format.lower()))  # type: ignore[union-attr]
        elif slot.component == "header":
            b = bindings.get(("header", slot.key))
            if b is None:
                problems.append(_slot_hint(t, slot))
                continue
            i = add(b, slot.label)
            header_index[slot.key] = i
            header_params.append((_P_NAMED if named else _P_TEXT, i, slot.key, None))
        elif slot.component == "body":
            b = bindings.get(("body", slot.key))
            if b is None:
                problems.append(_slot_hint(t, slot))
                continue
            i = add(b, slot.label)
            body_index[slot.key] = i
            body_params.append((_P_NAMED if named else _P_TEXT, i, slot.key, None))
        else:
            b = bindings.get(("button", str(slot.button_index)))
            if b is None:
                if slot.required:
                    problems.append(_slot_hint(t, slot))
                continue
            i = add(b, slot.label, encode_url=slot.sub_type == "url")
            kind = {"url": _P_TEXT, "quick_reply": _P_PAYLOAD}.get(slot.sub_type or "", _P_COUPON)
            button_specs.append(
                _ComponentSpec("button", slot.sub_type, str(slot.button_index), ((kind, i, None, None),))
            )
    if problems:
        return None, problems

    body_fmt = _fmt(t.body_text, body_index)
    header_fmt = _fmt(t.header_text, header_index) if t.header_format == "TEXT" else None
    # With every contact value at its shortest (1 char), is the text already too long?
    shortest = [s.const if s.field is None else "x" for s in sources]
    for label, fmt, limit in (("body", body_fmt, BODY_MAX_CHARS), ("header", header_fmt, HEADER_MAX_CHARS)):
        if fmt is not None and len(fmt.format(*shortest)) > limit:
            problems.append(
                f"{label} is {len(fmt.format(*shortest)):,} characters with the constant "
                f"values alone (limit {limit:,}): shorten the constants"
            )
    if problems:
        return None, problems

    if header_params:
        specs.append(_ComponentSpec("header", None, None, tuple(header_params)))
    if body_params:
        specs.append(_ComponentSpec("body", None, None, tuple(body_params)))
    specs.extend(button_specs)
    return _Plan(t.name, t.language, tuple(sources), body_fmt, header_fmt, tuple(specs)), []


# --------------------------------------------------------------------------------------------
# the campaign


class CompiledCampaign:
    """A template checked against a campaign's variables: one precompiled plan per language.

    Built only by `compile_campaign`. Immutable apart from a small cache in `choose_language`.
    """

    def __init__(
        self,
        name: str,
        default_language: str,
        plans: Mapping[str, _Plan],
        warnings: list[str],
        fallback: Mapping[str, str],
    ) -> None:
        self.name = name
        self.default_language = default_language
        self._plans = dict(plans)
        self.languages: frozenset[str] = frozenset(plans)
        self.warnings: tuple[str, ...] = tuple(warnings)
        self._fallback = dict(fallback)
        self._choices: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"<CompiledCampaign {self.name!r} default={self.default_language!r} languages={sorted(self.languages)}>"

    def choose_language(self, contact_language: str | None) -> str:
        """The approved variant to send a contact whose language is `contact_language`.

        Chain: exact match; the same code tidied (trimmed, `-` → `_`, `HI` → `hi`, `en_in` →
        `en_IN`); the fallback map (followed step by step, e.g. `bho` → `hi`); the base of a
        regional code (`en_IN` → `en`); finally the campaign default. Never raises; always
        returns a member of `languages`.
        """
        if not contact_language:
            return self.default_language
        hit = self._choices.get(contact_language)
        if hit is None:
            hit = self._resolve(contact_language)
            if len(self._choices) < _CHOICE_CACHE_MAX:
                self._choices[contact_language] = hit
        return hit

    def _resolve(self, raw: str) -> str:
        if raw in self.languages:
            return raw
        code: str | None = _tidy_code(raw)
        seen: set[str] = set()
        while code and code not in seen:
            if code in self.languages:
                return code
            seen.add(code)
            nxt = self._fallback.get(code)
            if nxt is None:
                base = code.partition("_")[0]
                nxt = base if base != code else None
            code = nxt
        return self.default_language

    def render_frozen(self, contact: Mapping[str, Any], frozen_language: str) -> Rendered | Skip:
        """Render a recipient whose variant was chosen when the audience was frozen; if that
        variant stopped being sendable since (paused), the contact's fallback chain decides."""
        if frozen_language not in self.languages:
            frozen_language = self.choose_language(contact.get("language"))
        return self.render(contact, frozen_language)

    def render(self, contact: Mapping[str, Any], language: str) -> Rendered | Skip:
        """Fill the `language` variant for one contact.

        Args:
            contact: the recipient's fields (and optional `attributes` mapping).
            language: a member of `languages` (use `choose_language`).

        Returns:
            `Rendered`, or `Skip(reason)` if a value is empty after cleaning or the filled body /
            header is over its limit. Data never raises.

        Raises:
            ValueError: `language` is not an approved variant of this campaign (a caller bug).
        """
        plan = self._plans.get(language)
        if plan is None:
            raise ValueError(
                f"template {self.name!r} has no approved {language!r} variant "
                f"(have {', '.join(sorted(self.languages))}): call choose_language() first"
            )
        values: list[str] = []
        for src in plan.sources:
            if src.field is None:
                values.append(src.const)  # type: ignore[arg-type]
                continue
            value = _lookup(contact, src.field)
            if value:
                value = clean_text(value)
            if not value:
                return Skip(src.empty_reason)
            values.append(quote(value, safe="/") if src.encode_url else value)
        body = plan.body_fmt.format(*values)
        if len(body) > BODY_MAX_CHARS:
            return Skip("body_too_long")
        header = None
        if plan.header_fmt is not None:
            header = plan.header_fmt.format(*values)
            if len(header) > HEADER_MAX_CHARS:
                return Skip("header_too_long")

        components: list[dict[str, Any]] = []
        for spec in plan.components:
            params: list[dict[str, Any]] = []
            for kind, i, pname, media in spec.params:
                if kind == _P_TEXT:
                    params.append({"type": "text", "text": values[i]})
                elif kind == _P_NAMED:
                    params.append({"type": "text", "parameter_name": pname, "text": values[i]})
                elif kind == _P_MEDIA_LINK:
                    params.append({"type": media, media: {"link": values[i]}})
                elif kind == _P_MEDIA_ID:
                    params.append({"type": media, media: {"id": values[i]}})
                elif kind == _P_PAYLOAD:
                    params.append({"type": "payload", "payload": values[i]})
                else:
                    params.append({"type": "coupon_code", "coupon_code": values[i]})
            if spec.type == "button":
                components.append(
                    {"type": "button", "sub_type": spec.sub_type, "index": spec.index, "parameters": params}
                )
            else:
                components.append({"type": spec.type, "parameters": params})
        template: dict[str, Any] = {"name": plan.name, "language": {"code": plan.language}}
        if components:
            template["components"] = components
        return Rendered(template, body, plan.language, header)


def _tidy_code(raw: str) -> str:
    base, sep, region = raw.strip().replace("-", "_").partition("_")
    return base.lower() + (sep + region.upper() if sep else "")


def compile_campaign(
    variants: Mapping[str, Template],
    variables: Mapping[str, str],
    *,
    default_language: str,
    fallback: Mapping[str, str] = DEFAULT_LANGUAGE_FALLBACK,
) -> CompiledCampaign:
    """Check a template's variants against a campaign's variables and precompile them.

    Args:
        variants: this template name's registry rows keyed by language code.
        variables: binding key → source (see the module docstring).
        default_language: the variant every unmatched contact gets; must exist and be APPROVED.
        fallback: contact language → language to try next (`DEFAULT_LANGUAGE_FALLBACK`).

    Returns:
        A `CompiledCampaign` whose `languages` are the usable (APPROVED, fully covered) variants.

    Raises:
        PreflightError: listing every problem at once (default variant missing or not approved,
        placeholders without a variable, variables matching no placeholder, media header without
        media, bad variable keys/sources, constants already over a length limit).
    """
    problems: list[str] = []
    warnings: list[str] = []
    if not variants:
        raise PreflightError(["no template variants given: run `broadcaster templates sync` and check the name"])
    names = {t.name for t in variants.values()}
    default = variants.get(default_language)
    name = default.name if default is not None else sorted(names)[0]
    for lang, t in variants.items():
        if t.language != lang or t.name != name:
            problems.append(f"variants[{lang!r}] is template '{t.name}'/'{t.language}', expected '{name}'/'{lang}'")
    if default is None:
        problems.append(
            f"template '{name}' has no '{default_language}' variant (the default language; have "
            f"{', '.join(sorted(variants))}): run `broadcaster templates sync` or pick a default "
            "from those"
        )

    bindings = _parse_bindings(variables, problems)

    # `checked`: variants whose placeholders the variables must cover. The default is always
    # checked (even when not APPROVED, so one run reports every fix); other languages only when
    # sendable. Only APPROVED, supported variants get a plan (and become `languages`).
    checked: list[Template] = []
    sendable: set[str] = set()
    for lang in sorted(variants):
        t = variants[lang]
        is_default = lang == default_language
        if t.unsupported:
            what = f"template '{t.name}'/'{t.language}' uses {', '.join(t.unsupported)}, which "
            if is_default:
                problems.append(what + "this sender cannot fill: pick another template")
            else:
                warnings.append(what + f"this sender cannot fill (contacts in '{lang}' get a fallback language)")
            continue
        if not t.is_approved:
            if is_default:
                problems.append(_status_problem(t))
                checked.append(t)
            else:
                warnings.append(_status_problem(t) + f" (contacts in '{lang}' get a fallback language)")
            continue
        checked.append(t)
        sendable.add(lang)

    used: set[tuple[str, str]] = set()
    plans: dict[str, _Plan] = {}
    merged: dict[str, list[str]] = {}  # problem → languages that have it, reported once
    for t in checked:
        plan, variant_problems = _compile_variant(t, bindings, used)
        for problem in variant_problems:
            merged.setdefault(problem, []).append(t.language)
        if plan is not None and t.language in sendable:
            plans[t.language] = plan
    for problem, langs in merged.items():
        if len(langs) == 1:
            problems.append(f"template '{name}'/'{langs[0]}' {problem}")
        else:
            problems.append(f"template '{name}' in {len(langs)} languages ({', '.join(langs)}) {problem}")

    if checked:
        optional = {s.label for t in checked for s in t.slots if not s.required}
        takes = sorted({s.label for t in checked for s in t.slots}, key=_label_order)
        takes = [_TAKES.get(label, label.removeprefix("body.")) + (" (optional)" if label in optional else "")
                 for label in takes]
        langs = ", ".join(t.language for t in checked)
        for target, b in bindings.items():
            if target not in used:
                problems.append(
                    f"variable `{b.key}` matches no placeholder in template '{name}' "
                    f"({langs}): remove it; the template takes {', '.join(takes) or 'no values'}"
                )

    if problems:
        raise PreflightError(problems, warnings)
    return CompiledCampaign(name, default_language, plans, warnings, fallback)


_TAKES = {"header.media": "header.link or header.id"}  # how a slot label reads as a variable key


def _label_order(label: str) -> tuple[int, int, str]:
    section, _, key = label.partition(".")
    return ({"header": 0, "body": 1, "button": 2}[section], int(key) if key.isdigit() else 0, key)


# --------------------------------------------------------------------------------------------
# the send payload

_NOT_ASCII_DIGIT = re.compile(r"[^0-9]")


def build_message(to_wa_id: str, template_obj: Mapping[str, Any], callback_data: str) -> bytes:
    """The whole Cloud API send body, as orjson bytes, for one template message.

    `to` is "+" followed by the ASCII digits of `to_wa_id` (anything else is dropped);
    `biz_opaque_callback_data` comes back on every status webhook (the ledger row id).

    Raises:
        ValueError: `to_wa_id` has fewer than 6 or more than 15 digits (message masks it).
    """
    digits = to_wa_id if to_wa_id.isascii() and to_wa_id.isdigit() else _NOT_ASCII_DIGIT.sub("", to_wa_id)
    if not 6 <= len(digits) <= 15:
        raise ValueError(f"recipient …{digits[-4:]} is not a WhatsApp number: need 6–15 digits, got {len(digits)}")
    return orjson.dumps(
        {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": "+" + digits,
            "type": "template",
            "template": template_obj,
            "biz_opaque_callback_data": callback_data,
        }
    )
