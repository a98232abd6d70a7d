"""N:N relationships: their metadata and their intersect entity sets, as Dataverse serves them.

A scenario's `[[tenants.environments.relationships]]` declares an N:N between two of its tables.
Dataverse keeps each one in an intersect table (`IsIntersect = true`) with its own primary key
`<intersect>id` and the two related ids (`Entity1IntersectAttribute`, `Entity2IntersectAttribute`,
typed Uniqueidentifier; a self-referencing N:N names them `<table>idone`/`<table>idtwo`). Its entity
set name is whatever `EntitySetName` says (e.g. `new_account_contactset`), never a plural a client
could guess. An association is a created row, a disassociation a deleted one (a tombstone for
change tracking); rows are never updated. Deleting a related row removes its associations (with
tombstones), as the platform's cascade does.

`EntityDefinitions(LogicalName='x')/ManyToManyRelationships` lists the N:N of table x (as
entity 1 or 2) with `$select`. Associating through `POST …/<nav>/$ref` is not simulated: the
admin API's churn associates (creates) and disassociates (deletes) rows of an intersect table.
An intersect table without change tracking refuses `Prefer: odata.track-changes` with
`0x80072492` (ChangeTrackingNotEnabledForRelatedEntities; reference 4.4, message and status
unconfirmed, 400 like its sibling).
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, MutableMapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from sync.simulator.attributes import AttributeDef, TableTemplate, key
from sync.simulator.dataset import Table, TableSpec, Tombstone, VersionCounter
from sync.simulator.metadata import metadata_id
from sync.simulator.odata import Query, parse_select
from sync.simulator.protocol import ApiError, ApiResponse, json_response, unknown_property
from sync.simulator.values import GenContext, Row, RowState, mix, salt

RELATIONSHIP_TYPE = "ManyToManyRelationship"
_PATH = re.compile(r"^EntityDefinitions\((?P<entity>[^)]*)\)/ManyToManyRelationships$")
_KEY = re.compile(r"^(?:LogicalName='(?P<name>[^']*)'|(?P<id>[0-9a-fA-F-]{36}))$")
_NAME = r"^[a-z][a-z0-9_]{0,49}$"


class RelationshipSpec(BaseModel):
    """One N:N of a scenario environment (`[[tenants.environments.relationships]]`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_]{0,49}$")
    entity1: str
    entity2: str
    intersect_entity: str | None = Field(
        default=None, pattern=_NAME, description="default: the SchemaName in lower case"
    )
    entity_set: str | None = Field(
        default=None, pattern=r"^[A-Za-z][A-Za-z0-9_]{0,60}$", description="default: <intersect>set"
    )
    rows: int = Field(default=0, ge=0, le=10_000_000, description="seeded associations")
    change_tracking: bool = True

    @property
    def intersect(self) -> str:
        return self.intersect_entity or self.schema_name.lower()

    def attributes(self, primary1: str, primary2: str) -> tuple[str, str]:
        """The two intersect attributes: the related keys' names, `…idone`/`…idtwo` when both
        ends are the same table."""
        if self.entity1 == self.entity2:
            return f"{primary1}one", f"{primary2}two"
        return primary1, primary2


def check_relationships(
    environment: str, tables: Mapping[str, int], specs: Sequence[RelationshipSpec]
) -> None:
    """Each N:N relates two tables of the environment and fits their rows (ValueError)."""
    seen: set[str] = set()
    for spec in specs:
        for end in (spec.entity1, spec.entity2):
            if end not in tables:
                raise ValueError(
                    f"relationship {spec.schema_name!r} relates {end!r}, which is not a table of "
                    f"environment {environment!r}"
                )
        for name in (spec.schema_name.lower(), spec.intersect):
            if name in tables:
                raise ValueError(f"relationship {spec.schema_name!r}: {name!r} is a table name")
        if spec.schema_name.lower() in seen or spec.intersect in seen:
            raise ValueError(f"relationship {spec.schema_name!r} is declared twice")
        seen |= {spec.schema_name.lower(), spec.intersect}
        pairs = tables[spec.entity1] * (tables[spec.entity2] - (spec.entity1 == spec.entity2))
        if spec.rows > pairs:
            raise ValueError(
                f"relationship {spec.schema_name!r}: {spec.rows} associations are more than "
                f"{spec.entity1} × {spec.entity2} rows allow"
            )


def _uuid(name: str, display: str) -> AttributeDef:
    return AttributeDef(name, "Uniqueidentifier", "UniqueidentifierType", display)


