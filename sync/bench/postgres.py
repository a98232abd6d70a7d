"""Throwaway PostgreSQL databases for `dvmirror bench --postgres URL`.

The URL names a server and a database to connect to; the bench writes nothing into that
database. For each PostgreSQL side it creates a fresh database on the same server
(``dvmirror_bench_<run>_<part>``, so every side starts empty, migrations included, like the
SQLite side's fresh file) and drops every database it created at the end, whatever happened.
The role needs the CREATEDB privilege (or to be a superuser).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from sync.errors import ConfigError, StoreError

ASYNCPG = "postgresql+asyncpg://"
PREFIX = "dvmirror_bench_"


def normalise(url: str) -> str:
    """`postgresql://` and `postgres://` as dvmirror's store URL (the asyncpg driver)."""
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            return ASYNCPG + url[len(plain) :]
    if not url.startswith(ASYNCPG):
        scheme = url.split(":", maxsplit=1)[0]
        raise ConfigError(f"--postgres must be a postgresql+asyncpg:// URL, not {scheme}:")
    return url


def with_database(url: str, database: str) -> str:
    """The same server, role and options, another database."""
    return make_url(url).set(database=database).render_as_string(hide_password=False)


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@asynccontextmanager
async def bench_databases(url: str) -> AsyncIterator[Callable[[str], Awaitable[str]]]:
    """Yield `create(part)` → the store URL of a fresh database; drop them all on the way out."""
    url = normalise(url)
    try:
        make_url(url)
        engine = create_async_engine(url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    except (ArgumentError, ValueError, ImportError) as exc:
        raise ConfigError(f"--postgres: {exc}") from None
    run = f"{PREFIX}{os.getpid()}_{secrets.token_hex(3)}"
    created: list[str] = []

    async def create(part: str) -> str:
        name = f"{run}_{part}"
        try:
            async with engine.connect() as conn:
                await conn.execute(text(f"CREATE DATABASE {_quoted(name)}"))
        except DBAPIError as exc:
            raise ConfigError(
                f"--postgres: cannot create database {name} on that server (the role needs "
                f"CREATEDB): {str(exc.orig).strip().splitlines()[-1]}"
            ) from None
        except (OSError, SQLAlchemyError) as exc:
            raise StoreError(f"--postgres: the server does not answer: {exc}") from None
        created.append(name)
        return with_database(url, name)

    try:
        yield create
    finally:
        try:
            async with engine.connect() as conn:
                for name in created:  # FORCE: a child killed at the timeout may hold a session
                    drop = f"DROP DATABASE IF EXISTS {_quoted(name)} WITH (FORCE)"
                    await conn.execute(text(drop))
        finally:
            await engine.dispose()
