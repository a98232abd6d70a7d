"""The console's pure parts with plain values: `next=` sanitising, single use, the SVG plot's
lag series and 429 buckets, phase labels and the environment state word."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from sync.config.loading import load_config
from sync.console import figures, svg
from sync.console.replay import ReplayGuard
from sync.console.security import safe_next

NOW = dt.datetime(2026, 12, 7, 12, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/env/a?x=1", "/env/a?x=1"),
        ("/", "/"),
        (None, "/"),
        ("", "/"),
        ("//evil.example", "/"),
        ("/\\evil.example", "/"),
        ("https://evil.example/", "/"),
        ("evil", "/"),
        ("/ok\r\nSet-Cookie: x", "/"),
        ("javascript:alert(1)", "/"),
    ],
)
def test_safe_next(value: str | None, expected: str) -> None:
    """Only a path of this origin survives; anything else becomes "/"."""
    assert safe_next(value) == expected


def test_replay_guard_accepts_once_until_expiry() -> None:
    """A value is accepted once; again only after its own expiry has passed."""
    now = [1000.0]
    guard = ReplayGuard(clock=lambda: now[0])
    assert guard.first_use("code", "c1", until=1600)
    assert not guard.first_use("code", "c1", until=1600)
    assert guard.first_use("nonce", "c1", until=1600)  # kinds are separate
    now[0] = 1601
    assert guard.first_use("code", "c1", until=2200)


def test_lag_series_drops_at_each_success() -> None:
    """The lag grows from the last success before the window and drops to ~0 at each success;
    failed runs change nothing."""
    runs = [
        {
            "status": "ok",
            "finished_at": NOW - dt.timedelta(hours=12),
            "started_at": NOW - dt.timedelta(hours=12),
        },
        {
            "status": "failed",
            "finished_at": NOW - dt.timedelta(hours=6),
            "started_at": NOW - dt.timedelta(hours=6),
        },
    ]
    series = svg.lag_series(runs, NOW - dt.timedelta(hours=30), NOW)
    assert series[0][1] == pytest.approx(6 * 3600)
    assert series[48][1] == pytest.approx(0)  # 12 h into the window
    assert series[-1][1] == pytest.approx(12 * 3600)
    assert svg.lag_series([], None, NOW)[0][1] is None


def test_throttled_per_hour_and_plot_markup() -> None:
    """429s are summed per hour of the window; the SVG has the lag line, a bar and no script."""
    runs = [
        {
            "status": "ok",
            "started_at": NOW - dt.timedelta(minutes=30),
            "finished_at": NOW - dt.timedelta(minutes=29),
            "throttled": 3,
        },
        {
            "status": "ok",
            "started_at": NOW - dt.timedelta(minutes=10),
            "finished_at": NOW - dt.timedelta(minutes=9),
            "throttled": 2,
        },
        {"status": "ok", "started_at": NOW - dt.timedelta(hours=30), "throttled": 99},
    ]
    buckets = svg.throttled_per_hour(runs, NOW)
    assert buckets[-1] == 5 and sum(buckets) == 5
    markup = svg.plot(runs, None, NOW)
    assert 'class="line-lag"' in markup and 'class="bar-429"' in markup
    assert "<script" not in markup and "style=" not in markup


@pytest.mark.parametrize(
    ("state", "ranges", "expected"),
    [
        ({"phase": "backfill", "row_count": 250, "total_estimate": 1000}, None, ("full load", 25)),
        (
            {"phase": "backfill", "row_count": 10},
            {"done": 3, "total": 8},
            ("full load, ranges 3/8", 38),
        ),
        ({"phase": "delta"}, None, ("incremental", None)),
        ({"phase": "resync", "row_count": 5, "total_estimate": 5}, None, ("resync", 99)),
        ({}, None, ("new", None)),
    ],
)
def test_phase_label(
    state: dict[str, object], ranges: dict[str, int] | None, expected: tuple[str, int | None]
) -> None:
    """Full load with %, ranges done/total, incremental; a full load never shows 100 % early."""
    assert figures.phase_label(state, ranges) == expected


def _config(tmp_path: Path, budget: str = "") -> object:
    path = tmp_path / "dvmirror.toml"
    path.write_text(
        f"""
[app]
client_id = "7a3c1e55-0b7d-4c8a-9e21-5f6a7b8c9d01"
client_secret = {{ env = "S" }}
[[tenants]]
name = "contoso"
tenant_id = "contoso.example"
{budget}
[[tenants.environments]]
name = "contoso_prod"
url = "https://contoso.crm.dynamics.com"
tables = ["account"]
"""
    )
    return load_config(path, environ={"S": "x"})


def _raw(
    state: dict[str, object] | None = None, **extra: list[dict[str, object]]
) -> dict[str, list[dict[str, object]]]:
    rows: dict[str, list[dict[str, object]]] = {
        "state": [{"environment": "contoso_prod", "table_name": "account", **state}]
        if state
        else [],
        "recent": [],
        "ranges": [],
        "budgets": [],
        "environments": [],
        "leases": [],
        "verify": [],
    }
    rows.update(extra)
    return rows


def test_environment_state_words(tmp_path: Path) -> None:
    """unconsented, budget spent, parked, syncing and idle, each from the rows that mean it;
    a parked table shows the fix `dvmirror check` would print."""
    config = _config(tmp_path)
    tenant, env = config.environments()[0]  # type: ignore[attr-defined]
    ok = {"phase": "delta", "row_count": 5, "last_success": NOW - dt.timedelta(minutes=2)}
    assert figures.environment_entry(config, tenant, env, _raw(ok), NOW)["state"] == "idle"  # type: ignore[arg-type]
    running = _raw(
        ok,
        recent=[
            {
                "environment": "contoso_prod",
                "table_name": "account",
                "requests": 4,
                "throttled": 1,
                "running": 1,
            }
        ],
    )
    entry = figures.environment_entry(config, tenant, env, running, NOW)  # type: ignore[arg-type]
    assert (
        entry["state"] == "syncing"
        and entry["throttled_24h"] == 1
        and entry["worst_lag_seconds"] == 120
    )
    parked = {**ok, "last_error": "contoso_prod/account: access denied", "last_error_at": NOW}
    entry = figures.environment_entry(config, tenant, env, _raw(parked), NOW)  # type: ignore[arg-type]
    assert entry["state"] == "parked" and "Security roles" in entry["tables"][0]["fix"]
    consent = {
        "phase": "new",
        "last_error": "tenant contoso: the app x is not consented in this tenant",
        "last_error_at": NOW,
    }
    entry = figures.environment_entry(config, tenant, env, _raw(consent), NOW)  # type: ignore[arg-type]
    assert entry["state"] == "unconsented" and "adminconsent" in entry["tables"][0]["fix"]
    budgeted = _config(tmp_path, "daily_request_budget = 10")
    tenant, env = budgeted.environments()[0]  # type: ignore[attr-defined]
    spent = _raw(
        ok, budgets=[{"tenant": "contoso", "window_start": NOW - dt.timedelta(hours=1), "used": 10}]
    )
    assert figures.environment_entry(budgeted, tenant, env, spent, NOW)["state"] == "budget spent"  # type: ignore[arg-type]
