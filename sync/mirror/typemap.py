"""Dataverse attribute metadata → mirror column specs; a page's row JSON → typed tuples.

Pure: no I/O. Two jobs:

* `build_schema()` turns EntityDefinitions + Attributes metadata into a `TableSchema`: the mirror
  columns (Web API names, `_x_value__type` for lookups, `<col>__label` for choices), the `$select`
  list and a hash that changes when the schema does. Every identifier is checked against
  `SAFE_COLUMN`; an unsafe one raises `HostileResponseError` (the table is parked).
* the value rules per mirror type (`ALLOWED`, `FORMATS`, `COLUMN_CHECKS`), used by
  `sync.mirror.rowshape` to turn a page's rows into typed tuples.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from sync.errors import HostileResponseError
from sync.mirror.textcheck import DIGITS, HEX_DIGITS, ColumnCheck, FirstOf, FixedLayout, Pattern
from sync.store.layout import (
    RESERVED_COLUMNS,
    MirrorColumn,
    SqlType,
    TableSchema,
)

SAFE_COLUMN = re.compile(r"[a-z][a-z0-9_]{0,127}")
SAFE_ENTITY_SET = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,127}")
# A property key of a row: a name, an annotation on a name, or an instance annotation.
SAFE_ROW_KEY = re.compile(r"(?:[A-Za-z_][A-Za-z0-9_]{0,127})?(?:@[A-Za-z][A-Za-z0-9_.]{0,127})?")
UUID_PATTERN = "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
TIMESTAMP_PATTERN = "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:[.][0-9]{1,7})?Z"
DATE_PATTERN = "[0-9]{4}-[0-9]{2}-[0-9]{2}"
ETAG_PATTERN = 'W/"[0-9]{1,19}"'
# A multi-select choice value as the Web API sends it: the chosen option values, comma-separated.
CHOICES_PATTERN = "-?[0-9]{1,10}(?:,-?[0-9]{1,10})*"
UUID_TEXT = re.compile(UUID_PATTERN)

FORMATTED = "@OData.Community.Display.V1.FormattedValue"
LOOKUP_TYPE = "@Microsoft.Dynamics.CRM.lookuplogicalname"
ANNOTATIONS_PREFER = (
    'odata.include-annotations="OData.Community.Display.V1.FormattedValue,'
    'Microsoft.Dynamics.CRM.lookuplogicalname"'
)


_SIMPLE_TYPES: dict[str, SqlType] = {
    "String": "text",
    "Memo": "text",
    "Integer": "integer",
    "BigInt": "bigint",
    "Decimal": "numeric",
    "Money": "numeric",
    "Double": "float",
    "Boolean": "boolean",
    "DateTime": "timestamp",
    "Uniqueidentifier": "uuid",
}
_CHOICE_TYPES = {"Picklist", "State", "Status"}
_LOOKUP_TYPES = {"Lookup", "Customer", "Owner"}
# Python types a decoded JSON value may have, per mirror type (None is always allowed).
ALLOWED: dict[SqlType, frozenset[type]] = {
    "text": frozenset({str}),
    "uuid": frozenset({str}),
    "integer": frozenset({int}),
    "bigint": frozenset({int}),
    "numeric": frozenset({str}),  # exact text, see sync.mirror.rowshape
    "float": frozenset({int, float}),
    "boolean": frozenset({bool}),
    "timestamp": frozenset({str}),
    "date": frozenset({str}),
    "choices": frozenset({str}),
}
# Text formats per mirror type (regular expressions, matched in full).
FORMATS: dict[SqlType, str] = {
    "uuid": UUID_PATTERN,
    "timestamp": TIMESTAMP_PATTERN,
    "date": DATE_PATTERN,
    "choices": CHOICES_PATTERN,
}
# The same formats as whole-column checks (sync.mirror.textcheck), fixed layouts where possible.
COLUMN_CHECKS: dict[SqlType, ColumnCheck] = {
    "uuid": FixedLayout("########-####-####-####-############", HEX_DIGITS),
    "timestamp": FirstOf(FixedLayout("####-##-##T##:##:##Z", DIGITS), Pattern(TIMESTAMP_PATTERN)),
    "date": FixedLayout("####-##-##", DIGITS),
    "choices": Pattern(CHOICES_PATTERN),
}
ETAG_CHECK = Pattern(ETAG_PATTERN)


def _text(item: Mapping[str, Any], key: str, *, table: str) -> str:
    value = item.get(key)
    if not isinstance(value, str) or not value:
        raise HostileResponseError(
            f"table {table}: metadata property {key} is missing or not text", table=table
        )
    return value


def safe_column(name: str, *, table: str) -> str:
    """Return `name` if it is a safe SQL identifier, else refuse the table."""
    if not isinstance(name, str) or not SAFE_COLUMN.fullmatch(name):
        raise HostileResponseError(
            f"table {table}: attribute name {str(name)[:80]!r} is not a safe identifier; "
            "the table is parked until the metadata is fixed",
            table=table,
        )
    return name


def _type_name(item: Mapping[str, Any]) -> str:
    value = item.get("AttributeTypeName")
    if isinstance(value, Mapping) and isinstance(value.get("Value"), str):
        return str(value["Value"])
    return ""


def _date_behavior(item: Mapping[str, Any]) -> str:
    behavior = item.get("DateTimeBehavior")
    if isinstance(behavior, Mapping):
        behavior = behavior.get("Value")
    return behavior if isinstance(behavior, str) else ""


def _is_date_only(item: Mapping[str, Any]) -> bool:
    """True when the Web API sends the value as an Edm.Date ("YYYY-MM-DD").

    Only DateTimeBehavior decides it. `Format = DateOnly` with UserLocal or TimeZoneIndependent
    behaviour (`overriddencreatedon` on every table, `estimatedclosedate` on opportunity) is
    still sent as a full Edm.DateTimeOffset: Format only tells apps how to display the value
    (reference 5.3). Without a behaviour, the default (UserLocal) applies: a timestamp.
    """
    return _date_behavior(item) == "DateOnly"


def _describe(item: Mapping[str, Any], kind: str) -> str:
    """How an attribute was declared, for error messages: type, and for DateTime its Format and
    DateTimeBehavior, so that a value of the wrong shape can be traced to its metadata."""
    if kind != "DateTime":
        return f"AttributeType {kind}"
    shown_format = item.get("Format") if isinstance(item.get("Format"), str) else "none"
    return (
        f"AttributeType DateTime, Format {shown_format}, "
        f"DateTimeBehavior {_date_behavior(item) or 'none'}"
    )


def attribute_columns(  # noqa: PLR0911 - one return per family of attribute types
    item: Mapping[str, Any], *, table: str
) -> list[MirrorColumn] | None:
    """The mirror columns one attribute becomes, or None when it is not mirrored (reference 5.3)."""
    name = _text(item, "LogicalName", table=table)
    kind = _text(item, "AttributeType", table=table)
    type_name = _type_name(item)
    if item.get("AttributeOf") or item.get("IsValidODataAttribute") is False:
        return None
    if item.get("IsValidForRead") is False:
        return None
    name = safe_column(name, table=table)
    if kind == "Virtual" and type_name == "MultiSelectPicklistType":
        return [
            MirrorColumn(name, name, "choices", name, "MultiSelectPicklist"),
            MirrorColumn(f"{name}__label", name + FORMATTED, "text", name, "MultiSelectPicklist"),
        ]
    if kind in _CHOICE_TYPES:
        return [
            MirrorColumn(name, name, "integer", name, kind),
            MirrorColumn(f"{name}__label", name + FORMATTED, "text", name, kind),
        ]
    if kind in _LOOKUP_TYPES:
        web = f"_{name}_value"
        return [
            MirrorColumn(web, web, "uuid", name, kind),
            MirrorColumn(f"{web}__type", web + LOOKUP_TYPE, "text", name, kind),
        ]
    sql_type = _SIMPLE_TYPES.get(kind)
    if sql_type is None:  # Virtual, PartyList, CalendarRules, ManagedProperty, EntityName, unknown
        return None
    if sql_type == "timestamp" and _is_date_only(item):
        sql_type = "date"
    return [MirrorColumn(name, name, sql_type, name, kind, _describe(item, kind))]


def label_text(value: Any) -> str:
    """The text of a metadata Label (UserLocalizedLabel, else the first LocalizedLabels entry);
    "" when absent or malformed. Capped: it is a description, not data."""
    if not isinstance(value, Mapping):
        return ""
    chosen = value.get("UserLocalizedLabel")
    if not isinstance(chosen, Mapping):
        localized = value.get("LocalizedLabels")
        chosen = localized[0] if isinstance(localized, list) and localized else None
    text = chosen.get("Label") if isinstance(chosen, Mapping) else None
    return text.strip()[:2000] if isinstance(text, str) else ""


def attribute_id(item: Mapping[str, Any]) -> str:
    """The attribute's MetadataId in lower case, or "" when absent or not a GUID (then a
    column deleted and created again cannot be told from the old one, and is not)."""
    value = item.get("MetadataId")
    if isinstance(value, str) and UUID_TEXT.fullmatch(value):
        return value.lower()
    return ""


def build_schema(
    entity: Mapping[str, Any],
    attributes: Iterable[Mapping[str, Any]],
    *,
    table: str,
    only: Sequence[str] | None = None,
) -> TableSchema:
    """Build the mirror schema of one table from its metadata; `only` limits the attributes."""
    if not isinstance(entity, Mapping):
        raise HostileResponseError(
            f"table {table}: EntityDefinitions answer is not an object", table=table
        )
    entity_set = _text(entity, "EntitySetName", table=table)
    if not SAFE_ENTITY_SET.fullmatch(entity_set):
        raise HostileResponseError(
            f"table {table}: entity set name {entity_set[:80]!r} is not safe", table=table
        )
    primary = safe_column(_text(entity, "PrimaryIdAttribute", table=table), table=table)
    change_tracking = entity.get("ChangeTrackingEnabled") is True
    wanted = None if only is None else {*only, primary, "modifiedon"}
    key_column: MirrorColumn | None = None
    columns: list[MirrorColumn] = []
    skipped: list[str] = []
    for item in attributes:
        if not isinstance(item, Mapping):
            raise HostileResponseError(f"table {table}: an attribute is not an object", table=table)
        mapped = attribute_columns(item, table=table)
        name = str(item.get("LogicalName"))
        if mapped is None or (wanted is not None and name not in wanted):
            skipped.append(name)
            continue
        identity = attribute_id(item)
        shown, described = label_text(item.get("DisplayName")), label_text(item.get("Description"))
        if name == primary:
            key_column = MirrorColumn(
                primary,
                primary,
                "uuid",
                primary,
                str(item.get("AttributeType")),
                attribute_id=identity,
                display_name=shown,
                description=described,
            )
            continue
        columns.extend(
            replace(column, attribute_id=identity, display_name=shown, description=described)
            for column in mapped
        )
    if key_column is None:
        raise HostileResponseError(
            f"table {table}: primary key {primary} is not among the readable attributes",
            table=table,
        )
    all_columns = (key_column, *sorted(columns, key=lambda c: c.name))
    names = [c.name for c in all_columns]
    duplicates = sorted(
        {n for n in names if names.count(n) > 1} | (set(names) & set(RESERVED_COLUMNS))
    )
    if duplicates:
        raise HostileResponseError(
            f"table {table}: column names collide: {', '.join(duplicates)}", table=table
        )
    return TableSchema(
        table,
        entity_set,
        primary,
        change_tracking,
        all_columns,
        tuple(skipped),
        intersect=entity.get("IsIntersect") is True,
    )
