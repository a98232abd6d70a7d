"""`dvmirror status [--json]`: where every configured table stands, read from the control tables.

It only reads (SQLite in WAL mode lets it run beside the daemon's writer), so it is safe while
the daemon runs. The report is built by a pure function from the rows, the configuration and
`now`; `--json` prints it as one document with stable keys, otherwise it is rendered as tables.
Configured tables without a state row yet show phase "new"; state rows for environments or
tables no longer in the configuration are listed too, marked `"configured": false`. Each
environment shows its owner: the `dvmirror` process holding its lease (host:pid:id) and until
when, or none while nobody holds it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any

import orjson
from rich.console import Console
from sqlalchemy import Integer, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from sync.commands.alerts_view import alerts_report
from sync.commands.status_render import render
from sync.commands.verify_view import verify_entries
from sync.config.model import Config
from sync.logs import mask_text
from sync.store.commits import newest_query
from sync.store.control import (
    alert_deliveries,
    environments,
    key_ranges,
    leases,
    request_budget,
    run_history,
    sync_state,
)
from sync.store.environment_runs import environment_figures
from sync.store.open import open_store, redact_url
from sync.store.relationship_metadata import intersect_tables
from sync.store.requests import ResyncRequest, recent_query, request_from_row
from sync.store.table_status import initial_sync_state
from sync.store.verify_runs import latest_query as verify_latest

RECENT_WINDOW = dt.timedelta(hours=24)
RESYNC_SHOWN = 50  # resync requests listed: the open ones and the last day's, newest first
BUDGET_WINDOW = dt.timedelta(hours=24)
Row = Mapping[str, Any]


def as_utc(value: dt.datetime | None) -> dt.datetime | None:
    """SQLite hands back naive datetimes; the store always writes UTC."""
    if value is None:
        return None
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def _iso(value: dt.datetime | None) -> str | None:
    utc = as_utc(value)
    return utc.isoformat() if utc else None


async def read_control_rows(engine: AsyncEngine, *, since: dt.datetime) -> dict[str, list[Row]]:
    """Everything the report needs, in one read-only connection."""
    recent = (
        select(
            run_history.c.environment,
            run_history.c.table_name,
            func.coalesce(func.sum(run_history.c.throttled), 0).label("throttled"),
            func.coalesce(func.sum(run_history.c.requests), 0).label("requests"),
            func.coalesce(func.sum(run_history.c.paused_seconds), 0).label("paused_seconds"),
        )
        .where(run_history.c.started_at >= since)
        .group_by(run_history.c.environment, run_history.c.table_name)
    )
    latest_ids = select(func.max(run_history.c.id)).group_by(
        run_history.c.environment, run_history.c.table_name
    )
    latest = select(
        run_history.c.environment,
        run_history.c.table_name,
        run_history.c.status,
        run_history.c.started_at,
        run_history.c.finished_at,
    ).where(run_history.c.id.in_(latest_ids))
    async with engine.connect() as conn:
        return {
            "state": [dict(r._mapping) for r in await conn.execute(select(sync_state))],
            "recent": [dict(r._mapping) for r in await conn.execute(recent)],
            "latest": [dict(r._mapping) for r in await conn.execute(latest)],
            "budgets": [dict(r._mapping) for r in await conn.execute(select(request_budget))],
            "environments": [dict(r._mapping) for r in await conn.execute(select(environments))],
            "leases": [dict(r._mapping) for r in await conn.execute(select(leases))],
            "commits": [dict(r._mapping) for r in await conn.execute(newest_query())],
            "verify": [dict(r._mapping) for r in await conn.execute(verify_latest())],
            "alerts": [dict(r._mapping) for r in await conn.execute(select(alert_deliveries))],
            "resync": [
                dict(r._mapping)
                for r in await conn.execute(recent_query(since, limit=RESYNC_SHOWN))
            ],
            "ranges": [
                dict(r._mapping)
                for r in await conn.execute(
                    select(
                        key_ranges.c.environment,
                        key_ranges.c.table_name,
                        func.count().label("total"),
                        func.sum(key_ranges.c.done.cast(Integer)).label("done"),
                    ).group_by(key_ranges.c.environment, key_ranges.c.table_name)
                )
            ],
        }


def _table_entry(
    table: str,
    state: Row | None,
    recent: Row | None,
    latest: Row | None,
    ranges: Row | None,
    *,
    configured: bool,
    now: dt.datetime,
    resync: ResyncRequest | None = None,
) -> dict[str, Any]:
    state = state or {}
    last_success = as_utc(state.get("last_success"))
    last_error = state.get("last_error")
    return {
        "table": table,
        "configured": configured,
        "phase": state.get("phase") or "new",
        "initial_sync": initial_sync_state(state.get("phase")),
        "rows": int(state.get("row_count") or 0),
        # A ranged full pass under way: how many of its key ranges are done.
        "ranges": {"done": int(ranges["done"] or 0), "total": int(ranges["total"])}
        if ranges
        else None,
        "last_success": _iso(last_success),
        "lag_seconds": round((now - last_success).total_seconds(), 3) if last_success else None,
        "last_error": mask_text(last_error) if last_error else None,
        "last_error_at": _iso(state.get("last_error_at")),
        "attempts": int(state.get("attempts") or 0),
        "parked_until": _iso(state.get("parked_until")),
        # The open resync request that covers this table: requested / running n%.
        "resync": None if resync is None else {"id": resync.id, "shown": resync.shown},
        "throttled_recent": int(recent["throttled"]) if recent else 0,
        "requests_recent": int(recent["requests"]) if recent else 0,
        # Seconds the governor paused for the Retry-After of this table's 429s (24 h).
        "retry_after_seconds_recent": round(float(recent["paused_seconds"] or 0), 3)
        if recent
        else 0.0,
        "last_run": (
            {
                "status": latest["status"],
                "started_at": _iso(latest["started_at"]),
                "finished_at": _iso(latest["finished_at"]),
            }
            if latest
            else None
        ),
    }


def _by_table(rows: Iterable[Row]) -> dict[str, dict[str, Row]]:
    out: dict[str, dict[str, Row]] = {}
    for row in rows:
        out.setdefault(row["environment"], {})[row["table_name"]] = row
    return out


def build_report(config: Config, rows: Mapping[str, list[Row]], now: dt.datetime) -> dict[str, Any]:
    """The status document: configured environments first (in file order), then leftovers."""
    states, recent, latest = (_by_table(rows[k]) for k in ("state", "recent", "latest"))
    ranged = _by_table(rows.get("ranges", []))
    intersect = rows.get("intersect", [])
    known_envs = {row["name"]: row for row in rows["environments"]}
    owners = {row["resource"]: row for row in rows.get("leases", [])}
    # The change feed's newest number per environment (0: nothing committed yet).
    newest = {row["environment"]: int(row["commit_seq"]) for row in rows.get("commits", [])}
    requests = [request_from_row(row) for row in rows.get("resync", [])]
    # The newest open request per environment and table (None: every table of it).
    open_requests: dict[tuple[str, str | None], ResyncRequest] = {}
    for request in reversed(requests):
        if request.is_open:
            open_requests[(request.environment, request.table)] = request
    report_envs: list[dict[str, Any]] = []
    seen: set[str] = set()

    def tables_of(name: str, configured_tables: list[str]) -> list[dict[str, Any]]:
        env_states = states.get(name, {})
        extra = sorted(set(env_states) - set(configured_tables))
        return [
            _table_entry(
                table,
                env_states.get(table),
                recent.get(name, {}).get(table),
                latest.get(name, {}).get(table),
                ranged.get(name, {}).get(table),
                configured=configured,
                now=now,
                resync=open_requests.get((name, table)) or open_requests.get((name, None)),
            )
            for table, configured in [(t, True) for t in configured_tables]
            + [(t, False) for t in extra]
        ]

    for tenant, env in config.environments():
        seen.add(env.name)
        # With tables = "all" the table list is discovered at run time: show what has state.
        # (likewise for include/exclude/solutions rules)
        listed = list(env.fixed_tables or ())
        listed += [r["table_name"] for r in intersect if r["environment"] == env.name]
        entries = tables_of(env.name, listed)
        if env.fixed_tables is None:
            for entry in entries:
                entry["configured"] = True
        report_envs.append(
            {
                "name": env.name,
                "tenant": tenant.name,
                "url": env.url,
                "configured": True,
                **_owner(owners.get(env.name), now),
                "retry_after_seconds_recent": _paused(entries, recent.get(env.name)),
                "environment_requests": _own(recent.get(env.name)),
                "commit_seq": newest.get(env.name, 0),
                "tables": entries,
            }
        )
    for name in sorted((set(states) | set(known_envs)) - seen):
        known = known_envs.get(name, {})
        report_envs.append(
            {
                "name": name,
                "tenant": known.get("tenant"),
                "url": known.get("url"),
                "configured": False,
                **_owner(owners.get(name), now),
                "retry_after_seconds_recent": _paused(tables_of(name, []), recent.get(name)),
                "environment_requests": _own(recent.get(name)),
                "commit_seq": newest.get(name, 0),
                "tables": tables_of(name, []),
            }
        )
    return {
        "generated_at": now.isoformat(),
        "store": redact_url(config.store_url),
        "recent_window_seconds": int(RECENT_WINDOW.total_seconds()),
        "environments": report_envs,
        "resync_requests": [request.as_dict() for request in requests],
        "budgets": _budgets(config, rows["budgets"], now),
        "verify": verify_entries(rows.get("verify", [])),
        "alerts": alerts_report(config, rows.get("alerts", [])),
    }


def _paused(tables: Iterable[Mapping[str, Any]], recent: Mapping[str, Row] | None) -> float:
    """The tables' Retry-After seconds plus those of the environment's own requests."""
    own = float(environment_figures(recent)["paused_seconds"])
    return round(sum(float(t["retry_after_seconds_recent"]) for t in tables) + own, 3)


def _own(recent: Mapping[str, Row] | None) -> dict[str, Any]:
    """The environment's own requests (WhoAmI, N:N discovery, metadata refresh) in the recent
    window, as their runs recorded them (store.environment_runs: only when throttled)."""
    figures = environment_figures(recent)
    return {
        "requests_recent": figures["requests"],
        "throttled_recent": figures["throttled"],
        "retry_after_seconds_recent": figures["paused_seconds"],
    }


def _owner(lease: Row | None, now: dt.datetime) -> dict[str, Any]:
    """Who holds the environment's lease and until when; None while nobody does."""
    expires = as_utc(lease["expires_at"]) if lease else None
    if lease is None or not lease["holder"] or expires is None or expires <= now:
        return {"owner": None, "lease_expires_at": None}
    return {"owner": lease["holder"], "lease_expires_at": _iso(expires)}


