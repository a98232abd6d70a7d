"""The dialect seam: everything that differs between SQLite and PostgreSQL stores.

A `Dialect` names the mirror tables, writes their DDL, lists their columns, builds one
`TableWriter` per column layout (the page's upsert, deletions, touches, sweep and count) and
sorts the database's failures by what happens next. The rest of the store (drift planning, the
page transaction, its retries, the control tables through SQLAlchemy Core) is the same for both.

* `sqlite` — the embedded default: STRICT tables `<environment>__<table>`, values stored as the
  Web API sent them (decimals and moments as text), one writer per file (store.connect).
* `postgres` — schema `<environment>`, table `<table>`, native types (numeric, timestamptz, date,
  uuid, boolean, bigint, double precision, integer[]); control tables in schema `dvmirror`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from sync.errors import ConfigError
from sync.store.layout import SqlType

# What a failed statement means: a value the store refused (the page was hostile), the database
# is busy (run the transaction again), the connection broke (retry later), the disk is full (the
# table parks and retries until space is freed), the table passes a limit of the store (it parks
# until fewer columns are mirrored), or the store failed.
Failure = Literal["data", "busy", "transient", "full", "limit", "store"]


@dataclass(frozen=True)
class Overflow:
    """Columns a dialect keeps outside the table's own columns (PostgreSQL's `_dv_overflow`
    jsonb, for a row too wide: store.dialects.pg_wide), and the DDL that goes with them."""

    columns: frozenset[str] = frozenset()  # catalogued columns stored as keys of the overflow
    before: tuple[str, ...] = ()  # DDL before the drift's own (the overflow column, key moves)
    after: tuple[str, ...] = ()  # DDL after it (the view that unpacks the overflow)
    renamed: frozenset[str] = frozenset()  # retyped columns whose old values moved in overflow


@dataclass(frozen=True)
class WideRequest:
    """What the drift of one table changes, in the terms the overflow plan needs."""

    environment: str
    table: str
    primary_key: str
    columns: Sequence[tuple[str, SqlType]]  # the live columns in row order, the key first
    catalogue: Mapping[str, str]  # every catalogued column (before this drift) → its type
    added: Sequence[tuple[str, SqlType]] = ()  # new columns, and retyped ones under the new type
    retyped: Sequence[tuple[str, str]] = ()  # (column, kept_as): the old values move
    create: bool = False


class TableWriter(Protocol):
    """The prepared statements of one mirror table for one column layout."""

    @property
    def environment(self) -> str: ...

    @property
    def table(self) -> str: ...

    @property
    def primary_key(self) -> str: ...

    @property
    def soft(self) -> bool: ...

    async def upsert(
        self, conn: AsyncConnection, rows: Sequence[tuple[Any, ...]], stamp: str, seq: int
    ) -> int:
        """Insert or update `rows` (row tuples: the columns, then the raw ETag); the rows whose
        stored values change get `_dv_commit_seq = seq` (store.commits)."""
        ...

    async def changed(self, conn: AsyncConnection, seq: int) -> int:
        """Rows carrying commit number `seq` (right after the upsert: the rows it changed)."""
        ...

    async def delete(
        self,
        conn: AsyncConnection,
        ids: Sequence[str],
        observed_at: str,
        seq: int,
        reason: str | None = None,
    ) -> int:
        """Delete (or soft-delete) the live rows of `ids` and log them in `_dv_deletions`,
        numbered `seq`, with `reason` (NULL for the sync itself, "verify" for a repair)."""
        ...

    async def touch(self, conn: AsyncConnection, keys: Sequence[str], stamp: str) -> None:
        """Mark rows as seen in this full pass without rewriting them."""
        ...

    async def sweep(self, conn: AsyncConnection, before: str, observed_at: str, seq: int) -> int:
        """Log and remove the rows not seen since the full pass started at `before`."""
        ...

    async def count(self, conn: AsyncConnection) -> int:
        """Live rows of the mirror table."""
        ...


class Dialect(Protocol):
    name: str

    def create_engine(self, url: str, **kwargs: Any) -> AsyncEngine: ...

    def mirror_name(self, environment: str, table: str) -> str:
        """How data teams name the mirror table (`contoso__account`, `contoso.account`)."""
        ...

    def table_ref(self, environment: str, table: str) -> str:
        """The quoted SQL reference of the mirror table."""
        ...

    def create_table(
        self,
        environment: str,
        table: str,
        primary_key: str,
        columns: Sequence[tuple[str, SqlType]],
    ) -> list[str]: ...

    def add_column(self, environment: str, table: str, column: str, sql_type: SqlType) -> str: ...

    def add_commit_seq(self, environment: str, table: str) -> list[str]:
        """DDL that gives a mirror made before the change feed its `_dv_commit_seq`."""
        ...

    def rename_column(self, environment: str, table: str, old: str, new: str) -> str: ...

    async def existing_columns(
        self, conn: AsyncConnection, environment: str, table: str
    ) -> list[str] | None:
        """Column names of a mirror table, or None when it does not exist."""
        ...

    def writer(
        self,
        environment: str,
        table: str,
        columns: Sequence[tuple[str, SqlType]],
        removed: Sequence[str],
        *,
        soft: bool,
        overflow: frozenset[str] = frozenset(),
    ) -> TableWriter:
        """`columns` in row-tuple order, primary key first; `removed` columns are written NULL;
        `overflow` columns go to the overflow (`Overflow.columns`)."""
        ...

    async def plan_overflow(self, conn: AsyncConnection, request: WideRequest) -> Overflow:
        """Which columns of a table being created or drifting have no room in its rows."""
        ...

    def same_storage(self, old: str, new: SqlType) -> bool:
        """Whether a column catalogued as `old` already stores `new` values as they are."""
        ...

    def classify(self, exc: BaseException) -> Failure: ...

    def guid_order(self, column: str) -> str:
        """A text expression over the quoted key `column` that sorts (and compares with `<`,
        `>`) in SQL Server's `uniqueidentifier` order: the hex of `sql_order_key(key)`."""
        ...


# SQL Server compares a uniqueidentifier by bytes 10-15, 8-9, 7-6, 5-4, 3-0 of its text's
# bytes (mirror.keyranges.sql_order_key); as 1-based positions in the 36-character text.
_GUID_ORDER_PARTS: tuple[tuple[int, int], ...] = ((25, 12), (20, 4), (17, 2), (15, 2), (12, 2))
_GUID_ORDER_PARTS += ((10, 2), (7, 2), (5, 2), (3, 2), (1, 2))


def guid_order_text(key_text: str) -> str:
    """`substr` pieces of a lowercase 36-character GUID text, concatenated in SQL Server order."""
    return " || ".join(
        f"substr({key_text}, {start}, {length})" for start, length in _GUID_ORDER_PARTS
    )


def dialect_named(name: str) -> Dialect:
    if name == "sqlite":
        from sync.store.dialects.sqlite import SQLITE

        return SQLITE
    if name == "postgresql":
        from sync.store.dialects.postgres import POSTGRES

        return POSTGRES
    raise ConfigError(
        f"store.url: the {name} database is not supported; use sqlite+aiosqlite:///PATH or "
        "postgresql+asyncpg://USER@HOST/DATABASE"
    )


def dialect_for(target: AsyncEngine | AsyncConnection | str) -> Dialect:
    """The dialect of an engine, a connection or a store URL."""
    if isinstance(target, str):
        return dialect_named(make_url(target).get_backend_name())
    return dialect_named(target.dialect.name)
