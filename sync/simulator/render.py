"""Rows as the Web API writes them: column choice, typed JSON values, annotations, defects.

Annotation keys come right before the value they describe, as in Microsoft's samples; the
primary key is always present; selecting a Money column adds ``_transactioncurrencyid_value``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sync.simulator.attributes import AttributeDef
from sync.simulator.codegen import FunctionBuilder
from sync.simulator.dataset import UNSAFE_ATTRIBUTE, Table
from sync.simulator.odata import Preferences
from sync.simulator.protocol import unknown_property
from sync.simulator.valueformat import (
    Convert,
    dump_converter,
    json_converter,
    lookup_label,
    value_label,
)
from sync.simulator.values import Row

FORMATTED = "OData.Community.Display.V1.FormattedValue"
NAVIGATION = "Microsoft.Dynamics.CRM.associatednavigationproperty"
LOOKUP_NAME = "Microsoft.Dynamics.CRM.lookuplogicalname"


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


RowRenderer = Callable[[Row], dict[str, Any]]
#: Compiled renderers kept per table (one per column choice and annotation set).
_MAX_COMPILED = 64


def _compiled(table: Table, key: tuple[Any, ...], build: Callable[[], Any]) -> Any:
    found = table.compiled.get(key)
    if found is None:
        if len(table.compiled) >= _MAX_COMPILED:
            table.compiled.clear()
        found = table.compiled[key] = build()
    return found


def row_renderer(
    table: Table, columns: list[AttributeDef], prefs: Preferences, *, etag: bool = True
) -> RowRenderer:
    """A function writing rows as objects: ``@odata.etag``, then each column with its
    annotations right before its value. Compiled once per columns and annotation choice."""
    flags = (prefs.wants(FORMATTED), prefs.wants(NAVIGATION), prefs.wants(LOOKUP_NAME))
    key = ("render", tuple(a.web_name for a in columns), flags, etag)
    renderer: RowRenderer = _compiled(
        table, key, lambda: _compile_renderer(table, columns, flags, etag)
    )
    return renderer


def render_row(
    table: Table, row: Row, columns: list[AttributeDef], prefs: Preferences, *, etag: bool = True
) -> dict[str, Any]:
    """One row object: ``@odata.etag`` then each column, annotations before their value."""
    return row_renderer(table, columns, prefs, etag=etag)(row)


def _compile_renderer(
    table: Table, columns: list[AttributeDef], flags: tuple[bool, bool, bool], etag: bool
) -> RowRenderer:
    """Generate the row writer: one block per column, only the steps that column needs.

    Rows always hold every column of the table (rowgen fills a blank with all of them), and
    this renderer is dropped with the row factory when a column is added.
    """
    if not any(flags):
        return _compile_plain(columns, json_converter, etag)
    formatted, navigation, lookup = flags
    code = FunctionBuilder("render_annotated", "row")
    code.line("values = row.values")
    code.line("targets = row.targets")
    code.line(_start(etag))
    for attr in columns:
        name = repr(attr.web_name)
        convert = json_converter(attr)
        steps: list[str] = []
        if attr.is_lookup:
            steps.append(f"target = targets.get({name})")
            if formatted:
                label = code.bind("label", lookup_label(attr, table.ctx.seed))
                steps += [f"text = {label}(value, target)", "if text is not None:"]
                steps.append(f"    out[{attr.web_name + '@' + FORMATTED!r}] = text")
            if navigation:
                nav = repr(attr.logical_name)
                text = f"{nav} + '_' + str(target)" if attr.attribute_type == "Customer" else nav
                steps.append(f"out[{attr.web_name + '@' + NAVIGATION!r}] = {text}")
            if lookup:
                steps.append(f"out[{attr.web_name + '@' + LOOKUP_NAME!r}] = target")
        elif formatted and (label_of := value_label(attr)) is not None:
            label = code.bind("label", label_of)
            steps += [f"text = {label}(value)", "if text is not None:"]
            steps.append(f"    out[{attr.web_name + '@' + FORMATTED!r}] = text")
        if convert is not None:
            steps.append(f"value = {code.bind('convert', convert)}(value)")
        if not steps:
            code.line(f"out[{name}] = values[{name}]")
            continue
        code.line(f"value = values[{name}]")
        code.line("if value is not None:")
        for step in steps:
            code.line(step, 1)
        code.line(f"out[{name}] = value")
    code.line("return out")
    renderer: RowRenderer = code.build()
    return renderer


def _start(etag: bool) -> str:
    return "out = {'@odata.etag': 'W/\"' + str(row.version) + '\"'}" if etag else "out = {}"


def _compile_plain(
    columns: list[AttributeDef], converter: Callable[[AttributeDef], Convert | None], etag: bool
) -> RowRenderer:
    """A writer of rows without annotations: one dict display, every key in column order."""
    code = FunctionBuilder("render_plain", "row")
    code.line("values = row.values")
    items = ["'@odata.etag': 'W/\"' + str(row.version) + '\"'"] if etag else []
    for attr in columns:
        name = repr(attr.web_name)
        convert = converter(attr)
        if convert is None:
            items.append(f"{name}: values[{name}]")
        else:
            bound = code.bind("convert", convert)
            items.append(f"{name}: None if (v := values[{name}]) is None else {bound}(v)")
    code.line("return {")
    for item in items:
        code.line(f"{item},", 1)
    code.line("}")
    renderer: RowRenderer = code.build()
    return renderer


def plain_row(table: Table, row: Row, *, exact: bool = False) -> dict[str, Any]:
    """A row with every column and no annotations (what ``dump_rows`` yields). Decimals are
    floats, or with `exact` what the Web API writes (JSON numbers with their scale, for the
    admin dump: Money at its limits has more digits than a float keeps)."""
    convert = json_converter if exact else dump_converter
    render: RowRenderer = _compiled(
        table,
        ("plain", exact),
        lambda: _compile_plain(table.row_attributes(), convert, etag=False),
    )
    return render(row)


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
