"""A relabelled option reaches the open versions of `<table>__history` as it reaches the mirror.

A relabel changes no row's `versionnumber`: it is the same version with other values, and the
history updates an open version in place for that (sync.store.history). So each label fix of a
metadata refresh (sync.store.metadata_tables) is applied, in the same transaction, to the
history's open versions (`_dv_valid_to IS NULL`); closed versions keep the label they had, which
is what the row said then. Tables without a history table are skipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from sync.store.dialects import dialect_for
from sync.store.dialects.history_sql import VALID_TO, history_table
from sync.store.identifiers import quote_ident

if TYPE_CHECKING:
    from sync.store.metadata_tables import LabelFix


def _as_web_api(value: Any) -> str:
    """A multi-select value as the Web API writes it (`1,3`), from text or integer[]."""
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return str(value)


async def fix_history_labels(
    conn: AsyncConnection, environment: str, fixes: Sequence[LabelFix]
) -> int:
    """The open history versions whose `<col>__label` changed (their number)."""
    dialect = dialect_for(conn)
    changed = 0
    for fix in fixes:
        name = history_table(fix.table)
        present = await dialect.existing_columns(conn, environment, name) or []
        label = f"{fix.column}__label"
        if fix.column not in present or label not in present:
            continue
        target = dialect.table_ref(environment, name)
        column, label_column = quote_ident(fix.column), quote_ident(label)
        statement = text(
            f"UPDATE {target} SET {label_column} = :label "  # noqa: S608 - quoted identifiers
            f"WHERE {column} = :value AND {quote_ident(VALID_TO)} IS NULL "
            f"AND ({label_column} IS NULL OR {label_column} <> :label)"
        )
        if fix.recompute is None:
            pairs: list[tuple[Any, str]] = sorted(fix.labels.items())
        else:
            distinct = text(
                f"SELECT DISTINCT {column} FROM {target} "  # noqa: S608
                f"WHERE {column} IS NOT NULL AND {quote_ident(VALID_TO)} IS NULL"
            )
            pairs = []
            for (stored,) in (await conn.execute(distinct)).all():
                new = fix.recompute(_as_web_api(stored))
                if new is not None:
                    pairs.append((stored, new))
        for value, new_label in pairs:
            result = await conn.execute(statement, {"label": new_label, "value": value})
            changed += max(result.rowcount or 0, 0)
    return changed
