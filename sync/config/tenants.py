"""`[[tenants]]` and their `[[tenants.environments]]`: the Dataverse environments to mirror."""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from sync.config.credentials import AppRegistration
from sync.config.tables import DEFAULT_TABLE_OPTIONS, TableOptions, TableRules, check_relationships
from sync.config.values import (
    DOMAIN,
    GUID,
    SAFE_NAME,
    TABLE_NAME,
    FrozenModel,
    check_url,
    parse_interval,
    validation_context,
)
from sync.limits import CONCURRENT_REQUESTS_PER_USER, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE


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
