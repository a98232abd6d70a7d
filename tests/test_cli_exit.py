"""The command line ends its process without the interpreter's teardown (sync.cli.leave): the
output must still all be there, block-buffered as it is in a pipe, and the exit codes unchanged."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sync import __version__
from sync.cli import exit_status
from tests.cli import clean_env


def buffered(*args: str) -> subprocess.CompletedProcess[str]:
    """`python -m sync ARGS` into pipes, output block-buffered (no PYTHONUNBUFFERED)."""
    env = clean_env()
    env.pop("PYTHONUNBUFFERED", None)
    return subprocess.run(
        [sys.executable, "-m", "sync", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_buffered_output_survives_the_fast_exit() -> None:
    version = buffered("--version")
    assert version.returncode == 0
    assert version.stdout == f"dvmirror, version {__version__}\n"
    helped = buffered("--help")
    assert helped.returncode == 0
    assert helped.stdout.startswith("Usage: dvmirror")
    assert "backfill" in helped.stdout


def test_exit_codes_and_error_lines_are_unchanged(tmp_path: Path) -> None:
    missing = buffered("--config", str(tmp_path / "missing.toml"), "status")
    assert missing.returncode == 2
    assert "configuration file not found" in missing.stderr
    assert buffered("no-such-command").returncode == 2


@pytest.mark.parametrize(
    ("code", "status"), [(None, 0), (0, 0), (1, 1), (2, 2), (3, 3), ("why", 1)]
)
def test_exit_status_is_what_sys_exit_gives(code: object, status: int) -> None:
    assert exit_status(code) == status
