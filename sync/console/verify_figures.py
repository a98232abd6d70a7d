"""A `dvmirror verify` run as the console shows it: the store's entry plus a one-line label.

The label says what the run found: `match`, `approximate` (level 1 only, an estimate),
`mismatch 5 rows (5 missing, 0 ghost, 0 stale)`, `repaired 5 rows`, `stopped` or `failed`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sync.logs import mask_text
from sync.store.verify_runs import entry


def label(run: Mapping[str, Any]) -> str:
    outcome = str(run["outcome"])
    if outcome == "mismatch":
        return (
            f"mismatch {run['mismatch_rows']:,} rows ({run['missing']:,} missing, "
            f"{run['ghost']:,} ghost, {run['stale']:,} stale)"
        )
    if outcome == "repaired":
        return f"repaired {run['repaired']:,} rows"
    return outcome


def verify_entry(row: Mapping[str, Any]) -> dict[str, Any]:
    """One dv_verify_runs row for the pages and the API (its detail masked like errors)."""
    run = entry(row)
    run.pop("environment")
    run.pop("table")
    run["detail"] = mask_text(str(run["detail"])) if run["detail"] else None
    run["label"] = label(run)
    return run
