"""Open the store for a command: create the engine, then migrate to head (every command does)."""

from __future__ import annotations

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from sync.config.model import Config
from sync.errors import StoreError
from sync.store.connect import create_engine
from sync.store.migrate import upgrade


async def open_store(config: Config, *, migrate: bool = True) -> AsyncEngine:
    engine = create_engine(config.store_url)
    if migrate:
        try:
            await upgrade(engine)
        except SQLAlchemyError as exc:
            await engine.dispose()
            raise StoreError(
                f"store {redact_url(config.store_url)}: migration failed: "
                f"{exc.__class__.__name__}: {str(exc).splitlines()[0]}"
            ) from exc
    return engine


def redact_url(url: str) -> str:
    """Hide a password in a database URL before it reaches a message."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
