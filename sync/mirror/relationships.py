"""N:N relationships: which intersect tables an environment mirrors besides its tables.

`relationships = "auto"` (the default) mirrors every N:N whose two tables are both mirrored,
`"none"` none, a list the N:N of those SchemaNames (one of whose tables is mirrored). They are
found with one `EntityDefinitions(LogicalName=…)/ManyToManyRelationships` request per mirrored
table. Each intersect table is then mirrored like any table (sync.mirror.job: its metadata, its
two id columns typed uuid, change tracking where the table has it, else a full read of its keys
every `reconcile_interval`), and `relationshipmetadata` (sync.store.relationship_metadata) says
which columns join which tables. `choose` is pure; the rest does the requests and the write.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from sync.config.tenants import Environment
from sync.dataverse.odata import api_url
from sync.errors import AuthError, DvmirrorError, HostileResponseError, LeaseLostError
from sync.logs import get_logger
from sync.mirror.discovery import JsonSource, _entity_path, _values, resolve_tables
from sync.mirror.typemap import SAFE_COLUMN
from sync.store.relationship_metadata import write_relationship_metadata

log = get_logger("dvmirror.relationships")

M2M_SELECT = (
    "SchemaName,IntersectEntityName,Entity1LogicalName,Entity1IntersectAttribute,"
    "Entity2LogicalName,Entity2IntersectAttribute"
)
_FIELDS = (
    ("schema_name", "SchemaName"),
    ("intersect_table", "IntersectEntityName"),
    ("entity1", "Entity1LogicalName"),
    ("entity1_attribute", "Entity1IntersectAttribute"),
    ("entity2", "Entity2LogicalName"),
    ("entity2_attribute", "Entity2IntersectAttribute"),
)


@dataclass(frozen=True, slots=True)
class Relationship:
    """One N:N as `relationshipmetadata` stores it (the intersect table's mirror name is
    `intersect_table`; it joins `entity1` on `entity1_attribute` and `entity2` likewise)."""

    schema_name: str
    intersect_table: str
    entity1: str
    entity1_attribute: str
    entity2: str
    entity2_attribute: str

    def row(self) -> tuple[str, str, str, str, str, str]:
        return (
            self.schema_name,
            self.intersect_table,
            self.entity1,
            self.entity1_attribute,
            self.entity2,
            self.entity2_attribute,
        )


@dataclass(frozen=True)
class RelationshipPlan:
    relationships: tuple[Relationship, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def tables(self) -> tuple[str, ...]:
        """The intersect tables to mirror, each once, in name order."""
        return tuple(sorted({r.intersect_table for r in self.relationships}))


NONE = RelationshipPlan()


def parse_relationship(item: Mapping[str, Any], table: str) -> Relationship:
    """One ManyToManyRelationshipMetadata item; names that are not safe identifiers are
    hostile (they become table and column names)."""
    values: dict[str, str] = {}
    for field, key in _FIELDS:
        value = item.get(key)
        if not isinstance(value, str) or not value:
            raise HostileResponseError(
                f"table {table}: an N:N relationship has no {key}", table=table
            )
        check = value.lower() if field == "schema_name" else value
        if not SAFE_COLUMN.fullmatch(check):
            raise HostileResponseError(
                f"table {table}: N:N {key} {value[:80]!r} is not a safe identifier", table=table
            )
        values[field] = value
    return Relationship(**values)


def choose(
    setting: str | tuple[str, ...], found: Iterable[Relationship], mirrored: Collection[str]
) -> RelationshipPlan:
    """The N:N to mirror: "auto" those between mirrored tables, a list those named, "none"
    none. A named one that is not found gets a warning. (An intersect table also listed in
    `tables` is mirrored once: `with_relationships` adds only the tables not listed.)"""
    if setting == "none":
        return NONE
    unique = {r.schema_name: r for r in found}
    if setting == "auto":
        chosen = [r for r in unique.values() if r.entity1 in mirrored and r.entity2 in mirrored]
        warnings: list[str] = []
    else:
        chosen = [unique[name] for name in setting if name in unique]
        warnings = [
            f"relationship {name!r}: no N:N of the mirrored tables has that SchemaName"
            for name in setting
            if name not in unique
        ]
    chosen = sorted(chosen, key=lambda r: r.schema_name)
    return RelationshipPlan(tuple(chosen), tuple(warnings))


async def relationships_of(
    client: JsonSource, environment_url: str, table: str
) -> list[Relationship]:
    """The N:N of one table (as entity 1 or entity 2)."""
    path = _entity_path(table)
    document = await client.get(
        api_url(environment_url, f"{path}/ManyToManyRelationships?$select={M2M_SELECT}"),
        table=table,
    )
    items = _values(document, table, "ManyToManyRelationships")
    return [parse_relationship(item, table) for item in items]


async def plan_relationships(
    client: JsonSource, environment: Environment, tables: Sequence[str]
) -> RelationshipPlan:
    """Discover and choose the N:N of `tables` (no request when the setting is "none")."""
    setting = environment.relationships
    if setting == "none" or not tables:
        return NONE
    found = await asyncio.gather(*(relationships_of(client, environment.url, t) for t in tables))
    return choose(setting, [r for each in found for r in each], set(tables))


async def with_relationships(
    client: JsonSource,
    store: AsyncEngine | None,
    environment: Environment,
    tables: Sequence[str],
    *,
    tolerant: bool = True,
) -> tuple[tuple[str, ...], RelationshipPlan]:
    """`tables` plus the intersect tables of their N:N, and the plan; `relationshipmetadata`
    is brought up to date when a `store` is given. A failed discovery (not an auth error)
    leaves the tables as they are, with a warning: they still sync, and the next discovery
    tries again. Not `tolerant`, it raises (a rediscovery keeps the set it has)."""
    try:
        plan = await plan_relationships(client, environment, tables)
    except (AuthError, LeaseLostError):
        raise
    except DvmirrorError as exc:
        if not tolerant:
            raise
        log.warning(
            "relationships_discovery_failed", environment=environment.name, error=exc.message
        )
        return tuple(tables), RelationshipPlan(warnings=(f"N:N discovery failed: {exc.message}",))
    for warning in plan.warnings:
        log.warning("relationship_not_mirrored", environment=environment.name, reason=warning)
    if store is not None and environment.relationships != "none":
        rows = [r.row() for r in plan.relationships]
        if await write_relationship_metadata(store, environment.name, rows):
            log.info("relationship_metadata_written", environment=environment.name, rows=len(rows))
    return (*tables, *(t for t in plan.tables if t not in tables)), plan


def resolved_at_run_time(environment: Environment) -> bool:
    """Its tables come from rules or "all", or N:N tables join its list: the daemon resolves
    them again every interval."""
    return environment.fixed_tables is None or environment.relationships != "none"


async def mirrored_tables(
    client: JsonSource,
    store: AsyncEngine | None,
    environment: Environment,
    *,
    tolerant: bool = True,
) -> tuple[str, ...]:
    """The tables the environment mirrors now: its list, or what its rules resolve to (a named
    table left out is logged), and the intersect tables of their N:N (`tolerant`: see
    `with_relationships`)."""
    tables = environment.fixed_tables
    if tables is None:
        found = await resolve_tables(client, environment.url, environment.tables)
        for warning in found.warnings:
            log.warning("table_not_mirrored", environment=environment.name, reason=warning)
        tables = found.tables
    with_nn, _ = await with_relationships(client, store, environment, tables, tolerant=tolerant)
    return with_nn