class IntersectTable(Table):
    """The intersect table of one N:N: row i associates one row of each end."""

    def __init__(
        self, spec: RelationshipSpec, ends: tuple[Table, Table], ctx: GenContext, offset: int
    ) -> None:
        name = spec.intersect
        first, second = spec.attributes(ends[0].template.primary_id, ends[1].template.primary_id)
        template = TableTemplate(
            name,
            spec.schema_name,
            spec.entity_set or f"{name}set",
            name,
            name,
            10_000 + salt(name) % 10_000,
            f"{name}id",
            "",
            spec.schema_name.startswith("new_"),
            (
                key(f"{name}id", name),
                _uuid(first, first),
                _uuid(second, second),
                AttributeDef("versionnumber", "BigInt", "BigIntType", "Version Number"),
            ),
        )
        table_spec = TableSpec.model_construct(
            name=name, rows=spec.rows, change_tracking=spec.change_tracking, intersect=True
        )
        super().__init__(table_spec, ctx, offset, template=template)
        self.relationship = spec
        self.ends = ends
        self.columns = (first, second)
        self.created_pairs: dict[int, tuple[int, int]] = {}  # rows associated since start
        self.by_pair: dict[tuple[int, int], int] = {}

    def pair_of(self, index: int) -> tuple[int, int]:
        """The end rows row `index` associates. Seeded rows: a bijection of the index onto
        (entity1 row, entity2 row), so seeded pairs never repeat."""
        created = self.created_pairs.get(index)
        if created is not None:
            return created
        n1 = max(self.ends[0].base_count, 1)
        n2 = max(self.ends[1].base_count, 1)
        a, b = index % n1, index // n1
        return a, (a + b + self._shift) % n2

    @property
    def _shift(self) -> int:
        """A self-referencing N:N never associates a row with itself."""
        return int(self.ends[0] is self.ends[1])

    def _seeded_index(self, a: int, b: int) -> int | None:
        n1, n2 = self.ends[0].base_count, self.ends[1].base_count
        if not (0 <= a < n1 and 0 <= b < n2):
            return None
        index = ((b - a - self._shift) % n2) * n1 + a
        return index if index < self.base_count else None

    def associated(self, a: int, b: int) -> bool:
        seeded = self._seeded_index(a, b)
        created = self.by_pair.get((a, b))
        return any(i is not None and self.exists(i) for i in (seeded, created))

    def row(self, index: int) -> Row | None:
        row = super().row(index)
        if row is None:
            return None
        a, b = self.pair_of(index)
        row.values[self.columns[0]] = self.ends[0].key(a)
        row.values[self.columns[1]] = self.ends[1].key(b)
        return row

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
        """Associate `creates` new pairs of live rows and disassociate `deletes` associations
        (intersect rows are never updated: `updates` is ignored)."""
        rng = random.Random(mix(self.ctx.seed, salt(self.name), seed, counter.value))
        created = 0
        for _ in range(max(0, creates)):
            pair = self._free_pair(rng)
            if pair is None:
                break
            index = self.next_index
            self.next_index += 1
            self.created_pairs[index] = pair
            self.by_pair[pair] = index
            self.states[index] = RowState(0, counter.next(), now, now)
            created += 1
        deleted = 0
        for index in self._pick_live(rng, deletes):
            self.disassociate(index, counter, now)
            deleted += 1
        return {
            "created": created,
            "updated": 0,
            "deleted": deleted,
            "rows": self.live_count(),
            "version": counter.value,
        }

    def _free_pair(self, rng: random.Random) -> tuple[int, int] | None:
        for _ in range(200):
            ends = [end._pick_live(rng, 1) for end in self.ends]
            if not all(ends):
                return None
            pair = (ends[0][0], ends[1][0])
            if not self.associated(*pair) and not (self._shift and pair[0] == pair[1]):
                return pair
        return None

    def disassociate(self, index: int, counter: VersionCounter, now: int) -> None:
        self.states.pop(index, None)
        self.deleted[index] = Tombstone(counter.next(), now)
        pair = self.created_pairs.get(index)
        if pair is not None and self.by_pair.get(pair) == index:
            del self.by_pair[pair]

    def cascade(self, counter: VersionCounter, now: int) -> int:
        """Disassociate every row whose related row is gone; how many went."""
        gone = [
            index
            for index in self.indices()
            if not all(end.exists(i) for end, i in zip(self.ends, self.pair_of(index), strict=True))
        ]
        for index in gone:
            self.disassociate(index, counter, now)
        return len(gone)


