"""``EntityDefinitions`` and ``Attributes``: the metadata endpoints, built from the templates.

Supported: the collection with ``$select``, ``$filter`` (``LogicalName``, ``ChangeTrackingEnabled``,
enum literals, ``CanChangeTrackingBeEnabled/Value``) and
``$expand=Attributes($select=…;$filter=…)``;
``EntityDefinitions(LogicalName='x')`` (and by MetadataId) with an ``/$entity`` context;
``…/Attributes`` (optionally cast, e.g. ``/Microsoft.Dynamics.CRM.PicklistAttributeMetadata``) and
``…/Attributes(LogicalName='y')`` with ``$expand=OptionSet``. Metadata is not paged.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from sync.simulator.attributes import CHOICE_TYPES, METADATA_CLASS, AttributeDef
from sync.simulator.dataset import Table
from sync.simulator.filters import Node, evaluate, parse_filter, properties
from sync.simulator.many_to_one import many_to_one_path, many_to_one_response
from sync.simulator.odata import Query, parse_select
from sync.simulator.optionsets import global_option_set, option_set
from sync.simulator.protocol import (
    ApiError,
    ApiResponse,
    bad_request,
    json_response,
    unknown_property,
)

_NAMESPACE = uuid.UUID("6f1c1f8e-3a53-4a8f-9d2e-5b2f0c7d9a10")
_PATH = re.compile(
    r"^EntityDefinitions(?:\((?P<entity>[^)]*)\))?"
    r"(?:/Attributes(?:\((?P<attribute>[^)]*)\))?(?:/(?P<cast>Microsoft\.Dynamics\.CRM\.\w+))?)?$"
)
_KEY = re.compile(r"^(?:LogicalName='(?P<name>[^']*)'|(?P<id>[0-9a-fA-F-]{36}))$")
_EXPAND = re.compile(r"^(?P<name>\w+)(?:\((?P<options>.*)\))?$")
_EMPTY_NAVIGATION = frozenset(
    {
        "Keys",
        "ManyToOneRelationships",
        "OneToManyRelationships",
        "ManyToManyRelationships",
        "Privileges",
    }
)
_SYSTEM_READ_ONLY = frozenset({"createdon", "modifiedon", "versionnumber"})


def metadata_id(*parts: str) -> str:
    """A stable MetadataId for an entity, attribute or label."""
    return str(uuid.uuid5(_NAMESPACE, ".".join(parts)))


def label(text: str) -> dict[str, Any]:
    """A Label complex value (English only)."""
    if not text:
        return {"LocalizedLabels": [], "UserLocalizedLabel": None}
    localized = {
        "Label": text,
        "LanguageCode": 1033,
        "IsManaged": True,
        "MetadataId": metadata_id("label", text),
        "HasChanged": None,
    }
    return {"LocalizedLabels": [localized], "UserLocalizedLabel": localized}


def entity_definition(table: Table) -> dict[str, Any]:
    """The EntityMetadata of one table."""
    t = table.template
    tracked = table.spec.change_tracking
    return {
        "MetadataId": metadata_id(t.logical_name),
        "LogicalName": t.logical_name,
        "SchemaName": t.schema_name,
        "EntitySetName": t.entity_set,
        "LogicalCollectionName": t.entity_set,
        "PrimaryIdAttribute": t.primary_id,
        "PrimaryNameAttribute": t.primary_name,
        "ObjectTypeCode": t.object_type_code,
        "IsCustomEntity": t.is_custom,
        "IsActivity": table.spec.table_type == "Activity",
        "IsIntersect": table.spec.intersect,
        "IsPrivate": table.spec.private,
        "IsValidForAdvancedFind": True,
        "ChangeTrackingEnabled": tracked,
        "CanChangeTrackingBeEnabled": {
            "Value": True,
            "CanBeChanged": not tracked,
            "ManagedPropertyLogicalName": "canchangetrackingbeenabled",
        },
        "OwnershipType": "UserOwned",
        "TableType": table.spec.table_type,
        "DisplayName": label(t.display_name),
        "DisplayCollectionName": label(t.display_collection_name),
    }


def _generation(attr: AttributeDef) -> tuple[str, ...]:
    """A column deleted and created again is a new attribute with a new MetadataId."""
    return (f"generation {attr.generation}",) if attr.generation else ()


def _description(table: Table, attr: AttributeDef) -> str:
    """System columns come with a description; custom ones, as often in a real org, with an
    empty Label (no LocalizedLabels, UserLocalizedLabel null)."""
    if attr.custom or attr.attribute_of is not None:
        return ""
    return f"{attr.display_name} of the {table.template.display_name.lower()}."


def attribute_definition(table: Table, attr: AttributeDef, column_number: int) -> dict[str, Any]:
    """The AttributeMetadata of one column, with the properties of its derived type."""
    companion = attr.attribute_of is not None
    system = attr.logical_name in _SYSTEM_READ_ONLY
    out: dict[str, Any] = {
        "@odata.type": attr.odata_type,
        "MetadataId": metadata_id(table.name, attr.logical_name, *_generation(attr)),
        "LogicalName": attr.logical_name,
        "SchemaName": attr.schema_name,
        "EntityLogicalName": table.name,
        "AttributeType": attr.attribute_type,
        "AttributeTypeName": {"Value": attr.type_name},
        "AttributeOf": attr.attribute_of,
        "ColumnNumber": column_number,
        "DisplayName": label(attr.display_name),
        "Description": label(_description(table, attr)),
        "IsCustomAttribute": attr.custom,
        "IsPrimaryId": attr.primary_id,
        "IsPrimaryName": attr.primary_name,
        "IsLogical": companion,
        "IsValidForRead": True,
        "IsValidForCreate": not (companion or system),
        "IsValidForUpdate": not (companion or system or attr.primary_id),
        "IsValidODataAttribute": attr.odata,
        "RequiredLevel": {
            "Value": "SystemRequired" if attr.primary_id else "None",
            "CanBeChanged": False,
            "ManagedPropertyLogicalName": "canmodifyrequirementlevelsettings",
        },
    }
    out.update(_type_properties(attr))
    return out


def _type_properties(attr: AttributeDef) -> dict[str, Any]:  # noqa: PLR0911 - per type
    kind = attr.attribute_type
    if kind in ("String", "Memo"):
        fmt = {"email": "Email", "phone": "Phone"}.get(
            attr.text, "Text" if kind == "String" else "TextArea"
        )
        return {"MaxLength": attr.max_length or 100, "Format": fmt, "FormatName": {"Value": fmt}}
    if kind == "Integer":
        return {"MinValue": -2147483648, "MaxValue": 2147483647, "Format": "None"}
    if kind == "BigInt":
        return {"MinValue": -(2**63), "MaxValue": 2**63 - 1}
    if kind in ("Decimal", "Double"):
        return {
            "Precision": attr.precision,
            "MinValue": -100000000000.0,
            "MaxValue": 100000000000.0,
        }
    if kind == "Money":
        return {
            "Precision": attr.precision,
            "PrecisionSource": 2,
            "MinValue": -922337203685477.0,
            "MaxValue": 922337203685477.0,
            "IsBaseCurrency": False,
        }
    if kind == "DateTime":
        return {
            "Format": attr.date_format,
            "DateTimeBehavior": {"Value": attr.behavior},
            "CanChangeDateTimeBehavior": {"Value": attr.custom},
        }
    if attr.is_lookup:
        return {"Targets": list(attr.targets)}
    if kind == "Boolean":
        return {"DefaultValue": False}
    if kind in CHOICE_TYPES or attr.is_multiselect:
        return {"DefaultFormValue": -1 if kind == "Picklist" or attr.is_multiselect else None}
    return {}


def _cast_properties(cast: str | None) -> set[str]:
    """The properties of a cast's type (`…/Attributes/Microsoft.Dynamics.CRM.<Kind>…`)."""
    kinds = [k for k, c in METADATA_CLASS.items() if cast == f"Microsoft.Dynamics.CRM.{c}"]
    if not kinds:
        return set()
    return set(_type_properties(AttributeDef("x", kinds[0], "", "")))


