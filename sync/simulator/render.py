"""Rows as the Web API writes them: column choice, typed JSON values, annotations, defects.

Annotation keys come right before the value they describe, as in Microsoft's samples; the
primary key is always present; selecting a Money column adds ``_transactioncurrencyid_value``.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson

from sync.simulator.attributes import AttributeDef
from sync.simulator.dataset import UNSAFE_ATTRIBUTE, Table
from sync.simulator.odata import Preferences
from sync.simulator.protocol import unknown_property
from sync.simulator.values import Row, formatted_value, iso_date, iso_datetime

FORMATTED = "OData.Community.Display.V1.FormattedValue"
NAVIGATION = "Microsoft.Dynamics.CRM.associatednavigationproperty"
LOOKUP_NAME = "Microsoft.Dynamics.CRM.lookuplogicalname"
MONEY_SCALE = 4  # Dataverse stores money as decimal(…, 4) and renders it that way


def resolve_columns(table: Table, select: tuple[str, ...] | None) -> list[AttributeDef]:
    """The attributes a response carries, in output order; unknown names are 400 ``0x0``."""
    by_web_name = {a.web_name: a for a in table.row_attributes()}
    if select is None:
        return list(by_web_name.values())
    columns: list[AttributeDef] = []
    for name in select:
        attr = by_web_name.get(name)
        if attr is None:
            raise unknown_property(name, table.name)
        if attr not in columns:
            columns.append(attr)
    currency = by_web_name.get("_transactioncurrencyid_value")
    if currency and currency not in columns and any(a.attribute_type == "Money" for a in columns):
        columns.append(currency)
    primary = by_web_name[table.template.primary_id]
    if primary not in columns:
        columns.append(primary)
    return columns


def json_value(attr: AttributeDef, value: Any) -> Any:
    """One value as the Web API writes it (Decimal keeps its scale through orjson.Fragment)."""
    if value is None:
        return None
    if attr.attribute_type == "DateTime":
        return iso_date(value) if attr.date_only else iso_datetime(value)
    if isinstance(value, Decimal):
        scale = MONEY_SCALE if attr.attribute_type == "Money" else (attr.precision or 2)
        return orjson.Fragment(f"{value:.{scale}f}".encode())
    return value


def render_row(
    table: Table, row: Row, columns: list[AttributeDef], prefs: Preferences, *, etag: bool = True
) -> dict[str, Any]:
    """One row object: ``@odata.etag`` then each column, annotations before their value."""
    out: dict[str, Any] = {"@odata.etag": f'W/"{row.version}"'} if etag else {}
    want_formatted = prefs.wants(FORMATTED)
    want_navigation = prefs.wants(NAVIGATION)
    want_lookup = prefs.wants(LOOKUP_NAME)
    values = row.values
    if not (want_formatted or want_navigation or want_lookup):
        for attr in columns:
            name = attr.web_name
            value = values.get(name)
            out[name] = value if value is None or attr.plain else json_value(attr, value)
        return out
    seed = table.ctx.seed
    for attr in columns:
        name = attr.web_name
        value = values.get(name)
        if value is not None:
            target = row.targets.get(name)
            if want_formatted:
                label = formatted_value(attr, value, target, seed)
                if label is not None:
                    out[f"{name}@{FORMATTED}"] = label
            if attr.is_lookup and want_navigation:
                nav = attr.logical_name
                if attr.attribute_type == "Customer":
                    nav = f"{nav}_{target}"
                out[f"{name}@{NAVIGATION}"] = nav
            if attr.is_lookup and want_lookup:
                out[f"{name}@{LOOKUP_NAME}"] = target
        out[name] = json_value(attr, value)
    return out


def plain_row(table: Table, row: Row) -> dict[str, Any]:
    """A row with every column and no annotations (what ``dump_rows`` yields)."""
    out: dict[str, Any] = {}
    for attr in table.row_attributes():
        value = json_value(attr, row.values.get(attr.web_name))
        if isinstance(value, orjson.Fragment):
            value = float(row.values[attr.web_name])
        out[attr.web_name] = value
    return out


def apply_hostility(table: Table, rows: list[dict[str, Any]]) -> None:
    """Give the page the defect set with ``set_hostile`` (malformed JSON is done on the bytes)."""
    if not rows or table.hostile in (None, "malformed_json"):
        return
    if table.hostile == "missing_key":
        rows[0].pop(table.template.primary_id, None)
    elif table.hostile == "unsafe_attribute":
        for row in rows:
            row[UNSAFE_ATTRIBUTE] = "x"
    elif table.hostile == "wrong_type":
        row = rows[0]
        numeric = [
            a.web_name
            for a in table.row_attributes()
            if a.attribute_type in ("Integer", "BigInt") and a.web_name in row
        ]
        target = numeric[0] if numeric else table.template.primary_id
        row[target] = "not-a-number" if numeric else 12345


def malformed(body: bytes) -> bytes:
    """A body that is not valid JSON: cut inside the value array and left open."""
    return body[: max(1, len(body) // 2)] + b',{"'
