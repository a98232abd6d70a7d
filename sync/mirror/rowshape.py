"""A page's row JSON → typed tuples for one `executemany`, refusing hostile input. Pure.

Exact decimals. orjson decodes JSON numbers to float, which would round Money/Decimal values with
more than 15 significant digits. Decoding every page with the stdlib `json` (`parse_float=Decimal`)
is about three times slower than orjson, so `protect_decimals()` first rewrites, in the raw bytes
and only for the numeric columns, `"revenue":12.30` into `"revenue":"12.30"` (one regular
expression for all numeric columns, one split and one join of the page in C); orjson then hands
over the exact text, stored as TEXT (SQLite) / numeric (PostgreSQL). The Web API writes compact
JSON; if a page is laid out otherwise (a space after the colon), the shaper notices numbers left
in a numeric column and the page is decoded again, exactly, by `decode_exact()` — slower, never
wrong.

Speed. Everything per value runs in C, set up once per schema: rows become tuples through one
`itemgetter`; types are checked on the page's distinct row type signatures (usually one or two),
each position against its allowed types; text formats (GUIDs, timestamps, dates, ETags) are
checked per column as a whole by `sync.mirror.textcheck` (strided slices and one
`bytes.translate` for the fixed layouts, one regular expression otherwise). No value is
converted: JSON already gives the stored types (booleans bind as 0/1), timestamps must be UTC
(`Z`), decimals stay text.
"""

from __future__ import annotations

import functools
import json
import operator
import re
from collections.abc import Sequence
from decimal import Decimal
from itertools import repeat
from typing import Any

from sync.errors import HostileResponseError
from sync.mirror.typemap import ALLOWED, COLUMN_CHECKS, ETAG_CHECK, FORMATS, SAFE_ROW_KEY
from sync.store.layout import MirrorColumn, TableSchema

ETAG_KEY = "@odata.etag"
_NONE = type(None)
_GET = operator.attrgetter("get")  # row → row.get
_ETAG_TYPES = frozenset({str})
_NUMBER = rb"-?(?:0|[1-9][0-9]*+)(?:[.][0-9]++)?(?:[eE][+-]?[0-9]++)?(?=[,}\]])"


def _declared(spec: MirrorColumn) -> str:
    return f"{spec.name} ({spec.declared})" if spec.declared else spec.name


def _sample(value: Any) -> str:
    """One offending value for an error message, quoted and cut so a hostile page cannot flood
    the log (values are row data, never secrets)."""
    return repr(value)[:60]


class InexactNumbers(Exception):
    """A numeric column still holds JSON numbers: decode the page again with `decode_exact`."""


@functools.lru_cache(maxsize=256)
def _numbers_of(keys: tuple[str, ...]) -> re.Pattern[bytes]:
    """`("key":)(NUMBER)` for any of `keys`: one regular expression, one scan of the page in C."""
    names = b"|".join(re.escape(key.encode()) for key in keys)
    return re.compile(rb'("(?:' + names + rb')":)(' + _NUMBER + rb")")


def protect_decimals(body: bytes, keys: Sequence[str]) -> tuple[bytes, int]:
    """Quote the JSON numbers of the given keys so that they decode as exact text.

    In valid JSON the needle `"key":` cannot occur inside a string (its quotes would be
    escaped), so every hit is a key of an object. The page is split on the pattern (text,
    `"key":`, number, text, …), a quote appended to every key and every number, and joined:
    all in C. (`sub()` with a group template calls back into Python once per match in
    Python 3.11: a fifth of the time of a page's protection.)"""
    if not keys:
        return body, 0
    parts = _numbers_of(tuple(keys)).split(body)
    quote = repeat(b'"')
    parts[1::3] = map(operator.add, parts[1::3], quote)
    parts[2::3] = map(operator.add, parts[2::3], quote)
    return b"".join(parts), len(parts) // 3


def decode_exact(
    body: bytes, numeric_keys: Sequence[str], float_keys: Sequence[str]
) -> tuple[Any, int]:
    """Decode with exact decimals (stdlib json): numeric columns become text, doubles float."""
    document = json.loads(body, parse_float=Decimal)
    count = 0
    rows = document.get("value") if isinstance(document, dict) else None
    for row in rows if isinstance(rows, list) else ():
        if not isinstance(row, dict):
            continue
        for key in numeric_keys:
            value = row.get(key)
            if isinstance(value, Decimal) or (type(value) is int):
                row[key] = str(value)
                count += 1
        for key in float_keys:
            if isinstance(row.get(key), Decimal):
                row[key] = float(row[key])
    return document, count


