"""`[[alerts]]`: where dvmirror tells people that syncing needs them (a webhook), and about what.

The webhook URL of Teams or Slack is itself the secret (whoever has it can post to the channel),
so it is given the way client secrets are: `url = { env = "VAR" }`, `{ file = "path" }` or
`{ credential = "name" }`, never written into the file. Only its origin (scheme://host) is ever
shown, in logs, errors and `status`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator

from sync.config.credentials import SecretRef, checked_ca_bundle, resolve_secret
from sync.config.values import SAFE_NAME, FrozenModel, check_url, parse_interval, validation_context

# State events: raised while a condition holds, reminded every `repeat`, and (when `recovered`
# is listed) followed by one `recovered` message once it ends. `schema_type_change` is a one-off.
STATE_EVENTS = (
    "table_parked",
    "lag_exceeded",
    "verify_mismatch",
    "auth_failed",
    "budget_exhausted",
)
ONE_OFF_EVENTS = ("schema_type_change",)
EVENTS = (*STATE_EVENTS, *ONE_OFF_EVENTS, "recovered")
DEFAULT_REPEAT = 6 * 3600.0


class Alert(FrozenModel):
    """One `[[alerts]]` entry: a webhook, its payload format, which tenants and events."""

    name: str = ""  # default alert1, alert2, … (set by Settings); its state is kept under it
    url: SecretStr = Field(repr=False)
    format: Literal["json", "teams", "slack"] = "json"
    tenants: tuple[str, ...] | None = None
    events: tuple[str, ...] = tuple(e for e in EVENTS if e != "lag_exceeded")
    lag_threshold: float | None = None
    repeat: float = DEFAULT_REPEAT
    ca_bundle: Path | None = None
    # Filled in by validation: what may be shown of the URL.
    origin: str = ""

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if value and not SAFE_NAME.match(value):
            raise ValueError(
                f"{value!r} is not a safe name: lower-case letters, digits and underscores"
            )
        return value

    @field_validator("url", mode="before")
    @classmethod
    def _url(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, str):
            raise ValueError(
                "a webhook URL is a secret (whoever has it can post): do not write it into the "
                'file; use url = { env = "VAR" }, { file = "path" } or { credential = "name" }'
            )
        if isinstance(value, dict):
            return resolve_secret(SecretRef.model_validate(value), info)
        raise ValueError(
            'give url as { env = "VAR" }, { file = "path" } or { credential = "name" }'
        )

    @field_validator("events", mode="before")
    @classmethod
    def _events(cls, value: Any) -> Any:
        if not isinstance(value, list | tuple) or not value:
            raise ValueError(f"list the events to send, among: {', '.join(EVENTS)}")
        for event in value:
            if event not in EVENTS:
                raise ValueError(f"unknown event {event!r}; known: {', '.join(EVENTS)}")
        return value

    @field_validator("lag_threshold", "repeat", mode="before")
    @classmethod
    def _interval(cls, value: Any) -> Any:
        if isinstance(value, str):
            return parse_interval(value)
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise ValueError(f'{value!r} is not an interval; write it like "30m"')
        return value

    @field_validator("ca_bundle")
    @classmethod
    def _ca_bundle(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return checked_ca_bundle(value, info)

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> Alert:
        if "lag_exceeded" in self.events and self.lag_threshold is None:
            raise ValueError('lag_exceeded needs lag_threshold, e.g. lag_threshold = "1h"')
        if set(self.events) == {"recovered"}:
            raise ValueError("recovered alone sends nothing: list the events it follows")
        secret = self.url.get_secret_value()
        if secret:  # empty when secrets are not resolved (status, migrate)
            allow_insecure = bool(validation_context(info).get("allow_insecure", False))
            try:
                check_url(secret, allow_insecure=allow_insecure, what="the webhook url")
            except ValueError:
                # The message would quote the URL: say what is wrong without it.
                parts = urlsplit(secret)
                raise ValueError(
                    "the webhook url (from its secret) must be an absolute https URL"
                    + (
                        " (plain http only to a loopback address with app.allow_insecure = true)"
                        if parts.scheme == "http"
                        else ""
                    )
                ) from None
            parts = urlsplit(secret)
            object.__setattr__(self, "origin", f"{parts.scheme}://{parts.netloc}".lower())
        return self

    def wants(self, event: str) -> bool:
        return event in self.events

    def covers(self, tenant: str) -> bool:
        return self.tenants is None or tenant in self.tenants