def _project(record: dict[str, Any], select: tuple[str, ...] | None) -> dict[str, Any]:
    if select is None:
        return record
    keep = {"@odata.type", "MetadataId", *select}
    return {k: v for k, v in record.items() if k in keep}


def _check_names(names: tuple[str, ...] | None, known: set[str], type_name: str) -> None:
    for name in names or ():
        if name not in known:
            raise unknown_property(name, type_name)


def _path_get(record: Mapping[str, Any]) -> Callable[[str], Any]:
    def get(path: str) -> Any:
        value: Any = record
        for part in path.split("/"):
            value = value.get(part) if isinstance(value, Mapping) else None
        return value

    return get


def _parse_filter(text: str | None, known: set[str], type_name: str) -> Node | None:
    if text is None:
        return None
    node = parse_filter(text)
    _check_names(tuple(p.split("/")[0] for p in properties(node)), known, type_name)
    return node


def _nested_options(text: str | None) -> dict[str, str]:
    options: dict[str, str] = {}
    for part in (text or "").split(";"):
        if part.strip():
            name, sep, value = part.partition("=")
            if not sep or name.strip() not in ("$select", "$filter"):
                raise bad_request(
                    f"The query option '{name.strip()}' is not supported inside $expand."
                )
            options[name.strip()] = value.strip()
    return options


