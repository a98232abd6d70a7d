"""Alert delivery to local HTTPS receivers (self-signed CA via the alert's ca_bundle): one that
answers, one that is down, one that is slow. Delivery is bounded and never holds up the caller;
the outcome lands in dv_alert_deliveries and `dvmirror status`; the URL's secret never shows.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiohttp import web

from sync.config.loading import load_config
from sync.runtime.alerts.delivery import DeliveryPolicy, Senders
from sync.runtime.alerts.rules import Message
from sync.simulator.tls import make_tls
from sync.store.alerts import record_delivery
from sync.store.open import open_store
from tests.cli import run_cli

SECRET_PATH = "/hooks/T0SECRET/B0SECRET/xoxsecretpart"
CLIENT_ID = "11111111-2222-3333-4444-555555555555"
POLICY = DeliveryPolicy(queue_size=4, attempts=3, timeout=0.5, backoff=0.05, backoff_max=0.1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(tmp_path: Path, ca: Path, fmt: str = "slack") -> tuple[Path, dict[str, str]]:
    text = f"""
[app]
client_id = "{CLIENT_ID}"
client_secret = {{ env = "DVMIRROR_CLIENT_SECRET" }}

[store]
url = "sqlite+aiosqlite:///{tmp_path / "mirror.db"}"

[[tenants]]
name = "contoso"
tenant_id = "contoso.onmicrosoft.com"
[[tenants.environments]]
name = "prod"
url = "https://contoso.crm.dynamics.com"
tables = ["account"]

[[alerts]]
name = "up"
url = {{ env = "HOOK_UP" }}
format = "{fmt}"
ca_bundle = "{ca}"

[[alerts]]
name = "down"
url = {{ env = "HOOK_DOWN" }}
ca_bundle = "{ca}"

