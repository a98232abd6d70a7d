"""SQL identifiers and the one literal dvmirror ever inlines (a page's sync stamp).

Identifiers reach SQL only through `quote_ident()`, which refuses anything but a safe name; that
is why the f-string statements of the dialects carry `noqa: S608` (no value is interpolated).
"""

from __future__ import annotations

import re

from sync.errors import HostileResponseError

SAFE_IDENT = re.compile(r"[a-z_][a-z0-9_]{0,254}")
STAMP = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}[.][0-9]{6}Z")


def quote_ident(name: str) -> str:
    """`"name"` for a safe identifier; anything else is refused before it reaches SQL."""
    if not isinstance(name, str) or not SAFE_IDENT.fullmatch(name):
        raise HostileResponseError(f"{str(name)[:80]!r} is not a safe SQL identifier")
    return f'"{name}"'


def stamp_literal(stamp: str) -> str:
    """A `_dv_synced_at` value as an SQL literal; only our own fixed-format stamps pass."""
    if not STAMP.fullmatch(stamp):
        raise ValueError(f"{stamp!r} is not a sync stamp")
    return f"'{stamp}'"
