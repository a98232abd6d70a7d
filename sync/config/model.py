"""Typed, frozen configuration, loaded once from one TOML file.

`load_config()` reads the file, overlays `DVMIRROR_<SECTION>__<KEY>` environment variables,
validates everything (URLs, names, intervals, secrets, certificates) and returns frozen
objects. Any problem becomes one `ConfigError` line naming the file, the key path and the fix.
Nothing here reads `os.environ` at import time: the environment is passed in.
"""

from __future__ import annotations

import importlib.util
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from sync.config.credentials import AppRegistration, Certificate, SecretRef
from sync.config.values import (
    DOMAIN,
    GUID,
    RESERVED_SCHEMAS,
    SAFE_NAME,
    TABLE_NAME,
    FrozenModel,
    check_url,
    parse_interval,
    validation_context,
)
from sync.errors import ConfigError
from sync.limits import CONCURRENT_REQUESTS_PER_USER, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE

__all__ = [
    "AppRegistration",
    "Certificate",
    "Config",
    "Daemon",
    "Environment",
    "SecretRef",
    "Settings",
    "Store",
    "TableOptions",
    "Tenant",
    "load_config",
    "parse_interval",
]

ENV_PREFIX = "DVMIRROR_"
OVERRIDABLE_SECTIONS = ("app", "store", "daemon", "tenants")


class TableOptions(FrozenModel):
    columns: tuple[str, ...] | None = None
    deletes: Literal["hard", "soft"] = "hard"
    impersonate: str | None = None

    @field_validator("columns")
    @classmethod
    def _columns(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        for column in value or ():
            if not TABLE_NAME.match(column):
                raise ValueError(f"column {column!r} is not a Dataverse logical name")
        return value

    @field_validator("impersonate")
    @classmethod
    def _impersonate(cls, value: str | None) -> str | None:
        if value is not None and not GUID.match(value):
            raise ValueError(f"{value!r} is not an Entra object id (a GUID)")
        return value


Interval = Annotated[float, Field(gt=0)]


class Environment(FrozenModel):
    """One Dataverse environment (organization) of a tenant."""

    name: str
    url: str
    tables: tuple[str, ...] | Literal["all"] = ("account", "contact")
    interval: float = 300.0
    # Tables without change tracking find deletions by scanning their keys; that costs a full
    # key read, so it runs on its own, longer interval.
    reconcile_interval: float = 86400.0
    page_size: int = Field(default=DEFAULT_PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE)
    max_concurrency: int | None = Field(default=None, ge=1, le=CONCURRENT_REQUESTS_PER_USER)
    # How many of the environment's tables run at once (default: all); requests stay capped by
    # the governor and max_concurrency either way.
    table_concurrency: int | None = Field(default=None, ge=1)
    # A backfill of a table above `split_rows` rows is read as up to `range_workers` primary-key
    # ranges at once (each its own chain); 1 turns that off.
    split_rows: int = Field(default=200_000, ge=1)
    range_workers: int = Field(default=8, ge=1, le=CONCURRENT_REQUESTS_PER_USER)
    table_options: dict[str, TableOptions] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not SAFE_NAME.match(value) or "__" in value:
            raise ValueError(
                f"{value!r} is not a safe identifier: use lower-case letters, digits and single "
                "underscores, starting with a letter (it becomes part of table names)"
            )
        return value

    @field_validator("interval", "reconcile_interval", mode="before")
    @classmethod
    def _interval(cls, value: Any) -> Any:
        if isinstance(value, str):
            return parse_interval(value)
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise ValueError(f'{value!r} is not an interval; write it like "5m"')
        return value

    @field_validator("tables", mode="before")
    @classmethod
    def _tables(cls, value: Any) -> Any:
        if value == "all":
            return value
        if isinstance(value, str):
            raise ValueError('write tables as a list, e.g. ["account", "contact"], or "all"')
        if isinstance(value, list | tuple):
            if not value:
                raise ValueError('list at least one table, or "all"')
            seen: set[str] = set()
            for table in value:
                if not isinstance(table, str) or not TABLE_NAME.match(table):
                    raise ValueError(f"{table!r} is not a Dataverse table logical name")
                if table in seen:
                    raise ValueError(f"table {table!r} is listed twice")
                seen.add(table)
        return value

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> Environment:
        allow_insecure = bool(validation_context(info).get("allow_insecure", False))
        url = check_url(self.url, allow_insecure=allow_insecure, what="environment url")
        parts = urlsplit(url)
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError(
                f"url {self.url!r} must be the environment root, like https://contoso.crm.dynamics.com"
            )
        object.__setattr__(self, "url", url)
        for table in self.table_options:
            if not TABLE_NAME.match(table):
                raise ValueError(f"table_options.{table}: not a Dataverse table logical name")
            if self.tables != "all" and table not in self.tables:
                raise ValueError(f"table_options.{table}: {table!r} is not in tables")
        return self

    @property
    def origin(self) -> str:
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc}".lower()

    def options_for(self, table: str) -> TableOptions:
        return self.table_options.get(table, DEFAULT_TABLE_OPTIONS)


DEFAULT_TABLE_OPTIONS = TableOptions()


