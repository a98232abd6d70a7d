"""The tables `dvmirror dbt-sources` lists beside the mirror tables: each `<table>__history`
(SCD type 2) and the environment's metadata tables (optionsetmetadata, …, relationshipmetadata).

Only tables that exist are listed, with the columns they have (a history table carries the
mirror's catalogue columns that it holds, plus its own). Neither has dbt freshness: a history
table gains rows only when something changes, and a metadata table has no `_dv_synced_at`.
Pure builders; `existing_extras` is the one store read.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from sync.store.dialects import dialect_for
from sync.store.dialects.history_sql import OP, VALID_FROM, VALID_TO, history_table
from sync.store.dialects.sqlite import mirror_table_name
from sync.store.layout import COMMIT_SEQ_COLUMN, SYNCED_COLUMN, VERSION_COLUMN
from sync.store.metadata_tables import SHAPES
from sync.store.relationship_metadata import COLUMNS as RELATIONSHIP_COLUMNS
from sync.store.relationship_metadata import TABLE as RELATIONSHIP_TABLE

POINT_IN_TIME = f"{OP} = 'upsert' AND {VALID_FROM} <= T AND ({VALID_TO} IS NULL OR {VALID_TO} > T)"
HISTORY_COLUMNS: tuple[tuple[str, str, bool], ...] = (  # name, description, not null
    (VERSION_COLUMN, "the version's Dataverse versionnumber", False),
    (VALID_FROM, "when the version began (the row's modifiedon, else the sync time)", True),
    (VALID_TO, "when the next version or the deletion began; NULL while current", False),
    (OP, "upsert (the row as it was) or delete (gone from _dv_valid_from; last values)", True),
    (SYNCED_COLUMN, "when dvmirror recorded the version (UTC)", False),
    (COMMIT_SEQ_COLUMN, "the commit that last wrote the history row: load by it", False),
)
OWN_HISTORY = {name for name, _, _ in HISTORY_COLUMNS}

METADATA_DESCRIPTIONS: dict[str, str] = {
    "optionsetmetadata": "Choice labels (Synapse Link's OptionsetMetadata): one row per option "
    "of a local choice, multi-select or Yes/No column, and installed language",
    "globaloptionsetmetadata": "Labels of columns bound to a global choice (Synapse Link's "
    "GlobalOptionsetMetadata): one row per option and installed language",
    "statemetadata": "statecode labels (Synapse Link's StateMetadata), per installed language",
    "statusmetadata": "statuscode labels with their state (Synapse Link's StatusMetadata), per "
    "installed language",
    "targetmetadata": "The table each lookup column points at (Synapse Link's TargetMetadata); "
    "a Customer column has two rows",
    "attributemetadata": "Type, display name and description of every mirrored column "
    "(Synapse Link's AttributeMetadata)",
    RELATIONSHIP_TABLE: "How to join each mirrored N:N: the intersect table and the columns "
    "holding each side's id",
}
COLUMN_DESCRIPTIONS: dict[str, str] = {
    "entityname": "the Dataverse table's logical name",
    "optionsetname": "the column's logical name",
    "globaloptionsetname": "the global choice's name",
    "option": "the option's value (Yes/No: 1 and 0)",
    "state": "the statecode value",
    "status": "the statuscode value",
    "isuserlocalizedlabel": "1 for the application user's language (the one __label uses), else 0",
    "localizedlabellanguagecode": "the language's LCID (1033 English, 1031 German, …)",
    "localizedlabel": "the label in that language",
    "attributename": "the column's logical name",
    "referencedentity": "the table the lookup points at",
    "referencedattribute": "that table's key column",
    "attributetype": "Dataverse's attribute type (Picklist, Lookup, …)",
    "attributetypecode": "Dataverse's attribute type number",
    "displayname": "the column's display name (user's language)",
    "description": "the column's description (user's language)",
    "precision": "digits after the point (Decimal, Double, Money)",
    "maxlength": "maximum length (String, Memo)",
    "schema_name": "the N:N relationship's SchemaName",
    "intersect_table": "the intersect (N:N) table's mirror name",
    "entity1": "the first related table",
    "entity1_attribute": "the intersect table's column holding entity1's id",
    "entity2": "the second related table",
    "entity2_attribute": "the intersect table's column holding entity2's id",
}


def metadata_columns() -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
    """Each metadata table's columns and key, in the stores' order."""
    shapes = {name: (tuple(c for c, _ in cols), key) for name, (cols, key) in SHAPES.items()}
    shapes[RELATIONSHIP_TABLE] = (RELATIONSHIP_COLUMNS, ("schema_name",))
    return shapes


def _named(environment: str, table: str, postgres: bool) -> str:
    return table if postgres else mirror_table_name(environment, table)


def history_source_table(
    environment: str,
    table: str,
    catalogue: Sequence[Mapping[str, Any]],
    present: Iterable[str],
    *,
    key: str | None,
    postgres: bool,
    describe: Any,
) -> dict[str, Any]:
    """A `<table>__history` entry: the catalogue columns it holds (key first, `not_null`: a key
    has one row per version, so not `unique`), then the history's own columns."""
    have = set(present)
    own = [r for r in catalogue if r["column_name"] in have and r["column_name"] not in OWN_HISTORY]
    entries: list[dict[str, Any]] = []
    for row in sorted(own, key=lambda r: (r["column_name"] != key, r["column_name"])):
        entry: dict[str, Any] = {
            "name": row["column_name"],
            "description": describe(row["display_name"], row["description"]),
        }
        if row["column_name"] == key:
            entry["data_tests"] = ["not_null"]
        entries.append(entry)
    for name, description, not_null in HISTORY_COLUMNS:
        if name in have:
            entries.append({"name": name, "description": description})
            if not_null:
                entries[-1]["data_tests"] = ["not_null"]
    return {
        "name": _named(environment, history_table(table), postgres),
        "description": f"History (SCD type 2) of {table}: one row per version; the rows as "
        f"they were at time T: {POINT_IN_TIME}",
        "freshness": None,
        "columns": entries,
    }


def metadata_source_table(environment: str, name: str, *, postgres: bool) -> dict[str, Any]:
    columns, key = metadata_columns()[name]
    entries: list[dict[str, Any]] = []
    for column in columns:
        entry: dict[str, Any] = {"name": column, "description": COLUMN_DESCRIPTIONS[column]}
        if column in key:
            entry["data_tests"] = ["not_null"]
        entries.append(entry)
    return {
        "name": _named(environment, name, postgres),
        "description": METADATA_DESCRIPTIONS[name],
        "freshness": None,
        "columns": entries,
    }


async def existing_extras(
    conn: AsyncConnection, environment: str, tables: Iterable[str]
) -> tuple[dict[str, list[str]], list[str]]:
    """The history tables of `tables` that exist (table → its columns) and the metadata tables
    that exist, in the order they are listed."""
    dialect = dialect_for(conn)
    history: dict[str, list[str]] = {}
    for table in sorted(set(tables)):
        columns = await dialect.existing_columns(conn, environment, history_table(table))
        if columns is not None:
            history[table] = columns
    metadata = [
        name
        for name in metadata_columns()
        if await dialect.existing_columns(conn, environment, name) is not None
    ]
    return history, metadata
