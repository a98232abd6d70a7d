"""Table status as data teams read it in SQL: the view `dv_table_status` (PostgreSQL
`dvmirror.table_status`, created by migration 0007) and the same rules for `dvmirror status`.

mirror_rows is dv_sync_state.row_count: the live rows the writer counts at the end of each delta
cycle and each full pass (one count(*) per cycle, never per query), so between two counts it
trails the rows changed since.
"""

from __future__ import annotations

from typing import Literal

InitialSync = Literal["NotStarted", "InProgress", "Completed"]

VIEW_NAMES = {"sqlite": "dv_table_status", "postgresql": "dvmirror.table_status"}


def initial_sync_state(phase: str | None) -> InitialSync:
    """The first full pass: not started (no page yet), under way, or done (any later phase)."""
    if phase in (None, "new"):
        return "NotStarted"
    if phase == "backfill":
        return "InProgress"
    return "Completed"
