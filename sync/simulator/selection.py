"""Which rows a query selects, and in what order: filter checks, index bounds, sort and cursor.

The bounds are what keep a watermark query (``modifiedon gt …``, ``versionnumber gt …``) or a
key lookup on a million-row table cheap: untouched seeded rows have monotone versions and
modified dates, so a binary search turns those comparisons into an index range. Primary-key
ranges (``<pk> gt <guid>``) follow SQL Server's GUID order, which is not the index order: they
come from the table's key order (keyorder.py). Sorting compares every column with
`filters.comparable` of its family, so Edm.Guid columns sort the way SQL Server sorts them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from functools import cmp_to_key
from typing import Any

from sync.simulator.attributes import AttributeDef
from sync.simulator.dataset import Table
from sync.simulator.filters import (
    Call,
    Compare,
    InList,
    Node,
    comparable,
    comparisons,
    conjuncts,
    evaluate,
)
from sync.simulator.guids import sqlserver_guid_key
from sync.simulator.keyorder import key_ordered_rows, key_range_indices, key_range_terms
from sync.simulator.odata import PagingCookie, invalid_skiptoken
from sync.simulator.protocol import bad_request, unknown_property
from sync.simulator.values import Row

_OPERATOR_KIND = {
    "eq": "Equal",
    "ne": "NotEqual",
    "gt": "GreaterThan",
    "ge": "GreaterThanOrEqual",
    "lt": "LessThan",
    "le": "LessThanOrEqual",
}
_LITERAL_EDM = {
    "string": "Edm.String",
    "number": "Edm.Decimal",
    "bool": "Edm.Boolean",
    "guid": "Edm.Guid",
    "datetime": "Edm.DateTimeOffset",
    "date": "Edm.Date",
    "enum": "Edm.Enum",
}
#: Literal kinds each column family accepts. An Edm.Guid column takes only an unquoted GUID:
#: OData types ``'…'`` as Edm.String, and Edm.Guid vs Edm.String is "incompatible types".
_ACCEPTS = {
    "string": {"string"},
    "number": {"number"},
    "bool": {"bool"},
    "datetime": {"datetime", "date"},
    "guid": {"guid"},
}
_EDM = {
    "Integer": "Edm.Int32",
    "Picklist": "Edm.Int32",
    "State": "Edm.Int32",
    "Status": "Edm.Int32",
    "BigInt": "Edm.Int64",
    "Decimal": "Edm.Decimal",
    "Money": "Edm.Decimal",
    "Double": "Edm.Double",
    "Boolean": "Edm.Boolean",
    "Uniqueidentifier": "Edm.Guid",
}


def category(attr: AttributeDef) -> str:
    """The comparison family of a column: string, number, bool, datetime or guid."""
    kind = attr.attribute_type
    if attr.is_lookup or kind == "Uniqueidentifier":
        return "guid"
    if kind == "DateTime":
        return "datetime"
    if kind == "Boolean":
        return "bool"
    if kind in _EDM and _EDM[kind] not in ("Edm.Guid", "Edm.Boolean"):
        return "number"
    return "string"


def edm_type(attr: AttributeDef) -> str:
    """The Edm primitive type of a column (for error messages)."""
    if attr.is_lookup:
        return "Edm.Guid"
    if attr.attribute_type == "DateTime":
        return "Edm.Date" if attr.date_only else "Edm.DateTimeOffset"
    return _EDM.get(attr.attribute_type, "Edm.String")


def columns_by_name(table: Table) -> dict[str, AttributeDef]:
    """Row properties by Web API name."""
    return {a.web_name: a for a in table.row_attributes()}


def check_filter(table: Table, node: Node) -> None:
    """400 for unknown properties or literals of the wrong type, as OData does."""
    columns = columns_by_name(table)
    for leaf in comparisons(node):
        attr = columns.get(leaf.prop)
        if attr is None:
            raise unknown_property(leaf.prop, table.name)
        family = category(attr)
        if isinstance(leaf, InList):
            continue  # Collection(Edm.String): the values are converted, a wrong one matches none
        if isinstance(leaf, Call):
            if family != "string":
                raise bad_request(
                    f"No function signature for the function with name '{leaf.func}' matches the "
                    "specified arguments. The function signatures considered are: "
                    f"{leaf.func}(Edm.String Nullable=true, Edm.String)."
                )
            continue
        kind = leaf.literal.kind
        if kind != "null" and kind not in _ACCEPTS[family]:
            raise bad_request(
                "A binary operator with incompatible types was detected. Found operand types "
                f"'{edm_type(attr)}' and '{_LITERAL_EDM.get(kind, kind)}' for operator kind "
                f"'{_OPERATOR_KIND[leaf.op]}'."
            )


def seeded_bounds(table: Table, node: Node | None) -> tuple[int, int]:
    """[low, high) of seeded indices that can match; changed rows are visited regardless."""
    low, high = 0, table.base_count
    for term in conjuncts(node) if node is not None else ():
        if isinstance(term, Compare) and term.literal.kind != "null":
            term_low, term_high = _term_bounds(table, term)
            low, high = max(low, term_low), min(high, term_high)
    return low, high


def _term_bounds(table: Table, term: Compare) -> tuple[int, int]:
    """Bounds one comparison proves for untouched seeded rows (everything when it proves none)."""
    everything = (0, table.base_count)
    kind, op, literal = term.literal.kind, term.op, term.literal.value
    if term.prop == table.template.primary_id and kind == "guid":
        if op != "eq":
            return everything  # key ranges follow SQL Server's order: key_range_indices
        exact = table.index_of(literal)
        return (exact, exact + 1) if exact is not None else (0, 0)
    if term.prop == "versionnumber" and kind == "number":
        seeded = table.seeded_version
    elif term.prop == "modifiedon" and kind in ("datetime", "date"):
        seeded = table.seeded_modified
    else:
        return everything
    above = table.first_seeded_at_or_after(lambda i: seeded(i) > literal)
    at_or_above = table.first_seeded_at_or_after(lambda i: seeded(i) >= literal)
    by_value = {
        "gt": (above, table.base_count),
        "ge": (at_or_above, table.base_count),
        "lt": (0, at_or_above),
        "le": (0, above),
        "eq": (at_or_above, above),
    }
    return by_value.get(op, everything)


def matching_rows(table: Table, node: Node | None, after: int = -1) -> Iterator[Row]:
    """Rows above index `after` that match the filter, lazily, in index (creation) order."""
    indices: Iterable[int]
    keyed = key_range_indices(table, node)
    if keyed is not None:
        indices = (index for index in keyed if index > after)
    else:
        low, high = seeded_bounds(table, node)
        indices = table.indices(after, low, high)
    for index in indices:
        row = table.row(index)
        if row is not None and (node is None or evaluate(node, row.values.get)):
            yield row


def default_ordered_rows(
    table: Table, node: Node | None, *, after: str | None, wanted: int
) -> Iterator[Row]:
    """Matching live rows in the default order (no ``$orderby``), resuming past the key `after`.

    A real org returns them in primary-key order (SQL Server's ``uniqueidentifier`` order, the
    clustered index), the same as ``$orderby=<pk>``; a page resumes past the last key it sent,
    so rows created meanwhile with a key before the cursor are not read and none is skipped.
    Unfiltered reads stream the key order: O(page). A filter whose bounds (versions, modified
    dates) leave few candidates collects and sorts them instead of scanning the key order
    for `wanted` matches: c candidates cost c log c, streaming costs about wanted * N / c.
    """
    candidates = _candidate_count(table, node)
    if candidates is None or candidates * candidates >= wanted * max(table.next_index, 1):
        return key_ordered_rows(table, node, descending=False, after=after)
    rows = sorted(matching_rows(table, node), key=lambda row: sqlserver_guid_key(row.key))
    if after is not None:
        resume = sqlserver_guid_key(after)
        rows = [row for row in rows if sqlserver_guid_key(row.key) > resume]
    return iter(rows)


def _candidate_count(table: Table, node: Node | None) -> int | None:
    """Rows `matching_rows` would visit for a filter its index bounds narrow, else None."""
    if node is None or key_range_terms(table, node):
        return None
    low, high = seeded_bounds(table, node)
    if high - low >= table.base_count:
        return None
    return max(0, high - low) + len(table.states) + (table.next_index - table.base_count)


def check_orderby(table: Table, orderby: tuple[tuple[str, bool], ...]) -> None:
    """400 for ordering by a property the entity does not have."""
    columns = columns_by_name(table)
    for name, _ in orderby:
        if name not in columns:
            raise unknown_property(name, table.name)


# (the row's ordering values, its key's SQL Server sort bytes): ties go by primary key, as a
# real org appends the key to every ordering so that paging is stable.
SortItem = tuple[tuple[Any, ...], bytes]


@dataclass(frozen=True)
class Ordering:
    """An ``$orderby``: (property, descending) terms and each property's comparison family."""

    terms: tuple[tuple[str, bool], ...]
    kinds: tuple[str, ...]

    def compare(self, a: SortItem, b: SortItem) -> int:
        """Order two (sort values, key) items; the primary key breaks ties so order is total."""
        columns = zip(self.terms, self.kinds, a[0], b[0], strict=True)
        for (_, descending), kind, left, right in columns:
            result = _compare_values(left, right, kind)
            if result:
                return -result if descending else result
        return (a[1] > b[1]) - (a[1] < b[1])


