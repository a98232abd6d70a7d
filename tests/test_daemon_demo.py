"""`dvmirror demo` as users run it: a subprocess that starts the simulator and the daemon."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli import run_cli
from tests.simfixtures import _no_ca_env  # noqa: F401

pytestmark = [pytest.mark.usefixtures("no_ca_env"), pytest.mark.slow]


def test_demo_exits_zero_and_says_where_the_mirror_is(tmp_path: Path) -> None:
    """A short demo converges, exits 0, prints the mirror's path and that every table matches."""
    directory = tmp_path / "demo"
    result = run_cli(
        "demo", "--duration", "5", "--dir", directory, env={"COLUMNS": "250"}, timeout=180
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    database = directory / "simulator" / "dvmirror" / "mirror.db"
    assert f"The mirror is {database}" in result.stdout
    assert "every mirror table matches its source, column by column" in result.stdout
    assert database.is_file()
