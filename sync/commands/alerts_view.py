"""The alerts part of `dvmirror status`: each configured alert and its last delivery."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from sync.config.model import Config
from sync.logs import mask_text
from sync.store.alerts import delivery_from_row


def alerts_report(config: Config, rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Every configured alert (never its URL), plus stored deliveries of alerts since removed."""
    stored = {row["alert"]: delivery_from_row(row) for row in rows}
    out = []
    for alert in config.alerts:
        last = stored.pop(alert.name, None)
        out.append(
            {
                "name": alert.name,
                "configured": True,
                "format": alert.format,
                "events": list(alert.events),
                "last_delivery": None if last is None else _masked(last.as_dict()),
            }
        )
    for name, last in sorted(stored.items()):
        out.append(
            {
                "name": name,
                "configured": False,
                "format": None,
                "events": [],
                "last_delivery": _masked(last.as_dict()),
            }
        )
    return out


def _masked(delivery: dict[str, Any]) -> dict[str, Any]:
    delivery["outcome"] = mask_text(delivery["outcome"])
    return delivery


def render_alerts(report: Mapping[str, Any], console: Console) -> None:
    alerts = report.get("alerts") or []
    if not alerts:
        return
    table = Table(title="Alerts", title_justify="left")
    for header in ("Alert", "Format", "Last delivery", "Event", "Where", "Outcome", "Failures"):
        table.add_column(header, overflow="fold")
    for alert in alerts:
        last = alert["last_delivery"]
        if last is None:
            table.add_row(alert["name"], alert["format"] or "—", "never", "", "", "", "")
            continue
        where = last["environment"] + (f"/{last['table']}" if last["table"] else "")
        outcome = last["outcome"]
        style = "green" if outcome == "ok" else "bold red"
        table.add_row(
            alert["name"],
            alert["format"] or "(not configured)",
            last["at"][:19].replace("T", " "),
            f"{last['event']} ({last['kind']})",
            where,
            f"[{style}]{escape(outcome)}[/]",
            str(last["failures"]),
        )
    console.print(table)
