"""structlog, configured once: JSON lines off a TTY, a console renderer on one, secrets masked.

Context (tenant, environment, table) is bound with `structlog.contextvars`, so every event a task
logs is attributed without passing loggers around. The masking processor runs last before the
renderer and scrubs bearer tokens, JWTs and every registered secret wherever they appear.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, WrappedLogger

MASK = "***"
_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9\-._~+/]+=*")
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*")
_SECRET_FIELDS = re.compile(r"(?i)(secret|password|token|assertion|authorization|private_key)")
_SAFE_FIELDS = {"token_source", "delta_token_expired", "tokens"}

_registered_secrets: set[str] = set()


def register_secret(value: str | None) -> None:
    """Make `value` masked wherever it shows up in a log event from now on."""
    if value and len(value) >= 6:
        _registered_secrets.add(value)


def mask_text(text: str) -> str:
    for secret in _registered_secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    text = _BEARER.sub(lambda m: m.group(1) + MASK, text)
    return _JWT.sub(MASK, text)


def _mask_value(value: Any) -> Any:
    if isinstance(value, str):
        return mask_text(value)
    if isinstance(value, dict):
        return {k: _mask_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_mask_value(v) for v in value)
    if isinstance(value, BaseException):
        return mask_text(f"{type(value).__name__}: {value}")
    return value


def mask_secrets(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """structlog processor: drop secret-looking fields' values, scrub every string."""
    for key, value in list(event_dict.items()):
        if key not in _SAFE_FIELDS and _SECRET_FIELDS.search(key) and value is not None:
            event_dict[key] = MASK
        else:
            event_dict[key] = _mask_value(value)
    return event_dict


def _mask_rendered(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    # Exceptions are formatted into strings by format_exc_info; scrub the result too.
    if "exception" in event_dict and isinstance(event_dict["exception"], str):
        event_dict["exception"] = mask_text(event_dict["exception"])
    return event_dict


def configure_logging(
    level: str = "info",
    *,
    stream: TextIO | None = None,
    json: bool | None = None,
    secrets: Iterable[str] = (),
) -> None:
    """Configure structlog once for the process. JSON unless the stream is a TTY."""
    stream = stream or sys.stderr
    for secret in secrets:
        register_secret(secret)
    use_json = (not stream.isatty()) if json is None else json
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=_orjson_dumps)
        if use_json
        else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info if use_json else _noop,
        mask_secrets,
        _mask_rendered,
        renderer,
    ]
    structlog.configure(
        processors=[p for p in processors if p is not _noop],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.WriteLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )


def _noop(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    return event_dict


def _orjson_dumps(obj: MutableMapping[str, Any], **_: Any) -> str:
    import orjson

    return orjson.dumps(obj, default=str).decode()


def get_logger(name: str | None = None) -> Any:
    return structlog.get_logger(name) if name else structlog.get_logger()
