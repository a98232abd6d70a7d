"""Run the Alembic migrations in migrations/ from inside dvmirror (every command migrates first).

A store already at head is the common case (every command, every daemon start): `upgrade()`
then reads the stored revision with one plain query and the head from the scripts' own
`revision` / `down_revision` lines (`scripted_head`), and returns without importing Alembic,
which (with Mako and every dialect's DDL it loads) costs a command about 0.1 s of start-up.
Anything else (an empty store, an older revision, branches, a script that does not read as
one plain chain) goes to Alembic, which decides.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

import sync
from sync.config.values import CONTROL_SCHEMA
from sync.store.identifiers import quote_ident

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

# `revision = "0012"` / `down_revision: str | None = "0011"` at the start of a line.
_REVISION_LINE = re.compile(r"^(revision|down_revision)\s*(?::[^=\n]*)?=\s*(.+?)\s*$", re.M)


def migrations_dir() -> Path:
    """Installed wheels carry the scripts as sync/_migrations; a checkout has migrations/."""
    package_dir = Path(sync.__file__).resolve().parent
    for candidate in (package_dir / "_migrations", package_dir.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise FileNotFoundError("the Alembic scripts (migrations/) are missing from this install")


def alembic_config(connection: Connection | None = None) -> AlembicConfig:
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.attributes["connection"] = connection
    cfg.attributes["configure_logging"] = False
    return cfg


def chain_head(scripts: list[str]) -> str | None:
    """The one head of the revisions these script texts declare; None unless every script
    declares a plain `revision` and `down_revision` and exactly one revision is nobody's parent."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for script in scripts:
        found: dict[str, object] = {}
        for name, value in _REVISION_LINE.findall(script):
            try:
                found.setdefault(name, ast.literal_eval(value))
            except (ValueError, SyntaxError):
                return None
        revision, down = found.get("revision"), found.get("down_revision", ...)
        if not isinstance(revision, str) or down is ...:
            return None
        revisions.add(revision)
        if isinstance(down, str):
            parents.add(down)
        elif isinstance(down, tuple) and all(isinstance(d, str) for d in down):
            parents.update(down)
        elif down is not None:
            return None
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None


def scripted_head() -> str | None:
    """The head of migrations/versions, read from the scripts without importing Alembic."""
    try:
        scripts = [
            p.read_text(encoding="utf-8") for p in (migrations_dir() / "versions").glob("*.py")
        ]
    except OSError:
        return None
    return chain_head(scripts) if scripts else None


async def stored_revisions(engine: AsyncEngine) -> list[str] | None:
    """The revisions in the store's alembic_version table; None when it has none (yet)."""
    table = quote_ident("alembic_version")
    if engine.dialect.name == "postgresql":
        table = f"{quote_ident(CONTROL_SCHEMA)}.{table}"
    try:
        async with engine.connect() as conn:
            rows = await conn.exec_driver_sql(f"SELECT version_num FROM {table}")  # noqa: S608
            return [str(row[0]) for row in rows]
    except SQLAlchemyError:  # no such table: an empty store (Alembic creates it)
        return None


def _upgrade(connection: Connection, revision: str) -> None:
    from alembic import command

    command.upgrade(alembic_config(connection), revision)


def _downgrade(connection: Connection, revision: str) -> None:
    from alembic import command

    command.downgrade(alembic_config(connection), revision)


def _current(connection: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    if revision == "head":
        head = scripted_head()
        if head is not None and await stored_revisions(engine) == [head]:
            return  # already there: no need for Alembic
    async with engine.begin() as conn:
        await conn.run_sync(_upgrade, revision)


async def downgrade(engine: AsyncEngine, revision: str) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(_downgrade, revision)


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        return await conn.run_sync(_current)


def head_revision() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()
