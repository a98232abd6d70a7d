"""Plain value checks shared by the configuration models: names, intervals, URLs."""

from __future__ import annotations

import ipaddress
import re
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, ValidationInfo

SAFE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
TABLE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,127}$")
# A PostgreSQL store puts each environment in a schema of its name, and its own control tables in
# schema `dvmirror`: an environment cannot be named after these.
CONTROL_SCHEMA = "dvmirror"
RESERVED_SCHEMAS = frozenset({CONTROL_SCHEMA, "public", "information_schema"})
GUID = re.compile(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
DOMAIN = re.compile(
    r"^(?=.{1,253}$)([a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?\.)+[a-zA-Z]{2,63}$"
)
INTERVAL_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
INTERVAL_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_interval(text: str) -> float:
    """Parse "90s", "5m", "1h30m" or a bare number of seconds into seconds."""
    value = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", value):
        seconds = float(value)
    else:
        pos, seconds = 0, 0.0
        for match in INTERVAL_PART.finditer(value):
            if match.start() != pos:
                break
            seconds += float(match.group(1)) * INTERVAL_UNITS[match.group(2)]
            pos = match.end()
        if pos != len(value) or not value:
            raise ValueError(f"{text!r} is not an interval; write it like 30s, 5m, 1h30m or 1d")
    if seconds <= 0:
        raise ValueError(f"{text!r} must be longer than zero")
    return seconds


def format_interval(seconds: float) -> str:
    """An interval as the configuration writes it (parse_interval's inverse): 1d, 1h30m, 45s."""
    if seconds != int(seconds) or seconds <= 0:
        return f"{seconds:g}s"
    rest, parts = int(seconds), []
    for unit in ("d", "h", "m", "s"):
        size = int(INTERVAL_UNITS[unit])
        count, rest = divmod(rest, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def is_loopback_host(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_url(url: str, *, allow_insecure: bool, what: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError(f"{what} {url!r} is not an absolute https URL")
    if parts.username or parts.password:
        raise ValueError(f"{what} must not carry credentials in the URL")
    if parts.scheme == "http" and not (allow_insecure and is_loopback_host(parts.hostname)):
        hint = (
            "plain http is only allowed for a loopback address with app.allow_insecure = true"
            if not is_loopback_host(parts.hostname)
            else "set app.allow_insecure = true to allow plain http to a loopback simulator"
        )
        raise ValueError(f"{what} {url!r} must use https ({hint})")
    return url.rstrip("/")


class FrozenModel(BaseModel):
    """Configuration objects are immutable and reject unknown keys."""

    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)


def validation_context(info: ValidationInfo) -> dict[str, Any]:
    """The loader's context (environ, base_dir, warnings) as seen by a validator."""
    return info.context if isinstance(info.context, dict) else {}
