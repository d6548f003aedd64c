"""What the sandbox accepts on POST /messages: the request checks of §1 and §2.3, as pure functions.

`check_send(payload, templates, status_overrides)` returns a `Send` or raises `GraphError` with the
code Meta would answer synchronously:

    100     not an object, messaging_product/type/the type's object missing or wrong, text > 4,096
    131008  `to`, template name or language missing; an empty parameter
    131009  `to` is not a phone number (8-15 digits after dropping + - ( ) . and spaces)
    132001  template (name, language) unknown, or not APPROVED (PENDING, REJECTED, ...)
    132015  template PAUSED            132016  template DISABLED
    132000  parameter count (or the set of names) differs from the template's placeholders
    132012  a parameter's type does not fit its slot (e.g. text in an IMAGE header)
    132018  named and positional parameters mixed or used against the template's format;
            text containing a new line, a tab or 5 consecutive spaces (the doc also reports
            100 and 132000 for this; the sandbox picks 132018)
    132005  the hydrated header (> 60) or body (> 1,024, or > 32,768 when body-only) is too long

The placeholders are parsed here with a small regex, so the sandbox does not depend on the
`templates` package.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from broadcaster.errors import ConfigError
from broadcaster.sandbox.graph import GraphError

__all__ = ["Send", "TemplateSpec", "check_send", "index_templates", "normalise_to", "placeholders"]

TEXT_BODY_MAX = 4096  # chars in a text message body
HEADER_MAX = 60  # chars in a hydrated header text
BODY_MAX = 1024  # chars in a hydrated template body with other components
BODY_ONLY_MAX = 32768  # chars in a hydrated template body that is the only component
CALLBACK_DATA_MAX = 512  # chars of biz_opaque_callback_data
MEDIA_TYPES = ("image", "video", "document")
OTHER_TYPES = frozenset({"image", "video", "document", "audio", "sticker", "location", "contacts",
                         "interactive", "reaction"})
BAD_TEXT_DETAILS = ("Param text cannot have new-line/tab characters or more than 4 consecutive "
                    "spaces")

_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z0-9_]+)\s*\}\}")
_PHONE_JUNK = str.maketrans("", "", " -().")
_BAD_TEXT = re.compile(r"[\n\t]| {5}")


def placeholders(text: str) -> tuple[str, ...]:
    """Distinct placeholder names in order of first appearance: 'Hi {{1}} {{2}} {{1}}' → ('1','2')."""
    return tuple(dict.fromkeys(_PLACEHOLDER.findall(text)))


@dataclass(frozen=True, slots=True)
class TemplateSpec:
    """The parts of one Graph template that send-time checks need."""

    name: str
    language: str
    status: str  # APPROVED, PAUSED, ...
    category: str  # lower-case: marketing, utility, authentication
    named: bool  # parameter_format NAMED
    header_format: str | None  # TEXT, IMAGE, VIDEO, DOCUMENT, LOCATION or None
    header_text: str
    header_slots: tuple[str, ...]
    header_occurrences: tuple[str, ...]  # slot name per placeholder occurrence
    header_static: int  # characters outside placeholders
    body_text: str
    body_slots: tuple[str, ...]
    body_occurrences: tuple[str, ...]
    body_static: int
    buttons: tuple[tuple[str, int], ...]  # (type lower-case, placeholder count) per button index
    body_only: bool


def _spec(doc: Mapping[str, Any], where: str) -> TemplateSpec:
    name, language = doc.get("name"), doc.get("language")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}: field name is missing")
    if not isinstance(language, str) or not language:
        raise ConfigError(f"{where} ({name}): field language is missing")
    header_format, header_text, body_text = None, "", ""
    buttons: list[tuple[str, int]] = []
    kinds: set[str] = set()
    components = doc.get("components") or []
    if not isinstance(components, list):
        raise ConfigError(f"{where} ({name}/{language}): components is not a list")
    for comp in components:
        kind = str(comp.get("type", "")).upper()
        kinds.add(kind)
        if kind == "HEADER":
            header_format = str(comp.get("format", "TEXT")).upper()
            header_text = str(comp.get("text", ""))
        elif kind == "BODY":
            body_text = str(comp.get("text", ""))
        elif kind == "BUTTONS":
            for button in comp.get("buttons") or []:
                btype = str(button.get("type", "")).lower()
                url = str(button.get("url", "")) if btype == "url" else ""
                buttons.append((btype, len(placeholders(url))))
    text_header = header_format == "TEXT"
    return TemplateSpec(
        name=name, language=language, status=str(doc.get("status", "APPROVED")).upper(),
        category=str(doc.get("category", "MARKETING")).lower(),
        named=str(doc.get("parameter_format", "POSITIONAL")).upper() == "NAMED",
        header_format=header_format, header_text=header_text,
        header_slots=placeholders(header_text) if text_header else (),
        header_occurrences=tuple(_PLACEHOLDER.findall(header_text)) if text_header else (),
        header_static=len(_PLACEHOLDER.sub("", header_text)),
        body_text=body_text, body_slots=placeholders(body_text),
        body_occurrences=tuple(_PLACEHOLDER.findall(body_text)),
        body_static=len(_PLACEHOLDER.sub("", body_text)), buttons=tuple(buttons),
        body_only=kinds <= {"BODY"},
    )


def index_templates(docs: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str], TemplateSpec]:
    """Index Graph template dicts by (name, language).

    Raises:
        ConfigError: a template lacks a name or language (names its position).
    """
    index: dict[tuple[str, str], TemplateSpec] = {}
    for i, doc in enumerate(docs):
        spec = _spec(doc, f"templates[{i}]")
        index[spec.name, spec.language] = spec
    return index


def normalise_to(to: object) -> str:
    """The wa_id (digits) for a `to` value, or GraphError 131009/131008."""
    if to is None or to == "":
        raise GraphError(131008, "The parameter to is required.")
    if not isinstance(to, str):
        raise GraphError(131009, "The parameter to must be a string phone number.")
    digits = to.translate(_PHONE_JUNK)
    if digits.startswith("+"):
        digits = digits[1:]
    if not (digits.isascii() and digits.isdigit() and 8 <= len(digits) <= 15) or digits[0] == "0":
        raise GraphError(131009, "The parameter to is not a valid phone number "
                         "(expected + and 8-15 digits).")
    return digits


@dataclass(frozen=True, slots=True)
class Send:
    """A send that passed every synchronous check."""

    to: str  # as given
    wa_id: str  # digits
    type: str
    callback_data: str | None
    template: TemplateSpec | None  # the matched template, when templates are configured
    category: str  # pricing category for webhooks


# --------------------------------------------------------------------------- parameters


def _param_value(param: object, where: str, index: int) -> tuple[str | None, str | None]:
    """(parameter_name, text value or None for non-text kinds) of `where`.parameters[index]."""
    if not isinstance(param, dict):
        raise GraphError(100, f"{where}.parameters[{index}] must be an object.")
    kind = param.get("type")
    name = param.get("parameter_name")
    if name is not None and not isinstance(name, str):
        raise GraphError(100, f"{where}.parameters[{index}].parameter_name must be a string.")
    if kind == "text":
        text = param.get("text")
        if not isinstance(text, str):
            raise GraphError(100, f"{where}.parameters[{index}].text must be a string.")
        if not text:
            raise GraphError(131008, f"{where}.parameters[{index}].text is empty.")
        if _BAD_TEXT.search(text):
            raise GraphError(132018, f"{BAD_TEXT_DETAILS} ({where}.parameters[{index}]).")
        return name, text
    at = f"{where}.parameters[{index}]"
    if kind in ("currency", "date_time"):
        obj = param.get(kind)
        value = obj.get("fallback_value") if isinstance(obj, dict) else None
        if not isinstance(value, str) or not value:
            raise GraphError(131008, f"{at}.{kind}.fallback_value is required.")
        return name, value
    if kind in MEDIA_TYPES:
        media = param.get(kind)
        if not isinstance(media, dict) or not (media.get("link") or media.get("id")):
            raise GraphError(131008, f"{at}.{kind} needs a link or an id.")
        return name, None
    if kind in ("location", "payload", "coupon_code", "action"):
        if param.get(kind) in (None, ""):
            raise GraphError(131008, f"{at}.{kind} is required.")
        return name, None
    raise GraphError(100, f"{at}.type {kind!r} is not a supported parameter type.")


def _texts(params: list[object], where: str, spec: TemplateSpec | None) -> dict[str, str]:
    """Slot name → value for a header/body component (positional slots are '1', '2', ...)."""
    values: dict[str, str] = {}
    named = 0
    for i, param in enumerate(params):
        name, text = _param_value(param, where, i)
        if name is not None:
            named += 1
        key = name if name is not None else str(i + 1)
        if key in values:
            raise GraphError(132000, f"{where}: parameter {key!r} is given twice.")
        values[key] = text if text is not None else ""
    if named and named != len(params):
        raise GraphError(132018, f"{where} mixes named and positional parameters.")
    if spec is not None and params and bool(named) != spec.named:
        wanted = "named" if spec.named else "positional"
        raise GraphError(132018, f"{where}: template {spec.name} ({spec.language}) takes {wanted} "
                         "parameters.")
    return values


def _match_slots(values: dict[str, str], slots: tuple[str, ...], where: str, named: bool) -> None:
    if named:
        missing = [s for s in slots if s not in values]
        extra = [k for k in values if k not in slots]
        if missing or extra:
            raise GraphError(132000, f"{where}: expected parameters {list(slots)}, missing "
                             f"{missing}, unexpected {extra}.")
    elif len(values) != len(slots):
        raise GraphError(132000, f"{where}: expected {len(slots)} parameters, got {len(values)}.")


def _hydrated_len(static: int, occurrences: tuple[str, ...], values: dict[str, str]) -> int:
    """Length of a text with every placeholder occurrence replaced by its value."""
    return static + sum(len(values[s]) for s in occurrences)


def _components(template: dict[str, Any]) -> tuple[list[object] | None, list[object] | None,
                                                    dict[int, tuple[str, list[object]]]]:
    components = template.get("components", [])
    if not isinstance(components, list):
        raise GraphError(100, "template.components must be a list.")
    header = body = None
    buttons: dict[int, tuple[str, list[object]]] = {}
    for i, comp in enumerate(components):
        where = f"template.components[{i}]"
        if not isinstance(comp, dict):
            raise GraphError(100, f"{where} must be an object.")
        params = comp.get("parameters", [])
        if not isinstance(params, list):
            raise GraphError(100, f"{where}.parameters must be a list.")
        kind = str(comp.get("type", "")).lower()
        if kind == "header":
            header = params
        elif kind == "body":
            body = params
        elif kind == "button":
            try:
                index = int(comp.get("index"))  # type: ignore[arg-type]
            except (TypeError, ValueError):
                raise GraphError(100, f"{where}.index must be a button position.") from None
            if index in buttons:
                raise GraphError(100, f"{where}: button {index} is given twice.")
            buttons[index] = (str(comp.get("sub_type", "")).lower(), params)
        else:
            raise GraphError(100, f"{where}.type {comp.get('type')!r} is not header, body or "
                             "button.")
    return header, body, buttons


def _check_template(template: object, specs: dict[tuple[str, str], TemplateSpec] | None,
                    overrides: Mapping[str, str]) -> TemplateSpec | None:
    if not isinstance(template, dict):
        raise GraphError(100, "The parameter template must be an object.")
    name = template.get("name")
    language = template.get("language")
    code = language.get("code") if isinstance(language, dict) else None
    if not isinstance(name, str) or not name:
        raise GraphError(131008, "The parameter template.name is required.")
    if not isinstance(code, str) or not code:
        raise GraphError(131008, "The parameter template.language.code is required.")
    header, body, buttons = _components(template)
    spec = None
    if specs is not None:
        spec = specs.get((name, code))
        if spec is None:
            raise GraphError(132001, f"template name ({name}) does not exist in {code}")
        status = overrides.get(f"{name}/{code}", spec.status).upper()
        if status == "PAUSED":
            raise GraphError(132015, f"template {name} ({code}) is PAUSED.")
        if status == "DISABLED":
            raise GraphError(132016, f"template {name} ({code}) is DISABLED.")
        if status != "APPROVED":
            raise GraphError(132001, f"template {name} ({code}) is {status}, not APPROVED.")
    _check_header(header, spec)
    body_values = _texts(body or [], "template body", spec)
    if spec is None:
        limit = BODY_ONLY_MAX if header is None and not buttons else BODY_MAX
        if any(len(v) > limit for v in body_values.values()):
            raise GraphError(132005, f"a body parameter is longer than {limit} characters.")
    else:
        _match_slots(body_values, spec.body_slots, "template body", spec.named)
        size = _hydrated_len(spec.body_static, spec.body_occurrences, body_values)
        limit = BODY_ONLY_MAX if spec.body_only else BODY_MAX
        if size > limit:
            raise GraphError(132005, f"hydrated body is {size} characters, over {limit}.")
        _check_buttons(buttons, spec)
    return spec


def _check_header(params: list[object] | None, spec: TemplateSpec | None) -> None:
    where = "template header"
    fmt = spec.header_format if spec is not None else None
    if spec is not None and fmt in ("IMAGE", "VIDEO", "DOCUMENT", "LOCATION"):
        if not params:
            raise GraphError(132000, f"{where}: a {fmt} parameter is required.")
        if len(params) != 1:
            raise GraphError(132000, f"{where}: expected 1 parameter, got {len(params)}.")
        kind = params[0].get("type") if isinstance(params[0], dict) else None
        if kind != fmt.lower():
            raise GraphError(132012, f"{where}: expected a {fmt.lower()} parameter, got {kind!r}.")
        _param_value(params[0], where, 0)
        return
    values = _texts(params or [], where, spec)
    if spec is None:
        if any(len(v) > HEADER_MAX for v in values.values()):
            raise GraphError(132005, f"a header parameter is longer than {HEADER_MAX} characters.")
        return
    _match_slots(values, spec.header_slots, where, spec.named)
    if values and _hydrated_len(spec.header_static, spec.header_occurrences, values) > HEADER_MAX:
        raise GraphError(132005, f"hydrated header is over {HEADER_MAX} characters.")


def _check_buttons(given: dict[int, tuple[str, list[object]]], spec: TemplateSpec) -> None:
    for index, (btype, slots) in enumerate(spec.buttons):
        if slots and index not in given:
            raise GraphError(132000, f"template button {index} ({btype}) needs a parameter.")
    for index, (sub_type, params) in given.items():
        where = f"template button {index}"
        if not 0 <= index < len(spec.buttons):
            raise GraphError(132000, f"{where}: the template has {len(spec.buttons)} buttons.")
        btype, slots = spec.buttons[index]
        if sub_type != btype:
            raise GraphError(132012, f"{where}: sub_type {sub_type!r} does not match the "
                             f"template's {btype} button.")
        for i, param in enumerate(params):
            _param_value(param, where, i)
        if btype == "url" and len(params) != slots:
            raise GraphError(132000, f"{where}: expected {slots} parameters, got {len(params)}.")


# --------------------------------------------------------------------------- the request


def check_send(payload: object, specs: dict[tuple[str, str], TemplateSpec] | None,
               overrides: Mapping[str, str] | None = None) -> Send:
    """Check one POST /messages body; return what was sent, or raise `GraphError`.

    Args:
        payload: the parsed JSON body.
        specs: templates by (name, language); None skips template existence and slot checks.
        overrides: {"name/language": STATUS} forced by fault injection.
    """
    if not isinstance(payload, dict):
        raise GraphError(100, "The request body must be a JSON object.")
    if payload.get("messaging_product") != "whatsapp":
        raise GraphError(100, "The parameter messaging_product is required and must be "
                         "'whatsapp'.")
    recipient_type = payload.get("recipient_type", "individual")
    if recipient_type != "individual":
        raise GraphError(100, f"recipient_type {recipient_type!r} is not supported by the sandbox.")
    wa_id = normalise_to(payload.get("to"))
    kind = payload.get("type")
    if not isinstance(kind, str) or not kind:
        raise GraphError(100, "The parameter type is required.")
    callback = payload.get("biz_opaque_callback_data")
    if callback is not None and (not isinstance(callback, str)
                                 or len(callback) > CALLBACK_DATA_MAX):
        raise GraphError(100, f"biz_opaque_callback_data must be a string of at most "
                         f"{CALLBACK_DATA_MAX} characters.")
    obj = payload.get(kind)
    spec = None
    if kind == "template":
        spec = _check_template(obj, specs, overrides or {})
        category = spec.category if spec is not None else "marketing"
    elif kind == "text":
        body = obj.get("body") if isinstance(obj, dict) else None
        if not isinstance(body, str) or not body:
            raise GraphError(100, "The parameter text.body is required.")
        if len(body) > TEXT_BODY_MAX:
            raise GraphError(100, f"text.body is {len(body)} characters, over {TEXT_BODY_MAX}.")
        category = "service"
    elif kind in OTHER_TYPES:
        if not isinstance(obj, dict):
            raise GraphError(100, f"The parameter {kind} is required and must be an object.")
        category = "service"
    else:
        raise GraphError(100, f"type {kind!r} is not a supported message type.")
    return Send(payload["to"], wa_id, kind, callback, spec, category)
