"""Attribute definitions: what Dataverse says about a column, and builders for common shapes.

Each builder returns the column plus the companion attributes Dataverse generates for it
(``…name``, ``…yominame``, ``…type``) with ``attribute_of`` set and ``odata=False``: they exist
in metadata, never in rows. templates.py composes tables from these builders.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

LOOKUP_TYPES = frozenset({"Lookup", "Customer", "Owner"})
CHOICE_TYPES = frozenset({"Picklist", "State", "Status"})
#: Columns whose values follow a rule rather than the row's random draw.
_SYSTEM_FILLS = frozenset(
    {
        "firstname",
        "lastname",
        "createdon",
        "modifiedon",
        "versionnumber",
        "exchangerate",
        "transactioncurrencyid",
    }
)

#: AttributeType -> the metadata class named in each item's ``@odata.type``.
METADATA_CLASS = {
    "String": "StringAttributeMetadata",
    "Memo": "MemoAttributeMetadata",
    "Integer": "IntegerAttributeMetadata",
    "BigInt": "BigIntAttributeMetadata",
    "Decimal": "DecimalAttributeMetadata",
    "Double": "DoubleAttributeMetadata",
    "Money": "MoneyAttributeMetadata",
    "Boolean": "BooleanAttributeMetadata",
    "DateTime": "DateTimeAttributeMetadata",
    "Lookup": "LookupAttributeMetadata",
    "Customer": "LookupAttributeMetadata",
    "Owner": "LookupAttributeMetadata",
    "Picklist": "PicklistAttributeMetadata",
    "State": "StateAttributeMetadata",
    "Status": "StatusAttributeMetadata",
    "Uniqueidentifier": "UniqueIdentifierAttributeMetadata",
    "EntityName": "EntityNameAttributeMetadata",
    "Virtual": "AttributeMetadata",
}


@dataclass(frozen=True)
class Option:
    """One choice of a Picklist/State/Status/MultiSelectPicklist column."""

    value: int
    label: str
    state: int | None = None  # Status options belong to one statecode


@dataclass(frozen=True)
class AttributeDef:
    """One column as Dataverse describes it (AttributeMetadata) plus how the simulator fills it."""

    logical_name: str
    attribute_type: str  # AttributeTypeCode name, e.g. "Lookup", "Virtual"
    type_name: str  # AttributeTypeName.Value, e.g. "LookupType", "MultiSelectPicklistType"
    display_name: str
    targets: tuple[str, ...] = ()
    options: tuple[Option, ...] = ()
    # DateTime only. DateTimeBehavior decides the wire shape (DateOnly → Edm.Date "YYYY-MM-DD";
    # UserLocal and TimeZoneIndependent → Edm.DateTimeOffset, whatever the Format). Format
    # ("DateOnly" / "DateAndTime") only tells apps how to display the value (reference 5.3).
    behavior: str = "UserLocal"
    date_format: str = "DateAndTime"
    attribute_of: str | None = None
    odata: bool = True  # IsValidODataAttribute
    primary_id: bool = False
    primary_name: bool = False
    custom: bool = False
    precision: int | None = None
    max_length: int | None = None
    value_range: tuple[float, float] = (0.0, 0.0)
    text: str = "word"  # String flavour: word, code, email, phone, company, person, ...
    null_ratio: float = 0.0
    added_at_version: int = 0  # added at runtime: rows not touched since read null
    hostile: bool = False
    # Values from real orgs that break careless clients (edgevalues.py): half the draws.
    edges: tuple[Any, ...] = ()
    # How many times a column of this name was deleted and created again (a new MetadataId).
    generation: int = 0
    # The global option set (its Name) a choice column is bound to; None for a local one.
    global_option_set: str | None = None

    @cached_property
    def is_lookup(self) -> bool:
        """True for Lookup, Customer and Owner columns (rendered as ``_x_value``)."""
        return self.attribute_type in LOOKUP_TYPES

    @cached_property
    def is_multiselect(self) -> bool:
        """True for multi-select choice columns (Virtual / MultiSelectPicklistType)."""
        return self.type_name == "MultiSelectPicklistType"

    @cached_property
    def in_rows(self) -> bool:
        """True when the column is a Web API property of the entity type."""
        return self.odata and self.attribute_of is None

    @cached_property
    def date_only(self) -> bool:
        """True when the value is an ``Edm.Date`` (DateTimeBehavior DateOnly, never Format)."""
        return self.attribute_type == "DateTime" and self.behavior == "DateOnly"

    @cached_property
    def local_midnight(self) -> bool:
        """True for a UserLocal column displayed as a date: its values are a user's local
        midnight expressed in UTC (``2024-05-01T07:00:00Z``), still full timestamps."""
        return self.behavior == "UserLocal" and self.date_format == "DateOnly"

    @cached_property
    def plain(self) -> bool:
        """True when the stored value is already its JSON form (no date or decimal formatting)."""
        return self.attribute_type not in ("DateTime", "Decimal", "Money")

    @cached_property
    def fill(self) -> str:
        """How rows get this column's value: a system rule by name, else a seeded draw."""
        if self.primary_id:
            return "key"
        if self.primary_name:
            return "name"
        if self.logical_name in _SYSTEM_FILLS:
            return self.logical_name
        return "draw"

    @cached_property
    def web_name(self) -> str:
        """The Web API property name: lookups become ``_<logicalname>_value``."""
        return f"_{self.logical_name}_value" if self.is_lookup else self.logical_name

    @property
    def odata_type(self) -> str:
        """The ``@odata.type`` of this attribute's metadata item."""
        if self.is_multiselect:
            return "#Microsoft.Dynamics.CRM.MultiSelectPicklistAttributeMetadata"
        return f"#Microsoft.Dynamics.CRM.{METADATA_CLASS[self.attribute_type]}"

    @property
    def schema_name(self) -> str:
        """SchemaName: custom columns keep their prefix (``new_Name``), others are capitalised."""
        prefix, sep, rest = self.logical_name.partition("_")
        if self.custom and sep and rest:
            return f"{prefix}_{rest[:1].upper()}{rest[1:]}"
        return self.logical_name[:1].upper() + self.logical_name[1:]


