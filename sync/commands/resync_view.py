"""How `dvmirror status` shows resync requests: requested / running n% / done / failed."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text


def short_time(iso: str | None) -> str:
    return "—" if iso is None else iso[:19].replace("T", " ") + "Z"


def resync_target(request: Mapping[str, Any]) -> str:
    table = request["table"] or "(every table)"
    return f"{request['environment']}/{table}"


def resync_line(request: Mapping[str, Any]) -> str:
    """requested / running n% (rows) / done / failed: error, with who asked and when."""
    parts = [request["shown"]]
    if request["state"] in ("running", "done") and request["rows_done"]:
        expected = request["rows_expected"]
        rows = f"{request['rows_done']:,}" + (f" of ~{expected:,}" if expected else "")
        parts[0] += f" ({rows} rows)"
    if request["error"]:
        parts[0] += f": {request['error']}"
    parts.append(f"by {request['requested_by']} at {short_time(request['requested_at'])}")
    if request["finished_at"]:
        parts.append(f"ended {short_time(request['finished_at'])}")
    return ", ".join(parts)


def render_resyncs(report: Mapping[str, Any], console: Console) -> None:
    """The open resync requests and the last day's, newest first."""
    requests = report.get("resync_requests", [])
    if not requests:
        return
    table = Table(title="Resync requests (open, and the last 24 h)", title_justify="left")
    for header in ("#", "Target", "State", "Requested by", "Requested", "Ended", "Error"):
        table.add_column(header, overflow="fold")
    for request in requests:
        state = request["shown"]
        if request["state"] in ("running", "done") and request["rows_done"]:
            state += f" ({request['rows_done']:,} rows)"
        table.add_row(
            str(request["id"]),
            Text(resync_target(request)),
            Text(state),
            Text(request["requested_by"]),
            short_time(request["requested_at"]),
            short_time(request["finished_at"]) if request["finished_at"] else "",
            Text(request["error"] or ""),
        )
    console.print(table)
