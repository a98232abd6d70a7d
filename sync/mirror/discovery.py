"""Discovery: read EntityDefinitions and Attributes for the configured tables only.

Never the whole organisation's metadata in one response: one `EntityDefinitions(LogicalName=…)`
and one `…/Attributes` request per table, each with `$select`, plus one cast request for the
DateTime attributes (to tell date-only columns apart). `tables = "all"` lists EntityDefinitions
with a `$select` of a few properties only.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from sync.dataverse.odata import api_url
from sync.errors import HostileResponseError, TableError, TransientError
from sync.mirror.table_rules import Resolution, Rules, TableInfo, resolve
from sync.mirror.typemap import SAFE_COLUMN as TABLE_NAME
from sync.mirror.typemap import build_schema
from sync.store.layout import TableSchema

ENTITY_SELECT = "LogicalName,EntitySetName,PrimaryIdAttribute,ChangeTrackingEnabled,IsIntersect"
# MetadataId comes with every metadata item anyway; named here because drift relies on it.
ATTRIBUTE_SELECT = (
    "MetadataId,LogicalName,AttributeType,AttributeTypeName,IsValidForRead,"
    "IsValidODataAttribute,AttributeOf,IsPrimaryId,DisplayName,Description"
)
DATETIME_CAST = "Microsoft.Dynamics.CRM.DateTimeAttributeMetadata"
ENTITY_COMPONENT = 1  # solutioncomponents.componenttype of a table
SOLUTION_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
GUID_TEXT = re.compile(r"[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}")


class JsonSource(Protocol):
    """What discovery needs from the Web API client (DataverseClient.get fits)."""

    async def get(
        self, url: str, *, table: str | None = None, headers: Mapping[str, str] | None = None
    ) -> Any: ...


def _entity_path(table: str) -> str:
    if not TABLE_NAME.fullmatch(table):
        raise TableError(f"{table!r} is not a table logical name", table=table)
    return f"EntityDefinitions(LogicalName='{table}')"


def _values(document: Any, table: str | None, what: str) -> list[Mapping[str, Any]]:
    items = document.get("value") if isinstance(document, Mapping) else None
    if not isinstance(items, list) or not all(isinstance(i, Mapping) for i in items):
        raise HostileResponseError(
            f"{what}: the metadata answer has no list of objects", table=table
        )
    return items


async def discover_table(
    client: JsonSource, environment_url: str, table: str, *, columns: Sequence[str] | None = None
) -> TableSchema:
    """The mirror schema of one table, from three small metadata requests (sent at once: on a
    real service each costs a round trip of server time)."""
    path = _entity_path(table)
    entity, attribute_page, cast_page = await asyncio.gather(
        client.get(api_url(environment_url, f"{path}?$select={ENTITY_SELECT}"), table=table),
        client.get(
            api_url(environment_url, f"{path}/Attributes?$select={ATTRIBUTE_SELECT}"), table=table
        ),
        client.get(
            api_url(
                environment_url,
                f"{path}/Attributes/{DATETIME_CAST}?$select=LogicalName,Format,DateTimeBehavior",
            ),
            table=table,
        ),
    )
    attributes = _values(attribute_page, table, "Attributes")
    cast = _values(cast_page, table, "DateTime attributes")
    date_info = {str(item.get("LogicalName")): item for item in cast}
    merged = [
        {
            **item,
            **{
                k: v
                for k, v in date_info.get(str(item.get("LogicalName")), {}).items()
                if k in ("Format", "DateTimeBehavior")
            },
        }
        for item in attributes
    ]
    return build_schema(entity, merged, table=table, only=columns)


async def list_tables(client: JsonSource, environment_url: str) -> list[str]:
    """Logical names of every table (for `tables = "all"`), selecting only the names."""
    items = _values(
        await client.get(api_url(environment_url, "EntityDefinitions?$select=LogicalName")),
        None,
        "tables",
    )
    names = sorted(str(i.get("LogicalName")) for i in items)
    return [n for n in names if TABLE_NAME.fullmatch(n)]


TABLE_LIST_SELECT = (
    "LogicalName,EntitySetName,TableType,IsPrivate,IsIntersect,ChangeTrackingEnabled"
)


def _info(item: Mapping[str, Any]) -> TableInfo:
    entity_set = item.get("EntitySetName")
    return TableInfo(
        name=str(item.get("LogicalName")),
        metadata_id=str(item.get("MetadataId") or ""),
        table_type=str(item.get("TableType") or "Standard"),
        is_private=item.get("IsPrivate") is True,
        is_intersect=item.get("IsIntersect") is True,
        entity_set=entity_set if isinstance(entity_set, str) and entity_set else None,
        change_tracking=item.get("ChangeTrackingEnabled") is True,
    )


async def _solution_members(
    client: JsonSource, environment_url: str, unique_name: str
) -> frozenset[str] | None:
    """MetadataIds of the tables (Entity components) in one solution; None if it is absent."""
    if not SOLUTION_NAME.fullmatch(unique_name):
        return None
    found = _values(
        await client.get(
            api_url(
                environment_url,
                f"solutions?$filter=uniquename eq '{unique_name}'&$select=solutionid",
            )
        ),
        None,
        f"solution {unique_name}",
    )
    if not found:
        return None
    solution_id = str(found[0].get("solutionid"))
    if not GUID_TEXT.fullmatch(solution_id):
        raise HostileResponseError(f"solution {unique_name}: solutionid is not a GUID")
    components = _values(
        await client.get(
            api_url(
                environment_url,
                f"solutioncomponents?$filter=_solutionid_value eq {solution_id} and "
                f"componenttype eq {ENTITY_COMPONENT}&$select=objectid",
            )
        ),
        None,
        f"solution {unique_name} components",
    )
    return frozenset(str(c.get("objectid")).lower() for c in components)


def rules_of(tables: Any) -> Rules:
    """The configured `tables` ("all", or include/exclude/solutions rules) as one shape."""
    if tables == "all":
        return Rules(include=("*",))
    if isinstance(tables, tuple):
        return Rules(include=tables)
    return Rules(include=tables.include, exclude=tables.exclude, solutions=tables.solutions)


async def resolve_tables(client: JsonSource, environment_url: str, tables: Any) -> Resolution:
    """The tables to mirror now: one EntityDefinitions list (a few properties) and, per named
    solution, two small queries; the rules themselves are sync.mirror.table_rules."""
    rules = rules_of(tables)
    items = _values(
        await client.get(
            api_url(environment_url, f"EntityDefinitions?$select={TABLE_LIST_SELECT}")
        ),
        None,
        "tables",
    )
    infos = [_info(i) for i in items if TABLE_NAME.fullmatch(str(i.get("LogicalName")))]
    members: dict[str, frozenset[str]] = {}
    for name in rules.solutions:
        found = await _solution_members(client, environment_url, name)
        if found is not None:
            members[name] = found
    return resolve(rules, infos, members)


async def estimate_total(client: JsonSource, environment_url: str, table: str) -> int | None:
    """Row count from RetrieveTotalRecordCount (a snapshot of the last 24 h); None if unknown."""
    _entity_path(table)
    try:
        document = await client.get(
            api_url(environment_url, f"RetrieveTotalRecordCount(EntityNames=['{table}'])"),
            table=table,
        )
    except (TableError, TransientError):
        return None
    counts = document.get("EntityRecordCountCollection") if isinstance(document, Mapping) else None
    values = counts.get("Values") if isinstance(counts, Mapping) else None
    if isinstance(values, list) and values and type(values[0]) is int and values[0] >= 0:
        return int(values[0])
    return None
