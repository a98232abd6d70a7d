"""Alert events end to end: `dvmirror run` (a subprocess) against the simulator over HTTPS, a
local HTTPS webhook receiver, a real SQLite file.

- `auth_failed` (a tenant whose secret is wrong) and `budget_exhausted` (a tenant whose daily
  request budget is spent): one `raised` message each, then a `reminder` every `repeat` while
  the condition holds, and one `recovered` when the right secret comes in by SIGHUP;
- `lag_exceeded` (the environment answers 503, the table's last success ages past
  `lag_threshold`) and `verify_mismatch` (`dvmirror verify` beside the daemon finds rows
  deleted from the mirror): one message each, and one `recovered` each: the fault lifted, and
  the mismatch repaired (`verify --repair`, the daemon stopped) as the restarted daemon sees;
- `schema_type_change`: a column deleted and created again with another type at the source is
  one message, never reminded.

Each condition gives one message per state change, never two, also across a restart. The
daemon looks every 5 s: the tests that need three looks or two daemon starts (auth_failed's
recovery, verify_mismatch's) take over 20 s and run with `-m long`.
"""

from __future__ import annotations

import json
import signal
import sqlite3
from collections.abc import Iterator
from datetime import datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from tests.cli import run_cli
from tests.daemonproc import DaemonProcess, EnvSpec, wait_until, write_config
from tests.mirror_compare import query
from tests.simfixtures import _no_ca_env, admin, running_simulator  # noqa: F401
from tests.test_alerts_e2e import HOOK_PATH, Receiver

pytestmark = [pytest.mark.usefixtures("no_ca_env"), pytest.mark.slow, pytest.mark.timeout(300)]
SCENARIO = Path(__file__).parent / "scenarios" / "alerts_events.toml"
HOOK_ENV = "DVMIRROR_TEST_HOOK"


@pytest.fixture(scope="module", name="sim")
def _sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with running_simulator(SCENARIO, tmp_path_factory.mktemp("sim-alert-events")) as ready:
        yield ready


@pytest.fixture(name="receiver")
def _receiver(tmp_path: Path) -> Iterator[Receiver]:
    receiver = Receiver(tmp_path / "hook-tls")
    yield receiver
    receiver.stop()


def with_alert(config: Path, receiver: Receiver, **settings: str) -> dict[str, str]:
    """One [[alerts]] entry posting JSON to the receiver; the environment giving its URL."""
    lines = [
        "[[alerts]]",
        'name = "ops"',
        f'url = {{ env = "{HOOK_ENV}" }}',
        'format = "json"',
        f'ca_bundle = "{receiver.tls.ca_file}"',
        *(f"{key} = {value}" for key, value in settings.items()),
    ]
    config.write_text(config.read_text() + "\n" + "\n".join(lines) + "\n")
    return {HOOK_ENV: f"https://127.0.0.1:{receiver.port}{HOOK_PATH}"}


def seen(receiver: Receiver, condition: str, kind: str | None = None) -> list[dict[str, Any]]:
    return [
        m
        for m in list(receiver.messages)
        if m["condition"] == condition and (kind is None or m["kind"] == kind)
    ]


