"""The data teams' commands of `dvmirror`: status, feed, dbt-sources, tables, resync, verify.

Registered on the `dvmirror` group by sync.cli; each parses its options, loads the
configuration and calls its module in sync.commands.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from sync.cli_state import State, run_async, table_console


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of tables.")
@click.pass_obj
def status(state: State, as_json: bool) -> None:
    """Show every table: phase, rows, last success, lag, errors, throttling, budgets.

    Reads the control database; works while the daemon runs.
    """
    config = state.load(resolve_secrets=False)

    from sync.commands.status import run_status

    sys.exit(run_async(state, lambda: run_status(config, as_json=as_json, console=table_console())))


@click.command("dbt-sources")
@click.option("--env", "env_name", required=True, help="The environment (its name in the config).")
@click.pass_obj
def dbt_sources(state: State, env_name: str) -> None:
    """Print a dbt sources.yml for the environment's mirrored tables (columns with their
    Dataverse display names and descriptions, freshness, key tests)."""
    config = state.load(resolve_secrets=False)

    from sync.commands.dbt_sources import run_dbt_sources

    click.echo(run_async(state, lambda: run_dbt_sources(config, env_name)), nl=False)


@click.command()
@click.option("--env", "env_name", required=True, help="The environment (its name in the config).")
@click.option(
    "--since",
    type=click.IntRange(min=0),
    required=True,
    help="The last commit number already loaded (0: from the start).",
)
@click.option("--until", type=click.IntRange(min=0), help="Stop at this commit number.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of a table.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["jsonl", "csv"]),
    help="Write the interval's rows and deletions instead of listing its commits.",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    help="Folder for the rows: DIR/<env>-<N>-<M>/, a file per table (default: jsonl on stdout).",
)
@click.pass_obj
def feed(
    state: State,
    env_name: str,
    since: int,
    until: int | None,
    as_json: bool,
    fmt: str | None,
    out: Path | None,
) -> None:
    """The change feed after commit number N: its commits, or with --format its rows.

    Without --format: the commits (seq, table, time, upserts, deletes) and the newest number M;
    load the mirror rows and _dv_deletions rows with N < _dv_commit_seq <= M. With --format
    jsonl|csv: those rows themselves, read in one snapshot (see README "Loading
    incrementally"). Run again with --since M. Reads only; works while the daemon runs.
    """
    config = state.load(resolve_secrets=False)
    if as_json and (fmt or out):
        raise click.UsageError("--json lists commits; it does not go with --format or --out")

    from sync.commands.feed import run_feed

    sys.exit(
        run_async(
            state,
            lambda: run_feed(
                config,
                env=env_name,
                since=since,
                until=until,
                as_json=as_json,
                console=table_console(),
                export=(fmt or "jsonl", out) if fmt or out else None,
            ),
        )
    )


@click.command()
@click.option("--env", "env_name", required=True, help="The environment (its name in the config).")
@click.option("--table", "table_name", help="The table to read again (logical name).")
@click.option("--all", "every_table", is_flag=True, help="Every table of the environment.")
@click.pass_obj
def resync(state: State, env_name: str, table_name: str | None, every_table: bool) -> None:
    """Queue a full pass of a table (or of every table) that sweeps rows gone at the source.

    The running daemon that holds the environment's lease picks it up within a second; without
    one the request waits. `dvmirror status` shows it: requested, running n%, done or failed.
    """
    config = state.load(resolve_secrets=False)

    from sync.commands.resync import run_resync

    sys.exit(
        run_async(
            state,
            lambda: run_resync(
                config,
                env=env_name,
                table=table_name,
                every_table=every_table,
                console=table_console(),
            ),
        )
    )


@click.command()
@click.option("--env", "env_name", required=True, help="The environment (its name in the config).")
@click.pass_obj
def tables(state: State, env_name: str) -> None:
    """List the tables the environment's `tables` rules resolve to now, why each other
    matched table is left out, and which fall back to a watermark (no change tracking)."""
    config = state.load()

    from sync.commands.tables import run_tables

    for line in run_async(state, lambda: run_tables(config, env_name)):
        click.echo(line)


@click.command()
@click.option("--env", "env_name", help="Only this environment (its name in the config).")
@click.option("--table", "table_name", help="Only this table (logical name).")
@click.option("--exact", is_flag=True, help="Count every key range exactly and diff every key.")
@click.option(
    "--repair",
    is_flag=True,
    help="Refetch missing and stale rows, delete ghosts (implies --exact).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.pass_obj
def verify(
    state: State,
    env_name: str | None,
    table_name: str | None,
    exact: bool,
    repair: bool,
    as_json: bool,
) -> None:
    """Check the mirror against Dataverse (exit 1 while a mismatch is left unrepaired)."""
    config = state.load()
    from rich.console import Console

    from sync.commands.verify import run_verify

    sys.exit(
        run_async(
            state,
            lambda: run_verify(
                config,
                env=env_name,
                table=table_name,
                exact=exact,
                repair=repair,
                json_output=as_json,
                console=Console(soft_wrap=True, highlight=False),
            ),
        )
    )


DATA_COMMANDS = (status, feed, dbt_sources, tables, resync, verify)
