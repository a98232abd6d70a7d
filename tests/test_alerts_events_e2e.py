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

Each condition gives one message per state change, never two, also across a restart.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from datetime import datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from tests.cli import run_cli
from tests.daemonproc import DaemonProcess, EnvSpec, wait_until, write_config
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
