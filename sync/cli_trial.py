"""The `dvmirror` commands that need no tenant: simulate, bench, demo.

Registered on the `dvmirror` group by sync.cli.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from sync.cli_state import State, run_async, table_console


@click.command()
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


@click.command()
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


@click.command()
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


TRIAL_COMMANDS = (simulate, bench, demo)
