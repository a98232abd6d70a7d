"""`dvmirror check`: WhoAmI in every environment at once, one table row each, with the fix.

Exit code 0 when every environment answers, 3 when any fails authentication or
authorization (no application user, missing privilege, no consent, bad credential), 1 for
other failures (network, server errors).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from rich.markup import escape
from rich.table import Table

from sync.config.model import Config
from sync.config.tenants import Environment, Tenant
from sync.dataverse.auth import TokenProviders
from sync.dataverse.client import DataverseClient
from sync.dataverse.seams import RetryPolicy
from sync.errors import AuthError, DvmirrorError, ExitCode
from sync.governor.gate import Governor

CHECK_RETRY = RetryPolicy(attempts=3, max_delay=30.0, throttle_retries=3)


@dataclass(frozen=True)
class CheckResult:
    tenant: str
    environment: str
    ok: bool
    user_id: str = ""
    organization_id: str = ""
    error: str = ""
    fix: str = ""
    auth_failure: bool = False


async def check_environment(
    config: Config, providers: TokenProviders, tenant: Tenant, environment: Environment
) -> CheckResult:
    """Call WhoAmI in one environment; never raises for dvmirror errors."""
    app = config.app_for(tenant)
    governor = Governor(environment.name, cap=environment.max_concurrency or 52)
    client = DataverseClient(
        tenant,
        environment,
        providers.for_tenant(tenant),
        governor,
        ca_bundle=app.ca_bundle,
        retry=CHECK_RETRY,
    )
    try:
        async with client:
            who = await client.whoami()
    except AuthError as exc:
        fix = exc.fix or ""
        fix = fix.replace("<environment>", environment.name)
        if "application user" in exc.message:
            fix += f" App client id: {app.client_id}."
        return CheckResult(
            tenant.name, environment.name, False, error=exc.message, fix=fix, auth_failure=True
        )
    except DvmirrorError as exc:
        return CheckResult(tenant.name, environment.name, False, error=exc.message)
    return CheckResult(
        tenant.name,
        environment.name,
        True,
        user_id=who["UserId"],
        organization_id=who["OrganizationId"],
    )


async def check_all(config: Config) -> list[CheckResult]:
    """Every configured environment, concurrently, in configuration order."""
    providers = TokenProviders(config)
    return list(
        await asyncio.gather(
            *(check_environment(config, providers, t, e) for t, e in config.environments())
        )
    )


def render(results: list[CheckResult]) -> Table:
    table = Table(title="dvmirror check", show_lines=True)
    for column in ("tenant", "environment", "status", "application user", "organization"):
        table.add_column(column, overflow="fold")
    for result in results:
        # Errors quote the service: escaped, never read as rich markup.
        status = "[green]ok[/green]" if result.ok else f"[red]error[/red]: {escape(result.error)}"
        if result.fix:
            status += f"\n[yellow]fix[/yellow]: {escape(result.fix)}"
        table.add_row(
            result.tenant, result.environment, status, result.user_id, result.organization_id
        )
    return table


def exit_code(results: list[CheckResult]) -> int:
    if any(r.auth_failure for r in results):
        return ExitCode.AUTH
    return ExitCode.OK if all(r.ok for r in results) else ExitCode.FAILURES


async def run_check(config: Config, *, console: Any) -> int:
    """`dvmirror check`: print the table; 0 all ok, 3 any auth failure, 1 other failures."""
    results = await check_all(config)
    console.print(render(results))
    return exit_code(results)
