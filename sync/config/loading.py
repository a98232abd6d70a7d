"""Loading the configuration: read the TOML file, apply DVMIRROR_* overrides, validate it into
`Config` (sync.config.model), and turn the first problem into one line naming the file and key.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from sync.config.model import Config, KeyPathError, Settings
from sync.errors import ConfigError

ENV_PREFIX = "DVMIRROR_"
OVERRIDABLE_SECTIONS = ("app", "store", "daemon", "console", "tenants")


def _format_loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.startswith(("function-", "tagged-union", "literal")) or part in (
            "tuple[str, ...]",
            "list[str]",
            "str",
            "float",
            "int",
            "is-instance[Path]",
        ):
            continue  # pydantic union branch names are noise for users
        else:
            out += f".{part}" if out else part
    return out or "(top level)"


def _env_overrides(data: dict[str, Any], environ: Mapping[str, str]) -> None:
    """Apply DVMIRROR_<SECTION>__<KEY>[__<KEY>…] variables onto the parsed TOML."""
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        parts = name[len(ENV_PREFIX) :].lower().split("__")
        if parts[0] not in OVERRIDABLE_SECTIONS:
            continue
        try:
            value: Any = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        node: Any = data
        for i, part in enumerate(parts[:-1]):
            try:
                node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
            except (IndexError, TypeError, AttributeError, ValueError):
                raise ConfigError(
                    f"{name}: no such key {'.'.join(parts[: i + 1])} to override"
                ) from None
        last = parts[-1]
        if isinstance(node, list):
            raise ConfigError(f"{name}: cannot override a whole list entry; name a key inside it")
        node[last] = value


def default_data_dir(environ: Mapping[str, str]) -> Path:
    """systemd's StateDirectory= wins, then XDG, then ~/.local/share."""
    if environ.get("STATE_DIRECTORY"):
        return Path(environ["STATE_DIRECTORY"].split(":")[0])
    if environ.get("XDG_DATA_HOME"):
        return Path(environ["XDG_DATA_HOME"]) / "dvmirror"
    return Path.home() / ".local" / "share" / "dvmirror"


def load_config(
    path: Path | str,
    environ: Mapping[str, str] | None = None,
    *,
    resolve_secrets: bool = True,
) -> Config:
    """Load and validate the configuration file, or raise one clear ConfigError.

    With resolve_secrets=False, secret references are checked for shape only and not read;
    for commands that never authenticate (status, migrate).
    """
    environ = dict(os.environ if environ is None else environ)
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: configuration file not found; pass --config PATH or set DVMIRROR_CONFIG "
            "(config/dvmirror.example.toml is a documented starting point)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read configuration: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    _env_overrides(data, environ)
    app_data = data.get("app")
    allow_insecure = bool(isinstance(app_data, dict) and app_data.get("allow_insecure") is True)
    context: dict[str, Any] = {
        "environ": environ,
        "base_dir": path.resolve().parent,
        "allow_insecure": allow_insecure,
        "warnings": [],
        "resolve_secrets": resolve_secrets,
    }
    try:
        settings = Settings.model_validate(data, context=context)
    except ValidationError as exc:
        raise ConfigError(_first_error(path, exc)) from None
    except KeyPathError as exc:
        raise ConfigError(f"{path}: {exc.path}: {exc}") from None
    daemon = settings.daemon
    if daemon.data_dir is None:
        data_dir = default_data_dir(environ)
    else:
        data_dir = (
            daemon.data_dir
            if daemon.data_dir.is_absolute()
            else path.resolve().parent / daemon.data_dir
        )
    store_url = settings.store.url or f"sqlite+aiosqlite:///{data_dir / 'mirror.db'}"
    return Config(
        path=path,
        settings=settings,
        data_dir=data_dir,
        store_url=store_url,
        warnings=tuple(context["warnings"]),
    )


def _first_error(path: Path, exc: ValidationError) -> str:
    errors = exc.errors(include_url=False)
    first = errors[0]
    where = _format_loc(tuple(first["loc"]))
    kind = first["type"]
    if kind == "extra_forbidden":
        message = "unknown key; check the spelling against config/dvmirror.example.toml"
    elif kind == "missing":
        message = "required key is missing"
    else:
        message = str(first["msg"]).removeprefix("Value error, ")
        ctx = first.get("ctx") or {}
        inner = ctx.get("error")
        if isinstance(inner, KeyPathError):
            where, message = inner.path, str(inner)
    more = (
        f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
        if len(errors) > 1
        else ""
    )
    return f"{path}: {where}: {message}{more}"