[[alerts]]
name = "slow"
url = {{ env = "HOOK_SLOW" }}
format = "teams"
ca_bundle = "{ca}"
"""
    path = tmp_path / "dvmirror.toml"
    path.write_text(text)
    return path, {"DVMIRROR_CLIENT_SECRET": "x"}


def message(alert: str, table: str = "account") -> Message:
    now = datetime.now(UTC)
    return Message(alert, "raised", "table_parked", "prod", "contoso", table, "HTTP 500", now, now)


async def test_receivers_up_down_and_slow(tmp_path: Path) -> None:
    tls = make_tls(tmp_path / "tls", extra_names=())
    received: list[dict[str, object]] = []

    async def ok(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.Response(text="1")

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.Response(text="late")

    app = web.Application()
    app.router.add_post(SECRET_PATH, ok)
    app.router.add_post("/slow" + SECRET_PATH, slow)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=tls.server_context()).start()
    base = f"https://127.0.0.1:{port}"
    path, environ = write_config(tmp_path, tls.ca_file)
    environ |= {
        "HOOK_UP": base + SECRET_PATH,
        "HOOK_DOWN": f"https://127.0.0.1:{free_port()}{SECRET_PATH}",
        "HOOK_SLOW": base + "/slow" + SECRET_PATH,
    }
    config = load_config(path, environ)
    assert config.alerts[0].origin == base
    assert "xoxsecretpart" not in repr(config.alerts)
    store = await open_store(config)
    outcomes: list[tuple[str, str, int]] = []

    async def on_outcome(m: Message, outcome: str, attempts: int) -> None:
        outcomes.append((m.alert, outcome, attempts))
        await record_delivery(
            store,
            alert=m.alert,
            at=datetime.now(UTC),
            kind=m.kind,
            event=m.name,
            environment=m.environment,
            table=m.table,
            outcome=outcome,
            attempts=attempts,
        )

    senders = Senders(config.alerts, on_outcome, POLICY)
    senders.start()
    try:
        started = time.monotonic()
        for name in ("up", "down", "slow"):
            senders.offer(message(name))
        for extra in range(6):  # more than the slow receiver's queue holds: dropped, not waited
            senders.offer(message("slow", f"t{extra}"))
        assert time.monotonic() - started < 0.1  # offering never waits for a receiver
        for _ in range(100):
            if {"up", "down"} <= {o[0] for o in outcomes} and any(
                o[0] == "slow" and "failed" in o[1] for o in outcomes
            ):
                break
            await asyncio.sleep(0.1)
    finally:
        await senders.drain(0.1)
        await runner.cleanup()
    by_alert = {}
    for alert, outcome, attempts in outcomes:
        by_alert.setdefault(alert, []).append((outcome, attempts))
    assert by_alert["up"] == [("ok", 1)]
    assert received[0]["text"].startswith("dvmirror: table account")  # type: ignore[union-attr]
    assert "blocks" in received[0]
    down_outcome, down_attempts = by_alert["down"][0]
    assert down_attempts == 3 and down_outcome.startswith("failed after 3 attempts")
    assert any("no answer within 0.5s" in o for o, _ in by_alert["slow"])
    assert any(o.startswith("dropped") for o, _ in by_alert["slow"])
    assert all("SECRET" not in o for o, _, _ in outcomes)
    await store.dispose()

    result = run_cli("--config", path, "status", "--json", env=environ, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "xoxsecretpart" not in result.stdout + result.stderr
    report = {a["name"]: a for a in json.loads(result.stdout)["alerts"]}
    assert report["up"]["last_delivery"]["outcome"] == "ok"
    assert report["down"]["last_delivery"]["outcome"].startswith("failed")
    assert report["down"]["last_delivery"]["failures"] == 1
    assert report["slow"]["last_delivery"]["failures"] >= 1
    table = run_cli("--config", path, "status", env=environ, cwd=tmp_path)
    assert "Alerts" in table.stdout and "failed after 3 attempts" in table.stdout


@pytest.mark.parametrize(
    ("alert", "expected"),
    [
        (
            'url = "https://hooks.slack.com/services/T/B/x"',
            "alerts[0].url: a webhook URL is a secret",
        ),
        ('url = { env = "HOOK" }\nevents = ["lag_exceeded"]', "lag_exceeded needs lag_threshold"),
        ('url = { env = "HOOK" }\nevents = ["table_parkd"]', "unknown event 'table_parkd'"),
        ('url = { env = "HOOK" }\ntenants = ["nobody"]', "alerts[0].tenants: no tenant named"),
        ('url = { env = "HOOK" }\nformat = "email"', "alerts[0].format"),
        ('url = { env = "HOOK" }\nrepeat = "soon"', "is not an interval"),
    ],
)
def test_config_errors_are_one_line(tmp_path: Path, alert: str, expected: str) -> None:
    path, environ = write_config(tmp_path, Path("/nonexistent"))
    text = path.read_text().split("[[alerts]]")[0] + "[[alerts]]\n" + alert + "\n"
    path.write_text(text)
    environ["HOOK"] = "https://hooks.example.com/secret-part"
    result = run_cli("--config", path, "config", "check", env=environ, cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.stderr
    assert "secret-part" not in result.stderr and "Traceback" not in result.stderr


def test_config_check_shows_the_origin_only(tmp_path: Path) -> None:
    path, environ = write_config(tmp_path, Path("/nonexistent"))
    text = path.read_text().split("[[alerts]]")[0]
    text += '[[alerts]]\nurl = { env = "HOOK" }\nformat = "teams"\nlag_threshold = "1h"\n'
    text += 'events = ["table_parked", "lag_exceeded", "recovered"]\n'
    path.write_text(text)
    environ["HOOK"] = "https://prod-00.westeurope.logic.azure.com/workflows/abc?sig=secret-sig"
    result = run_cli("--config", path, "config", "check", env=environ, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "alert alert1: teams to https://prod-00.westeurope.logic.azure.com/…" in result.stdout
    assert "secret-sig" not in result.stdout
