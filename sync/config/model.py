"""Typed, frozen configuration, loaded once from one TOML file.

The models validate everything (URLs, names, intervals, secrets, certificates) into frozen
objects; `sync.config.loading.load_config()` reads the file, overlays `DVMIRROR_<SECTION>__<KEY>`
environment variables and turns any problem into one `ConfigError` line naming the file, the
key path and the fix. Nothing here reads `os.environ` at import time: the environment is passed
in.
"""

from __future__ import annotations

import importlib.util
import re
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

from sync.config.alerts import Alert
from sync.config.console import ConsoleSettings
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
    "Alert",
    "AppRegistration",
    "Certificate",
    "Config",
    "ConsoleSettings",
    "Daemon",
    "Environment",
    "SecretRef",
    "Settings",
    "Store",
    "TableOptions",
    "Tenant",
    "parse_interval",
]


class TableOptions(FrozenModel):
    columns: tuple[str, ...] | None = None
    deletes: Literal["hard", "soft"] = "hard"
    impersonate: str | None = None
    # SCD type 2: keep `<table>__history` (sync.store.history); closed versions older than
    # `history_retention` (seconds; "90d") are pruned by the daemon.
    history: bool = False
    history_retention: float | None = None

    @field_validator("history_retention", mode="before")
    @classmethod
    def _retention(cls, value: Any) -> Any:
        if isinstance(value, str):
            return parse_interval(value)
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise ValueError(f'{value!r} is not an interval; write it like "90d"')
        return value

    @model_validator(mode="after")
    def _retention_needs_history(self) -> TableOptions:
        if self.history_retention is not None and not self.history:
            raise ValueError("history_retention needs history = true")
        return self

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

# A glob over logical names: letters, digits, underscores and the wildcards * ? [ ].
TABLE_PATTERN = re.compile(r"^[a-z0-9_*?\[\]-]+$")


