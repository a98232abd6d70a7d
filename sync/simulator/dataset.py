"""The rows of one simulated environment: seeded lazily, changed through an in-memory overlay.

A table of N seeded rows holds no per-row state: row i is derived from (seed, table, i). Only
rows created, updated or deleted since start live in the overlay (``states``, ``deleted``), so
memory grows with churn, never with N. Every change takes the next value of the environment's
``versionnumber`` counter, which is what change tracking (delta tokens) is built on.
"""

from __future__ import annotations

import heapq
import random
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from itertools import chain
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sync.simulator.attributes import (
    AttributeDef,
    TableTemplate,
    boolean,
    choice,
    date,
    memo,
    number,
    string,
)
from sync.simulator.edgevalues import wide_attributes
from sync.simulator.rowgen import RowFactory
from sync.simulator.templates import TEMPLATES
from sync.simulator.values import (
    DAY,
    SEED_SPAN,
    SEED_START,
    GenContext,
    Row,
    RowState,
    index_of,
    key_for,
    mix,
    salt,
)

#: Versions of seeded rows start above this (real versionnumbers are large, opaque numbers).
BASE_VERSION = 100_000
HOSTILE_KINDS = frozenset(
    {"malformed_json", "missing_key", "wrong_type", "unsafe_attribute", "bad_option_set"}
)
UNSAFE_ATTRIBUTE = 'bad name"; drop'
_SAFE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,49}$")
_ADDABLE = frozenset(
    {
        "String",
        "Memo",
        "Integer",
        "BigInt",
        "Decimal",
        "Double",
        "Money",
        "Boolean",
        "DateTime",
        "DateOnly",
        "Picklist",
    }
)


#: Marks a deleted column's internal name (never in a logical name): the column keeps its place
#: in the draw order, so that the other columns' seeded values do not move, but it is in no
#: metadata, row or query.
DELETED_MARK = "#deleted"


def _deleted(attr: AttributeDef) -> bool:
    return DELETED_MARK in attr.logical_name


