"""The latest `dvmirror verify` result of each table, for `dvmirror status`."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from sync.store.verify_runs import entry as verify_entry


def verify_entries(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One entry per table: outcome, when, what level 3 found, what is left unrepaired."""
    return [verify_entry(row) for row in rows]


def render_verifies(report: Mapping[str, Any], console: Console) -> None:
    entries = report.get("verify", [])
    if not entries:
        return
    table = Table(title="Last verify (dvmirror verify)", title_justify="left")
    for header in ("Table", "Outcome", "Level", "Missing", "Ghost", "Stale", "Repaired", "At"):
        table.add_column(header, overflow="fold")
    for entry in entries:
        style = "red" if entry["outcome"] in ("mismatch", "failed", "stopped") else ""
        table.add_row(
            Text(f"{entry['environment']}/{entry['table']}"),
            Text(entry["outcome"], style=style),
            str(entry["level"]),
            f"{entry['missing']:,}",
            f"{entry['ghost']:,}",
            f"{entry['stale']:,}",
            f"{entry['repaired']:,}",
            (entry["finished_at"] or "")[:19].replace("T", " "),
        )
    console.print(table)
