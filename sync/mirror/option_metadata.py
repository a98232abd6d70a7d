"""Synapse-style metadata rows from Dataverse attribute metadata. Pure: no I/O.

The metadata tables (store.metadata_tables) hold, for the mirrored columns of the mirrored
tables, what Synapse Link's OptionsetMetadata, GlobalOptionsetMetadata, StateMetadata,
StatusMetadata and TargetMetadata hold, plus attributemetadata; column names are Synapse's in
lower case. Every `LocalizedLabels` entry becomes a row (one per installed language);
`isuserlocalizedlabel` marks the application user's language, the one the Web API's
FormattedValue uses and so the one of the mirror's `<col>__label` columns.

Sources (reference 13): the typed casts of `EntityDefinitions(…)/Attributes` with
`$expand=OptionSet,GlobalOptionSet` (Picklist, MultiSelectPicklist, State, Status; Boolean's
TrueOption/FalseOption), the lookup cast's `Targets` with `ManyToOneRelationships` for the
referenced attribute, and small `$select`ed casts for precision and max length.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from sync.errors import HostileResponseError

CAST = "Microsoft.Dynamics.CRM.{}AttributeMetadata"
# Casts whose OptionSet makes rows, by the catalogue's attribute type.
OPTION_KINDS = ("Picklist", "MultiSelectPicklist", "State", "Status", "Boolean")
LOOKUP_KINDS = frozenset({"Lookup", "Customer", "Owner"})
LABELLED_KINDS = frozenset({"Picklist", "MultiSelectPicklist", "State", "Status"})
# The cast that carries precision or max length, and which of the two it is.
SIZE_CASTS = {
    "String": "MaxLength",
    "Memo": "MaxLength",
    "Decimal": "Precision",
    "Double": "Precision",
    "Money": "Precision",
}
# AttributeTypeCode name → number (reference 5.2).
TYPE_CODES = {
    name: code
    for code, name in enumerate(
        (
            *("Boolean", "Customer", "DateTime", "Decimal", "Double", "Integer", "Lookup"),
            *("Memo", "Money", "Owner", "PartyList", "Picklist", "State", "Status", "String"),
            *("Uniqueidentifier", "CalendarRules", "Virtual", "BigInt", "ManagedProperty"),
            "EntityName",
        )
    )
}
MULTI_SELECT_SEPARATOR = "; "  # how the Web API joins a multi-select FormattedValue
MAX_LABEL = 4000
INT32 = 2**31

OPTIONSET = "optionsetmetadata"
GLOBAL_OPTIONSET = "globaloptionsetmetadata"
STATE = "statemetadata"
STATUS = "statusmetadata"
TARGET = "targetmetadata"
ATTRIBUTE = "attributemetadata"
TABLES = (OPTIONSET, GLOBAL_OPTIONSET, STATE, STATUS, TARGET, ATTRIBUTE)

Row = tuple[Any, ...]


@dataclass(frozen=True)
class MirroredAttribute:
    """One mirrored column's attribute, as the column catalogue has it."""

    name: str
    kind: str  # AttributeType (MultiSelectPicklist for a multi-select choice)
    display_name: str | None = None
    description: str | None = None


@dataclass(frozen=True)
class TableSource:
    """Everything the metadata tables take from one mirrored table (the answers, by cast)."""

    table: str
    attributes: tuple[MirroredAttribute, ...]
    casts: Mapping[str, Sequence[Mapping[str, Any]]] = field(default_factory=dict)
    many_to_one: Sequence[Mapping[str, Any]] = ()


def mirrored_attributes(
    columns: Iterable[tuple[str, str, str | None, str | None]],
) -> list[MirroredAttribute]:
    """The attributes behind catalogue rows (column, attribute type, display name, description)
    of live columns: a lookup's `_x_value` is attribute x; `__label` and `__type` companions and
    archived `__old_` columns are not attributes."""
    out: dict[str, MirroredAttribute] = {}
    for column, kind, shown, described in columns:
        if "__" in column:
            continue
        name = column
        if kind in LOOKUP_KINDS:
            if not (column.startswith("_") and column.endswith("_value")):
                continue
            name = column[1 : -len("_value")]
        out.setdefault(name, MirroredAttribute(name, kind, shown, described))
    return sorted(out.values(), key=lambda a: a.name)


def casts_needed(attributes: Iterable[MirroredAttribute]) -> list[str]:
    """The attribute types whose cast is read for this table (only those it has)."""
    kinds = {a.kind for a in attributes}
    wanted = [k for k in OPTION_KINDS if k in kinds]
    if kinds & LOOKUP_KINDS:
        wanted.append("Lookup")
    wanted += [k for k in SIZE_CASTS if k in kinds]
    return wanted