class TableSpec(BaseModel):
    """One table of a scenario environment (``[[tenants.environments.tables]]``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(
        description="template: account | contact | opportunity | new_project | new_person | "
        "new_inspection"
    )
    rows: int = Field(default=1000, ge=0, le=100_000_000)
    change_tracking: bool = True
    denied: bool = Field(default=False, description="app user lacks prvRead<Entity> → 403")
    table_type: Literal["Standard", "Activity", "Virtual", "Elastic"] = Field(
        default="Standard", description="EntityDefinitions TableType"
    )
    private: bool = Field(default=False, description="EntityDefinitions IsPrivate")
    intersect: bool = Field(default=False, description="EntityDefinitions IsIntersect (N:N)")
    extra_columns: int = Field(
        default=0,
        ge=0,
        le=1000,
        description="custom columns added to the template, with long names (a very wide table)",
    )

    @field_validator("name")
    @classmethod
    def _known_template(cls, value: str) -> str:
        if value not in TEMPLATES:
            raise ValueError(f"unknown table template {value!r}; use one of {sorted(TEMPLATES)}")
        return value


@dataclass(frozen=True, slots=True)
class Tombstone:
    """A deleted row: the version and time of its deletion (reported by delta queries)."""

    version: int
    time: int


class VersionCounter:
    """The environment-wide versionnumber sequence."""

    def __init__(self, start: int) -> None:
        self.value = start

    def next(self) -> int:
        """Take the next version."""
        self.value += 1
        return self.value


class Table:
    """One simulated table: template + spec + overlay of changes since start."""

    def __init__(
        self,
        spec: TableSpec,
        ctx: GenContext,
        version_offset: int,
        *,
        template: TableTemplate | None = None,  # one not among the templates (an intersect)
    ) -> None:
        self.spec = spec
        self.template: TableTemplate = template or TEMPLATES[spec.name]
        self.name = spec.name
        self.ctx = ctx
        self.attributes: list[AttributeDef] = list(self.template.attributes)
        if spec.extra_columns:
            extra = wide_attributes(spec.extra_columns, prefix="new_extra_")
            self.attributes += [replace(a, custom=True) for a in extra]
        self.base_count = spec.rows
        self.next_index = spec.rows
        self.version_offset = version_offset
        self.states: dict[int, RowState] = {}
        self.deleted: dict[int, Tombstone] = {}
        # Tombstones of rows that were deleted and then restored with the same id (delta
        # queries still report the deletion, beside the row).
        self.past_deletions: dict[int, Tombstone] = {}
        self.expired_below = 0  # delta tokens with a lower version are expired
        self.hostile: str | None = None
        self._row_attributes: list[AttributeDef] | None = None
        self._factory: RowFactory | None = None
        #: Per-column plans compiled from the attributes (renderers, ...); cleared when they change.
        self.compiled: dict[Any, Any] = {}

    # -- identity and seeded values -------------------------------------------------------

    def key(self, index: int) -> str:
        """Primary key of row `index`."""
        return key_for(self.ctx.seed, self.name, index)

    def index_of(self, guid: str) -> int | None:
        """Row index of a primary key this table made, else None."""
        return index_of(self.ctx.seed, self.name, guid)

    def seeded_version(self, index: int) -> int:
        """versionnumber of an untouched seeded row (monotone in the index)."""
        return BASE_VERSION + self.version_offset + index + 1

    def seeded_modified(self, index: int) -> int:
        """modifiedon of an untouched seeded row (monotone in the index)."""
        return SEED_START + index * SEED_SPAN // max(self.base_count, 1)

    def _seeded_created(self, index: int) -> int:
        return self.seeded_modified(index) - mix(self.ctx.seed, salt(self.name), index) % (90 * DAY)

    # -- rows -----------------------------------------------------------------------------

    def exists(self, index: int) -> bool:
        """True when row `index` is live."""
        return 0 <= index < self.next_index and index not in self.deleted

    def live_count(self) -> int:
        """Number of live rows (O(1))."""
        return self.next_index - len(self.deleted)

    def row_attributes(self) -> list[AttributeDef]:
        """Attributes that are Web API properties of rows, in template order."""
        if self._row_attributes is None:
            self._row_attributes = [a for a in self.attributes if a.in_rows and not _deleted(a)]
        return self._row_attributes

    def metadata_attributes(self) -> list[AttributeDef]:
        """All attributes as metadata shows them (plus the hostile one when asked for)."""
        shown = [a for a in self.attributes if not _deleted(a)]
        if self.hostile != "unsafe_attribute":
            return shown
        bad = string(UNSAFE_ATTRIBUTE, "Bad Name")
        return [*shown, replace(bad, hostile=True)]

    def row(self, index: int) -> Row | None:
        """Row `index` as it is now, or None if it does not exist."""
        if not self.exists(index):
            return None
        state = self.states.get(index)
        version = state.version if state else self.seeded_version(index)
        factory = self._factory
        if factory is None:
            drawn = [a for a in self.attributes if a.in_rows]  # deleted columns too
            factory = self._factory = RowFactory(self.name, drawn, self.ctx, self.base_count)
        return factory.make(index, version, state)

    def indices(self, after: int = -1, low: int = 0, high: int | None = None) -> Iterator[int]:
        """Live indices above `after` in index (creation) order, lazily.

        [low, high) bounds the untouched seeded rows a filter can match (proved from their
        monotone versions, modified dates and keys); rows in the overlay are always visited
        because their values changed. Cost: O(rows yielded + overlay), never O(table).
        """
        high = self.base_count if high is None else max(0, min(high, self.base_count))
        outside: list[int] = []
        if low > 0 or high < self.base_count:
            outside = sorted(
                i for i in self.states if after < i < self.base_count and not low <= i < high
            )
        inside = range(max(after + 1, low), high)
        created = range(max(after + 1, self.base_count), self.next_index)
        for index in chain(heapq.merge(outside, inside), created):
            if index not in self.deleted:
                yield index

    def first_seeded_at_or_after(self, predicate: Callable[[int], bool]) -> int:
        """Smallest seeded index for which a monotone `predicate` holds (binary search)."""
        low, high = 0, self.base_count
        while low < high:
            middle = (low + high) // 2
            if predicate(middle):
                high = middle
            else:
                low = middle + 1
        return low

    # -- changes --------------------------------------------------------------------------

    def changes_between(
        self, low: int, high: int
    ) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """(upserts, deletions) as sorted (version, index) pairs with low < version <= high."""
        upserts = sorted(
            (s.version, i)
            for i, s in self.states.items()
            if low < s.version <= high and i not in self.deleted
        )
        deletions = sorted(
            (t.version, i)
            for tombstones in (self.deleted, self.past_deletions)
            for i, t in tombstones.items()
            if low < t.version <= high and (tombstones is self.deleted or i not in self.deleted)
        )
        return upserts, deletions

    def churn(
        self,
        counter: VersionCounter,
        now: int,
        *,
        creates: int,
        updates: int,
        deletes: int,
        seed: int,
    ) -> dict[str, int]:
        """Create, update and delete rows deterministically; each touched row gets a new version."""
        rng = random.Random(mix(self.ctx.seed, salt(self.name), seed, counter.value))
        for _ in range(max(0, creates)):
            index = self.next_index
            self.next_index += 1
            self.states[index] = RowState(0, counter.next(), now, now)
        updated = 0
        for index in self._pick_live(rng, updates):
            old = self.states.get(index)
            created = old.created if old else self._seeded_created(index)
            revision = (old.revision if old else 0) + 1
            self.states[index] = RowState(revision, counter.next(), now, created)
            updated += 1
        deleted = 0
        for index in self._pick_live(rng, deletes):
            self.states.pop(index, None)
            self.deleted[index] = Tombstone(counter.next(), now)
            deleted += 1
        return {
            "created": max(0, creates),
            "updated": updated,
            "deleted": deleted,
            "rows": self.live_count(),
            "version": counter.value,
        }

    def restore(self, counter: VersionCounter, now: int, *, count: int) -> dict[str, Any]:
        """Bring the `count` most recently deleted rows back with their ids (the recycle bin's
        restore, or a create that names the old id). Each gets a new version and new values;
        a delta query over the whole stretch reports both the row and its deletion."""
        latest = sorted(self.deleted, key=lambda i: self.deleted[i].version, reverse=True)
        restored: list[str] = []
        for index in latest[: max(0, count)]:
            self.past_deletions[index] = self.deleted.pop(index)
            revision = 1_000 + len(self.past_deletions)  # values unlike the deleted row's
            created = self._seeded_created(index) if index < self.base_count else now
            self.states[index] = RowState(revision, counter.next(), now, created)
            restored.append(self.key(index))
        return {"restored": restored, "rows": self.live_count(), "version": counter.value}

    def remove_column(self, name: str) -> dict[str, Any]:
        """Delete a custom column (and the companions Dataverse made for it)."""
        attr = next(
            (a for a in self.metadata_attributes() if a.logical_name == name and not a.hostile),
            None,
        )
        if attr is None:
            raise ValueError(f"{self.name} has no column {name!r}")
        if not attr.custom or attr.primary_id or attr.primary_name or attr.attribute_of:
            raise ValueError(f"column {name!r} of {self.name} is not a custom column")
        generation = self._deletions_of(name)
        renamed: list[AttributeDef] = []
        for i, each in enumerate(self.attributes):
            if name in (each.logical_name, each.attribute_of):
                hidden = f"{each.logical_name}{DELETED_MARK}{generation}"
                self.attributes[i] = replace(each, logical_name=hidden, attribute_of=None)
                renamed.append(each)
        self._changed_columns()
        return {"removed": [a.logical_name for a in renamed]}

    def _deletions_of(self, name: str) -> int:
        """How many times a column of this name was deleted (its next MetadataId generation)."""
        return sum(a.logical_name.startswith(f"{name}{DELETED_MARK}") for a in self.attributes)

    def _changed_columns(self) -> None:
        self._row_attributes = None
        self._factory = None
        self.compiled.clear()

    def _pick_live(self, rng: random.Random, count: int) -> list[int]:
        wanted = min(max(0, count), self.live_count())
        picked: dict[int, None] = {}
        attempts = 0
        while len(picked) < wanted and attempts < wanted * 50 + 100:
            attempts += 1
            index = rng.randrange(self.next_index)
            if self.exists(index):
                picked[index] = None
        if len(picked) < wanted:  # nearly empty table: fall back to a scan
            for index in range(self.next_index):
                if len(picked) >= wanted:
                    break
                if self.exists(index):
                    picked[index] = None
        return list(picked)

    def add_column(self, spec: Mapping[str, Any], current_version: int) -> AttributeDef:
        """Add a custom column; rows whose version is not above `current_version` read null."""
        name = str(spec.get("name", ""))
        kind = str(spec.get("type", ""))
        if not _SAFE_NAME.match(name):
            raise ValueError(f"column name {name!r} must match {_SAFE_NAME.pattern}")
        if any(name in (a.logical_name, a.web_name) for a in self.metadata_attributes()):
            raise ValueError(f"column {name!r} already exists on {self.name}")
        if kind not in _ADDABLE:
            raise ValueError(f"column type {kind!r} must be one of {sorted(_ADDABLE)}")
        display = str(spec.get("display_name") or name)
        if kind == "String":
            added = [string(name, display)]
        elif kind == "Memo":
            added = [memo(name, display)]
        elif kind in ("DateTime", "DateOnly"):
            behavior = "DateOnly" if kind == "DateOnly" else str(spec.get("behavior", "UserLocal"))
            added = [
                date(
                    name,
                    display,
                    behavior=behavior,
                    date_format=str(spec.get("format", "DateAndTime")),
                )
            ]
        elif kind == "Boolean":
            added = boolean(name, display)
        elif kind == "Picklist":
            added = choice(name, display, {1: "One", 2: "Two", 3: "Three"})
        else:
            added = [number(name, kind, display, 0, 1000)]
        generation = self._deletions_of(name)  # created again: a new MetadataId
        added = [
            replace(
                a,
                custom=True,
                null_ratio=0.0,
                added_at_version=current_version,
                generation=generation,
            )
            for a in added
        ]
        self.attributes.extend(added)
        self._changed_columns()
        return added[0]


def build_tables(specs: Sequence[TableSpec], seed: int) -> tuple[dict[str, Table], int]:
    """Tables of one environment and the first value of its version counter."""
    names = [s.name for s in specs]
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        raise ValueError(f"table(s) listed twice in one environment: {sorted(duplicates)}")
    ctx = GenContext(seed, {s.name: s.rows for s in specs})
    tables: dict[str, Table] = {}
    offset = 0
    for spec in specs:
        tables[spec.name] = Table(spec, ctx, offset)
        offset += spec.rows
    return tables, BASE_VERSION + offset