@dataclass(frozen=True)
class TableTemplate:
    """One entity: its names and its ordered attribute definitions."""

    logical_name: str
    schema_name: str
    entity_set: str
    display_name: str
    display_collection_name: str
    object_type_code: int
    primary_id: str
    primary_name: str
    is_custom: bool
    attributes: tuple[AttributeDef, ...] = field(default=())

    def attribute(self, logical_name: str) -> AttributeDef | None:
        """The attribute with that logical name, if any."""
        for attr in self.attributes:
            if attr.logical_name == logical_name:
                return attr
        return None


def _companion(base: str, suffix: str, kind: str, type_name: str, display: str) -> AttributeDef:
    return AttributeDef(
        f"{base}{suffix}", kind, type_name, f"{display}{suffix}", attribute_of=base, odata=False
    )


def key(name: str, display: str) -> AttributeDef:
    """The primary-key column."""
    return AttributeDef(name, "Uniqueidentifier", "UniqueidentifierType", display, primary_id=True)


def string(
    name: str,
    display: str,
    text: str = "word",
    *,
    null_ratio: float = 0.0,
    primary_name: bool = False,
) -> AttributeDef:
    """A single-line text column."""
    return AttributeDef(
        name,
        "String",
        "StringType",
        display,
        text=text,
        max_length=100,
        null_ratio=null_ratio,
        primary_name=primary_name,
    )


def memo(name: str, display: str) -> AttributeDef:
    """A multi-line text column."""
    return AttributeDef(
        name, "Memo", "MemoType", display, text="sentence", max_length=2000, null_ratio=0.2
    )


def number(
    name: str, kind: str, display: str, low: float, high: float, *, null_ratio: float = 0.0
) -> AttributeDef:
    """An Integer, BigInt, Decimal, Double or Money column with values in [low, high]."""
    precision = {"Decimal": 2, "Double": 5, "Money": 2}.get(kind)
    return AttributeDef(
        name,
        kind,
        f"{kind}Type",
        display,
        value_range=(low, high),
        precision=precision,
        null_ratio=null_ratio,
    )


DATE_BEHAVIORS = ("UserLocal", "DateOnly", "TimeZoneIndependent")
DATE_FORMATS = ("DateOnly", "DateAndTime")


