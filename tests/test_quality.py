"""The code stays lint-clean, formatted and strictly typed (the settings are in pyproject.toml)."""

from __future__ import annotations

import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, check=False
    )


@pytest.mark.skipif(find_spec("ruff") is None, reason="ruff is part of the test extra")
def test_ruff_lint_and_format() -> None:
    """ruff finds nothing to report and nothing to reformat in sync/ and tests/."""
    lint = _run("ruff", "check", "sync", "tests", "migrations")
    assert lint.returncode == 0, lint.stdout[-4000:]
    fmt = _run("ruff", "format", "--check", "sync", "tests")
    assert fmt.returncode == 0, fmt.stdout[-4000:]


@pytest.mark.slow
def test_mypy_strict() -> None:
    """mypy --strict passes on the whole package."""
    result = _run("mypy")
    assert result.returncode == 0, result.stdout[-4000:]


@pytest.mark.skipif(find_spec("importlinter") is None, reason="import-linter is in the test extra")
def test_layers_import_only_downwards() -> None:
    """The import-linter contracts in pyproject.toml hold: cli → bench → commands → runtime →
    mirror → governor → dataverse | store → config → errors | logs | limits, and the simulator
    and the product stay apart."""
    result = subprocess.run(
        [str(Path(sys.executable).with_name("lint-imports"))],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-4000:]
