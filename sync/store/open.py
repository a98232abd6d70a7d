"""Open the store for a command: create the engine, then migrate to head (every command does).

A store that cannot be used fails here with one line that says what to do: a PostgreSQL
database that does not exist, a role that cannot sign in or lacks the CREATE privilege are
configuration errors (exit 2); a server that does not answer, or a failing migration, is a
StoreError (exit 1).
"""

from __future__ import annotations

from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from sync.config.model import Config
from sync.errors import ConfigError, DvmirrorError, StoreError
from sync.store.connect import create_engine
from sync.store.dialects.postgres import sqlstate
from sync.store.migrate import upgrade

# SQLSTATE → what the operator should do about it (configuration, exit 2).
_FIXES = {
    "3D000": "the database does not exist: create it (CREATE DATABASE … OWNER <role>)",
    "28P01": "password authentication failed: set PGPASSWORD or a ~/.pgpass entry for the role",
    "28000": "the server refused the role (pg_hba.conf or a missing role)",
    "42501": "permission denied: the role needs CREATE on the database (see README, PostgreSQL)",
}


async def open_store(config: Config, *, migrate: bool = True) -> AsyncEngine:
    engine = create_engine(config.store_url)
    if migrate:
        try:
            await upgrade(engine)
        except (SQLAlchemyError, OSError) as exc:
            await engine.dispose()
            raise unusable_store(config.store_url, exc) from exc
    return engine


def unusable_store(url: str, exc: BaseException) -> DvmirrorError:
    """One clear error for a store that cannot be opened or migrated."""
    where = f"store.url {redact_url(url)}"
    orig = getattr(exc, "orig", None)
    cause = getattr(orig, "__cause__", None) or orig or exc
    detail = (str(cause).splitlines() or [type(cause).__name__])[0]
    fix = _FIXES.get(sqlstate(exc) or getattr(cause, "sqlstate", None) or "")
    if fix is not None:
        return ConfigError(f"{where}: {fix} ({detail})")
    if isinstance(exc, OSError) or isinstance(cause, OSError):
        return StoreError(
            f"{where}: cannot connect ({detail}); check the host, the port and that the "
            "database server is running"
        )
    return StoreError(f"{where}: migration failed: {type(cause).__name__}: {detail}")


def redact_url(url: str) -> str:
    """Hide a password in a database URL before it reaches a message."""
    return make_url(url).render_as_string(hide_password=True)