def date(
    name: str,
    display: str,
    *,
    behavior: str = "UserLocal",
    date_format: str = "DateAndTime",
    null_ratio: float = 0.0,
) -> AttributeDef:
    """A DateTime column. Only ``behavior="DateOnly"`` columns render as ``YYYY-MM-DD``; the
    others are full UTC timestamps even with ``date_format="DateOnly"`` (reference 5.3, S27)."""
    if behavior not in DATE_BEHAVIORS or date_format not in DATE_FORMATS:
        raise ValueError(f"date column {name}: behavior {behavior!r} / format {date_format!r}")
    if behavior == "DateOnly":
        date_format = "DateOnly"  # Dataverse only allows the DateOnly format with this behaviour
    return AttributeDef(
        name,
        "DateTime",
        "DateTimeType",
        display,
        behavior=behavior,
        date_format=date_format,
        null_ratio=null_ratio,
    )


def boolean(name: str, display: str, labels: tuple[str, str] = ("No", "Yes")) -> list[AttributeDef]:
    """A Yes/No column plus its generated ``…name`` companion."""
    options = (Option(0, labels[0]), Option(1, labels[1]))
    return [
        AttributeDef(name, "Boolean", "BooleanType", display, options=options),
        _companion(name, "name", "Virtual", "VirtualType", display),
    ]


def choice(
    name: str,
    display: str,
    labels: dict[int, str],
    kind: str = "Picklist",
    global_option_set: str | None = None,
) -> list[AttributeDef]:
    """A Picklist column plus its generated ``…name`` companion."""
    options = tuple(Option(value, label) for value, label in labels.items())
    attr = AttributeDef(name, kind, f"{kind}Type", display, options=options, null_ratio=0.1)
    return [
        replace(attr, global_option_set=global_option_set),
        _companion(name, "name", "Virtual", "VirtualType", display),
    ]


def multiselect(name: str, display: str, labels: dict[int, str]) -> list[AttributeDef]:
    """A multi-select choice column (AttributeType Virtual) plus its ``…name`` companion."""
    options = tuple(Option(value, label) for value, label in labels.items())
    attr = AttributeDef(
        name, "Virtual", "MultiSelectPicklistType", display, options=options, null_ratio=0.2
    )
    return [attr, _companion(name, "name", "Virtual", "VirtualType", display)]


def lookup(
    name: str, display: str, targets: tuple[str, ...], kind: str = "Lookup"
) -> list[AttributeDef]:
    """A Lookup/Customer/Owner column plus the companions Dataverse generates for it."""
    attr = AttributeDef(
        name,
        kind,
        f"{kind}Type",
        display,
        targets=targets,
        null_ratio=0.0 if kind == "Owner" else 0.15,
    )
    extra = [
        _companion(name, "name", "String", "StringType", display),
        _companion(name, "yominame", "String", "StringType", display),
    ]
    if kind in ("Customer", "Owner"):
        extra.append(_companion(name, "type", "EntityName", "EntityNameType", display))
    return [attr, *extra]


def state_status(
    states: dict[int, str], statuses: dict[int, tuple[str, int]]
) -> list[AttributeDef]:
    """The statecode/statuscode pair (each status reason belongs to one state)."""
    state_opts = tuple(Option(value, label) for value, label in states.items())
    status_opts = tuple(Option(v, label, state) for v, (label, state) in statuses.items())
    return [
        AttributeDef("statecode", "State", "StateType", "Status", options=state_opts),
        _companion("statecode", "name", "Virtual", "VirtualType", "Status"),
        AttributeDef("statuscode", "Status", "StatusType", "Status Reason", options=status_opts),
        _companion("statuscode", "name", "Virtual", "VirtualType", "Status Reason"),
    ]


def system_columns() -> list[AttributeDef]:
    """Columns every user-owned table has: currency, owner, audit dates and the row version."""
    return [
        *lookup("transactioncurrencyid", "Currency", ("transactioncurrency",)),
        number("exchangerate", "Decimal", "Exchange Rate", 1.0, 1.0),
        *lookup("ownerid", "Owner", ("systemuser", "team"), kind="Owner"),
        date("createdon", "Created On"),
        date("modifiedon", "Modified On"),
        # On every real table: UserLocal behaviour with the DateOnly format, so the Web API sends
        # a full timestamp (the local midnight the user picked, in UTC), never "YYYY-MM-DD".
        date("overriddencreatedon", "Record Created On", date_format="DateOnly", null_ratio=0.5),
        AttributeDef("versionnumber", "BigInt", "BigIntType", "Version Number"),
    ]
