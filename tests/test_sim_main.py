"""The simulator process: scenario validation, the ready line, the generated config, signals."""

from __future__ import annotations

import json
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from sync.config.loading import load_config
from sync.errors import ConfigError
from sync.simulator.faults import FaultRates
from sync.simulator.scenario import bundled_scenarios, load_scenario
from sync.simulator.templates import TEMPLATES
from tests.cli import clean_env
from tests.simfixtures import REPO, _read_line, running_simulator


@pytest.mark.parametrize(
    "name", ["basic", "auth", "demo", "throttled", "realistic", "latency", "signin"]
)
def test_bundled_scenarios_are_valid(name: str) -> None:
    """Every bundled scenario loads and validates."""
    assert name in bundled_scenarios()
    scenario = load_scenario(name)
    assert scenario.tenants


def test_latency_scenario_has_the_figures_its_header_states() -> None:
    """latency.toml: 15.2 s per full 5,000-row page, ~0.88 s key-only, the real limits on one
    server, an execution-bound ceiling of ~1,316 rows/s, no faults; four change-tracked tables
    of 20,000 rows in one environment, one of 200,000 in another."""
    tables, big = load_scenario("latency").tenants[0].environments
    columns = sum(1 for attr in TEMPLATES["account"].attributes if attr.in_rows)
    assert columns == 22  # what the header's key-only figures assume
    for env in (tables, big):
        limits = env.limits
        assert limits.execution_time(5000) == pytest.approx(15.2)
        assert limits.execution_time(5000, 1, columns) == pytest.approx(0.2 + 15 / 22)
        assert (limits.requests, limits.window, limits.execution_seconds) == (6000, 300, 1200)
        assert (limits.concurrency, limits.servers, limits.dop_hint) == (52, 1, 48)
        assert limits.ceiling_rows_per_second() == pytest.approx(1316, abs=1)
        assert limits.ceiling_rows_per_second(5000, 1, columns) == pytest.approx(22_680, abs=10)
        assert env.faults == FaultRates()
        assert all(t.change_tracking for t in env.tables)
    assert {t.name: t.rows for t in tables.tables} == {
        "account": 20_000,
        "contact": 20_000,
        "opportunity": 20_000,
        "new_project": 20_000,
    }
    assert {t.name: t.rows for t in big.tables} == {"account": 200_000}


def test_unknown_key_is_one_clear_error(tmp_path: Path) -> None:
    """A typo in a scenario is rejected with the file, the key path and the reason."""
    path = tmp_path / "bad.toml"
    path.write_text(
        (REPO / "config/scenarios/basic.toml").read_text().replace("rows = 300", "rowz = 300")
    )
    with pytest.raises(
        ConfigError, match=r"bad\.toml: tenants\.0\.environments\.0\.tables\.0\.rowz: unknown key"
    ):
        load_scenario(path)


def test_bad_scenario_exits_2_with_one_line(tmp_path: Path) -> None:
    """A scenario naming an unknown app prints one line on stderr, nothing on stdout, and exits 2."""
    path = tmp_path / "bad.toml"
    text = (REPO / "config/scenarios/basic.toml").read_text()
    path.write_text(text.replace('consented_apps = ["11111111', 'consented_apps = ["99999999', 1))
    result = subprocess.run(
        [sys.executable, "-m", "sync.simulator.main", "--scenario", str(path)],
        capture_output=True,
        text=True,
        env=clean_env(),
        cwd=REPO,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1
    assert "99999999-1111-1111-1111-111111111111" in result.stderr


def test_ready_line_and_generated_config(tmp_path: Path) -> None:
    """The ready line has the contract keys and the generated config loads and points at this simulator."""
    with running_simulator("basic", tmp_path / "state") as ready:
        for key in (
            "authority_host",
            "ca_file",
            "admin_url",
            "client_id",
            "client_secret",
            "tenants",
            "config_file",
        ):
            assert key in ready
        secret_file = Path(ready["secret_file"])
        assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
        config = load_config(Path(ready["config_file"]), environ={})
        app = config.app_for(config.tenants[0])
        assert app.authority_host == ready["authority_host"]
        assert app.ca_bundle == Path(ready["ca_file"])
        assert app.client_secret is not None
        assert app.client_secret.get_secret_value() == ready["client_secret"]
        assert config.warnings == ()
        urls = {e.name: e.url for _, e in config.environments()}
        expected = {e["name"]: e["url"] for t in ready["tenants"] for e in t["environments"]}
        assert urls == expected
        assert config.data_dir == tmp_path / "state" / "dvmirror"


def test_sigterm_stops_cleanly_and_removes_temporary_state() -> None:
    """Without --state-dir the state lives in a temporary directory that is gone after SIGTERM (exit 0)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "sync.simulator.main", "--scenario", "basic"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=clean_env(),
        cwd=REPO,
    )
    try:
        ready = json.loads(_read_line(process, 60))
        state_dir = Path(ready["state_dir"])
        assert state_dir.is_dir()
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
        assert not state_dir.exists()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()