class Tenant(FrozenModel):
    """A customer tenant: one Entra directory, one or more Dataverse environments."""

    name: str
    tenant_id: str
    app: AppRegistration | None = None
    daily_request_budget: int | None = Field(default=None, ge=1)
    environments: tuple[Environment, ...]

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return Environment._name(value)

    @field_validator("tenant_id")
    @classmethod
    def _tenant_id(cls, value: str) -> str:
        if GUID.match(value):
            return value.lower()
        if DOMAIN.match(value):
            return value.lower()
        raise ValueError(f"{value!r} is neither a tenant GUID nor a verified domain")

    @field_validator("environments")
    @classmethod
    def _some(cls, value: tuple[Environment, ...]) -> tuple[Environment, ...]:
        if not value:
            raise ValueError("a tenant needs at least one [[tenants.environments]]")
        return value


class Store(FrozenModel):
    url: str | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        for plain in ("postgresql://", "postgres://"):
            if value.startswith(plain):  # the driver dvmirror speaks PostgreSQL with
                value = "postgresql+asyncpg://" + value[len(plain) :]
        if value.startswith("postgresql+asyncpg://"):
            if importlib.util.find_spec("asyncpg") is None:
                raise ValueError(
                    "a PostgreSQL store needs the asyncpg driver: pip install 'dvmirror[postgres]'"
                )
            return value
        if not value.startswith("sqlite+aiosqlite://"):
            raise ValueError(
                "store.url must start with sqlite+aiosqlite:/// or postgresql+asyncpg://"
            )
        return value

    @property
    def postgres(self) -> bool:
        return self.url is not None and self.url.startswith("postgresql+asyncpg://")


class Daemon(FrozenModel):
    data_dir: Path | None = None
    metrics_listen: str = "127.0.0.1:9464"
    shutdown_grace: float = 30.0
    max_concurrency: int = Field(default=16, ge=1, le=1024)
    # Processes that decode large pages off the event loop (0: decode in the event loop).
    decode_workers: int = Field(default=1, ge=0, le=16)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # How long an environment's lease lasts without renewal (renewed every third of it); a
    # daemon that dies leaves its environments to the others after this long.
    lease_seconds: float = Field(default=30.0, ge=3.0)

    @field_validator("shutdown_grace", "lease_seconds", mode="before")
    @classmethod
    def _grace(cls, value: Any) -> Any:
        return parse_interval(value) if isinstance(value, str) else value

    @field_validator("metrics_listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) < 65536 or not host:
            raise ValueError(f"{value!r} is not host:port, e.g. 127.0.0.1:9464")
        return value


class Settings(FrozenModel):
    """The whole configuration file."""

    app: AppRegistration | None = None
    store: Store = Store()
    daemon: Daemon = Daemon()
    tenants: tuple[Tenant, ...]

    @model_validator(mode="after")
    def _cross_checks(self) -> Settings:
        tenant_names: set[str] = set()
        env_names: dict[str, str] = {}
        for ti, tenant in enumerate(self.tenants):
            if tenant.name in tenant_names:
                raise _PathError(f"tenants[{ti}].name", f"duplicate tenant name {tenant.name!r}")
            tenant_names.add(tenant.name)
            if tenant.app is None and self.app is None:
                raise _PathError(
                    f"tenants[{ti}]",
                    "no [app] registration: add a top-level [app] or a [tenants.app] for it",
                )
            for ei, env in enumerate(tenant.environments):
                where = f"tenants[{ti}].environments[{ei}].name"
                if env.name in env_names:
                    raise _PathError(
                        where,
                        f"duplicate environment name {env.name!r} (also {env_names[env.name]})",
                    )
                env_names[env.name] = where
                if self.store.postgres and (
                    env.name in RESERVED_SCHEMAS or env.name.startswith("pg_")
                ):
                    raise _PathError(
                        where,
                        f"{env.name!r} is a reserved schema name in a PostgreSQL store "
                        "(each environment is a schema of its name): rename the environment",
                    )
        return self


class _PathError(ValueError):
    """A cross-field error that knows its own key path."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path = path


@dataclass(frozen=True)
class Config:
    """What the rest of dvmirror uses: validated settings plus where they came from."""

    path: Path
    settings: Settings
    data_dir: Path
    store_url: str
    warnings: tuple[str, ...] = ()

    @property
    def tenants(self) -> tuple[Tenant, ...]:
        return self.settings.tenants

    def app_for(self, tenant: Tenant) -> AppRegistration:
        app = tenant.app or self.settings.app
        assert app is not None  # guaranteed by Settings._cross_checks
        return app

    def environments(self) -> list[tuple[Tenant, Environment]]:
        return [(t, e) for t in self.tenants for e in t.environments]

    def tenant(self, name: str) -> Tenant:
        for tenant in self.tenants:
            if tenant.name == name:
                return tenant
        known = ", ".join(t.name for t in self.tenants)
        raise ConfigError(f"{self.path}: no tenant named {name!r} (known: {known})")


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
    except _PathError as exc:
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
        if isinstance(inner, _PathError):
            where, message = inner.path, str(inner)
    more = (
        f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
        if len(errors) > 1
        else ""
    )
    return f"{path}: {where}: {message}{more}"