def at(message: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(message["at"])


@pytest.mark.long  # about 22 s: a raise, a reminder and a recovery are three 5-s looks
def test_auth_failed_and_budget_exhausted_are_reminded_every_repeat_then_recover(
    sim: dict[str, Any], tmp_path: Path, receiver: Receiver
) -> None:
    wrong = tmp_path / "fabrikam.secret"
    wrong.write_text("not-the-right-secret\n")
    wrong.chmod(0o600)
    envs = {
        "auth_env": EnvSpec(("account",), interval="1s"),
        "budget_env": EnvSpec(("account",), interval="1s", page_size=10),
    }
    config = write_config(sim, tmp_path, envs, secret_files={"fabrikam": wrong})
    text = config.read_text().replace(
        'name = "adatum"\n', 'name = "adatum"\ndaily_request_budget = 6\n'
    )
    # A worker waiting for a spent budget holds a stop for the whole grace: keep it short.
    config.write_text(text.replace("[daemon]\n", "[daemon]\nshutdown_grace = 2\n"))
    env = with_alert(
        config,
        receiver,
        events='["auth_failed", "budget_exhausted", "recovered"]',
        repeat='"4s"',
    )
    daemon = DaemonProcess.start(config, tmp_path / "daemon.log", env=env)
    try:
        wait_until(
            lambda: (
                len(seen(receiver, "auth_failed", "reminder")) >= 1
                and len(seen(receiver, "budget_exhausted", "reminder")) >= 1
            ),
            timeout=60,
            what="a raised message and a reminder of each condition",
        )
        for condition, environment in (
            ("auth_failed", "auth_env"),
            ("budget_exhausted", "budget_env"),
        ):
            (raised,) = seen(receiver, condition, "raised")
            assert (raised["environment"], raised["table"]) == (environment, None)
            reminders = seen(receiver, condition, "reminder")
            assert all(r["since"] == raised["since"] for r in reminders)
            times = [at(raised), *map(at, reminders)]
            assert all((b - a).total_seconds() >= 4 for a, b in pairwise(times))
        assert "cannot sign in" in seen(receiver, "auth_failed", "raised")[0]["text"]

        wrong.write_text(Path(sim["secret_file"]).read_text())
        daemon.send(signal.SIGHUP)
        wait_until(
            lambda: seen(receiver, "auth_failed", "recovered"),
            timeout=60,
            what="auth_failed recovered after the right secret",
        )
        (recovered,) = seen(receiver, "auth_failed", "recovered")
        assert recovered["event"] == "recovered" and recovered["environment"] == "auth_env"
        assert "signs in again" in recovered["text"]
        assert not seen(receiver, "budget_exhausted", "recovered")  # still spent
    finally:
        code = daemon.stop()
    assert code == 0, daemon.tail()
    assert len(seen(receiver, "auth_failed", "raised")) == 1
    assert len(seen(receiver, "budget_exhausted", "raised")) == 1
    assert "not-the-right-secret" not in daemon.log_path.read_text()
    assert "secret-token-part" not in daemon.log_path.read_text()
    shown = json.loads(run_cli("--config", config, "status", "--json").stdout)["alerts"]
    assert shown and shown[0]["last_delivery"]["outcome"] == "ok", shown


def converged(database: Path, table: str = "account") -> bool:
    """The table's first cycle succeeded."""
    if not database.exists():
        return False
    try:
        rows = query(
            database,
            "SELECT count(*) FROM dv_sync_state WHERE table_name = ? AND last_success IS NOT NULL",
            table,
        )
    except sqlite3.OperationalError:  # not migrated yet
        return False
    return rows[0][0] > 0


def retyped(database: Path) -> bool:
    changed = "SELECT count(*) FROM dv_mirror_columns WHERE type_changed_at IS NOT NULL"
    return bool(query(database, changed)[0][0])


def test_lag_budget_and_a_type_change_alert_once_reminded_and_lag_recovers(
    sim: dict[str, Any], tmp_path: Path, receiver: Receiver
) -> None:
    """One environment answers 503 (the table's last success ages past 2 s) after a column was
    deleted and created again with another type; another tenant spends its daily budget. One
    `schema_type_change` event, never reminded; `lag_exceeded` and `budget_exhausted` raised
    once each and reminded every `repeat` (4 s) while they hold; once the fault is lifted, one
    `recovered` for the lag."""
    envs = {
        "lag_env": EnvSpec(("account",), interval="1s"),
        "budget_env": EnvSpec(("account",), interval="1s", page_size=10),
    }
    config = write_config(sim, tmp_path, envs)
    text = config.read_text().replace("[daemon]\n", "[daemon]\nshutdown_grace = 2\n")
    config.write_text(
        text.replace('name = "adatum"\n', 'name = "adatum"\ndaily_request_budget = 6\n')
    )
    env = with_alert(
        config,
        receiver,
        events='["lag_exceeded", "budget_exhausted", "schema_type_change", "recovered"]',
        lag_threshold='"2s"',
        repeat='"4s"',
    )
    columns = "/environments/lag_env/tables/account/columns"
    admin(sim, "POST", columns, {"name": "new_score", "type": "Integer"})
    database = tmp_path / "mirror.db"
    daemon = DaemonProcess.start(config, tmp_path / "daemon.log", env=env)
    try:
        wait_until(lambda: converged(database), timeout=60, what="the first cycle")
        admin(sim, "DELETE", f"{columns}/new_score")
        admin(sim, "POST", columns, {"name": "new_score", "type": "String"})
        wait_until(lambda: retyped(database), timeout=30, what="the type change in the catalogue")
        admin(sim, "POST", "/faults", {"environment": "lag_env", "http_503": 1.0})
        wait_until(lambda: seen(receiver, "lag_exceeded"), timeout=60, what="lag_exceeded")
        admin(sim, "POST", "/faults", {"environment": "lag_env", "http_503": 0.0})
        wait_until(
            lambda: seen(receiver, "lag_exceeded", "recovered"), timeout=60, what="caught up"
        )
        wait_until(
            lambda: seen(receiver, "budget_exhausted", "reminder"), timeout=30, what="a reminder"
        )
    finally:
        admin(sim, "POST", "/faults", {"environment": "lag_env", "http_503": 0.0})
        code = daemon.stop()
    assert code == 0, daemon.tail()
    (change,) = seen(receiver, "schema_type_change")  # a one-off: never reminded
    assert (change["kind"], change["table"]) == ("event", "account")
    assert "new_score is now" in change["detail"], change
    lag = seen(receiver, "lag_exceeded")
    kinds = [m["kind"] for m in lag]
    assert kinds[0] == "raised" and kinds[-1] == "recovered"
    assert set(kinds[1:-1]) <= {"reminder"}, kinds
    assert lag[0]["table"] == "account" and "s ago" in lag[0]["detail"]
    assert "has caught up" in lag[-1]["text"]
    budget = seen(receiver, "budget_exhausted")
    assert [m["kind"] for m in budget][:2] == ["raised", "reminder"], budget
    assert {m["kind"] for m in budget[1:]} == {"reminder"}
    assert budget[0]["environment"] == "budget_env" and budget[0]["table"] is None
    times = [at(m) for m in budget]
    assert all((b - a).total_seconds() >= 4 for a, b in pairwise(times))
    for message in (*lag, *budget):
        assert message["since"] == (lag if message in lag else budget)[0]["since"]


@pytest.mark.long  # about 24 s: two daemon starts, three CLI runs, 5-s looks
def test_verify_mismatch_alerts_once_and_recovers_when_repaired_across_a_restart(
    sim: dict[str, Any], tmp_path: Path, receiver: Receiver
) -> None:
    """Rows deleted from the mirror: `dvmirror verify --exact` beside the daemon finds them
    (exit 1), one `verify_mismatch`; the daemon stopped, `verify --exact --repair` repairs
    them; the restarted daemon sends one `recovered` and nothing twice."""
    config = write_config(sim, tmp_path, {"lag_env": EnvSpec(("contact",), interval="1s")})
    config.write_text(config.read_text().replace("[daemon]\n", "[daemon]\nshutdown_grace = 2\n"))
    env = with_alert(config, receiver, events='["verify_mismatch", "recovered"]')
    database = tmp_path / "mirror.db"
    log = tmp_path / "daemon.log"
    daemon = DaemonProcess.start(config, log, env=env)
    try:
        wait_until(lambda: converged(database, "contact"), timeout=60, what="the first cycle")
        query(
            database,
            'DELETE FROM "lag_env__contact" WHERE contactid IN '
            '(SELECT contactid FROM "lag_env__contact" ORDER BY contactid LIMIT 3)',
        )
        found = run_cli("--config", config, "verify", "--exact", env=env, timeout=120)
        assert found.returncode == 1, found.stdout + found.stderr
        assert "MISMATCH 3 rows (3 missing" in found.stdout
        wait_until(lambda: seen(receiver, "verify_mismatch"), timeout=30, what="verify_mismatch")
        assert daemon.stop() == 0, daemon.tail()
        repaired = run_cli(
            "--config", config, "verify", "--exact", "--repair", env=env, timeout=120
        )
        assert repaired.returncode == 0, repaired.stdout + repaired.stderr
        daemon = DaemonProcess.start(config, log, env=env)
        wait_until(
            lambda: seen(receiver, "verify_mismatch", "recovered"), timeout=30, what="recovered"
        )
    finally:
        code = daemon.stop()
    assert code == 0, daemon.tail()
    assert [(m["kind"], m["table"]) for m in receiver.messages] == [
        ("raised", "contact"),
        ("recovered", "contact"),
    ]
    assert "3 rows differ from the source" in receiver.messages[0]["detail"]
    assert "matches the source again" in receiver.messages[1]["text"]
