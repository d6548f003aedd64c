"""Settings from the environment: one frozen record, read once, checked at construction.

Every setting has an env var; a missing required one raises ConfigError naming the variable.
Secrets (token, app secret) never appear in repr() or logs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from broadcaster.errors import ConfigError

DEFAULT_API_URL = "https://graph.facebook.com/v25.0"


@dataclass(frozen=True)
class Settings:
    database_url: str                      # DATABASE_URL; default: local server, db `broadcaster`
    whatsapp_api_url: str                  # WHATSAPP_API_URL: base incl. version, no trailing slash
    whatsapp_token: str | None = field(default=None, repr=False)        # WHATSAPP_TOKEN (Bearer)
    whatsapp_phone_number_id: str | None = None                        # WHATSAPP_PHONE_NUMBER_ID
    whatsapp_waba_id: str | None = None                                # WHATSAPP_WABA_ID
    whatsapp_app_secret: str | None = field(default=None, repr=False)   # WHATSAPP_APP_SECRET
    whatsapp_verify_token: str | None = field(default=None, repr=False)  # WHATSAPP_VERIFY_TOKEN
    slack_webhook_url: str | None = field(default=None, repr=False)     # SLACK_WEBHOOK_URL
    metrics_port: int | None = None                                    # BROADCASTER_METRICS_PORT
    pair_spacing_s: float = 6.0                                        # BROADCASTER_PAIR_SPACING_S

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env

        def get(name: str) -> str | None:
            value = env.get(name, "").strip()
            return value or None

        api_url = (get("WHATSAPP_API_URL") or DEFAULT_API_URL).rstrip("/")
        if not api_url.startswith(("http://", "https://")):
            raise ConfigError(f"WHATSAPP_API_URL must start with http:// or https://, got {api_url!r}")
        metrics_port = get("BROADCASTER_METRICS_PORT")
        if metrics_port is not None and not metrics_port.isdigit():
            raise ConfigError(f"BROADCASTER_METRICS_PORT must be a port number, got {metrics_port!r}")
        spacing = get("BROADCASTER_PAIR_SPACING_S") or "6"
        try:
            pair_spacing_s = float(spacing)
        except ValueError:
            pair_spacing_s = -1.0
        if not 0 <= pair_spacing_s <= 3600:
            raise ConfigError("BROADCASTER_PAIR_SPACING_S must be seconds between messages to one recipient, "
                              f"0 to 3600 (0 turns spacing off), got {spacing!r}")
        return cls(
            database_url=get("DATABASE_URL") or "postgresql://postgres@127.0.0.1:5432/broadcaster",
            whatsapp_api_url=api_url,
            whatsapp_token=get("WHATSAPP_TOKEN"),
            whatsapp_phone_number_id=get("WHATSAPP_PHONE_NUMBER_ID"),
            whatsapp_waba_id=get("WHATSAPP_WABA_ID"),
            whatsapp_app_secret=get("WHATSAPP_APP_SECRET"),
            whatsapp_verify_token=get("WHATSAPP_VERIFY_TOKEN"),
            slack_webhook_url=get("SLACK_WEBHOOK_URL"),
            metrics_port=int(metrics_port) if metrics_port else None,
            pair_spacing_s=pair_spacing_s,
        )

    def require(self, *names: str) -> None:
        """Raise ConfigError naming every listed setting (by env var) that is unset."""
        missing = [n for n in names if getattr(self, n.lower()) in (None, "")]
        if missing:
            env_names = ", ".join(n.upper() for n in missing)
            raise ConfigError(f"missing required environment variable(s): {env_names}")
