"""What the daemon knows, turned into alert `Condition`s: pure, from plain values.

The monitor gathers the inputs (runtime.alerts.monitor): each held environment's in-memory
view (sign-in, daily budget), the tables' stored status (parked, last success), the column
catalogue's type changes, and verify findings when a verify source is wired in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sync.runtime.alerts.rules import Condition, Observation
from sync.store.checkpoints import TableStatus


@dataclass(frozen=True)
class EnvironmentView:
    """One environment this daemon runs, as its worker group knows it."""

    name: str
    tenant: str
    tables: tuple[str, ...] | None  # None: "all" (every table with a state row)
    attempted: bool  # the first sign-in attempt was made (before it, nothing is known)
    auth_error: str | None = None
    budget_renews_at: datetime | None = None


@dataclass(frozen=True)
class TypeChange:
    """A column whose type changed at the source (dv_mirror_columns.type_changed_at)."""

    environment: str
    table: str
    column: str
    sql_type: str
    at: datetime
    old_type: str | None = None
    kept_as: str | None = None


@dataclass(frozen=True)
class VerifyFinding:
    """The latest verify result of a table (from dv_verify_runs, once that exists): rows that
    were missing, ghost or stale and are not repaired. 0 means the table matched."""

    environment: str
    table: str
    mismatched_rows: int
    at: datetime


def observe(
    views: Iterable[EnvironmentView],
    statuses: Iterable[TableStatus],
    type_changes: Iterable[TypeChange],
    verify: Sequence[VerifyFinding] | None,
    now: datetime,
) -> Observation:
    """Conditions that hold now in the given environments; `verify` None: not wired in (no
    verify_mismatch is observed, so none recovers either)."""
    held = {v.name: v for v in views}
    conditions: list[Condition] = []
    observed: set[tuple[str, str]] = set()
    for env in held.values():
        observed.update((env.name, e) for e in ("table_parked", "lag_exceeded", "budget_exhausted"))
        if env.attempted:
            observed.add((env.name, "auth_failed"))
        if verify is not None:
            observed.add((env.name, "verify_mismatch"))
        if env.auth_error:
            conditions.append(Condition("auth_failed", env.name, env.tenant, "", env.auth_error))
        if env.budget_renews_at is not None and env.budget_renews_at > now:
            conditions.append(
                Condition(
                    "budget_exhausted",
                    env.name,
                    env.tenant,
                    "",
                    f"tenant {env.tenant}: requests wait until the budget renews at "
                    f"{env.budget_renews_at.isoformat()}",
                )
            )

    def configured(environment: str, table: str) -> EnvironmentView | None:
        view = held.get(environment)
        if view is None or (view.tables is not None and table not in view.tables):
            return None
        return view

    for status in statuses:
        view = configured(status.environment, status.table)
        if view is None:
            continue
        if status.parked:
            retry = f" (next try {status.parked_until.isoformat()})" if status.parked_until else ""
            conditions.append(
                Condition(
                    "table_parked",
                    view.name,
                    view.tenant,
                    status.table,
                    f"{(status.last_error or 'failed')[:500]}{retry}",
                )
            )
        if status.last_success is not None:
            lag = (now - status.last_success).total_seconds()
            conditions.append(
                Condition(
                    "lag_exceeded",
                    view.name,
                    view.tenant,
                    status.table,
                    f"last synced {status.last_success.isoformat()} ({lag:.0f}s ago)",
                    value=lag,
                )
            )
    conditions += _type_change_conditions(type_changes, held, configured)
    for finding in verify or ():
        view = configured(finding.environment, finding.table)
        if view is None or finding.mismatched_rows <= 0:
            continue
        conditions.append(
            Condition(
                "verify_mismatch",
                view.name,
                view.tenant,
                finding.table,
                f"{finding.mismatched_rows} rows differ from the source (verify at "
                f"{finding.at.isoformat()})",
                value=float(finding.mismatched_rows),
            )
        )
    return Observation(
        tuple(conditions), frozenset(observed), {v.name: v.tenant for v in held.values()}
    )


def _type_change_conditions(
    type_changes: Iterable[TypeChange],
    held: dict[str, EnvironmentView],
    configured: Callable[[str, str], EnvironmentView | None],
) -> list[Condition]:
    """One condition per table: its latest type change (every column changed at that moment)."""
    conditions: list[Condition] = []
    latest: dict[tuple[str, str], list[TypeChange]] = {}
    for change in type_changes:
        if configured(change.environment, change.table) is None:
            continue
        key = (change.environment, change.table)
        kept = latest.get(key)
        if kept is None or change.at > kept[0].at:
            latest[key] = [change]
        elif change.at == kept[0].at:
            kept.append(change)
    for (environment, table), changes in latest.items():
        view = held[environment]
        parts = [
            f"{c.column} is now {c.sql_type}"
            + (f" (was {c.old_type}; old values kept in {c.kept_as})" if c.kept_as else "")
            for c in sorted(changes, key=lambda c: c.column)
        ]
        at = changes[0].at
        conditions.append(
            Condition(
                "schema_type_change",
                environment,
                view.tenant,
                table,
                "; ".join(parts),
                marker=at.isoformat(),
                at=at,
            )
        )
    return conditions
