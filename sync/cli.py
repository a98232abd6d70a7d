"""The `dvmirror` command line: parse, call, map the outcome to a documented exit code.

Exit codes: 0 ok · 1 a run finished with failures · 2 usage or configuration error ·
3 authentication or authorization error. Errors print one line, never a traceback
(unless --debug).
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from sync import __version__
from sync.cli_data import DATA_COMMANDS
from sync.cli_state import State, run_async, table_console
from sync.errors import DvmirrorError

if TYPE_CHECKING:
    from sync.config.model import Environment
    from sync.store.pruning import Pruned


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


@cli.command()
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
@click.pass_obj
def check(state: State) -> None:
    """Call WhoAmI in every environment and say what to fix (exit 3 on auth failures)."""
    config = state.load()

    from sync.commands.check import run_check

    sys.exit(run_async(state, lambda: run_check(config, console=table_console())))


@cli.command("consent-url")
@click.option("--tenant", "tenant_name", required=True, help="The tenant's name in the config.")
@click.pass_obj
def consent_url(state: State, tenant_name: str) -> None:
    """Print the admin-consent URL a customer's administrator opens to consent the app."""
    config = state.load(resolve_secrets=False)
    from sync.dataverse.auth import consent_url as build

    click.echo(build(config, tenant_name))


@cli.command()
@click.option("--env", "env_name", help="Only this environment (its name in the config).")
@click.option("--table", "table_name", help="Only this table (logical name).")
@click.pass_obj
def backfill(state: State, env_name: str | None, table_name: str | None) -> None:
    """Load tables completely, with progress; rerunning resumes where it stopped."""
    config = state.load()
    from rich.console import Console

    from sync.commands.backfill import run_backfill

    sys.exit(
        run_async(
            state,
            lambda: run_backfill(
                config, env=env_name, table=table_name, console=Console(stderr=True)
            ),
        )
    )


@cli.command("sync")
@click.option("--once", is_flag=True, help="Run one incremental cycle for every table, then exit.")
@click.pass_obj
def sync_command(state: State, once: bool) -> None:
    """Run one incremental cycle for every configured table (`dvmirror run` keeps syncing)."""
    if not once:
        raise click.UsageError("use `dvmirror sync --once` for one cycle, or `dvmirror run`")
    config = state.load()
    from rich.console import Console

    from sync.commands.sync_once import run_sync_once

    sys.exit(run_async(state, lambda: run_sync_once(config, console=Console(stderr=True))))


@cli.command()
@click.option(
    "--scenario",
    help=(
        "Compare `dvmirror backfill` with a plain concurrent reader under this simulator "
        "scenario: latency, throttled, store, cpu, or a scenario file."
    ),
)
@click.option(
    "--postgres",
    metavar="URL",
    help=(
        "With --scenario: also backfill each part into PostgreSQL, beside SQLite. URL names a "
        "server and a database to connect to (left untouched); the bench creates a fresh "
        "database per part there (needs CREATEDB) and drops it at the end."
    ),
)
@click.option(
    "--rows-scale",
    type=click.FloatRange(0, 1, min_open=True),
    default=1.0,
    show_default=True,
    help="Shrink tables, page size and per-request time by this factor for a quick run.",
)
@click.option(
    "--rounds",
    type=click.IntRange(1, 20),
    default=1,
    show_default=True,
    help=(
        "With --scenario: measure each part this many times, the plain reader and dvmirror in "
        "turn; the table shows the median round and a line lists every round's ratios."
    ),
)
@click.option("--pipeline", is_flag=True, help="Benchmark the local parse → upsert → commit path.")
@click.option("--rows", type=int, default=200_000, show_default=True, help="Rows for --pipeline.")
@click.option(
    "--rss-rows",
    type=int,
    default=0,
    help="With --pipeline: also backfill a table of this many rows and report peak RSS.",
)
@click.pass_obj
def bench(
    state: State,
    scenario: str | None,
    postgres: str | None,
    rows_scale: float,
    rounds: int,
    pipeline: bool,
    rows: int,
    rss_rows: int,
) -> None:
    """Print benchmark figures (ratios measured side by side in one run)."""
    from rich.console import Console

    from sync.logs import configure_logging

    configure_logging(state.log_level or "warning")  # the figures are the output
    if pipeline and postgres is not None:
        raise click.UsageError("--postgres goes with --scenario, not --pipeline")
    if pipeline:
        from sync.bench.pipeline import run_pipeline_bench

        sys.exit(run_pipeline_bench(rows, console=Console(), rss_rows=rss_rows))
    if scenario is None:
        raise click.UsageError("give --scenario latency|throttled|store|cpu|FILE, or --pipeline")
    from sync.bench.backfill import run_side_by_side

    sys.exit(
        run_async(
            state,
            lambda: run_side_by_side(
                scenario,
                console=table_console(),
                rows_scale=rows_scale,
                postgres=postgres,
                rounds_wanted=rounds,
            ),
        )
    )