def cast_query(kind: str) -> str:
    """The path and query (after `EntityDefinitions(…)/Attributes/`) of one cast."""
    cast = CAST.format(kind)
    if kind == "Boolean":
        return f"{cast}?$select=LogicalName&$expand=OptionSet"
    if kind in OPTION_KINDS:
        return f"{cast}?$select=LogicalName&$expand=OptionSet,GlobalOptionSet"
    if kind == "Lookup":
        return f"{cast}?$select=LogicalName,Targets"
    return f"{cast}?$select=LogicalName,{SIZE_CASTS[kind]}"


MANY_TO_ONE_QUERY = (
    "ManyToOneRelationships?$select=ReferencingAttribute,ReferencedEntity,ReferencedAttribute"
)


def _hostile(table: str, what: str) -> HostileResponseError:
    return HostileResponseError(
        f"table {table}: {what}; the metadata tables keep their previous rows", table=table
    )


def _labels(value: Any, table: str) -> list[tuple[int, int, str]]:
    """(1 if it is the user's language else 0, language code, text) of every LocalizedLabels
    entry, one per language. 0/1 rather than a boolean, as Synapse's bit: `= 1` works in SQLite
    and PostgreSQL alike."""
    if value is None:
        return []
    if not isinstance(value, Mapping):
        raise _hostile(table, "a Label is not an object")
    user = value.get("UserLocalizedLabel")
    user_language = user.get("LanguageCode") if isinstance(user, Mapping) else None
    entries = value.get("LocalizedLabels") or []
    if not isinstance(entries, list):
        raise _hostile(table, "LocalizedLabels is not a list")
    out: dict[int, tuple[int, int, str]] = {}
    for entry in entries:
        if not isinstance(entry, Mapping):
            raise _hostile(table, "a LocalizedLabels entry is not an object")
        language, text = entry.get("LanguageCode"), entry.get("Label")
        if type(language) is not int or not isinstance(text, str):
            raise _hostile(table, "a LocalizedLabels entry has no LanguageCode or Label")
        out.setdefault(language, (int(language == user_language), language, text[:MAX_LABEL]))
    return sorted(out.values(), key=lambda e: e[1])


def _value(option: Mapping[str, Any], key: str, table: str) -> int:
    value = option.get(key)
    if type(value) is not int or not -INT32 <= value < INT32:
        raise _hostile(table, f"an option's {key} is not a 32-bit integer")
    return value


def _options(option_set: Any, table: str) -> list[Mapping[str, Any]]:
    if not isinstance(option_set, Mapping):
        return []
    if option_set.get("OptionSetType") == "Boolean" or "TrueOption" in option_set:
        found = [option_set.get("FalseOption"), option_set.get("TrueOption")]
        return [o for o in found if isinstance(o, Mapping)]
    options = option_set.get("Options")
    if not isinstance(options, list) or not all(isinstance(o, Mapping) for o in options):
        raise _hostile(table, "an OptionSet has no list of options")
    return options


def _items(source: TableSource, kind: str) -> list[Mapping[str, Any]]:
    """Items of a cast answer for mirrored attributes of that kind, by LogicalName."""
    wanted = {a.name for a in source.attributes}
    return [i for i in source.casts.get(kind, ()) if i.get("LogicalName") in wanted]


def option_rows(sources: Iterable[TableSource]) -> dict[str, list[Row]]:
    """Rows of the option, global option, state and status tables."""
    out: dict[str, dict[tuple[Any, ...], Row]] = {n: {} for n in (OPTIONSET, GLOBAL_OPTIONSET)}
    out |= {STATE: {}, STATUS: {}}
    for source in sources:
        table = source.table
        for kind in OPTION_KINDS:
            for item in _items(source, kind):
                column = str(item["LogicalName"])
                global_set = item.get("GlobalOptionSet")
                global_name = global_set.get("Name") if isinstance(global_set, Mapping) else None
                option_set = global_set if global_name else item.get("OptionSet")
                for option in _options(option_set, table):
                    value = _value(option, "Value", table)
                    state = _value(option, "State", table) if kind == "Status" else None
                    for user, language, text in _labels(option.get("Label"), table):
                        tail = (user, language, text)
                        if kind == "State":
                            out[STATE].setdefault((table, value, language), (table, value, *tail))
                        elif kind == "Status":
                            row: Row = (table, state, value, *tail)
                            out[STATUS].setdefault((table, value, language), row)
                        elif isinstance(global_name, str) and kind != "Boolean":
                            row = (table, column, str(global_name)[:256], value, *tail)
                            key = (table, column, value, language)
                            out[GLOBAL_OPTIONSET].setdefault(key, row)
                        else:
                            row = (table, column, value, *tail)
                            out[OPTIONSET].setdefault((table, column, value, language), row)
    return {name: sorted(rows.values(), key=_order) for name, rows in out.items()}


def _order(row: Row) -> tuple[str, ...]:
    return tuple("" if v is None else f"{v:>12}" if type(v) is int else str(v) for v in row)


