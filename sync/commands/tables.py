"""`dvmirror tables --env E`: the tables the environment's rules resolve to right now, why each
other matched table is left out, and which resolved tables fall back to a watermark (no change
tracking). Reads metadata only (one EntityDefinitions list, two small queries per solution)."""

from __future__ import annotations

from sync.commands.check import CHECK_RETRY
from sync.config.model import Config, Environment
from sync.dataverse.auth import TokenProviders
from sync.dataverse.client import DataverseClient
from sync.errors import ConfigError
from sync.governor.gate import Governor
from sync.mirror.discovery import resolve_tables
from sync.mirror.table_rules import Resolution


def render(environment: Environment, found: Resolution) -> list[str]:
    """The report's lines (plain text: it is read by people and by scripts alike)."""
    fixed = environment.fixed_tables
    tables = fixed if fixed is not None else found.tables
    lines = [f"{environment.name}: {len(tables)} table(s) mirrored"]
    lines += [
        f"  {t}" + ("  (watermark: no change tracking)" if t in found.watermark else "")
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
        return render(environment, found)
    known = ", ".join(e.name for _, e in config.environments())
    raise ConfigError(f"no environment named {env_name!r} (known: {known})")
