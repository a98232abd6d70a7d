"""`dvmirror tables --env E`: the tables the environment's rules resolve to right now, why each
other matched table is left out, and which resolved tables fall back to a watermark (no change
tracking) or keep a `<table>__history`, then the N:N intersect tables mirrored beside them
(they come from `relationships`). Reads metadata only (one
EntityDefinitions list, two small queries per solution, one N:N query per table)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import replace

from sync.commands.check import CHECK_RETRY
from sync.config.model import Config
from sync.config.tenants import Environment
from sync.dataverse.auth import TokenProviders
from sync.dataverse.client import DataverseClient
from sync.dataverse.odata import api_url
from sync.errors import ConfigError
from sync.governor.gate import Governor
from sync.mirror.discovery import resolve_tables
from sync.mirror.relationships import RelationshipPlan, plan_relationships
from sync.mirror.table_rules import Resolution
from sync.store.dialects.history_sql import history_table


def _history_note(environment: Environment, table: str) -> str | None:
    options = environment.table_options.get(table)
    if options is None or not options.history:
        return None
    kept = f"history: {history_table(table)}"
    if options.history_retention is not None:
        kept += f", retention {options.history_retention / 86400:g}d"
    return kept


def _line(environment: Environment, table: str, *notes: str | None) -> str:
    shown = [n for n in (*notes, _history_note(environment, table)) if n]
    return f"  {table}" + (f"  ({'; '.join(shown)})" if shown else "")


def render(environment: Environment, found: Resolution) -> list[str]:
    """The report's lines (plain text: it is read by people and by scripts alike)."""
    fixed = environment.fixed_tables
    tables = fixed if fixed is not None else found.tables
    lines = [f"{environment.name}: {len(tables)} table(s) mirrored"]
    lines += [
        _line(
            environment,
            t,
            "watermark: no change tracking" if t in found.watermark else None,
        )
        for t in tables
    ]
    left_out = {t: why for t, why in found.left_out.items() if fixed is None or t not in fixed}
    if left_out:
        lines.append(f"left out ({len(left_out)}):")
        lines += [f"  {t}: {why}" for t, why in sorted(left_out.items())]
    for table in fixed or ():
        why = found.left_out.get(table)
        if why is not None:
            lines.append(f"warning: {table} is listed in tables (and read as listed), but: {why}")
    if fixed is None:
        lines += [f"warning: {w}" for w in found.warnings if "solution" in w]
    return lines


def _setting(environment: Environment) -> str:
    value = environment.relationships
    return (
        f'"{value}"' if isinstance(value, str) else "[" + ", ".join(f'"{v}"' for v in value) + "]"
    )


def render_relationships(
    environment: Environment, plan: RelationshipPlan, tracked: Mapping[str, bool]
) -> list[str]:
    """The N:N tables mirrored beside the tables (they come from `relationships`, not from
    `tables`), and how each is kept up to date."""
    lines = (
        [
            f"N:N relationship table(s): {len(plan.relationships)}, from relationships = "
            f"{_setting(environment)}"
        ]
        if plan.relationships
        else []
    )
    for r in plan.relationships:
        how = (
            "change tracking"
            if tracked.get(r.intersect_table)
            else "key scan every reconcile_interval: no change tracking"
        )
        joined = f"{r.schema_name}: {r.entity1}.{r.entity1_attribute} ↔ "
        lines.append(
            _line(
                environment, r.intersect_table, joined + f"{r.entity2}.{r.entity2_attribute}; {how}"
            )
        )
    return lines + [f"warning: {w}" for w in plan.warnings]


def history_warnings(environment: Environment, mirrored: Sequence[str]) -> list[str]:
    """History asked for on a table that is not mirrored: nothing would be kept."""
    return [
        f"warning: table_options.{t}.history = true, but {t} is not mirrored (no history kept)"
        for t, options in sorted(environment.table_options.items())
        if options.history and t not in mirrored
    ]


async def _tracked(client: DataverseClient, url: str, tables: Sequence[str]) -> dict[str, bool]:
    async def one(table: str) -> bool:
        document = await client.get(
            api_url(url, f"EntityDefinitions(LogicalName='{table}')?$select=ChangeTrackingEnabled"),
            table=table,
        )
        return isinstance(document, Mapping) and document.get("ChangeTrackingEnabled") is True

    return dict(zip(tables, await asyncio.gather(*map(one, tables)), strict=True))


async def run_tables(config: Config, env_name: str) -> list[str]:
    for tenant, environment in config.environments():
        if environment.name != env_name:
            continue
        app = config.app_for(tenant)
        client = DataverseClient(
            tenant,
            environment,
            TokenProviders(config).for_tenant(tenant),
            Governor(environment.name, cap=environment.max_concurrency or 52),
            ca_bundle=app.ca_bundle,
            retry=CHECK_RETRY,
        )
        async with client:
            found = await resolve_tables(client, environment.url, environment.tables)
            mirrored = environment.fixed_tables or found.tables
            plan = await plan_relationships(client, environment, mirrored)
            tracked = await _tracked(client, environment.url, plan.tables)
        # An intersect table "all" leaves out is still mirrored when its N:N is.
        left_out = {t: why for t, why in found.left_out.items() if t not in plan.tables}
        found = replace(found, left_out=left_out)
        listed = render(environment, found) + render_relationships(environment, plan, tracked)
        return listed + history_warnings(environment, (*mirrored, *plan.tables))
    known = ", ".join(e.name for _, e in config.environments())
    raise ConfigError(f"no environment named {env_name!r} (known: {known})")
