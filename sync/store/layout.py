"""The layout of a mirror table: its columns, their SQL types and the reserved columns.

Plain data shared by the layers that build a table's layout (sync.mirror.typemap, from Dataverse
metadata) and the store that creates, alters and writes the table. No logic beyond naming.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Literal

SqlType = Literal[
    "text",
    "integer",
    "bigint",
    "numeric",
    "float",
    "boolean",
    "timestamp",
    "date",
    "uuid",
    "choices",  # multi-select: the Web API's `1,2,3`; PostgreSQL integer[], SQLite that text
]

# Reserved mirror columns, appended to every row tuple in this order.
VERSION_COLUMN = "_dv_version"
SYNCED_COLUMN = "_dv_synced_at"
DELETED_COLUMN = "_dv_deleted_at"
# The number of the commit that last really changed the row (store.commits): loads follow it.
COMMIT_SEQ_COLUMN = "_dv_commit_seq"
RESERVED_COLUMNS = (VERSION_COLUMN, SYNCED_COLUMN, DELETED_COLUMN, COMMIT_SEQ_COLUMN)


@dataclass(frozen=True, slots=True)
class MirrorColumn:
    """One column of a mirror table and where its value comes from in the row JSON."""

    name: str
    source_key: str
    sql_type: SqlType
    attribute: str
    attribute_type: str
    # How the attribute was declared ("AttributeType DateTime, Format DateOnly, DateTimeBehavior
    # UserLocal"), named when a value does not fit; not part of the schema hash.
    declared: str = field(default="", compare=False)
    # The attribute's MetadataId ("" when the service did not send one): a column deleted and
    # created again under the same name is a new attribute with a new id.
    attribute_id: str = field(default="", compare=False)
    # The attribute's display name and description (user-localized labels; "" when absent),
    # kept in the column catalogue for `dvmirror dbt-sources`.
    display_name: str = field(default="", compare=False)
    description: str = field(default="", compare=False)


@dataclass(frozen=True)
class TableSchema:
    """What discovery knows about one table; the mirror and the requests are built from it."""

    table: str
    entity_set: str
    primary_key: str
    change_tracking: bool
    columns: tuple[MirrorColumn, ...]  # primary key first
    skipped: tuple[str, ...] = ()
    numeric_keys: tuple[str, ...] = field(init=False)
    # The intersect table of an N:N (IsIntersect): without change tracking it is read in
    # full, keys only, every reconcile interval (sync.mirror.relationships).
    intersect: bool = False

    def __post_init__(self) -> None:
        keys = tuple(c.source_key for c in self.columns if c.sql_type == "numeric")
        object.__setattr__(self, "numeric_keys", keys)

    @property
    def select(self) -> tuple[str, ...]:
        """The `$select` names: each attribute once, lookups by their Web API name."""
        names: list[str] = []
        for column in self.columns:
            if "@" not in column.source_key and column.source_key not in names:
                names.append(column.source_key)
        return tuple(names)

    @property
    def has_modifiedon(self) -> bool:
        return any(c.name == "modifiedon" and c.sql_type == "timestamp" for c in self.columns)

    @property
    def schema_hash(self) -> str:
        text = "|".join(f"{c.name}:{c.sql_type}:{c.source_key}" for c in self.columns)
        return hashlib.sha256(
            f"{self.entity_set}|{self.change_tracking}|{text}".encode()
        ).hexdigest()
