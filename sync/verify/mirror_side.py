"""What verify reads from the mirror: live rows, recent changes, keys and versions in
Dataverse's key order (the dialect's `guid_order` expression), so the two sides count the
same ranges."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from sync.mirror.keyranges import KeyRange, sql_order_key
from sync.store.control import deletions
from sync.store.dialects import dialect_for
from sync.store.identifiers import quote_ident
from sync.store.layout import DELETED_COLUMN, SYNCED_COLUMN, VERSION_COLUMN
from sync.verify.plan import RANGE_ROWS


@dataclass(frozen=True)
class MirrorTable:
    environment: str
    table: str
    primary_key: str
    soft: bool

    def parts(self, engine: AsyncEngine) -> tuple[str, str, str]:
        """(table reference, key column, SQL Server order expression)."""
        dialect = dialect_for(engine)
        key = quote_ident(self.primary_key)
        return dialect.table_ref(self.environment, self.table), key, dialect.guid_order(key)

    @property
    def alive(self) -> str:
        return f"{quote_ident(DELETED_COLUMN)} IS NULL" if self.soft else "1 = 1"


def _range_sql(order: str, key_range: KeyRange) -> tuple[str, dict[str, str]]:
    terms, binds = [], {}
    if key_range.lower is not None:
        terms.append(f"{order} > :lower")
        binds["lower"] = sql_order_key(key_range.lower).hex()
    if key_range.upper is not None:
        terms.append(f"{order} <= :upper")
        binds["upper"] = sql_order_key(key_range.upper).hex()
    return " AND ".join(terms) or "1 = 1", binds


async def live_rows(engine: AsyncEngine, mirror: MirrorTable) -> int:
    ref, _, _ = mirror.parts(engine)
    async with engine.connect() as conn:
        sql = f"SELECT count(*) FROM {ref} WHERE {mirror.alive}"  # noqa: S608
        return int((await conn.execute(text(sql))).scalar_one())


async def changed_since(engine: AsyncEngine, mirror: MirrorTable, since: datetime) -> int:
    """Rows the mirror wrote or deleted since `since` (how far a day-old estimate may be off)."""
    ref, _, _ = mirror.parts(engine)
    synced = quote_ident(SYNCED_COLUMN)
    written = f"SELECT count(*) FROM {ref} WHERE {synced} >= :since"  # noqa: S608
    # SQLite keeps the stamp as fixed-width UTC text (mirror.job_types.stamp); PostgreSQL a
    # timestamptz.
    stamp: object = since.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if dialect_for(engine).name == "postgresql":
        stamp = since
    gone = (
        select(func.count())
        .select_from(deletions)
        .where(
            deletions.c.environment == mirror.environment,
            deletions.c.table == mirror.table,
            deletions.c.observed_at >= since,
        )
    )
    async with engine.connect() as conn:
        upserts = int((await conn.execute(text(written), {"since": stamp})).scalar_one())
        deletes = int((await conn.execute(gone)).scalar_one())
    return upserts + deletes


async def range_bounds(
    engine: AsyncEngine, mirror: MirrorTable, max_rows: int = RANGE_ROWS
) -> tuple[list[str], list[int]]:
    """Upper bounds every `max_rows` live keys in SQL Server order, and each range's mirror count
    (one more range than bounds): the key sampler, read from the mirror in one ordered pass."""
    ref, key, order = mirror.parts(engine)
    sql = f"SELECT {key} FROM {ref} WHERE {mirror.alive} ORDER BY {order}"  # noqa: S608
    bounds: list[str] = []
    counts = [0]
    async with engine.connect() as conn:
        result = await conn.stream(text(sql))
        async for (value,) in result:
            counts[-1] += 1
            if counts[-1] == max_rows:
                bounds.append(str(value).lower())
                counts.append(0)
    return bounds, counts


async def range_versions(
    engine: AsyncEngine, mirror: MirrorTable, key_range: KeyRange
) -> dict[str, int | None]:
    """Key → `_dv_version` of the mirror's live rows in one range."""
    ref, key, order = mirror.parts(engine)
    where, binds = _range_sql(order, key_range)
    version = quote_ident(VERSION_COLUMN)
    sql = f"SELECT {key}, {version} FROM {ref} WHERE {mirror.alive} AND {where}"  # noqa: S608
    async with engine.connect() as conn:
        rows = (await conn.execute(text(sql), binds)).all()
    return {str(k).lower(): (None if v is None else int(v)) for k, v in rows}


async def versions_of(
    engine: AsyncEngine, mirror: MirrorTable, keys: Sequence[str]
) -> dict[str, int | None]:
    """Key → `_dv_version` of those of `keys` alive in the mirror."""
    wanted = {k.lower() for k in keys}
    found: dict[str, int | None] = {}
    ref, key, _ = mirror.parts(engine)
    version = quote_ident(VERSION_COLUMN)
    cast = f"lower(CAST({key} AS TEXT))"
    ordered = sorted(wanted)
    for start in range(0, len(ordered), 500):
        chunk = ordered[start : start + 500]
        names = ", ".join(f":k{i}" for i in range(len(chunk)))
        sql = (
            f"SELECT {key}, {version} FROM {ref} "  # noqa: S608
            f"WHERE {mirror.alive} AND {cast} IN ({names})"
        )
        async with engine.connect() as conn:
            rows = (await conn.execute(text(sql), {f"k{i}": k for i, k in enumerate(chunk)})).all()
        found.update({str(k).lower(): (None if v is None else int(v)) for k, v in rows})
    return found
