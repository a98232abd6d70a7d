"""`dvmirror check` (run in-process): one row per environment, the right fix, the right exit code."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from sync.commands.check import CheckResult, check_all, exit_code, run_check
from tests.h3_helpers import write_config
from tests.simfixtures import running_simulator


@pytest.fixture(scope="module", name="ready")
def _ready(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with running_simulator("auth", tmp_path_factory.mktemp("sim")) as ready:
        yield ready


def console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=400, color_system=None), out


async def test_healthy_environments_exit_0(ready: dict[str, Any], tmp_path: Path) -> None:
    """Every environment answers WhoAmI: ok rows with user and organization ids, exit 0."""
    config = write_config(tmp_path, ready, environments=["contoso_prod", "fabrikam_prod"])
    con, out = console()
    assert await run_check(config, console=con) == 0
    results = await check_all(config)
    assert all(r.ok and r.user_id and r.organization_id for r in results)
    assert out.getvalue().count(" ok ") == 2


async def test_each_failure_reports_its_fix_and_exit_3(
    ready: dict[str, Any], tmp_path: Path
) -> None:
    """No application user, no consent: each row says what to do; auth failures exit 3."""
    config = write_config(tmp_path, ready)
    con, out = console()
    assert await run_check(config, console=con) == 3
    by_env = {r.environment: r for r in await check_all(config)}
    assert by_env["contoso_prod"].ok
    assert by_env["fabrikam_prod"].ok
    assert "Application users" in by_env["contoso_nouser"].fix
    assert ready["client_id"] in by_env["contoso_nouser"].fix
    assert "adminconsent?client_id=" in by_env["northwind_prod"].fix
    text = out.getvalue()
    assert "no application user" in text
    assert "adminconsent" in text


async def test_bad_secret_is_reported_with_its_fix(ready: dict[str, Any], tmp_path: Path) -> None:
    """A wrong client secret fails every environment of the tenant with the credential fix."""
    config = write_config(
        tmp_path, ready, environments=["contoso_prod"], secret="wrong-secret-value"
    )
    con, out = console()
    assert await run_check(config, console=con) == 3
    (result,) = await check_all(config)
    assert not result.ok
    assert "client secret is wrong" in result.error
    assert "Certificates & secrets" in result.fix
    assert "wrong-secret-value" not in out.getvalue()


async def test_unknown_environment_url_is_an_auth_failure(
    ready: dict[str, Any], tmp_path: Path
) -> None:
    """An environment URL that is no resource of the tenant fails at the token step (exit 3)."""
    config = write_config(
        tmp_path,
        ready,
        environments=["contoso_prod"],
        extra_tenants=[("fabrikam", "bbbbbbbb-0000-0000-0000-000000000002", "https://127.0.0.1:9")],
    )
    con, _ = console()
    assert await run_check(config, console=con) == 3
    failed = [r for r in await check_all(config) if not r.ok]
    assert [r.environment for r in failed] == ["fabrikam_env"]


@pytest.mark.parametrize(
    ("results", "expected"),
    [
        ([CheckResult("t", "a", True)], 0),
        ([CheckResult("t", "a", True), CheckResult("t", "b", False, error="timeout")], 1),
        (
            [
                CheckResult("t", "a", False, error="x"),
                CheckResult("t", "b", False, auth_failure=True),
            ],
            3,
        ),
    ],
)
def test_exit_codes(results: list[CheckResult], expected: int) -> None:
    """0 when all are ok, 3 when any fails authentication or authorization, else 1."""
    assert expected == exit_code(results)
