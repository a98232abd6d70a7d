"""`--table T` of `backfill` and `verify`: T must be a table the environment
mirrors — one of its `tables` (listed, or what its rules resolve to now) or an N:N intersect table
that `relationships` brings beside them. Anything else is refused before anything is written
(exit 2), with the reason and what to do, so a typo or an excluded table never gets a mirror of
its own. A listed table is accepted without a request; the rest is checked against the source.
"""

from __future__ import annotations

from sync.config.tenants import Environment
from sync.errors import ConfigError
from sync.mirror.discovery import JsonSource, resolve_tables
from sync.mirror.relationships import plan_relationships


def not_mirrored(environment: Environment, table: str, why: str | None = None) -> str:
    """The one-line refusal (pure)."""
    fixed = environment.fixed_tables
    brought = (
        'relationships is "none"'
        if environment.relationships == "none"
        else "no N:N that relationships brings has it as intersect table"
    )
    if why is not None:
        reason = why
    elif fixed is not None:
        reason = f"not in its tables ({', '.join(fixed)}), and {brought}"
    else:
        reason = f"its tables rules do not match it, and {brought}"
    return (
        f"table {table!r} is not mirrored in environment {environment.name}: {reason}; "
        f"name a mirrored table (`dvmirror tables --env {environment.name}` lists them, N:N "
        "tables included), or add it to the environment's tables"
    )


def refused_without_asking(environment: Environment, table: str) -> str | None:
    """The refusal that needs no request (a fixed list and no N:N), else None."""
    fixed = environment.fixed_tables
    if fixed is None or table in fixed or environment.relationships != "none":
        return None
    return not_mirrored(environment, table)


async def confirm_named(client: JsonSource, environment: Environment, table: str) -> None:
    """Raise ConfigError unless the environment mirrors `table` now."""
    fixed = environment.fixed_tables
    if fixed is not None and table in fixed:
        return
    why: str | None = None
    if fixed is None:
        found = await resolve_tables(client, environment.url, environment.tables)
        if table in found.tables:
            return
        tables, why = found.tables, found.left_out.get(table)
    else:
        tables = fixed
    if table in (await plan_relationships(client, environment, tables)).tables:
        return
    raise ConfigError(not_mirrored(environment, table, why))
