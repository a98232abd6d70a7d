"""The console's figures, built by pure functions from control rows, the configuration and `now`.

The same documents feed the HTML pages and the JSON API, so both always agree. An environment's
state is one word: `unconsented` (no WhoAmI has succeeded and an error says consent or the
application user is missing), `budget spent` (its tenant used the daily request budget),
`parked` (a table's last error is newer than its last success), `syncing` (a run is under way)
or `idle`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any

from sync.config.model import Config
from sync.config.tenants import Environment, Tenant
from sync.console.fixes import fix_for
from sync.console.verify_figures import verify_entry
from sync.logs import mask_text
from sync.store.environment_runs import environment_figures

Row = Mapping[str, Any]
WINDOW = dt.timedelta(hours=24)
UNCONSENTED_HINTS = ("not consented", "no application user", "admin consent")


def as_utc(value: dt.datetime | None) -> dt.datetime | None:
    """SQLite hands back naive datetimes; the store always writes UTC."""
    if value is None:
        return None
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def iso(value: dt.datetime | None) -> str | None:
    utc = as_utc(value)
    return utc.isoformat() if utc else None


def _by_table(rows: Iterable[Row]) -> dict[tuple[str, str], Row]:
    return {(row["environment"], row["table_name"]): row for row in rows}


def phase_label(state: Row, ranges: Row | None) -> tuple[str, int | None]:
    """("full load", percent) / ("ranges d/t", percent) / ("incremental", None) / ("new", None)."""
    phase = str(state.get("phase") or "new")
    rows = int(state.get("row_count") or 0)
    estimate = state.get("total_estimate")
    if ranges:
        done, total = int(ranges["done"] or 0), int(ranges["total"] or 0)
        percent = round(100 * done / total) if total else None
        return f"full load, ranges {done}/{total}", percent
    if phase in ("backfill", "resync"):
        percent = min(99, round(100 * rows / int(estimate))) if estimate else None
        return ("full load" if phase == "backfill" else "resync"), percent
    if phase in ("delta", "watermark", "reconcile"):
        return "incremental", None
    return phase, None


def table_entry(
    env: Environment,
    tenant: Tenant,
    config: Config,
    table: str,
    *,
    rows: Mapping[str, Mapping[tuple[str, str], Row]],
    now: dt.datetime,
) -> dict[str, Any]:
    key = (env.name, table)
    state = rows["state"].get(key) or {}
    recent = rows["recent"].get(key) or {}
    ranges = rows["ranges"].get(key)
    verified = rows["verify"].get(key)
    last_success = as_utc(state.get("last_success"))
    last_error_at = as_utc(state.get("last_error_at"))
    error = state.get("last_error")
    parked = bool(error) and (last_success is None or (last_error_at or now) > last_success)
    label, percent = phase_label(state, ranges)
    message = mask_text(str(error)) if error else None
    return {
        "table": table,
        "phase": str(state.get("phase") or "new"),
        "phase_label": label,
        "percent": percent,
        "rows": int(state.get("row_count") or 0),
        "total_estimate": state.get("total_estimate"),
        "last_success": iso(last_success),
        "lag_seconds": round((now - last_success).total_seconds(), 1) if last_success else None,
        "parked": parked,
        "parked_until": iso(state.get("parked_until")),
        "attempts": int(state.get("attempts") or 0),
        "last_error": message,
        "last_error_at": iso(last_error_at),
        "fix": fix_for(message, config, tenant, env) if message and parked else None,
        "requests_24h": int(recent.get("requests") or 0),
        "throttled_24h": int(recent.get("throttled") or 0),
        "retry_after_seconds_24h": round(float(recent.get("paused_seconds") or 0.0), 3),
        "running": bool(recent.get("running")),
        "last_verify": verify_entry(verified) if verified else None,
    }


def _tables_of(env: Environment, rows: Mapping[str, Mapping[tuple[str, str], Row]]) -> list[str]:
    if env.fixed_tables is None:  # "all" or rules, resolved at run time: whatever has state
        return sorted(t for (e, t) in rows["state"] if e == env.name)
    return list(env.fixed_tables)


def _budget(tenant: Tenant, budgets: Mapping[str, Row], now: dt.datetime) -> dict[str, Any]:
    row = budgets.get(tenant.name)
    start = as_utc(row["window_start"]) if row else None
    used = int(row["used"]) if row and start and now - start < WINDOW else 0
    limit = tenant.daily_request_budget
    return {"used": used, "limit": limit, "spent": limit is not None and used >= limit}


def environment_entry(
    config: Config,
    tenant: Tenant,
    env: Environment,
    raw: Mapping[str, list[dict[str, Any]]],
    now: dt.datetime,
) -> dict[str, Any]:
    rows = {k: _by_table(raw[k]) for k in ("state", "recent", "ranges", "verify")}
    listed = _tables_of(env, rows)
    listed += [  # the N:N tables mirrored beside a list (relationships)
        r["table_name"]
        for r in raw.get("intersect", [])
        if r["environment"] == env.name and r["table_name"] not in listed
    ]
    tables = [table_entry(env, tenant, config, t, rows=rows, now=now) for t in listed]
    known = {row["name"]: row for row in raw["environments"]}.get(env.name)
    budgets = {row["tenant"]: row for row in raw["budgets"]}
    budget = _budget(tenant, budgets, now)
    whoami_ok = bool(known and known.get("application_user_id"))
    own = environment_figures({t: r for (e, t), r in rows["recent"].items() if e == env.name})
    errors = " ".join((t["last_error"] or "").lower() for t in tables if t["parked"])
    lags = [t["lag_seconds"] for t in tables if t["lag_seconds"] is not None]
    if not whoami_ok and any(hint in errors for hint in UNCONSENTED_HINTS):
        state = "unconsented"
    elif budget["spent"]:
        state = "budget spent"
    elif any(t["parked"] for t in tables):
        state = "parked"
    elif any(t["running"] for t in tables):
        state = "syncing"
    else:
        state = "idle"
    return {
        "name": env.name,
        "tenant": tenant.name,
        "url": env.url,
        "state": state,
        "tables_count": len(tables),
        "rows": sum(t["rows"] for t in tables),
        # A table never synced counts as the worst lag of all: it is not fresh at all.
        "worst_lag_seconds": None if not lags or len(lags) < len(tables) else max(lags),
        "never_synced": sum(1 for t in tables if t["lag_seconds"] is None),
        # Its tables' runs plus the runs of its own requests (WhoAmI, N:N discovery, metadata
        # refresh: store.environment_runs, recorded only when they were throttled).
        "requests_24h": sum(t["requests_24h"] for t in tables) + own["requests"],
        "throttled_24h": sum(t["throttled_24h"] for t in tables) + own["throttled"],
        # The Retry-After pause the governor held this environment's user back for, as the
        # runs of the last 24 h recorded it (each run keeps the pause its own 429s started).
        "retry_after_seconds_24h": round(
            sum(t["retry_after_seconds_24h"] for t in tables) + own["paused_seconds"], 3
        ),
        "environment_requests_24h": own,
        "budget": budget,
        "whoami": {
            "ok": whoami_ok,
            "application_user_id": known.get("application_user_id") if known else None,
            "organization_id": known.get("organization_id") if known else None,
            "checked_at": iso(known.get("updated_at")) if known else None,
        },
        "tables": tables,
    }


def overview(
    config: Config,
    raw: Mapping[str, list[dict[str, Any]]],
    visible_tenants: frozenset[str],
    now: dt.datetime,
) -> list[dict[str, Any]]:
    """Tenants → environments, only those the user may see, in configuration order."""
    out = []
    for tenant in config.tenants:
        if tenant.name not in visible_tenants:
            continue
        envs = [environment_entry(config, tenant, env, raw, now) for env in tenant.environments]
        out.append({"tenant": tenant.name, "tenant_id": tenant.tenant_id, "environments": envs})
    return out


def find_environment(
    config: Config, name: str, visible_tenants: frozenset[str]
) -> tuple[Tenant, Environment] | None:
    """The environment by name if this user may see it; None answers 404 either way."""
    for tenant, env in config.environments():
        if env.name == name and tenant.name in visible_tenants:
            return tenant, env
    return None


def run_entry(row: Row) -> dict[str, Any]:
    started, finished = as_utc(row.get("started_at")), as_utc(row.get("finished_at"))
    return {
        "id": row.get("id"),
        "command": row.get("command"),
        "status": row.get("status"),
        "started_at": iso(started),
        "finished_at": iso(finished),
        "seconds": round((finished - started).total_seconds(), 1) if started and finished else None,
        "rows_upserted": int(row.get("rows_upserted") or 0),
        "rows_deleted": int(row.get("rows_deleted") or 0),
        "requests": int(row.get("requests") or 0),
        "throttled": int(row.get("throttled") or 0),
        "paused_seconds": round(float(row.get("paused_seconds") or 0.0), 3),
        "error": mask_text(str(row["error"])) if row.get("error") else None,
    }


def column_entry(row: Row) -> dict[str, Any]:
    return {
        "column": row["column_name"],
        "dataverse_type": row["attribute_type"],
        "sql_type": row["sql_type"],
    }