def relationship_record(spec: RelationshipSpec, ends: tuple[Table, Table]) -> dict[str, Any]:
    """The ManyToManyRelationshipMetadata of one N:N."""
    first, second = spec.attributes(ends[0].template.primary_id, ends[1].template.primary_id)
    return {
        "@odata.type": "#Microsoft.Dynamics.CRM.ManyToManyRelationshipMetadata",
        "MetadataId": metadata_id("relationship", spec.schema_name),
        "SchemaName": spec.schema_name,
        "RelationshipType": RELATIONSHIP_TYPE,
        "IsCustomRelationship": spec.schema_name.startswith("new_"),
        "IsManaged": False,
        "IsValidForAdvancedFind": True,
        "SecurityTypes": "Append",
        "IntersectEntityName": spec.intersect,
        "Entity1LogicalName": spec.entity1,
        "Entity1IntersectAttribute": first,
        "Entity1NavigationPropertyName": spec.schema_name,
        "Entity2LogicalName": spec.entity2,
        "Entity2IntersectAttribute": second,
        "Entity2NavigationPropertyName": spec.schema_name,
    }


class Relationships:
    """The N:N of one environment: their intersect tables and the metadata endpoint."""

    def __init__(self, specs: Sequence[RelationshipSpec], tables: Mapping[str, Table]) -> None:
        self.specs = tuple(specs)
        self.tables = tables

    @staticmethod
    def build(
        specs: Sequence[RelationshipSpec],
        tables: MutableMapping[str, Table],
        first_version: int,
        base_version: int,
    ) -> tuple[Relationships, int]:
        """Add each N:N's intersect table to `tables`; the environment's first version after
        their seeded rows (which take versions below it, like every seeded row)."""
        if specs:
            ctx = next(iter(tables.values())).ctx
            for spec in specs:
                ends = (tables[spec.entity1], tables[spec.entity2])
                table = IntersectTable(spec, ends, ctx, first_version - base_version)
                tables[table.name] = table
                first_version += spec.rows
        return Relationships(specs, tables), first_version

    def _ends(self, spec: RelationshipSpec) -> tuple[Table, Table]:
        return self.tables[spec.entity1], self.tables[spec.entity2]

    def cascade(self, table: str, counter: VersionCounter, now: int) -> int:
        """After rows of `table` were deleted: remove their associations."""
        removed = 0
        for spec in self.specs:
            if table in (spec.entity1, spec.entity2):
                intersect = self.tables[spec.intersect]
                assert isinstance(intersect, IntersectTable)
                removed += intersect.cascade(counter, now)
        return removed

    def handle(self, path: str, query: Query, base: str) -> ApiResponse | None:
        """`EntityDefinitions(…)/ManyToManyRelationships`, or None for another path."""
        found = _PATH.match(path)
        if found is None:
            return None
        entity = self._entity(found["entity"])
        records = [
            relationship_record(s, self._ends(s))
            for s in self.specs
            if entity in (s.entity1, s.entity2)
        ]
        select = parse_select(query)
        known = set(relationship_record(*self._sample()) if self.specs else {"SchemaName": 1})
        known |= {"SchemaName", "IntersectEntityName", "Entity1LogicalName", "Entity2LogicalName"}
        known |= {"Entity1IntersectAttribute", "Entity2IntersectAttribute", "MetadataId"}
        for name in select or ():
            if name not in known:
                raise unknown_property(name, "ManyToManyRelationshipMetadata")
        if select is not None:
            keep = {"@odata.type", "MetadataId", *select}
            records = [{k: v for k, v in r.items() if k in keep} for r in records]
        context = (
            f"{base}/$metadata#EntityDefinitions('{metadata_id(entity)}')/ManyToManyRelationships"
            + (f"({','.join(select)})" if select else "")
        )
        return json_response({"@odata.context": context, "value": records})

    def _sample(self) -> tuple[RelationshipSpec, tuple[Table, Table]]:
        return self.specs[0], self._ends(self.specs[0])

    def _entity(self, key_text: str) -> str:
        found = _KEY.match(key_text)
        if found:
            for table in self.tables.values():
                wanted_id = (found["id"] or "").lower()
                if found["name"] == table.name or wanted_id == metadata_id(table.name):
                    return table.name
        raise ApiError(404, "0x80040217", f"Could not find entity with name {key_text}.")