def target_rows(sources: Iterable[TableSource]) -> list[Row]:
    """(entityname, attributename, referencedentity, referencedattribute) per lookup target."""
    rows: dict[tuple[str, str, str], Row] = {}
    for source in sources:
        table = source.table
        referenced = {
            (str(r.get("ReferencingAttribute")), str(r.get("ReferencedEntity"))): r.get(
                "ReferencedAttribute"
            )
            for r in source.many_to_one
            if isinstance(r, Mapping)
        }
        for item in _items(source, "Lookup"):
            column = str(item["LogicalName"])
            targets = item.get("Targets") or []
            if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
                raise _hostile(table, f"the Targets of {column} are not a list of names")
            for target in targets:
                attribute = referenced.get((column, target))
                shown = attribute[:128] if isinstance(attribute, str) else None
                rows.setdefault((table, column, target), (table, column, target[:128], shown))
    return sorted(rows.values(), key=_order)


def attribute_rows(sources: Iterable[TableSource]) -> list[Row]:
    """One row per mirrored attribute: its type, type code, labels, precision and max length."""
    rows: list[Row] = []
    for source in sources:
        sizes: dict[str, int] = {}
        for kind, prop in SIZE_CASTS.items():
            for item in _items(source, kind):
                size = item.get(prop)
                if type(size) is int and 0 <= size < INT32:
                    sizes[f"{prop}:{item['LogicalName']}"] = size
        for a in source.attributes:
            kind = "Virtual" if a.kind == "MultiSelectPicklist" else a.kind
            rows.append(
                (
                    source.table,
                    a.name,
                    a.kind,
                    TYPE_CODES.get(kind),
                    a.display_name,
                    a.description,
                    sizes.get(f"Precision:{a.name}"),
                    sizes.get(f"MaxLength:{a.name}"),
                )
            )
    return sorted(rows, key=_order)


def all_rows(sources: Sequence[TableSource]) -> dict[str, list[Row]]:
    """Every metadata table's rows, in a stable order."""
    return option_rows(sources) | {TARGET: target_rows(sources), ATTRIBUTE: attribute_rows(sources)}


def rows_hash(rows: Sequence[Row]) -> str:
    """The hash a table's rows are compared by (sha256 of their canonical JSON)."""
    return hashlib.sha256(orjson.dumps([list(r) for r in rows])).hexdigest()


# -- the mirror's `<col>__label` columns --------------------------------------------------

LabelKey = tuple[str, str]  # (table, column)


def user_labels(rows: dict[str, list[Row]]) -> dict[LabelKey, dict[int, str]]:
    """Per mirrored (table, column), option value → label in the user's language (what the
    FormattedValue annotations carry)."""
    out: dict[LabelKey, dict[int, str]] = {}
    for table, column, value, user, _language, text in rows.get(OPTIONSET, ()):
        if user:
            out.setdefault((table, column), {})[value] = text
    for table, column, _name, value, user, _language, text in rows.get(GLOBAL_OPTIONSET, ()):
        if user:
            out.setdefault((table, column), {})[value] = text
    for table, value, user, _language, text in rows.get(STATE, ()):
        if user:
            out.setdefault((table, "statecode"), {})[value] = text
    for table, _state, value, user, _language, text in rows.get(STATUS, ()):
        if user:
            out.setdefault((table, "statuscode"), {})[value] = text
    return out


@dataclass(frozen=True)
class Relabel:
    """Options of one labelled column whose user-language label changed."""

    table: str
    column: str
    multi_select: bool
    changed: Mapping[int, str]  # option value → new label
    labels: Mapping[int, str]  # every option's label now (to recompute multi-select labels)


def relabels(
    old: Mapping[LabelKey, Mapping[int, str]],
    new: Mapping[LabelKey, Mapping[int, str]],
    kinds: Mapping[LabelKey, str],
) -> list[Relabel]:
    """The label columns to update: options whose label changed, of columns that have one."""
    out: list[Relabel] = []
    for key in sorted(new):
        kind = kinds.get(key)
        if kind not in LABELLED_KINDS or key not in old:
            continue
        before, now = old[key], new[key]
        changed = {v: text for v, text in now.items() if v in before and before[v] != text}
        if changed:
            out.append(Relabel(key[0], key[1], kind == "MultiSelectPicklist", changed, now))
    return out


def multi_select_label(value: str, labels: Mapping[int, str]) -> str | None:
    """The FormattedValue of a multi-select value (`1,3`) from the labels, or None when one of
    its options has no label (then the stored one is left as it is)."""
    parts: list[str] = []
    for piece in value.split(","):
        try:
            text = labels.get(int(piece))
        except ValueError:
            return None
        if text is None:
            return None
        parts.append(text)
    return MULTI_SELECT_SEPARATOR.join(parts)