class TableRules(FrozenModel):
    """`tables = { include = [...], exclude = [...], solutions = [...] }`: resolved against the
    metadata at each discovery (sync.mirror.table_rules)."""

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    solutions: tuple[str, ...] = ()

    @field_validator("include", "exclude")
    @classmethod
    def _patterns(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for pattern in value:
            if not TABLE_PATTERN.match(pattern):
                raise ValueError(
                    f"{pattern!r} is not a glob over logical names "
                    '(lower-case letters, digits, _ and the wildcards * ? [ ], like "new_*")'
                )
        return value

    @field_validator("solutions")
    @classmethod
    def _solutions(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if not SOLUTION_NAME.match(name):
                raise ValueError(f"solutions: {name!r} is not a solution unique name")
        return value

    @model_validator(mode="after")
    def _something(self) -> TableRules:
        if not self.include and not self.solutions:
            raise ValueError(
                'give include patterns or solutions, e.g. { include = ["account", "new_*"] }'
            )
        return self


SOLUTION_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# A relationship's SchemaName, e.g. "new_account_contact" or "accountleads_association".
RELATIONSHIP_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,127}$")


def check_relationships(value: Any) -> Any:
    """`relationships = "auto" | "none" | ["SchemaName", ...]`, one clear error otherwise."""
    if value in ("auto", "none"):
        return value
    if not isinstance(value, list | tuple):
        raise ValueError(
            'write relationships as "auto", "none" or a list of N:N SchemaNames, '
            'e.g. ["new_account_contact"]'
        )
    if not value:
        raise ValueError('list at least one relationship SchemaName, or write "none"')
    seen: set[str] = set()
    for name in value:
        if not isinstance(name, str) or not RELATIONSHIP_NAME.match(name):
            raise ValueError(f"{name!r} is not a relationship SchemaName")
        if name in seen:
            raise ValueError(f"relationship {name!r} is listed twice")
        seen.add(name)
    return tuple(value)


class Environment(FrozenModel):
    """One Dataverse environment (organization) of a tenant."""

    name: str
    url: str
    tables: tuple[str, ...] | Literal["all"] | TableRules = ("account", "contact")
    interval: float = 300.0
    # Tables without change tracking find deletions by scanning their keys; that costs a full
    # key read, so it runs on its own, longer interval.
    reconcile_interval: float = 86400.0
    # The daemon runs `dvmirror verify` (estimate, then counts and key diffs where it flags) on
    # this interval; 0 turns it off.
    verify_interval: float = 86400.0
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
    # N:N intersect tables (sync.mirror.relationships): "auto" mirrors every N:N between the
    # mirrored tables, "none" none, a list the relationships of those SchemaNames.
    relationships: Literal["auto", "none"] | tuple[str, ...] = "auto"

    @field_validator("relationships", mode="before")
    @classmethod
    def _relationships(cls, value: Any) -> Any:
        return check_relationships(value)

    # The Synapse-style metadata tables (optionsetmetadata, …; sync.mirror.metadata_refresh):
    # a few small metadata requests per table and discovery; false leaves them out.
    metadata_tables: bool = True

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

    @field_validator("verify_interval", mode="before")
    @classmethod
    def _verify_interval(cls, value: Any) -> Any:
        if value in (0, "0", "0s"):
            return 0.0  # off
        return cls._interval(value)

    @field_validator("tables", mode="before")
    @classmethod
    def _tables(cls, value: Any) -> Any:
        if value == "all" or isinstance(value, TableRules):
            return value
        if isinstance(value, dict):  # validated here, so an error names the rule, not the union
            try:
                return TableRules.model_validate(value)
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(p) for p in first["loc"])
                text = str(first["msg"]).removeprefix("Value error, ")
                if first["type"] == "extra_forbidden":
                    text = "unknown key; use include, exclude and solutions"
                raise ValueError(f"{where}: {text}" if where else text) from None
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
            if self.fixed_tables is not None and table not in self.fixed_tables:
                raise ValueError(f"table_options.{table}: {table!r} is not in tables")
        return self

    @property
    def origin(self) -> str:
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc}".lower()

    @property
    def fixed_tables(self) -> tuple[str, ...] | None:
        """The configured list; None when the tables are resolved from metadata at run time
        ("all" or include/exclude/solutions rules)."""
        return self.tables if isinstance(self.tables, tuple) else None

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
    # dv_run_history keeps the runs of this many days (pruned by the daemon and by migrate).
    history_days: int = Field(default=30, ge=1, le=3650)

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
    console: ConsoleSettings | None = None
    tenants: tuple[Tenant, ...]
    alerts: tuple[Alert, ...] = ()

    @model_validator(mode="after")
    def _cross_checks(self) -> Settings:
        tenant_names: set[str] = set()
        env_names: dict[str, str] = {}
        for ti, tenant in enumerate(self.tenants):
            if tenant.name in tenant_names:
                raise KeyPathError(f"tenants[{ti}].name", f"duplicate tenant name {tenant.name!r}")
            tenant_names.add(tenant.name)
            if tenant.app is None and self.app is None:
                raise KeyPathError(
                    f"tenants[{ti}]",
                    "no [app] registration: add a top-level [app] or a [tenants.app] for it",
                )
            for ei, env in enumerate(tenant.environments):
                where = f"tenants[{ti}].environments[{ei}].name"
                if env.name in env_names:
                    raise KeyPathError(
                        where,
                        f"duplicate environment name {env.name!r} (also {env_names[env.name]})",
                    )
                env_names[env.name] = where
                if self.store.postgres and (
                    env.name in RESERVED_SCHEMAS or env.name.startswith("pg_")
                ):
                    raise KeyPathError(
                        where,
                        f"{env.name!r} is a reserved schema name in a PostgreSQL store "
                        "(each environment is a schema of its name): rename the environment",
                    )
        self._check_alerts(tenant_names)
        if self.console is not None and self.console.app is None and self.app is None:
            raise KeyPathError(
                "console", "no registration to sign users in with: add [console.app] or [app]"
            )
        return self

    def _check_alerts(self, tenant_names: set[str]) -> None:
        alert_names: set[str] = set()
        for ai, alert in enumerate(self.alerts):
            if not alert.name:
                object.__setattr__(alert, "name", f"alert{ai + 1}")
            if alert.name in alert_names:
                raise KeyPathError(f"alerts[{ai}].name", f"duplicate alert name {alert.name!r}")
            alert_names.add(alert.name)
            for tenant in alert.tenants or ():
                if tenant not in tenant_names:
                    known = ", ".join(sorted(tenant_names))
                    raise KeyPathError(
                        f"alerts[{ai}].tenants",
                        f"no tenant named {tenant!r} (known: {known})",
                    )


class KeyPathError(ValueError):
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

    @property
    def alerts(self) -> tuple[Alert, ...]:
        return self.settings.alerts

    @property
    def console(self) -> ConsoleSettings | None:
        return self.settings.console

    def console_app(self) -> AppRegistration:
        """The registration users sign in to the console with ([console.app], else [app])."""
        console = self.settings.console
        app = (console.app if console else None) or self.settings.app
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