class RowShaper:
    """Turns the decoded rows of one page into tuples for the writer, refusing hostile input.

    Tuple layout: the schema's columns in order, then the raw `@odata.etag` (the writer stores
    its number as `_dv_version`). `_dv_synced_at` and `_dv_deleted_at` are set by the writer.
    `keep_rows`: the decoded page also keeps its row objects (key pages: the cursor reads their
    ids); otherwise only the tuples, so the decode worker need not send the rows back.
    """

    def __init__(self, schema: TableSchema, *, keep_rows: bool = False) -> None:
        self.schema = schema
        self.keep_rows = keep_rows
        self.table = schema.table
        self.keys = (*(c.source_key for c in schema.columns), ETAG_KEY)
        self._getter = operator.itemgetter(*self.keys)
        self._known = frozenset(self.keys)
        # Built once per schema: the allowed Python types and the text check of every position.
        self._allowed = (*(ALLOWED[c.sql_type] for c in schema.columns), _ETAG_TYPES)
        self._formats = tuple(
            (i, column, COLUMN_CHECKS[column.sql_type])
            for i, column in enumerate(schema.columns)
            if column.sql_type in COLUMN_CHECKS
        )
        self._etag = len(schema.columns)
        self._numeric = tuple(i for i, c in enumerate(schema.columns) if c.sql_type == "numeric")
        self.float_keys = tuple(c.source_key for c in schema.columns if c.sql_type == "float")

    def _fail(self, why: str) -> HostileResponseError:
        return HostileResponseError(
            f"table {self.table}: refused a page: {why}; nothing from it was written",
            table=self.table,
        )

    def shape(self, rows: Sequence[Any], *, numeric_count: int) -> list[tuple[Any, ...]]:
        """Typed tuples for `rows`; `numeric_count` is how many numbers were kept exact.

        Raises InexactNumbers when the page must be decoded again with `decode_exact`.
        """
        if not rows:
            return []
        if set(map(type, rows)) != {dict}:
            raise self._fail("a row is not a JSON object")
        try:
            tuples: list[tuple[Any, ...]] = list(map(self._getter, rows))
            complete = True
        except KeyError:  # an annotation is absent when its value is null
            # Every row through dict.get (None for an absent key), all in C: trying the getter
            # row by row first costs a raised KeyError for each row that lacks a key.
            tuples = list(map(tuple, map(map, map(_GET, rows), repeat(self.keys))))
            complete = False
        # Rows holding every known key and nothing else have no other key to check.
        if not complete or set(map(len, rows)) != {len(self._known)}:
            for key in set().union(*rows) - self._known:
                if not SAFE_ROW_KEY.fullmatch(key):
                    raise self._fail(f"attribute name {key[:80]!r} is not a safe identifier")
        self._check_types(tuples)
        self._check_texts(tuples, numeric_count)
        return tuples

    def _check_types(self, tuples: list[tuple[Any, ...]]) -> None:
        # The distinct type signatures of the rows (all in C), then each position's types once.
        signatures = set(map(tuple, map(map, repeat(type), tuples)))
        for index, kinds_seen in enumerate(zip(*signatures, strict=True)):
            kinds = set(kinds_seen)
            if index == 0 and _NONE in kinds:
                raise self._fail(f"a row has no {self.schema.primary_key}")
            kinds.discard(_NONE)
            allowed = self._allowed[index]
            if kinds <= allowed:
                continue
            if index == self._etag:
                raise self._fail("an @odata.etag is not a row version")
            spec = self.schema.columns[index]
            if spec.sql_type == "numeric" and kinds & {int, float}:
                raise InexactNumbers(spec.name)
            bad_kinds = kinds - allowed
            bad = ", ".join(sorted(k.__name__ for k in bad_kinds))
            sample = next(row[index] for row in tuples if type(row[index]) in bad_kinds)
            declared = f"; {spec.declared}" if spec.declared else ""
            raise self._fail(
                f"column {spec.name} ({spec.sql_type}{declared}) got {bad}, e.g. {_sample(sample)}"
            )

    def _check_texts(self, tuples: list[tuple[Any, ...]], numeric_count: int) -> None:
        for index, spec, check in self._formats:
            values = list(map(operator.itemgetter(index), tuples))
            if not check(values):
                pattern = re.compile(FORMATS[spec.sql_type])
                sample = next(
                    (v for v in values if v is not None and not pattern.fullmatch(v)), None
                )
                raise self._fail(
                    f"column {_declared(spec)} has a value that is not a {spec.sql_type}: "
                    f"{_sample(sample)}"
                )
        if not ETAG_CHECK(list(map(operator.itemgetter(self._etag), tuples))):
            raise self._fail("an @odata.etag is not a row version")
        present = len(tuples) * len(self._numeric)
        for index in self._numeric:
            present -= list(map(operator.itemgetter(index), tuples)).count(None)
        if present != numeric_count:
            raise self._fail("a decimal value is not a JSON number")
