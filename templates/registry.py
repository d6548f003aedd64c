"""Message templates as the Graph API lists them, parsed once into frozen `Template` records.

The input is the `GET /{WABA_ID}/message_templates` answer (`{"data": [...], "paging": ...}`) or a
bare list of the same entries, as a dict/list, JSON bytes or a JSON string. Parsing is strict about
structure and lenient about content Meta may grow (new statuses, new button types):

- structure problems (missing name, a BODY that is not a string, a placeholder such as `{{Foo}}`,
  positional and named placeholders mixed in one template, `{{1}} {{3}}` with no `{{2}}`, a
  duplicate (name, language) pair) raise `TemplateFormatError`, naming source, entry, field;
- component kinds the renderer cannot fill (a LOCATION header, a CAROUSEL, …) parse fine and are
  listed in `Template.unsupported`; `templates.render.compile_campaign` refuses such a template.

Nothing here checks status or sends anything; see `templates.render` for that.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

__all__ = [
    "MEDIA_HEADER_FORMATS",
    "Slot",
    "Template",
    "TemplateFormatError",
    "load_message_templates",
    "parse_message_templates",
]

HeaderFormat = Literal["TEXT", "IMAGE", "VIDEO", "DOCUMENT", "LOCATION"]
ParameterFormat = Literal["POSITIONAL", "NAMED"]

#: Header formats whose value is a media object (`header.link` or `header.id` at send time).
MEDIA_HEADER_FORMATS = frozenset({"IMAGE", "VIDEO", "DOCUMENT"})
_HEADER_FORMATS = frozenset({"TEXT", "LOCATION"}) | MEDIA_HEADER_FORMATS
_KNOWN_COMPONENTS = frozenset({"HEADER", "BODY", "FOOTER", "BUTTONS"})
# Top-level keys the record models itself; any other key is kept verbatim in `Template.extra`.
_MODELLED_KEYS = frozenset({"name", "language", "status", "category", "parameter_format", "id", "components"})

_NAME_RE = re.compile(r"[a-z0-9_]{1,512}")
_LANGUAGE_RE = re.compile(r"[a-z]{2,3}(?:_[A-Za-z0-9]{2,4})?")
_PLACEHOLDER_RE = re.compile(r"\{\{([^{}]*)\}\}")
_POSITIONAL_RE = re.compile(r"[1-9][0-9]*")
_NAMED_RE = re.compile(r"[a-z_][a-z0-9_]*")


class TemplateFormatError(ValueError):
    """A message-templates document is malformed.

    The message names the source, the entry (0-based index into `data`), the template's
    name/language when known, the field path and the problem, e.g.
    "message_templates.json entry 3 ('foo'/'hi'), field components[1].text: …".
    `source`, `index` and `field` are also attributes (index/field are None for whole-document
    problems such as invalid JSON).
    """

    def __init__(self, message: str, *, source: str, index: int | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.source = source
        self.index = index
        self.field = field


@dataclass(frozen=True, slots=True)
class Slot:
    """One value the send payload must carry, in payload order (header, body, buttons by index).

    `key` is the placeholder (`"1"`, `"first_name"`), `"media"` for an IMAGE/VIDEO/DOCUMENT
    header, or `"payload"` / `"coupon_code"` for quick-reply / copy-code buttons.
    `sub_type` is the button's Cloud API sub_type (`url`, `quick_reply`, `copy_code`), else None.
    A quick-reply payload is the only optional slot: unbound, its component is simply omitted.
    """

    component: Literal["header", "body", "button"]
    key: str
    button_index: int | None = None
    sub_type: str | None = None

    @property
    def required(self) -> bool:
        """Whether the send fails without this value (Meta: parameter count must match)."""
        return self.sub_type != "quick_reply"

    @property
    def label(self) -> str:
        """Short stable name: `body.1`, `header.first_name`, `header.media`, `button.0`."""
        if self.component == "button":
            return f"button.{self.button_index}"
        return f"{self.component}.{self.key}"


@dataclass(frozen=True)
class Template:
    """One (name, language) template as the registry knows it. (name, language) is the real key.

    `components` holds the raw Graph component dicts (a private deep copy; treat as read-only).
    The derived fields (`slots`, `header_format`, `header_text`, `body_text`, `footer_text`) are
    computed by the parser and always agree with `components`. `unsupported` lists, in words,
    the parts the renderer cannot fill (empty for every template it can send).
    """

    name: str
    language: str
    status: str
    category: str | None
    parameter_format: ParameterFormat
    template_id: str | None
    components: tuple[dict[str, Any], ...] = field(hash=False, repr=False)
    slots: tuple[Slot, ...] = ()
    header_format: HeaderFormat | None = None
    header_text: str | None = None
    body_text: str = ""
    footer_text: str | None = None
    unsupported: tuple[str, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=False, repr=False)

    @property
    def key(self) -> tuple[str, str]:
        """(name, language): the pair Meta identifies a template by."""
        return (self.name, self.language)

    @property
    def is_approved(self) -> bool:
        """True only for APPROVED, the one status Meta lets us send."""
        return self.status == "APPROVED"

    @classmethod
    def from_graph(cls, entry: Any, *, source: str = "<input>", index: int = 0) -> Template:
        """Parse one Graph entry. Raises TemplateFormatError like `parse_message_templates`."""
        return _parse_entry(entry, source, index)

    def to_graph(self) -> dict[str, Any]:
        """This template in the Graph `message_templates` entry shape (a fresh deep copy).

        Round trip: `Template.from_graph(t.to_graph()) == t`. Status and parameter_format come
        out upper-case (the parser normalises them); unmodelled keys (`quality_score`,
        `rejected_reason`, …) are kept.
        """
        out: dict[str, Any] = {
            "name": self.name,
            "language": self.language,
            "status": self.status,
        }
        if self.category is not None:
            out["category"] = self.category
        out["parameter_format"] = self.parameter_format
        if self.template_id is not None:
            out["id"] = self.template_id
        out.update(copy.deepcopy(dict(self.extra)))
        out["components"] = copy.deepcopy(list(self.components))
        return out


def load_message_templates(path: str | os.PathLike[str]) -> list[Template]:
    """Read and parse a message-templates JSON file; errors name the file.

    Raises:
        TemplateFormatError: unreadable file or malformed document.
    """
    source = os.fspath(path)
    try:
        with open(source, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise TemplateFormatError(f"{source}: cannot read: {exc.strerror or exc}", source=source) from exc
    return parse_message_templates(raw, source=os.path.basename(source) or source)


def parse_message_templates(doc: Any, source: str = "<input>") -> list[Template]:
    """Parse a Graph `message_templates` answer (or a bare list of entries) into Templates.

    Args:
        doc: `{"data": [...], "paging": ...}`, a list of entries, or either as JSON bytes/str.
        source: a name for error messages (usually the file name).

    Returns:
        The templates in document order.

    Raises:
        TemplateFormatError: the first problem found (never any other exception for bad input).
    """
    if isinstance(doc, bytes | bytearray | memoryview | str):
        try:
            doc = orjson.loads(doc)
        except orjson.JSONDecodeError as exc:
            raise TemplateFormatError(f"{source}: not valid JSON: {exc}", source=source) from exc
    if isinstance(doc, Mapping):
        if "data" not in doc:
            raise TemplateFormatError(
                f"{source}: expected a 'data' list (the Graph message_templates answer), "
                f"found keys {sorted(map(str, doc))[:5]}",
                source=source,
            )
        entries = doc["data"]
        if not isinstance(entries, list):
            raise TemplateFormatError(f"{source}, field data: expected a list, got {_kind(entries)}", source=source)
    elif isinstance(doc, list):
        entries = doc
    else:
        raise TemplateFormatError(
            f"{source}: expected an object with 'data' or a list, got {_kind(doc)}", source=source
        )

    out: list[Template] = []
    seen: dict[tuple[str, str], int] = {}
    for index, entry in enumerate(entries):
        template = _parse_entry(entry, source, index)
        first = seen.setdefault(template.key, index)
        if first != index:
            raise _Where(source, index, entry).error(
                "language", f"duplicate of entry {first}: (name, language) must be unique"
            )
        out.append(template)
    return out


# --------------------------------------------------------------------------------------------
# internals


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


class _Where:
    """Builds error messages for one entry: "<source> entry <i> ('<name>'/'<lang>'), field …"."""

    def __init__(self, source: str, index: int, entry: Any) -> None:
        self.source = source
        self.index = index
        name = entry.get("name") if isinstance(entry, Mapping) else None
        lang = entry.get("language") if isinstance(entry, Mapping) else None
        self.who = f"({_short(name)}/{_short(lang)})"

    def error(self, field_path: str, problem: str) -> TemplateFormatError:
        return TemplateFormatError(
            f"{self.source} entry {self.index} {self.who}, field {field_path}: {problem}",
            source=self.source,
            index=self.index,
            field=field_path,
        )


def _short(value: Any) -> str:
    if isinstance(value, str):
        return repr(value if len(value) <= 40 else value[:40] + "…")
    return "?"


def _req_str(obj: Mapping[str, Any], key: str, where: _Where, path: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise where.error(path, f"expected a string, got {_kind(value)}")
    return value


def _parse_entry(entry: Any, source: str, index: int) -> Template:
    where = _Where(source, index, entry)
    if not isinstance(entry, Mapping):
        raise where.error("(entry)", f"expected an object, got {_kind(entry)}")

    name = _req_str(entry, "name", where, "name")
    if not _NAME_RE.fullmatch(name):
        raise where.error("name", f"{name[:60]!r} is not a template name (lowercase a-z, 0-9 and _, ≤ 512)")
    language = _req_str(entry, "language", where, "language")
    if not _LANGUAGE_RE.fullmatch(language):
        hint = " (codes use '_', not '-')" if "-" in language else ""
        raise where.error("language", f"{language[:20]!r} is not a language code{hint}")
    status = _req_str(entry, "status", where, "status").strip().upper()
    if not status:
        raise where.error("status", "empty status")
    category = entry.get("category")
    if category is not None and not isinstance(category, str):
        raise where.error("category", f"expected a string, got {_kind(category)}")
    template_id = entry.get("id")
    if isinstance(template_id, int) and not isinstance(template_id, bool):
        template_id = str(template_id)
    if template_id is not None and not isinstance(template_id, str):
        raise where.error("id", f"expected a string, got {_kind(template_id)}")
    declared = entry.get("parameter_format")
    if declared is not None:
        if not isinstance(declared, str) or declared.upper() not in ("POSITIONAL", "NAMED"):
            raise where.error("parameter_format", f"expected 'POSITIONAL' or 'NAMED', got {declared!r:.40}")
        declared = declared.upper()

    components = entry.get("components")
    if not isinstance(components, list) or not components:
        raise where.error("components", f"expected a non-empty list, got {_kind(components)}")

    parts = _parse_components(components, where)
    # Header + body placeholders decide the format; URL buttons always carry their own {{1}}.
    text_holders = parts.header_holders + parts.body_holders
    positional = [h for h in text_holders if h.positional]
    named = [h for h in text_holders if not h.positional]
    if positional and named:
        later = max(positional[0], named[0], key=lambda h: h.order)
        raise where.error(
            later.path,
            f"mixes positional {{{{{positional[0].key}}}}} and named {{{{{named[0].key}}}}} "
            "placeholders; a template uses one format only",
        )
    inferred: ParameterFormat = "NAMED" if named else "POSITIONAL"
    parameter_format: ParameterFormat = declared or inferred  # type: ignore[assignment]
    if text_holders and parameter_format != inferred:
        first = text_holders[0]
        raise where.error(
            first.path,
            f"parameter_format is {parameter_format} but the text uses "
            f"{inferred.lower()} placeholder {{{{{first.key}}}}}",
        )
    if parameter_format == "POSITIONAL":
        _check_numbering(parts.body_holders, where)
        for h in parts.header_holders:
            if h.key != "1":
                raise where.error(h.path, f"a header's one placeholder must be {{{{1}}}}, got {{{{{h.key}}}}}")

    slots: list[Slot] = []
    if parts.header_format == "TEXT":
        slots.extend(Slot("header", h.key) for h in _unique(parts.header_holders))
    elif parts.header_format in MEDIA_HEADER_FORMATS:
        slots.append(Slot("header", "media"))
    body_unique = _unique(parts.body_holders)
    if parameter_format == "POSITIONAL":
        body_unique.sort(key=lambda h: int(h.key))
    slots.extend(Slot("body", h.key) for h in body_unique)
    slots.extend(parts.button_slots)

    extra = {k: copy.deepcopy(v) for k, v in entry.items() if k not in _MODELLED_KEYS}
    return Template(
        name=name,
        language=language,
        status=status,
        category=category,
        parameter_format=parameter_format,
        template_id=template_id,
        components=tuple(copy.deepcopy(components)),
        slots=tuple(slots),
        header_format=parts.header_format,  # type: ignore[arg-type]
        header_text=parts.header_text,
        body_text=parts.body_text,
        footer_text=parts.footer_text,
        unsupported=tuple(parts.unsupported),
        extra=extra,
    )


@dataclass
class _Holder:
    key: str
    positional: bool
    path: str
    order: int


@dataclass
class _Parts:
    header_format: str | None = None
    header_text: str | None = None
    body_text: str | None = None
    footer_text: str | None = None
    header_holders: list[_Holder] = field(default_factory=list)
    body_holders: list[_Holder] = field(default_factory=list)
    button_slots: list[Slot] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)


def _placeholders(text: str, where: _Where, path: str, counter: list[int]) -> list[_Holder]:
    holders: list[_Holder] = []
    for match in _PLACEHOLDER_RE.finditer(text):
        inner = match.group(1).strip()
        if _POSITIONAL_RE.fullmatch(inner):
            positional = True
        elif _NAMED_RE.fullmatch(inner):
            positional = False
        else:
            raise where.error(
                path,
                f"invalid placeholder {match.group(0)[:40]!r}: use {{{{1}}}}, {{{{2}}}}… or "
                "lowercase names such as {{first_name}}",
            )
        counter[0] += 1
        holders.append(_Holder(inner, positional, path, counter[0]))
    return holders


def _unique(holders: list[_Holder]) -> list[_Holder]:
    seen: set[str] = set()
    out = []
    for h in holders:
        if h.key not in seen:
            seen.add(h.key)
            out.append(h)
    return out


def _check_numbering(holders: list[_Holder], where: _Where) -> None:
    numbers = {int(h.key) for h in holders}
    if numbers and numbers != set(range(1, max(numbers) + 1)):
        missing = min(set(range(1, max(numbers) + 1)) - numbers)
        raise where.error(
            holders[0].path,
            f"placeholders must be numbered {{{{1}}}}…{{{{n}}}} without gaps: {{{{{missing}}}}} is missing",
        )


def _parse_components(components: list[Any], where: _Where) -> _Parts:
    parts = _Parts()
    seen: dict[str, int] = {}
    counter = [0]
    for i, comp in enumerate(components):
        path = f"components[{i}]"
        if not isinstance(comp, Mapping):
            raise where.error(path, f"expected an object, got {_kind(comp)}")
        ctype = comp.get("type")
        if not isinstance(ctype, str) or not ctype:
            raise where.error(f"{path}.type", f"expected a string, got {_kind(ctype)}")
        ctype = ctype.upper()
        if ctype not in _KNOWN_COMPONENTS:
            parts.unsupported.append(f"component {ctype}")
            continue
        if ctype in seen:
            raise where.error(f"{path}.type", f"second {ctype} component (first at components[{seen[ctype]}])")
        seen[ctype] = i
        if ctype == "HEADER":
            _parse_header(comp, where, path, parts, counter)
        elif ctype == "BODY":
            text = _req_str(comp, "text", where, f"{path}.text")
            if not text.strip():
                raise where.error(f"{path}.text", "the body is empty")
            parts.body_text = text
            parts.body_holders = _placeholders(text, where, f"{path}.text", counter)
        elif ctype == "FOOTER":
            text = _req_str(comp, "text", where, f"{path}.text")
            if _PLACEHOLDER_RE.search(text):
                raise where.error(f"{path}.text", "a footer cannot have placeholders")
            parts.footer_text = text
        else:
            _parse_buttons(comp, where, path, parts)
    if parts.body_text is None:
        raise where.error("components", "no BODY component (the body is required)")
    return parts


def _parse_header(comp: Mapping[str, Any], where: _Where, path: str, parts: _Parts, counter: list[int]) -> None:
    fmt = comp.get("format")
    if not isinstance(fmt, str) or fmt.upper() not in _HEADER_FORMATS:
        raise where.error(
            f"{path}.format",
            f"expected one of {', '.join(sorted(_HEADER_FORMATS))}, got {fmt!r:.40}",
        )
    fmt = fmt.upper()
    parts.header_format = fmt
    if fmt == "TEXT":
        text = _req_str(comp, "text", where, f"{path}.text")
        holders = _placeholders(text, where, f"{path}.text", counter)
        if len(_unique(holders)) > 1:
            raise where.error(f"{path}.text", "a text header allows at most one placeholder")
        parts.header_text = text
        parts.header_holders = holders
    elif fmt == "LOCATION":
        parts.unsupported.append("LOCATION header")


def _parse_buttons(comp: Mapping[str, Any], where: _Where, path: str, parts: _Parts) -> None:
    buttons = comp.get("buttons")
    if not isinstance(buttons, list) or not buttons:
        raise where.error(f"{path}.buttons", f"expected a non-empty list, got {_kind(buttons)}")
    if len(buttons) > 10:
        raise where.error(f"{path}.buttons", f"{len(buttons)} buttons; at most 10 are allowed")
    for j, button in enumerate(buttons):
        bpath = f"{path}.buttons[{j}]"
        if not isinstance(button, Mapping):
            raise where.error(bpath, f"expected an object, got {_kind(button)}")
        btype = button.get("type")
        if not isinstance(btype, str) or not btype:
            raise where.error(f"{bpath}.type", f"expected a string, got {_kind(btype)}")
        btype = btype.upper()
        if btype == "URL":
            url = _req_str(button, "url", where, f"{bpath}.url")
            matches = list(_PLACEHOLDER_RE.finditer(url))
            if len(matches) > 1:
                raise where.error(f"{bpath}.url", "a URL button allows one placeholder")
            if matches:
                m = matches[0]
                inner = m.group(1).strip()
                if not (_POSITIONAL_RE.fullmatch(inner) or _NAMED_RE.fullmatch(inner)):
                    raise where.error(f"{bpath}.url", f"invalid placeholder {m.group(0)[:40]!r}")
                if m.end() != len(url):
                    raise where.error(f"{bpath}.url", "the URL placeholder must be at the end")
                parts.button_slots.append(Slot("button", inner, j, "url"))
        elif btype == "QUICK_REPLY":
            parts.button_slots.append(Slot("button", "payload", j, "quick_reply"))
        elif btype == "COPY_CODE":
            parts.button_slots.append(Slot("button", "coupon_code", j, "copy_code"))
        # PHONE_NUMBER, FLOW, OTP, … take no send-time value we fill.
