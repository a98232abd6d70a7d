"""A store already at head is opened without Alembic (sync.store.migrate.upgrade's fast path);
any other store still goes through Alembic. SQLite and PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sync.store.connect import create_engine
from sync.store.migrate import (
    chain_head,
    current_revision,
    downgrade,
    head_revision,
    scripted_head,
    stored_revisions,
    upgrade,
)

OPEN_AND_REPORT = """
import asyncio, sys
from sync.store.connect import create_engine
from sync.store.migrate import upgrade

async def main() -> None:
    engine = create_engine(sys.argv[1])
    await upgrade(engine)
    await engine.dispose()

asyncio.run(main())
print("alembic imported" if "alembic" in sys.modules else "no alembic")
"""


def opened_in_a_fresh_process(url: str) -> str:
    """Open (and migrate) the store in a new interpreter; whether that imported Alembic."""
    done = subprocess.run(
        [sys.executable, "-c", OPEN_AND_REPORT, url],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.strip()


def script(revision: str, down: str) -> str:
    return f'"""A migration."""\nrevision = {revision}\ndown_revision = {down}\n'


def test_the_head_of_a_plain_chain_is_read_from_the_scripts() -> None:
    chain = [script('"0001"', "None"), script('"0002"', '"0001"'), script('"0003"', '"0002"')]
    assert chain_head(chain) == "0003"
    typed = 'revision: str = "0004"\ndown_revision: str | None = "0003"\n'
    assert chain_head([*chain, typed]) == "0004"
    merged = [*chain, script('"0003b"', '"0002"'), script('"0004"', '("0003", "0003b")')]
    assert chain_head(merged) == "0004"


@pytest.mark.parametrize(
    "scripts",
    [
        [script('"0001"', "None"), script('"0002"', '"0001"'), script('"0002b"', '"0001"')],
        [script('"0001"', "None"), "revision = '0002'\n"],  # no down_revision
        [script('"0001"', "None"), script("make_id()", '"0001"')],  # not a literal
        [script('"0001"', '"0001"')],  # a cycle: no head
    ],
    ids=["two heads", "no parent line", "not a literal", "cycle"],
)
def test_anything_but_one_plain_head_is_left_to_alembic(scripts: list[str]) -> None:
    assert chain_head(scripts) is None


def test_the_scripted_head_is_alembics() -> None:
    """Whatever the migrations become (a merge re-chains them), the two readings agree."""
    assert scripted_head() is not None
    assert scripted_head() == head_revision()


async def _at_head_skips_alembic(url: str) -> None:
    engine = create_engine(url)
    try:
        assert await stored_revisions(engine) is None  # empty: Alembic creates everything
        assert opened_in_a_fresh_process(url) == "alembic imported"
        assert await stored_revisions(engine) == [head_revision()]
        assert opened_in_a_fresh_process(url) == "no alembic"
        # One revision behind: the fast path must not take it for head.
        await downgrade(engine, "-1")
        assert await current_revision(engine) != head_revision()
        assert opened_in_a_fresh_process(url) == "alembic imported"
        assert await current_revision(engine) == head_revision()
        await downgrade(engine, "-1")
        await upgrade(engine)
        assert await current_revision(engine) == head_revision()
    finally:
        await engine.dispose()


async def test_a_sqlite_store_at_head_opens_without_alembic(tmp_path: Path) -> None:
    await _at_head_skips_alembic(f"sqlite+aiosqlite:///{tmp_path / 'store.db'}")


@pytest.mark.postgres
async def test_a_postgresql_store_at_head_opens_without_alembic(pg_url: str) -> None:
    await _at_head_skips_alembic(pg_url)