@cli.command()
@click.pass_obj
def run(state: State) -> None:
    """Run the daemon: keep every configured table in sync until SIGTERM.

    SIGHUP reloads the configuration. With systemd (Type=notify) it reports READY, STATUS
    and WATCHDOG. /metrics and /healthz listen on daemon.metrics_listen; with a [console]
    section the web console listens on console.listen in the same process.
    """
    config = state.load()
    from sync.commands.console import run_with_console

    sys.exit(run_async(state, lambda: run_with_console(config)))


@cli.command("console")
@click.pass_obj
def console_command(state: State) -> None:
    """Serve the web console alone, against the same store (writes only resync requests).

    Needs a [console] section; listens on console.listen until SIGTERM.
    """
    config = state.load()
    from sync.commands.console import run_console

    sys.exit(run_async(state, lambda: run_console(config)))


@cli.command()
@click.option("--duration", type=float, default=30.0, show_default=True, help="Seconds of churn.")
@click.option(
    "--dir",
    "directory",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("dvmirror-demo"),
    show_default=True,
    help="Where the simulator's files and the mirror database go (replaced on each run).",
)
@click.option(
    "--console",
    "with_console",
    is_flag=True,
    help="Also serve the web console on 127.0.0.1 and, after the check, keep the daemon and the "
    "console up (printing the URL and the users to sign in as) until Ctrl-C.",
)
@click.option(
    "--console-port",
    type=click.IntRange(0, 65535),
    default=8080,
    show_default=True,
    help="The console's port with --console; when busy (or 0), any free port.",
)
@click.pass_obj
def demo(
    state: State, duration: float, directory: Path, with_console: bool, console_port: int
) -> None:
    """Run the daemon against the built-in simulator with churn, then show the result.

    With --console, the web console stays up afterwards for you to sign in through the
    simulator's user picker; Ctrl-C stops everything (exit 0 when the check passed).
    """
    from rich.console import Console

    from sync.commands.demo import run_demo
    from sync.logs import configure_logging

    # The live table is the demo's output; keep the daemon's log to warnings and errors.
    configure_logging(state.log_level or "error")
    sys.exit(
        run_async(
            state,
            lambda: run_demo(
                Console(),
                directory=directory.resolve(),
                duration=duration,
                console_port=console_port if with_console else None,
            ),
        )
    )


# A decoded page is ~200,000 new containers (5,000 rows of dicts and tuples), all alive until it
# is written: at the default of 700 allocations the collector runs hundreds of times a page
# and promotes them all, to be scanned again by the older generations (~6% of a backfill's CPU).
GC_THRESHOLDS = (50_000, 20, 100)


for _command in DATA_COMMANDS:
    cli.add_command(_command)


def exit_status(code: object) -> int:
    """The process exit status `sys.exit(code)` gives: None → 0, an int as is, anything else
    printed to stderr → 1."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def leave(status: int) -> NoReturn:
    """End the process now that the command is over: flush the output, skip the interpreter's
    teardown. Every command has closed what it opened by then (the store, the HTTP sessions,
    the decode workers; asyncio.run joined its threads); what is left is freeing every module
    and object one by one, which took 0.2 s (up to 1 s on a busy machine) after a backfill."""
    import logging

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(status)


def main(argv: list[str] | None = None) -> None:
    """Console entry point (as the process's own entry, `argv` None, it ends the process)."""
    # Windows consoles and pipes may not be UTF-8; our output is.
    os.environ.setdefault("PYTHONIOENCODING", "utf-8")
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        cli.main(args=argv, prog_name="dvmirror")
    except SystemExit as exc:
        if argv is not None:
            raise
        leave(exit_status(exc.code))


if __name__ == "__main__":
    main()
