"""The `dvmirror` command line: parse, call, map the outcome to a documented exit code.

Exit codes: 0 ok · 1 a run finished with failures · 2 usage or configuration error ·
3 authentication or authorization error. Errors print one line, never a traceback
(unless --debug). The commands are in sync.cli_setup, sync.cli_mirror, sync.cli_trial and
sync.cli_data; heavy imports wait inside each command, so `dvmirror --help` stays quick.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from sync import __version__
from sync.cli_data import DATA_COMMANDS
from sync.cli_mirror import MIRROR_COMMANDS
from sync.cli_setup import SETUP_COMMANDS
from sync.cli_state import State
from sync.cli_trial import TRIAL_COMMANDS
from sync.errors import DvmirrorError


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


# A decoded page is ~200,000 new containers (5,000 rows of dicts and tuples), all alive until it
# is written: at the default of 700 allocations the collector runs hundreds of times a page
# and promotes them all, to be scanned again by the older generations (~6% of a backfill's CPU).
GC_THRESHOLDS = (50_000, 20, 100)


for _command in (*SETUP_COMMANDS, *MIRROR_COMMANDS, *TRIAL_COMMANDS, *DATA_COMMANDS):
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