class MetadataView:
    """Answers metadata requests for the tables of one environment."""

    def __init__(self, tables: Mapping[str, Table], base_url: str) -> None:
        self.tables = tables
        self.base_url = base_url

    def handle(self, path: str, query: Query) -> ApiResponse:
        """Route an ``EntityDefinitions…`` path."""
        if (related := many_to_one_path(path)) is not None:
            return many_to_one_response(self._table(related), self.tables, query, self.base_url)
        match = _PATH.match(path)
        if not match:
            raise bad_request(f"The metadata path '{path}' is not supported by the simulator.")
        entity_key, attribute_key, cast = match["entity"], match["attribute"], match["cast"]
        if entity_key is None:
            if "/Attributes" in path:
                raise bad_request("Attributes can only be read from one EntityDefinitions entry.")
            return self._entities(query, None)
        table = self._table(entity_key)
        if "/Attributes" not in path:
            return self._entities(query, table)
        return self._attributes(table, query, attribute_key, cast)

    def _table(self, key: str) -> Table:
        found = _KEY.match(key)
        if found:
            for table in self.tables.values():
                if found["name"] == table.name or (found["id"] or "").lower() == metadata_id(
                    table.name
                ):
                    return table
        raise ApiError(404, "0x80040217", f"Could not find entity with name {key}.")

    def _entities(self, query: Query, single: Table | None) -> ApiResponse:
        select = parse_select(query)
        sample = entity_definition(next(iter(self.tables.values()))) if self.tables else {}
        known = set(sample) or {"MetadataId", "LogicalName"}
        _check_names(select, known, "EntityMetadata")
        node = _parse_filter(query.get("$filter"), known, "EntityMetadata")
        expand_attrs, expand_select, expand_filter = self._entity_expand(query.get("$expand"))
        records = []
        for table in [single] if single else self.tables.values():
            record = entity_definition(table)
            if node is not None and not evaluate(node, _path_get(record)):
                continue
            out = _project(record, select)
            for name in expand_attrs:
                out[name] = (
                    self._attribute_records(table, expand_select, expand_filter, None, expand=())
                    if name == "Attributes"
                    else []
                )
            records.append(out)
        columns = list(select or ())
        if expand_attrs:
            columns += [f"{name}({','.join(expand_select or ())})" for name in expand_attrs]
        context = f"{self.base_url}/$metadata#EntityDefinitions" + (
            f"({','.join(columns)})" if columns else ""
        )
        if single is not None:
            return json_response({"@odata.context": f"{context}/$entity", **records[0]})
        return json_response({"@odata.context": context, "value": records})

    def _entity_expand(
        self, text: str | None
    ) -> tuple[list[str], tuple[str, ...] | None, str | None]:
        if text is None:
            return [], None, None
        names: list[str] = []
        select: tuple[str, ...] | None = None
        node_text: str | None = None
        for part in _split_expand(text):
            found = _EXPAND.match(part.strip())
            if not found or found["name"] not in _EMPTY_NAVIGATION | {"Attributes"}:
                raise unknown_property(part.strip(), "EntityMetadata")
            names.append(found["name"])
            if found["name"] == "Attributes":
                options = _nested_options(found["options"])
                if "$select" in options:
                    select = tuple(s.strip() for s in options["$select"].split(","))
                node_text = options.get("$filter")
        return names, select, node_text

    def _attribute_records(
        self,
        table: Table,
        select: tuple[str, ...] | None,
        filter_text: str | None,
        cast: str | None,
        *,
        expand: tuple[str, ...],
        only: str | None = None,
    ) -> list[dict[str, Any]]:
        attrs = table.metadata_attributes()
        records = [attribute_definition(table, a, n) for n, a in enumerate(attrs, start=1)]
        known = {key for record in records for key in record} | {"OptionSet", "GlobalOptionSet"}
        known |= _cast_properties(cast)  # a cast's properties exist with no attribute of it
        _check_names(select, known, "AttributeMetadata")
        node = _parse_filter(filter_text, known, "AttributeMetadata")
        out = []
        for attr, record in zip(attrs, records, strict=True):
            if cast and record["@odata.type"] != f"#{cast}":
                continue
            if only is not None and only not in (record["LogicalName"], record["MetadataId"]):
                continue
            if node is not None and not evaluate(node, _path_get(record)):
                continue
            projected = _project(record, select)
            if "OptionSet" in expand:
                projected["OptionSet"] = option_set(attr, hostile=table.hostile == "bad_option_set")
            if "GlobalOptionSet" in expand:
                projected["GlobalOptionSet"] = global_option_set(attr)
            out.append(projected)
        return out

    def _attributes(
        self, table: Table, query: Query, attribute_key: str | None, cast: str | None
    ) -> ApiResponse:
        select = parse_select(query)
        expand = tuple(p.strip() for p in _split_expand(query.get("$expand") or ""))
        if any(name not in ("OptionSet", "GlobalOptionSet") for name in expand):
            raise unknown_property(",".join(expand), "AttributeMetadata")
        only = None
        if attribute_key is not None:
            found = _KEY.match(attribute_key)
            only = (found["name"] or found["id"].lower()) if found else ""
        records = self._attribute_records(
            table, select, query.get("$filter"), cast, expand=expand, only=only
        )
        base = f"{self.base_url}/$metadata#EntityDefinitions('{metadata_id(table.name)}')"
        base += "/Attributes" + (f"/{cast}" if cast else "")
        context = base + (f"({','.join(select)})" if select else "")
        if attribute_key is None:
            return json_response({"@odata.context": context, "value": records})
        if not records:
            raise ApiError(
                404, "0x80040217", f"Could not find attribute {attribute_key} on {table.name}."
            )
        return json_response({"@odata.context": f"{context}/$entity", **records[0]})


def _split_expand(text: str) -> list[str]:
    """Split ``$expand`` items on top-level commas (commas inside parentheses stay)."""
    items: list[str] = []
    current: list[str] = []
    depth = 0
    for char in text:
        depth += (char == "(") - (char == ")")
        if char == "," and depth == 0:
            items.append("".join(current))
            current = []
        else:
            current.append(char)
    if current:
        items.append("".join(current))
    return [item for item in items if item.strip()]
