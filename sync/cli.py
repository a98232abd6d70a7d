"""The `dvmirror` command line: parse, call, map the outcome to a documented exit code.

Exit codes: 0 ok · 1 a run finished with failures · 2 usage or configuration error ·
3 authentication or authorization error. Errors print one line, never a traceback
(unless --debug).
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import click

from sync import __version__
from sync.errors import ConfigError, DvmirrorError

EXIT_OK = 0
EXIT_FAILURES = 1
EXIT_USAGE = 2
EXIT_AUTH = 3

DEFAULT_CONFIG_LOCATIONS = (Path("dvmirror.toml"), Path("/etc/dvmirror/dvmirror.toml"))

T = TypeVar("T")


class State:
    """What the group options give every command."""

    def __init__(self, config_path: Path | None, log_level: str | None, debug: bool) -> None:
        self.config_path = config_path
        self.log_level = log_level
        self.debug = debug

    def load(self, *, resolve_secrets: bool = True) -> Any:
        """Load the configuration (and configure logging from it)."""
        from sync.config import load_config
        from sync.logs import configure_logging

        path = self.config_path
        if path is None:
            for candidate in DEFAULT_CONFIG_LOCATIONS:
                if candidate.is_file():
                    path = candidate
                    break
            else:
                raise ConfigError(
                    "no configuration: pass --config PATH or set DVMIRROR_CONFIG "
                    "(config/dvmirror.example.toml is a documented starting point)"
                )
        config = load_config(path, resolve_secrets=resolve_secrets)
        secrets = [
            app.client_secret.get_secret_value()
            for app in {id(config.app_for(t)): config.app_for(t) for t in config.tenants}.values()
            if app.client_secret is not None and app.client_secret.get_secret_value()
        ]
        configure_logging(self.log_level or config.settings.daemon.log_level, secrets=secrets)
        for warning in config.warnings:
            click.echo(f"dvmirror: warning: {config.path}: {warning}", err=True)
        return config


def run_async(state: State, factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine, turning our errors into one line and an exit code."""
    try:
        return asyncio.run(factory())
    except KeyboardInterrupt:
        click.echo("dvmirror: interrupted", err=True)
        sys.exit(130)
    except DvmirrorError:
        raise
    except Exception as exc:  # an unexpected failure still gets one line, not a traceback
        if state.debug:
            raise
        from sync.logs import mask_text

        click.echo(
            f"dvmirror: error: unexpected {type(exc).__name__}: {mask_text(str(exc))} "
            "(run with --debug for a traceback)",
            err=True,
        )
        sys.exit(EXIT_FAILURES)


class DvmirrorGroup(click.Group):
    """Turns DvmirrorError anywhere below into its exit code and a single line."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DvmirrorError as exc:
            from sync.logs import mask_text

            if ctx.obj is not None and getattr(ctx.obj, "debug", False):
                raise
            click.echo(f"dvmirror: error: {mask_text(exc.message)}", err=True)
            fix = getattr(exc, "fix", None)
            if fix:
                click.echo(f"dvmirror: fix: {fix}", err=True)
            ctx.exit(exc.exit_code)


@click.group(cls=DvmirrorGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    envvar="DVMIRROR_CONFIG",
    help=(
        "Configuration file (TOML). Also DVMIRROR_CONFIG. "
        "Default: ./dvmirror.toml, then /etc/dvmirror/dvmirror.toml."
    ),
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    help="Override daemon.log_level.",
)
@click.option("--debug", is_flag=True, help="Show tracebacks for unexpected errors.")
@click.version_option(__version__, "--version", prog_name="dvmirror")
@click.pass_context
def cli(ctx: click.Context, config_path: Path | None, log_level: str | None, debug: bool) -> None:
    """Mirror Microsoft Dataverse tables of many tenants into a SQL database you own.

    Exit codes: 0 ok, 1 a run finished with failures, 2 usage or configuration error,
    3 authentication or authorization error.
    """
    ctx.obj = State(config_path, log_level, debug)


@cli.command()
def version() -> None:
    """Print the dvmirror version."""
    click.echo(f"dvmirror {__version__}")


@cli.group("config")
def config_group() -> None:
    """Inspect the configuration."""


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
            tables = "all" if env.tables == "all" else ", ".join(env.tables)
            click.echo(f"    {env.name}: {env.url} every {env.interval:g}s: {tables}")


@cli.command()
@click.pass_obj
def migrate(state: State) -> None:
    """Create or upgrade the control database to the latest schema."""
    config = state.load(resolve_secrets=False)

    async def _run() -> str | None:
        from sync.store.migrate import current_revision
        from sync.store.open import open_store

        engine = await open_store(config)
        try:
            return await current_revision(engine)
        finally:
            await engine.dispose()

    from sync.store.open import redact_url

    revision = run_async(state, _run)
    click.echo(f"{redact_url(config.store_url)}: at revision {revision}")


@cli.command()
@click.option(
    "--scenario",
    required=True,
    type=click.Path(path_type=Path),
    help="Scenario file (TOML), or the name of a built-in one: demo, throttled, basic, auth.",
)
@click.option(
    "--state-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Keep certificates, secrets and the generated config here (default: a temp dir).",
)
def simulate(scenario: Path, state_dir: Path | None) -> None:
    """Run the built-in Dataverse + Entra ID simulator until SIGTERM.

    Prints one JSON line when ready (authority_host, ca_file, admin_url, credentials, tenants,
    config_file), then serves.
    """
    from sync.simulator.main import run

    sys.exit(run(scenario, state_dir))


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of tables.")
@click.pass_obj
def status(state: State, as_json: bool) -> None:
    """Show every table: phase, rows, last success, lag, errors, throttling, budgets.

    Reads the control database; works while the daemon runs.
    """
    config = state.load(resolve_secrets=False)
    from rich.console import Console

    from sync.status import run_status

    sys.exit(run_async(state, lambda: run_status(config, as_json=as_json, console=Console())))


def main(argv: list[str] | None = None) -> None:
    """Console entry point."""
    # Windows consoles and pipes may not be UTF-8; our output is.
    os.environ.setdefault("PYTHONIOENCODING", "utf-8")
    cli.main(args=argv, prog_name="dvmirror")


if __name__ == "__main__":
    main()