def _budgets(config: Config, rows: Iterable[Row], now: dt.datetime) -> list[dict[str, Any]]:
    """Daily request entitlement per tenant: every configured tenant, plus any stored row."""
    stored = {row["tenant"]: row for row in rows}
    limits = {tenant.name: tenant.daily_request_budget for tenant in config.tenants}
    out = []
    for name in [t.name for t in config.tenants] + sorted(set(stored) - set(limits)):
        row = stored.get(name)
        window_start = as_utc(row["window_start"]) if row else None
        expired = window_start is None or now - window_start >= BUDGET_WINDOW
        used = 0 if expired or row is None else int(row["used"])
        limit = limits.get(name)
        out.append(
            {
                "tenant": name,
                "limit": limit,
                "used": used,
                "remaining": None if limit is None else max(0, limit - used),
                "window_start": None if expired else _iso(window_start),
                "window_ends": None
                if expired or not window_start
                else _iso(window_start + BUDGET_WINDOW),
            }
        )
    return out


async def run_status(
    config: Config, *, as_json: bool, console: Console, now: dt.datetime | None = None
) -> int:
    """Read the control tables and print the status report. Returns the exit code (0)."""
    now = now or dt.datetime.now(dt.UTC)
    engine = await open_store(config)
    try:
        rows = await read_control_rows(engine, since=now - RECENT_WINDOW)
        rows["intersect"] = [  # mirrored through `relationships`, not named in `tables`
            {"environment": env.name, "table_name": table}
            for _, env in config.environments()
            if env.fixed_tables is not None and env.relationships != "none"
            for table in await intersect_tables(engine, env.name)
        ]
    finally:
        await engine.dispose()
    report = build_report(config, rows, now)
    if as_json:
        console.out(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode(), highlight=False)
    else:
        render(report, console)
    return 0
