"""``EntityDefinitions(LogicalName='x')/ManyToOneRelationships``: one relationship per lookup
column and target (reference 13), with ``$select``. Metadata is not paged."""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from typing import Any

from sync.simulator.dataset import Table
from sync.simulator.odata import Query, parse_select
from sync.simulator.protocol import ApiResponse, json_response, unknown_property
from sync.simulator.templates import TEMPLATES

_PATH = re.compile(r"^EntityDefinitions\((?P<entity>[^)]*)\)/ManyToOneRelationships$")
_NAMESPACE = uuid.UUID("3d5b8f0e-7c1a-4f6e-9b2d-8a4c6e1f0b35")


def many_to_one_path(path: str) -> str | None:
    """The entity key of a ManyToOneRelationships path, else None."""
    found = _PATH.match(path)
    return found["entity"] if found else None


def _primary_id(target: str, tables: Mapping[str, Table]) -> str:
    if target in tables:
        return tables[target].template.primary_id
    template = TEMPLATES.get(target)
    return template.primary_id if template else f"{target}id"


def relationships(table: Table, tables: Mapping[str, Table]) -> list[dict[str, Any]]:
    """The OneToManyRelationshipMetadata items where `table` is the referencing entity."""
    out = []
    for attr in table.metadata_attributes():
        if not attr.is_lookup or attr.attribute_of is not None:
            continue
        for target in attr.targets:
            schema = f"{target}_{table.name}_{attr.logical_name}"
            out.append(
                {
                    "MetadataId": str(uuid.uuid5(_NAMESPACE, schema)),
                    "SchemaName": schema,
                    "RelationshipType": "OneToManyRelationship",
                    "IsCustomRelationship": attr.custom,
                    "ReferencedEntity": target,
                    "ReferencedAttribute": _primary_id(target, tables),
                    "ReferencingEntity": table.name,
                    "ReferencingAttribute": attr.logical_name,
                    "ReferencingEntityNavigationPropertyName": (
                        f"{attr.logical_name}_{target}"
                        if attr.attribute_type == "Customer"
                        else attr.logical_name
                    ),
                }
            )
    return out


def many_to_one_response(
    table: Table, tables: Mapping[str, Table], query: Query, base_url: str
) -> ApiResponse:
    """The collection, projected by ``$select`` (an unknown property is a 400)."""
    records = relationships(table, tables)
    select = parse_select(query)
    known = {
        "MetadataId",
        "SchemaName",
        "RelationshipType",
        "IsCustomRelationship",
        "ReferencedEntity",
        "ReferencedAttribute",
        "ReferencingEntity",
        "ReferencingAttribute",
        "ReferencingEntityNavigationPropertyName",
    }
    for name in select or ():
        if name not in known:
            raise unknown_property(name, "OneToManyRelationshipMetadata")
    if select is not None:
        keep = {"MetadataId", *select}
        records = [{k: v for k, v in r.items() if k in keep} for r in records]
    context = f"{base_url}/$metadata#EntityDefinitions('{table.name}')/ManyToOneRelationships"
    return json_response({"@odata.context": context, "value": records})
