"""Rows in SQL Server order of their primary key, and primary-key ranges as index sets.

The simulator's row index is its creation order. A table's keys (``key_for``) are sequential
GUIDs (values.py): SQL Server orders ``uniqueidentifier`` by the last group first (guids.py),
which is the row's node (one of the table's 2–3), then by the counter in the first three groups,
which grows with the index. So ``$orderby=<pk>`` and ``<pk> gt/ge/lt/le <guid>`` read the rows
node by node, each node's rows in index order; the text order of keys is neither.

Every key comes from `key_for` (seeded and created rows alike), so that order is (node rank,
index). A read of the whole order (the default order, ``$orderby=<pk> [desc]`` without a key
range) streams it from that rule, building nothing: a page costs about page x nodes rank
look-ups. Key ranges bisect `KeyOrder`, the order materialised: built lazily the first time a
table is filtered by a key range (O(N) once: each seeded row goes to its node's run, then 8 bytes
per row), and kept up to date with rows created since (keys never change; deleted rows are
skipped when read). Pages then cost O(page). Tables nobody reads that way never pay for it.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right, insort
from collections.abc import Iterator
from weakref import WeakKeyDictionary

from sync.simulator.dataset import Table
from sync.simulator.filters import Compare, InList, Logical, Node, conjuncts, evaluate
from sync.simulator.guids import sqlserver_guid_key
from sync.simulator.values import Row, identity

_RANGE_OPERATORS = frozenset({"gt", "ge", "lt", "le"})


class KeyOrder:
    """The live and deleted row indices of one table, in SQL Server order of their keys."""

    def __init__(self, table: Table) -> None:
        self._table = table
        ident = identity(table.ctx.seed, table.name)
        runs = [array("q") for _ in ident.nodes]  # per node, in SQL Server order of the nodes
        rank = ident.node_rank
        for index in range(table.base_count):
            runs[rank(index)].append(index)  # within a node the counter is the index order
        self._order = array("q")
        for run in runs:
            self._order.extend(run)
        self._known = table.base_count

    def _key(self, index: int) -> bytes:
        return sqlserver_guid_key(self._table.key(index))

    def refresh(self) -> None:
        """Take in rows created since the last call (their keys sort anywhere)."""
        for index in range(self._known, self._table.next_index):
            insort(self._order, index, key=self._key)
        self._known = max(self._known, self._table.next_index)

    def __len__(self) -> int:
        return len(self._order)

    def at(self, position: int) -> int:
        """The row index at a position of the order."""
        return self._order[position]

    def after(self, key: bytes) -> int:
        """First position whose key sorts above `key`."""
        return bisect_right(self._order, key, key=self._key)

    def at_or_after(self, key: bytes) -> int:
        """First position whose key sorts at or above `key`."""
        return bisect_left(self._order, key, key=self._key)

    def bounds(self, terms: list[Compare]) -> tuple[int, int]:
        """[low, high) positions satisfying every ``<pk> gt|ge|lt|le <guid>`` term."""
        low, high = 0, len(self._order)
        for term in terms:
            key = sqlserver_guid_key(term.literal.value)
            if term.op == "gt":
                low = max(low, self.after(key))
            elif term.op == "ge":
                low = max(low, self.at_or_after(key))
            elif term.op == "lt":
                high = min(high, self.at_or_after(key))
            else:
                high = min(high, self.after(key))
        return low, max(low, high)


_ORDERS: WeakKeyDictionary[Table, KeyOrder] = WeakKeyDictionary()


def key_order(table: Table) -> KeyOrder:
    """The table's key order, built on first use and refreshed with rows created since."""
    order = _ORDERS.get(table)
    if order is None:
        order = _ORDERS[table] = KeyOrder(table)
    order.refresh()
    return order