def ordering(table: Table, orderby: tuple[tuple[str, bool], ...]) -> Ordering:
    """The `Ordering` of a checked ``$orderby`` on this table."""
    columns = columns_by_name(table)
    return Ordering(orderby, tuple(category(columns[name]) for name, _ in orderby))


def _compare_values(left: Any, right: Any, kind: str) -> int:
    if left is None or right is None:
        return (left is not None) - (right is not None)  # nulls first, as SQL Server sorts
    a, b = comparable(left, kind), comparable(right, kind)
    return int(a > b) - int(a < b)


def sort_rows(rows: list[Row], order: Ordering) -> list[tuple[SortItem, Row]]:
    """Rows sorted by `order`, each with its sort item (for the paging cursor)."""
    items: list[tuple[SortItem, Row]] = [
        ((tuple(r.values.get(name) for name, _ in order.terms), sqlserver_guid_key(r.key)), r)
        for r in rows
    ]

    def by_item(left: tuple[SortItem, Row], right: tuple[SortItem, Row]) -> int:
        return order.compare(left[0], right[0])

    items.sort(key=cmp_to_key(by_item))
    return items


def cursor_elements(
    orderby: tuple[tuple[str, bool], ...], values: tuple[Any, ...]
) -> dict[str, dict[str, str]]:
    """The inner-cookie elements that remember where an ordered page ended."""
    out: dict[str, dict[str, str]] = {}
    for (name, _), value in zip(orderby, values, strict=True):
        if value is None:
            out[name] = {"null": "1"}
        elif isinstance(value, bool):
            out[name] = {"last": "1" if value else "0"}
        else:
            out[name] = {"last": str(value)}
    return out


def cursor_values(
    table: Table, orderby: tuple[tuple[str, bool], ...], cookie: PagingCookie
) -> tuple[Any, ...]:
    """Decode the ordering values an ordered page ended at (400 when they do not parse)."""
    columns = columns_by_name(table)
    values: list[Any] = []
    for name, _ in orderby:
        element = cookie.elements.get(name)
        if element is None:
            raise invalid_skiptoken(f"no position for {name}")
        if element.get("null") == "1":
            values.append(None)
            continue
        text = element.get("last", "")
        family = category(columns[name])
        try:
            if family == "bool":
                values.append(text == "1")
            elif family in ("number", "datetime"):
                values.append(Decimal(text))
            else:
                values.append(text)
        except InvalidOperation as exc:
            raise invalid_skiptoken(f"bad position for {name}") from exc
    return tuple(values)
