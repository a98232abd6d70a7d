"""The operators' setup commands of `dvmirror`: config check, migrate, check, consent-url.

Registered on the `dvmirror` group by sync.cli; each loads the configuration and calls its
module in sync.store, sync.dataverse or sync.commands.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from sync.cli_state import State, run_async, table_console

if TYPE_CHECKING:
    from sync.config.tenants import Environment
    from sync.store.pruning import Pruned


@click.group("config")
def config_group() -> None:
    """Inspect the configuration."""


def _tables_text(env: Environment) -> str:
    rules = env.tables
    if isinstance(rules, tuple):
        return ", ".join(rules)
    if isinstance(rules, str):
        return "all"
    parts = [f"include {', '.join(rules.include)}"] if rules.include else []
    parts += [f"exclude {', '.join(rules.exclude)}"] if rules.exclude else []
    parts += [f"solutions {', '.join(rules.solutions)}"] if rules.solutions else []
    return "; ".join(parts) + " (resolved at each discovery: dvmirror tables --env E)"


def _options_lines(env: Environment) -> list[str]:
    """What the environment mirrors beside its tables' rows, and each table's own options."""
    from sync.config.values import format_interval

    relationships = env.relationships
    if relationships == "auto":
        n_to_n = "auto (every N:N between the mirrored tables)"
    elif relationships == "none":
        n_to_n = "none"
    else:
        n_to_n = ", ".join(relationships)
    lines = [f"N:N relationships: {n_to_n}"]
    for table, options in sorted(env.table_options.items()):
        parts = []
        if options.history:
            kept = options.history_retention
            parts.append(f"history kept {format_interval(kept) if kept else 'forever'}")
        if options.deletes == "soft":
            parts.append("soft deletes")
        if options.columns is not None:
            parts.append(f"{len(options.columns)} columns ({', '.join(options.columns)})")
        if options.impersonate:
            parts.append(f"as user {options.impersonate}")
        lines.append(f"{table}: {'; '.join(parts) or 'defaults'}")
    return lines


@config_group.command("check")
@click.pass_obj
def config_check(state: State) -> None:
    """Validate the configuration file and summarise it (exit 2 if it is wrong)."""
    config = state.load()
    from sync.store.open import redact_url

    click.echo(f"{config.path}: ok")
    click.echo(f"  store: {redact_url(config.store_url)}")
    for tenant in config.tenants:
        app = config.app_for(tenant)
        credential = "certificate" if app.certificate else "client secret"
        click.echo(
            f"  tenant {tenant.name} ({tenant.tenant_id}) app {app.client_id} [{credential}]"
        )
        for env in tenant.environments:
            tables = _tables_text(env)
            click.echo(f"    {env.name}: {env.url} every {env.interval:g}s: {tables}")
            for line in _options_lines(env):
                click.echo(f"      {line}")
    for alert in config.alerts:
        tenants = ", ".join(alert.tenants) if alert.tenants else "all tenants"
        lag = f", lag over {alert.lag_threshold:g}s" if alert.lag_threshold else ""
        click.echo(
            f"  alert {alert.name}: {alert.format} to {alert.origin or '(url not read)'}/… "
            f"for {tenants}: {', '.join(alert.events)}{lag}, reminder every {alert.repeat:g}s"
        )
    console = config.console
    if console is not None:
        app = config.console_app()
        tls = "TLS" if console.tls_cert else "plain HTTP (behind a TLS proxy)"
        click.echo(
            f"  console: {console.listen} [{tls}] public {console.public_url}, "
            f"redirect URI {console.redirect_uri}, app {app.client_id}"
        )
        admins = ", ".join(console.admin_tenants) or "none"
        click.echo(
            f"    roles {console.viewer_role} (read) / {console.operator_role} (resync); "
            f"admin tenants: {admins}"
        )


@click.command()
@click.pass_obj
def migrate(state: State) -> None:
    """Create or upgrade the control database to the latest schema."""
    config = state.load(resolve_secrets=False)

    async def _run() -> tuple[str | None, Pruned]:
        from datetime import UTC, datetime

        from sync.store.migrate import current_revision
        from sync.store.open import open_store
        from sync.store.pruning import prune_history

        engine = await open_store(config)
        try:
            keep = config.settings.daemon.history_days
            pruned = await prune_history(engine, keep, now=datetime.now(UTC))
            return await current_revision(engine), pruned
        finally:
            await engine.dispose()

    from sync.store.open import redact_url

    revision, pruned = run_async(state, _run)
    click.echo(f"{redact_url(config.store_url)}: at revision {revision}")
    keep = config.settings.daemon.history_days
    if pruned.runs:
        click.echo(f"dv_run_history: pruned {pruned.runs} runs older than {keep} days")
    if pruned.commits:
        click.echo(f"dv_commits: pruned {pruned.commits} commit records older than {keep} days")


@click.command()
@click.pass_obj
def check(state: State) -> None:
    """Call WhoAmI in every environment and say what to fix (exit 3 on auth failures)."""
    config = state.load()

    from sync.commands.check import run_check

    sys.exit(run_async(state, lambda: run_check(config, console=table_console())))


@click.command("consent-url")
@click.option("--tenant", "tenant_name", required=True, help="The tenant's name in the config.")
@click.pass_obj
def consent_url(state: State, tenant_name: str) -> None:
    """Print the admin-consent URL a customer's administrator opens to consent the app."""
    config = state.load(resolve_secrets=False)
    from sync.dataverse.auth import consent_url as build

    click.echo(build(config, tenant_name))


SETUP_COMMANDS = (config_group, migrate, check, consent_url)
