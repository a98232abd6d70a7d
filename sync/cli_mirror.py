"""The commands of `dvmirror` that mirror tables: backfill, sync --once, run, console.

Registered on the `dvmirror` group by sync.cli; each loads the configuration and calls its
module in sync.commands.
"""

from __future__ import annotations

import sys

import click

from sync.cli_state import State, run_async


@click.command()
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


@click.command("sync")
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


@click.command()
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


@click.command("console")
@click.pass_obj
def console_command(state: State) -> None:
    """Serve the web console alone, against the same store (writes only resync requests).

    Needs a [console] section; listens on console.listen until SIGTERM.
    """
    config = state.load()
    from sync.commands.console import run_console

    sys.exit(run_async(state, lambda: run_console(config)))


MIRROR_COMMANDS = (backfill, sync_command, run, console_command)
