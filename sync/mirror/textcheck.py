"""Whole-column checks of text formats (GUIDs, timestamps, dates, ETags) at C speed. Pure.

A page holds thousands of values per column; a regular expression per value costs a Python call
each. Instead a column is joined into one string, each value followed by a separator that no
valid value contains, and checked as a whole:

* a fixed layout (a GUID, a timestamp without fraction, a date): the joined text must have exactly
  `count * (len(layout) + 1)` ASCII characters; every literal position (hyphens, `T`, colons,
  `Z` and the separator) is compared with one strided slice; and deleting the allowed fill
  characters (hex digits or digits) must leave exactly the literals, `count` times. Together
  these say that every value is the layout, exactly — the same set the regular expression accepts.
* anything else (fractional seconds, ETags): one regular expression over the joined text.

A check takes the column's values (None is skipped) and returns whether all are well formed.
Callers check the Python types first: every non-None value must already be a `str`.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

SEPARATOR = "\x1f"  # a control character that no valid GUID, timestamp, date or ETag contains
HEX_DIGITS = b"0123456789abcdefABCDEF"
DIGITS = b"0123456789"
FILL = "#"  # in a layout: one character of the allowed set

ColumnCheck = Callable[[Sequence[Any]], bool]
_not_none = partial(operator.is_not, None)


def _present(values: Sequence[Any]) -> Sequence[Any]:
    return list(filter(_not_none, values)) if None in values else values


class FixedLayout:
    """Every value is `layout`, where each `#` is one byte of `allowed` and the rest is literal."""

    def __init__(self, layout: str, allowed: bytes) -> None:
        framed = layout + SEPARATOR
        if not framed.isascii() or any(ord(c) in allowed for c in framed if c != FILL):
            raise ValueError(f"layout {layout!r}: a literal is also an allowed fill character")
        self.layout = layout
        self.stride = len(framed)
        self.allowed = allowed
        self.literals = tuple((i, c.encode()) for i, c in enumerate(framed) if c != FILL)
        self.skeleton = b"".join(c for _, c in self.literals)

    def __call__(self, values: Sequence[Any]) -> bool:
        present = _present(values)
        count = len(present)
        if not count:
            return True
        text = SEPARATOR.join(present) + SEPARATOR
        if len(text) != count * self.stride or not text.isascii():
            return False
        raw = text.encode("ascii")
        for position, literal in self.literals:
            if raw[position :: self.stride] != literal * count:
                return False
        return raw.translate(None, self.allowed) == self.skeleton * count


class Pattern:
    """Every value matches `pattern` in full (one regular expression over the joined column)."""

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self._joined = re.compile(f"(?:{pattern}{SEPARATOR})*")

    def __call__(self, values: Sequence[Any]) -> bool:
        present = _present(values)
        if not present:
            return True
        text = SEPARATOR.join(present) + SEPARATOR
        # A value holding the separator itself would split in two: count them.
        return text.count(SEPARATOR) == len(present) and self._joined.fullmatch(text) is not None


class FirstOf:
    """Well formed when the fast check passes, else when the general one does (same language)."""

    def __init__(self, fast: ColumnCheck, general: ColumnCheck) -> None:
        self.fast = fast
        self.general = general

    def __call__(self, values: Sequence[Any]) -> bool:
        return self.fast(values) or self.general(values)