def key_range_terms(table: Table, node: Node | None) -> list[Compare]:
    """The top-level ``<pk> gt|ge|lt|le <guid literal>`` terms of a filter."""
    pk = table.template.primary_id
    return [
        term
        for term in (conjuncts(node) if node is not None else ())
        if isinstance(term, Compare)
        and term.prop == pk
        and term.op in _RANGE_OPERATORS
        and term.literal.kind == "guid"
    ]


def _listed_keys(table: Table, node: Node) -> list[str] | None:
    """The keys of a filter that is only ``<pk> eq <guid> or <pk> eq <guid> …`` or
    ``Microsoft.Dynamics.CRM.In(PropertyName='<pk>',…)``; else None."""
    pk, pending = table.template.primary_id, [node]
    keys: list[str] = []
    while pending:
        current = pending.pop()
        if isinstance(current, InList) and current.prop == pk:
            keys += current.folded
        elif isinstance(current, Logical) and current.op == "or":
            pending += [current.left, current.right]
        elif (
            isinstance(current, Compare)
            and current.prop == pk
            and current.op == "eq"
            and current.literal.kind == "guid"
        ):
            keys.append(str(current.literal.value))
        else:
            return None
    return keys


def key_range_indices(table: Table, node: Node | None) -> list[int] | None:
    """Row indices (ascending) inside the filter's key range, or of the keys it lists; None
    when it has neither."""
    listed = _listed_keys(table, node) if node is not None else None
    if listed is not None:
        found = (table.index_of(key) for key in listed)
        return sorted({index for index in found if index is not None})
    terms = key_range_terms(table, node)
    if not terms:
        return None
    order = key_order(table)
    low, high = order.bounds(terms)
    return sorted(order.at(position) for position in range(low, high))


def key_ordered_rows(
    table: Table, node: Node | None, *, descending: bool, after: str | None
) -> Iterator[Row]:
    """Matching live rows in SQL Server key order, resuming past the key `after` (if given)."""
    terms = key_range_terms(table, node)
    after_index = table.index_of(after) if after is not None else None
    if terms or (after is not None and after_index is None):
        indices = _ranged_indices(table, terms, descending=descending, after=after)
    else:
        indices = _streamed_indices(table, descending=descending, after=after_index)
    for index in indices:
        row = table.row(index)
        if row is not None and (node is None or evaluate(node, row.values.get)):
            yield row


def _ranged_indices(
    table: Table, terms: list[Compare], *, descending: bool, after: str | None
) -> Iterator[int]:
    """Indices inside a key range, from the built `KeyOrder` (bisect: O(log N) to start)."""
    order = key_order(table)
    low, high = order.bounds(terms)
    if after is not None:
        resume = sqlserver_guid_key(after)
        if descending:
            high = min(high, order.at_or_after(resume))
        else:
            low = max(low, order.after(resume))
    positions = range(high - 1, low - 1, -1) if descending else range(low, high)
    return (order.at(position) for position in positions)


def _streamed_indices(table: Table, *, descending: bool, after: int | None) -> Iterator[int]:
    """Every index in key order, past the row `after`, computed as it goes: nothing is built.

    Key order is (node rank, index) for every row, seeded or created (module docstring), so
    each node's run is the indices of that rank in index order; a node's rows are spread
    evenly over the indices, so a page costs about page x nodes rank look-ups.
    """
    rank = identity(table.ctx.seed, table.name).node_rank
    nodes = len(identity(table.ctx.seed, table.name).nodes)
    if descending:
        start_rank = rank(after) if after is not None else nodes - 1
        for node_rank in range(start_rank, -1, -1):
            top = after - 1 if after is not None and node_rank == start_rank else None
            first = table.next_index - 1 if top is None else top
            yield from (i for i in range(first, -1, -1) if rank(i) == node_rank)
        return
    start_rank = rank(after) if after is not None else 0
    for node_rank in range(start_rank, nodes):
        first = after + 1 if after is not None and node_rank == start_rank else 0
        yield from (i for i in range(first, table.next_index) if rank(i) == node_rank)
