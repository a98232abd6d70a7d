"""The `[store]` section: which database the mirror writes to (SQLite or PostgreSQL)."""

from __future__ import annotations

import importlib.util

from pydantic import field_validator

from sync.config.values import FrozenModel


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
