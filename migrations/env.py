"""Alembic environment: async, batch mode for SQLite, only dvmirror's own control tables.

PostgreSQL: the control tables live in schema `dvmirror` (created here; the engine's search_path
points at it, see store.dialects.postgres), and a transaction-scoped advisory lock makes daemons
that start together migrate one after another instead of racing on the same DDL.

dvmirror calls it with a live connection (cfg.attributes["connection"]); the `alembic` command
line uses DVMIRROR_STORE_URL or sqlalchemy.url and opens its own async engine.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from alembic import context
from sqlalchemy import pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import async_engine_from_config

from sync.store.control import metadata as target_metadata

config = context.config


def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    # Mirror tables are made at run time from Dataverse metadata: not the migrations' business.
    if type_ == "table":
        return name in target_metadata.tables
    return True


CONTROL_SCHEMA = "dvmirror"
MIGRATION_LOCK = 0x64766D6972726F72  # "dvmirror": one advisory lock id for every dvmirror database


def do_run_migrations(connection: Connection) -> None:
    postgres = connection.dialect.name == "postgresql"
    if postgres:
        connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
        connection.exec_driver_sql(f'CREATE SCHEMA IF NOT EXISTS "{CONTROL_SCHEMA}"')
        connection.exec_driver_sql(f'SET LOCAL search_path TO "{CONTROL_SCHEMA}"')
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        include_name=include_name,
        compare_type=True,
        version_table_schema=CONTROL_SCHEMA if postgres else None,
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_async_migrations() -> None:
    section = config.get_section(config.config_ini_section, {})
    url = os.environ.get("DVMIRROR_STORE_URL") or section.get("sqlalchemy.url")
    if not url:
        raise SystemExit("set DVMIRROR_STORE_URL (or sqlalchemy.url) to run alembic directly")
    section["sqlalchemy.url"] = url
    engine = async_engine_from_config(section, prefix="sqlalchemy.", poolclass=pool.NullPool)
    async with engine.connect() as connection:
        await connection.run_sync(do_run_migrations)
    await engine.dispose()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        asyncio.run(run_async_migrations())
    else:
        do_run_migrations(connection)


if context.is_offline_mode():
    raise SystemExit("dvmirror migrations run online only")
run_migrations_online()
