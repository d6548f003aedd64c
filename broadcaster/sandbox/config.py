"""SandboxConfig: every knob of the sandbox in one frozen record, checked at construction."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from broadcaster.errors import ConfigError

__all__ = ["RUNTIME_FIELDS", "SandboxConfig"]


@dataclass(frozen=True)
class SandboxConfig:
    """How the sandbox behaves. All rates are probabilities in [0, 1]; all times in seconds.

    Raises:
        ConfigError: a field is out of range; the message names the field.
    """

    host: str = "127.0.0.1"
    port: int = 0  # 0 = any free port; the bound URL is reported by serve_sandbox
    api_version: str = "v25.0"  # the version segment in the reported base URL (any vNN.N is served)
    token: str | None = field(default=None, repr=False)  # None = any Bearer token is accepted
    # Graph template dicts (the `data` items of GET message_templates). None = template sends are
    # checked for shape only; given = (name, language) must exist and be APPROVED, params must fit.
    templates: Sequence[Mapping[str, Any]] | None = None
    mps: int = 80  # accepted sends per phone_number_id per 1-s window; 0 = unlimited
    pair_interval_s: float = 0.0  # min gap between accepted sends to one recipient; 0 = off
    waba_id: str = "102290129340398"
    phone_number_id: str = "106540352242922"  # default number for /_sandbox/inbound
    display_phone_number: str = "15550783881"
    webhook_url: str | None = None  # None = no webhooks at all
    app_secret: str = field(default="sandbox-app-secret", repr=False)  # signs X-Hub-Signature-256
    undeliverable_suffixes: tuple[str, ...] = ()  # `to` ending in one → 200, then failed 131026
    read_rate: float = 0.5  # share of delivered messages that are also read
    enforce_service_window: bool = True  # non-template sends with no inbound in 24 h → 131047
    webhook_batch_size: int = 50  # statuses per POST (Meta: up to 1,000)
    webhook_delay_s: float = 0.0  # gap between accept → sent → delivered → read
    webhook_duplicate_rate: float = 0.0  # share of status events delivered twice
    webhook_reorder: bool = False  # shuffle the events inside each POST
    webhook_queue_size: int = 100_000  # pending events kept; beyond it the oldest is dropped
    webhook_concurrency: int = 4  # POSTs in flight at once
    webhook_max_attempts: int = 5  # per POST, on non-200 or connection errors
    webhook_timeout_s: float = 5.0  # per POST attempt
    stall_s: float = 120.0  # how long a `timeout` fault holds the response (longer than clients wait)
    seed: int = 0  # seeds every random choice (faults, read share, duplicates, reorder)

    def __post_init__(self) -> None:
        if self.templates is not None:
            object.__setattr__(self, "templates", tuple(self.templates))
        object.__setattr__(self, "undeliverable_suffixes", tuple(self.undeliverable_suffixes))
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"sandbox config field port: {self.port} is not a TCP port")
        for name in ("mps", "webhook_queue_size"):
            if getattr(self, name) < 0:
                raise ConfigError(f"sandbox config field {name}: {getattr(self, name)} is negative")
        for name in ("webhook_batch_size", "webhook_concurrency", "webhook_max_attempts"):
            if getattr(self, name) < 1:
                raise ConfigError(f"sandbox config field {name}: must be at least 1, "
                                  f"got {getattr(self, name)}")
        for name in ("pair_interval_s", "webhook_delay_s", "webhook_timeout_s", "stall_s"):
            if getattr(self, name) < 0:
                raise ConfigError(f"sandbox config field {name}: {getattr(self, name)} is negative")
        for name in ("read_rate", "webhook_duplicate_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"sandbox config field {name}: {getattr(self, name)} is not "
                                  "a probability in [0, 1]")
        if self.webhook_url is not None and not self.webhook_url.startswith(("http://",
                                                                             "https://")):
            raise ConfigError(f"sandbox config field webhook_url: {self.webhook_url!r} is not "
                              "an http(s) URL")
        if not self.api_version.startswith("v"):
            raise ConfigError(f"sandbox config field api_version: {self.api_version!r} should "
                              "look like 'v25.0'")

    def replace(self, **changes: Any) -> SandboxConfig:
        """A copy with `changes` applied and checked again."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ConfigError(f"sandbox config has no field {sorted(unknown)[0]!r}")
        return dataclasses.replace(self, **changes)


# Fields POST /_sandbox/config may change while the sandbox runs.
RUNTIME_FIELDS = frozenset({
    "mps", "pair_interval_s", "webhook_url", "read_rate", "undeliverable_suffixes",
    "enforce_service_window", "webhook_batch_size", "webhook_delay_s", "webhook_duplicate_rate",
    "webhook_reorder", "webhook_max_attempts", "webhook_timeout_s", "stall_s",
})
