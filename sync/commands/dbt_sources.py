"""`dvmirror dbt-sources --env E`: a dbt sources.yml for the environment's mirrored tables.

One source per environment, named after it: on PostgreSQL its schema is the environment's, each
table its logical name; on SQLite the schema is `main` and each table `<env>__<table>` (the mirror
naming contract). Columns come from the column catalogue (dv_mirror_columns, live columns only)
with the Dataverse display name and description as their description (a PostgreSQL table with
columns in `_dv_overflow` is read through its `__wide` view: `identifier`); the key gets
`not_null` and `unique`; freshness is on `_dv_synced_at`, warn after 2 and error after 6 sync
intervals. Each existing `<table>__history` and metadata table follows (sync.commands.dbt_extra).
The YAML is written here (block style, every string JSON-quoted, which YAML reads as is).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from sync.commands.dbt_extra import existing_extras, history_source_table, metadata_source_table
from sync.config.model import Config
from sync.config.tenants import Environment
from sync.errors import ConfigError
from sync.store.control import mirror_columns
from sync.store.dialects.pg_wide import view_name
from sync.store.dialects.sqlite import mirror_table_name
from sync.store.layout import COMMIT_SEQ_COLUMN, DELETED_COLUMN, SYNCED_COLUMN, VERSION_COLUMN
from sync.store.open import open_store
from sync.store.relationship_metadata import intersect_tables

WARN_INTERVALS, ERROR_INTERVALS = 2, 6


def _described(display: str | None, description: str | None) -> str:
    parts = [p for p in (display, description) if p]
    return " — ".join(parts)


def _key_of(table: str, rows: list[Mapping[str, Any]]) -> str | None:
    keys = [r["column_name"] for r in rows if r["attribute_type"] == "Uniqueidentifier"]
    return f"{table}id" if f"{table}id" in keys else (keys[0] if keys else None)


def freshness(interval_seconds: float) -> dict[str, Any]:
    """dbt's freshness thresholds for a sync interval, in whole minutes (dbt's unit here).
    Below half a minute both would round up to one minute, and a source would go from fresh
    straight to error: the error threshold stays at least a minute after the warning."""
    minutes = interval_seconds / 60
    warn = max(1, math.ceil(WARN_INTERVALS * minutes))
    error = max(warn + 1, math.ceil(ERROR_INTERVALS * minutes))
    return {
        "warn_after": {"count": warn, "period": "minute"},
        "error_after": {"count": error, "period": "minute"},
    }


def build_sources(
    environment: Environment,
    rows: Iterable[Mapping[str, Any]],
    *,
    postgres: bool,
    soft_tables: Iterable[str] = (),
    wide_tables: Mapping[str, str] | None = None,
    history: Mapping[str, Sequence[str]] | None = None,
    metadata: Sequence[str] = (),
) -> dict[str, Any]:
    """The sources.yml document, from catalogue rows (pure). `wide_tables`: PostgreSQL tables
    with columns in `_dv_overflow` → the view that shows them all, which dbt then reads.
    `history`: the tables with a `<table>__history`, and its columns; `metadata`: the metadata
    tables that exist (sync.commands.dbt_extra)."""
    by_table: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        by_table.setdefault(row["table_name"], []).append(row)
    soft = set(soft_tables)
    tables = []
    for table, columns in sorted(by_table.items()):
        key = _key_of(table, columns)
        entries: list[dict[str, Any]] = []
        for row in sorted(columns, key=lambda r: (r["column_name"] != key, r["column_name"])):
            entry: dict[str, Any] = {
                "name": row["column_name"],
                "description": _described(row["display_name"], row["description"]),
            }
            if row["column_name"] == key:
                entry["data_tests"] = ["not_null", "unique"]
            entries.append(entry)
        entries.append({"name": VERSION_COLUMN, "description": "Dataverse versionnumber"})
        entries.append({"name": SYNCED_COLUMN, "description": "when dvmirror wrote the row (UTC)"})
        entries.append(
            {
                "name": COMMIT_SEQ_COLUMN,
                "description": "the change feed's commit number: load WHERE _dv_commit_seq > :last",
            }
        )
        if table in soft:
            entries.append({"name": DELETED_COLUMN, "description": "deleted at the source (UTC)"})
        described: dict[str, Any] = {
            "name": table if postgres else mirror_table_name(environment.name, table),
            "description": f"Dataverse table {table} of {environment.url}",
            "columns": entries,
        }
        if table in (wide_tables or {}):  # store.dialects.pg_wide
            described["identifier"] = (wide_tables or {})[table]
        tables.append(described)
        if table in (history or {}):
            present = (history or {})[table]
            tables.append(
                history_source_table(
                    environment.name,
                    table,
                    columns,
                    present,
                    key=key,
                    postgres=postgres,
                    describe=_described,
                )
            )
    tables += [metadata_source_table(environment.name, m, postgres=postgres) for m in metadata]
    source = {
        "name": environment.name,
        "schema": environment.name if postgres else "main",
        "loaded_at_field": SYNCED_COLUMN,
        "freshness": freshness(environment.interval),
        "tables": tables,
    }
    return {"version": 2, "sources": [source]}


def to_yaml(value: Any, indent: int = 0) -> str:
    """Block-style YAML; strings JSON-quoted (valid YAML double-quoted scalars)."""
    pad = " " * indent
    if isinstance(value, Mapping):
        lines = []
        for key, item in value.items():
            if isinstance(item, Mapping | list) and item:
                lines.append(f"{pad}{key}:\n{to_yaml(item, indent + 2)}")
            else:
                lines.append(f"{pad}{key}: {_scalar(item)}")
        return "\n".join(lines)
    if isinstance(value, list):
        lines = []
        for item in value:
            if isinstance(item, Mapping) and item:
                body = to_yaml(item, indent + 2)
                lines.append(f"{pad}- {body[indent + 2 :]}")
            else:
                lines.append(f"{pad}- {_scalar(item)}")
        return "\n".join(lines)
    return pad + _scalar(value)


def _scalar(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return orjson.dumps(value).decode()
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, Mapping | list):
        return "{}" if isinstance(value, Mapping) else "[]"
    return orjson.dumps(str(value)).decode()


async def _wide_views(conn: AsyncConnection, environment: str, tables: set[str]) -> dict[str, str]:
    """The PostgreSQL tables that have a `__wide` view (columns in `_dv_overflow`)."""
    if conn.dialect.name != "postgresql":
        return {}
    result = await conn.execute(
        text(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = :schema AND c.relkind = 'v'"
        ),
        {"schema": environment},
    )
    views = {str(r[0]) for r in result}
    return {t: view_name(t) for t in tables if view_name(t) in views}


async def run_dbt_sources(config: Config, env_name: str) -> str:
    environment = next((e for _, e in config.environments() if e.name == env_name), None)
    if environment is None:
        known = ", ".join(e.name for _, e in config.environments())
        raise ConfigError(f"{config.path}: no environment named {env_name!r} (known: {known})")
    engine = await open_store(config)
    try:
        query = select(mirror_columns).where(
            mirror_columns.c.environment == env_name, mirror_columns.c.removed_at.is_(None)
        )
        async with engine.connect() as conn:
            rows = [dict(r._mapping) for r in await conn.execute(query)]
            wide = await _wide_views(conn, env_name, {r["table_name"] for r in rows})
        intersect = await intersect_tables(engine, env_name)  # mirrored through relationships
        fixed = environment.fixed_tables
        if fixed is not None:
            rows = [r for r in rows if r["table_name"] in fixed or r["table_name"] in intersect]
        async with engine.connect() as conn:
            history, metadata = await existing_extras(
                conn, env_name, {r["table_name"] for r in rows}
            )
    finally:
        await engine.dispose()
    soft = [t for t, o in environment.table_options.items() if o.deletes == "soft"]
    document = build_sources(
        environment,
        rows,
        postgres=config.settings.store.postgres,
        soft_tables=soft,
        wide_tables=wide,
        history=history,
        metadata=metadata if environment.metadata_tables else (),
    )
    return to_yaml(document) + "\n"
