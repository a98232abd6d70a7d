"""A relabel on a wide PostgreSQL table (store.relabel_wide): labels and choice values kept in
`_dv_overflow`, in the mirror and in its history, take the new label like named columns do,
with the relabel's commit number; a replay changes nothing."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from sync.store.metadata_tables import rewrite
from sync.store.mirror_tables import ensure_mirror
from sync.store.relabel import LabelFix
from tests.test_history_wide_postgres import HISTORY_VIEW, columns_of, commit
from tests.test_pg_wide import (
    ENV,
    K1,
    K2,
    NOW,
    T0,
    _engine,  # noqa: F401 - the fixture
    fetch,
    row_of,
    table_columns,
    wide_schema,
)

pytestmark = pytest.mark.postgres
PICKLIST = {"AttributeType": "Picklist"}


async def labels(pg_url: str, relation: str, *columns: str) -> dict[str, tuple[Any, ...]]:
    names = ", ".join(f'"{c}"' for c in columns)
    found = await fetch(pg_url, f"SELECT accountid::text AS k, {names} FROM {relation}")
    return {r["k"]: tuple(r[c] for c in columns) for r in found}


async def test_labels_kept_in_overflow_are_relabelled_in_the_mirror_and_its_history(
    engine: Any, pg_url: str
) -> None:
    table = wide_schema(1300, industrycode=PICKLIST)
    layout = await ensure_mirror(engine, ENV, table, soft=False, now=NOW, history=True)
    mirror = set(await table_columns(pg_url))
    history = set(await columns_of(pg_url, "account__history"))
    assert "industrycode__label" not in mirror and "industrycode__label" not in history
    names = [c.name for c in table.columns]
    rows = []
    for key, variant, code in ((K1, 0, 1), (K2, 1, 2)):
        row = list(row_of(table, key, variant, f'W/"{variant + 1}"'))
        row[names.index("industrycode")] = code  # K1 is relabelled, K2 not
        rows.append(tuple(row))
    value = {c: (rows[0][names.index(c)], rows[1][names.index(c)]) for c in names}
    # A multi-select column kept in overflow, label too, with a value in K1 only.
    multi = next(
        c.name
        for c in table.columns
        if c.sql_type == "choices"
        and c.name not in mirror
        and f"{c.name}__label" not in mirror
        and value[c.name][0] is not None
        and value[c.name][0] != value[c.name][1]
    )
    await commit(engine, layout, T0, *rows)
    picked = value["industrycode"][0]

    choice = LabelFix("account", "industrycode", {int(picked): "Farming"})
    wanted = value[multi][0]
    many = LabelFix("account", multi, {}, recompute=lambda v: "A; C" if v == wanted else None)
    assert await rewrite(engine, ENV, {}, [choice, many], now=NOW + timedelta(minutes=5)) >= 1

    (commit_row,) = await fetch(
        pg_url,
        "SELECT seq, upserts FROM dv_commits WHERE environment = $1 AND table_name = 'account' "
        "ORDER BY seq DESC LIMIT 1",
        ENV,
    )
    seq = commit_row["seq"]
    view = f'"{ENV}"."account__wide"'
    got = await labels(pg_url, view, "industrycode__label", f"{multi}__label", "_dv_commit_seq")
    assert got[K1] == ("Farming", "A; C", seq)
    assert got[K2] == ("label 1", "label 1", 1)  # other values: untouched, no new number
    assert commit_row["upserts"] == 1

    opened = await labels(
        pg_url, HISTORY_VIEW, "industrycode__label", f"{multi}__label", "_dv_commit_seq"
    )
    assert opened[K1] == ("Farming", "A; C", seq)  # the open version, in place
    assert opened[K2] == ("label 1", "label 1", 1)

    # The same fixes again: nothing changes, no number is taken.
    assert await rewrite(engine, ENV, {}, [choice, many], now=NOW + timedelta(minutes=6)) == 0
    assert (
        await labels(pg_url, view, "industrycode__label", f"{multi}__label", "_dv_commit_seq")
        == got
    )
