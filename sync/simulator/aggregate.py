"""``$apply=filter(<expr>)/aggregate($count as <alias>)``: counting rows on the server.

Dataverse answers ``{"value":[{"<alias>":<n>}]}`` and refuses an aggregate over more than
50,000 rows with AggregateQueryRecordLimit (0x8004E023), whatever the count would be: a big
table is counted in key ranges below that limit. Only the documented ``filter``/``aggregate
($count as n)`` shape is served; other transformations are refused as unsupported.
"""

from __future__ import annotations

import re
from typing import Any

from sync.simulator.filters import Node, evaluate, parse_filter
from sync.simulator.keyorder import key_range_indices
from sync.simulator.protocol import ApiError, bad_request

AGGREGATE_RECORD_LIMIT = 50_000
AGGREGATE_LIMIT_CODE = "0x8004E023"
AGGREGATE_LIMIT_MESSAGE = (
    "AggregateQueryRecordLimit exceeded. Cannot perform this operation. "
    f"The maximum record limit of {AGGREGATE_RECORD_LIMIT} is exceeded."
)

_COUNT = re.compile(r"^aggregate\(\s*\$count\s+as\s+([A-Za-z_]\w*)\s*\)$")


def _split(apply: str) -> tuple[str | None, str]:
    """(filter expression or None, the aggregate transformation)."""
    text = apply.strip()
    if not text.startswith("filter("):
        return None, text
    depth, quoted = 0, False
    for position, char in enumerate(text):
        if char == "'":
            quoted = not quoted
        elif not quoted and char == "(":
            depth += 1
        elif not quoted and char == ")":
            depth -= 1
            if depth == 0:
                rest = text[position + 1 :]
                if not rest.startswith("/"):
                    break
                return text[len("filter(") : position], rest[1:].strip()
    raise bad_request(f"Invalid $apply expression: '{apply}'.")


def count_rows(table: Any, apply: str) -> dict[str, Any]:
    """The body of a ``$apply`` count over `table`'s live rows; ApiError when refused."""
    expression, transformation = _split(apply)
    found = _COUNT.match(transformation)
    if found is None:
        raise bad_request(f"The simulator serves only aggregate($count as n), not '{apply}'.")
    node: Node | None = parse_filter(expression) if expression is not None else None
    indices = key_range_indices(table, node)
    candidates = range(table.next_index) if indices is None else indices
    matched = 0
    for index in candidates:
        row = table.row(index)
        if row is not None and (node is None or evaluate(node, row.values.get)):
            matched += 1
            if matched > AGGREGATE_RECORD_LIMIT:
                raise ApiError(400, AGGREGATE_LIMIT_CODE, AGGREGATE_LIMIT_MESSAGE)
    return {"value": [{found[1]: matched}]}
