"""Per-table settings of an environment: table options, include/exclude rules, N:N relationships."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import field_validator, model_validator

from sync.config.values import GUID, TABLE_NAME, FrozenModel, parse_interval

# A glob over logical names: letters, digits, underscores and the wildcards * ? [ ].
TABLE_PATTERN = re.compile(r"^[a-z0-9_*?\[\]-]+$")
SOLUTION_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# A relationship's SchemaName, e.g. "new_account_contact" or "accountleads_association".
RELATIONSHIP_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,127}$")


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


DEFAULT_TABLE_OPTIONS = TableOptions()


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
