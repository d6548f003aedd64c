"""WhatsApp message templates: registry, pre-send checks, per-contact rendering, payloads.

Layering: `cli → broadcaster → (segments, templates, ratelimit)`. This is a leaf package: pure
Python over values (no database, no HTTP) and it never imports `broadcaster`. The engine reads
templates (sync/import), calls `compile_campaign` before a campaign starts, then per recipient
`choose_language` → `render` → `build_message`, and turns `PreflightError` /
`TemplateFormatError` (both ValueError) into its own errors at its boundary.

    registry.py   Graph `message_templates` JSON → frozen `Template` records (+ `to_graph`)
    render.py     variables → `CompiledCampaign` (checked, precompiled per language) →
                  `Rendered` template objects or `Skip(reason)`; `clean_text`; `build_message`
"""

from templates.registry import (
    MEDIA_HEADER_FORMATS,
    Slot,
    Template,
    TemplateFormatError,
    load_message_templates,
    parse_message_templates,
)
from templates.render import (
    BODY_MAX_CHARS,
    CONTACT_FIELDS,
    DEFAULT_LANGUAGE_FALLBACK,
    HEADER_MAX_CHARS,
    CompiledCampaign,
    PreflightError,
    Rendered,
    Skip,
    build_message,
    clean_text,
    compile_campaign,
    contact_fields_used,
)

__all__ = [
    "BODY_MAX_CHARS",
    "CONTACT_FIELDS",
    "DEFAULT_LANGUAGE_FALLBACK",
    "HEADER_MAX_CHARS",
    "MEDIA_HEADER_FORMATS",
    "CompiledCampaign",
    "PreflightError",
    "Rendered",
    "Skip",
    "Slot",
    "Template",
    "TemplateFormatError",
    "build_message",
    "clean_text",
    "compile_campaign",
    "contact_fields_used",
    "load_message_templates",
    "parse_message_templates",
]
