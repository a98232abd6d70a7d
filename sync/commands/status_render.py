"""`dvmirror status` as tables for a terminal: the compact view per environment and the wide
view with owners, resync requests, verify runs, alerts and budgets (sync.commands.status builds
the report they render)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.console import Console, JustifyMethod
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from sync.commands.alerts_view import render_alerts
from sync.commands.resync_view import render_resyncs, resync_line, resync_target
from sync.commands.verify_view import render_verifies

PHASE_STYLES = {
    "new": "dim",
    "backfill": "cyan",
    "resync": "cyan",
    "delta": "green",
    "watermark": "green",
    "parked": "bold red",
}


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    whole = int(max(0.0, seconds))
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {secs}s" if minutes else f"{secs}s"


def _pause_text(env: Mapping[str, Any]) -> str:
    """Seconds with one decimal under a minute (a pause is often a few seconds)."""
    seconds = float(env.get("retry_after_seconds_recent") or 0.0)
    return f"{seconds:.1f}s" if seconds < 60 else _duration(seconds)


def _short_time(iso: str | None) -> str:
    return "—" if iso is None else iso[:19].replace("T", " ") + "Z"


# The start of a table's last error in the table view (the whole error is in `status --json`).
ERROR_SHOWN = 300


# Below this width the table would squeeze ids into "cont…": print one block per table instead.
WIDE_ENOUGH = 150


def _owner_text(env: Mapping[str, Any]) -> str:
    if not env.get("owner"):
        return "—"
    return f"{env['owner']} until {_short_time(env['lease_expires_at'])}"


def render_compact(report: Mapping[str, Any], console: Console) -> None:
    """The report for narrow terminals: one line per table, nothing cut (long lines wrap)."""
    console.print(f"dvmirror status — {report['store']}", soft_wrap=True, highlight=False)
    for env in report["environments"]:
        label = env["name"] if env["configured"] else f"{env['name']} (not configured)"
        owner = f" — owner {escape(_owner_text(env))}"
        if env["retry_after_seconds_recent"]:
            owner += f" — Retry-After pause (24h) {_pause_text(env)}"
        console.print(f"\n[bold]{label}[/bold]{owner}", soft_wrap=True, highlight=False)
        if not env["tables"]:
            console.print("  no tables yet", soft_wrap=True)
        for entry in env["tables"]:
            name = entry["table"] if entry["configured"] else f"{entry['table']} (not configured)"
            parts = [
                f"  {name}: {entry['phase']}",
                f"{entry['rows']:,} rows",
                f"last success {_short_time(entry['last_success'])}",
                f"lag {_duration(entry['lag_seconds'])}",
                f"attempts {entry['attempts']}",
                f"429s (24h) {entry['throttled_recent']}",
            ]
            if entry["parked_until"]:
                parts.append(f"parked until {_short_time(entry['parked_until'])}")
            console.print(", ".join(parts), soft_wrap=True, highlight=False)
            if entry["last_error"]:
                error_line = f"    error: {escape(entry['last_error'])}"
                console.print(error_line, soft_wrap=True, highlight=False)
    for request in report.get("resync_requests", []):
        console.print(
            escape(f"\nresync #{request['id']} {resync_target(request)}: {resync_line(request)}"),
            soft_wrap=True,
            highlight=False,
        )
    for budget in report["budgets"]:
        if budget["limit"] is None and not budget["used"]:
            continue
        limit = "—" if budget["limit"] is None else f"{budget['limit']:,}"
        console.print(
            f"\nbudget {budget['tenant']}: {budget['used']:,} of {limit} requests used",
            soft_wrap=True,
            highlight=False,
        )


def render(report: Mapping[str, Any], console: Console) -> None:
    """Print the report as rich tables: one row per table, then the request budgets; on a
    narrow terminal, one line per table instead."""
    if console.width < WIDE_ENOUGH:
        render_compact(report, console)
        return
    tables = Table(title=f"dvmirror status — {report['store']}", title_justify="left")
    columns: list[tuple[str, JustifyMethod]] = [
        ("Environment", "left"),
        ("Table", "left"),
        ("Phase", "left"),
        ("Rows", "right"),
        ("Last success", "left"),
        ("Lag", "right"),
        ("Attempts", "right"),
        ("429s (24h)", "right"),
        ("Parked until", "left"),
        ("Last error", "left"),
    ]
    for header, justify in columns:
        # fold, never "…": on an 80-column terminal a long id wraps inside its cell, whole.
        tables.add_column(header, justify=justify, overflow="fold")
    for env in report["environments"]:
        env_label = env["name"] if env["configured"] else f"{env['name']} (not configured)"
        if not env["tables"]:
            tables.add_row(env_label, "[dim]no tables yet[/dim]", *[""] * 8)
        for entry in env["tables"]:
            phase = entry["phase"]
            style = PHASE_STYLES.get(phase, "")
            ranges = entry["ranges"]
            shown = f"{phase} {ranges['done']}/{ranges['total']} ranges" if ranges else phase
            error = entry["last_error"] or ""
            tables.add_row(
                env_label,
                entry["table"] if entry["configured"] else f"{entry['table']} (not configured)",
                f"[{style}]{shown}[/{style}]" if style else shown,
                f"{entry['rows']:,}",
                _short_time(entry["last_success"]),
                _duration(entry["lag_seconds"]),
                str(entry["attempts"]),
                str(entry["throttled_recent"]),
                _short_time(entry["parked_until"]) if entry["parked_until"] else "",
                Text((error[:ERROR_SHOWN] + "…") if len(error) > ERROR_SHOWN else error),
            )
    console.print(tables)
    owners = Table(title="Owners (leases)", title_justify="left")
    for header in ("Environment", "Owner", "Lease expires", "Retry-After pause (24h)"):
        owners.add_column(header, overflow="fold")
    for env in report["environments"]:
        owners.add_row(
            env["name"],
            Text(env.get("owner") or "—"),
            _short_time(env.get("lease_expires_at")),
            _pause_text(env),
        )
    console.print(owners)
    render_resyncs(report, console)
    render_verifies(report, console)
    render_alerts(report, console)
    budgets = [b for b in report["budgets"] if b["limit"] is not None or b["used"]]
    if budgets:
        table = Table(title="Daily request budgets", title_justify="left")
        for header in ("Tenant", "Used", "Limit", "Remaining", "Window ends"):
            table.add_column(header, overflow="fold")
        for budget in budgets:
            table.add_row(
                budget["tenant"],
                f"{budget['used']:,}",
                "—" if budget["limit"] is None else f"{budget['limit']:,}",
                "—" if budget["remaining"] is None else f"{budget['remaining']:,}",
                _short_time(budget["window_ends"]) if budget["window_ends"] else "",
            )
        console.print(table)
