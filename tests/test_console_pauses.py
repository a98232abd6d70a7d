"""The Retry-After pause of the last 24 h, per environment, as the governor counted it: each run
stores the pause its own 429s started (dv_run_history.paused_seconds), and `/`, the JSON API
and `dvmirror status` show their sum. The test makes the simulator refuse Contoso's requests
for a few seconds (admin POST /environments/{env}/throttle) while `dvmirror run` syncs it, and
compares what the store, the console and status show with the daemon's own /metrics counter
(dvmirror_retry_after_wait_seconds, fed from the same governor)."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from yarl import URL

from tests.cli import run_cli
from tests.console_harness import free_port
from tests.daemonproc import DaemonProcess, EnvSpec, sync_states, wait_until, write_config
from tests.simfixtures import admin, running_simulator

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]
SCENARIO = Path(__file__).parent / "scenarios" / "console_browser.toml"
OPERATOR = "olivia@contoso.onmicrosoft.com"
ENV = "contoso_prod"
THROTTLE_SECONDS = 3
SESSION = {"SESSION_KEY": "s" * 40}


def with_console(config: Path, port: int) -> None:
    config.write_text(
        config.read_text().replace(
            "[[tenants]]",
            f'[console]\nlisten = "127.0.0.1:{port}"\npublic_url = "http://127.0.0.1:{port}"\n'
            'session_key = { env = "SESSION_KEY" }\n\n[[tenants]]',
            1,
        )
    )


async def signed_in(browser: aiohttp.ClientSession, url: str, upn: str) -> None:
    """Through the simulator's user picker as `upn` (the form the picker's button posts)."""
    picker = await browser.get(f"{url}/auth/login")
    html = await picker.text()
    assert picker.status == 200 and f'data-upn="{upn}"' in html, html[:2000]
    ctx = re.search(r'name="ctx" value="([^"]+)"', html)
    action = re.search(r'<form method="post" action="([^"]+)"', html)
    assert ctx and action
    page = await browser.post(
        str(picker.url.join(URL(action.group(1)))), data={"ctx": ctx.group(1), "login": upn}
    )
    assert page.status == 200 and str(page.url).startswith(url), await page.text()


async def console_figures(url: str, ca_file: str) -> tuple[dict[str, Any], str, str]:
    """(/api/v1/environments's entry for ENV, the index HTML, the account table page HTML)."""
    tls = ssl.create_default_context(cafile=ca_file)
    async with aiohttp.ClientSession(
        cookie_jar=aiohttp.CookieJar(unsafe=True), connector=aiohttp.TCPConnector(ssl=tls)
    ) as browser:
        await signed_in(browser, url, OPERATOR)
        api = await browser.get(f"{url}/api/v1/environments")
        assert api.status == 200, await api.text()
        (entry,) = [e for e in (await api.json())["environments"] if e["name"] == ENV]
        index = await (await browser.get(f"{url}/")).text()
        table = await (await browser.get(f"{url}/env/{ENV}/table/account")).text()
        return entry, index, table


def stored_pauses(database: Path) -> tuple[float, list[float]]:
    """The 24 h sum of paused_seconds of ENV's runs, and the finished runs that paused."""
    with sqlite3.connect(database, timeout=10) as conn:
        rows = conn.execute(
            "SELECT paused_seconds, status FROM dv_run_history WHERE environment = ?", (ENV,)
        ).fetchall()
    total = round(sum(float(p) for p, _ in rows), 3)
    return total, [float(p) for p, status in rows if p and status != "running"]


def metrics_pause(daemon: DaemonProcess) -> float:
    status, text = daemon.get("/metrics")
    assert status == 200
    found = re.search(
        rf'^dvmirror_retry_after_wait_seconds_total\{{environment="{ENV}"\}} ([0-9.e+-]+)$',
        text,
        re.M,
    )
    return float(found.group(1)) if found else 0.0


@pytest.fixture(name="site")
def _site(tmp_path: Path) -> Iterator[dict[str, Any]]:
    with running_simulator(SCENARIO, tmp_path / "sim") as ready:
        port = free_port()
        config = write_config(
            ready,
            tmp_path,
            {
                "contoso_prod": EnvSpec(("account", "contact")),
                "fabrikam_prod": EnvSpec(("account",)),
            },
        )
        # Only table requests for contoso, so that the throttle window lands on table runs (the
        # environment's own requests' runs: tests/test_environment_pauses.py).
        config.write_text(
            config.read_text().replace(
                'name = "contoso_prod"',
                'name = "contoso_prod"\nmetadata_tables = false\nrelationships = "none"',
                1,
            )
        )
        with_console(config, port)
        daemon = DaemonProcess.start(config, tmp_path / "daemon.log", env=SESSION)
        try:
            daemon.wait_event("console_listening")
            yield {
                "sim": ready,
                "daemon": daemon,
                "config": config,
                "url": f"http://127.0.0.1:{port}",
                "db": tmp_path / "mirror.db",
            }
        finally:
            code = daemon.stop()
            assert code == 0, daemon.tail()


def test_a_throttled_run_shows_the_governors_pause_in_console_api_and_status(
    site: dict[str, Any],
) -> None:
    """Before any 429 the console shows 0 for Contoso (not "—"). After a 3 s throttle window,
    a finished run keeps a pause of about 3 s; the store's 24 h sum equals the governor's
    /metrics counter, and the API, `/` and `dvmirror status --json` show that same figure."""
    sim, daemon, database = site["sim"], site["daemon"], site["db"]

    def synced() -> bool:
        states = sync_states(database)
        return all(states.get((ENV, t), {}).get("last_success") for t in ("account", "contact"))

    wait_until(synced, timeout=40, what="contoso's tables synced once")
    entry, index, _ = asyncio.run(console_figures(site["url"], sim["ca_file"]))
    assert entry["retry_after_seconds_24h"] == 0.0
    assert stored_pauses(database)[0] == 0.0

    admin(sim, "POST", f"/environments/{ENV}/throttle", {"seconds": THROTTLE_SECONDS})
    paused_runs = wait_until(
        lambda: stored_pauses(database)[1], timeout=40, what="a finished run that paused"
    )
    assert max(paused_runs) >= THROTTLE_SECONDS - 1, paused_runs

    def agreed() -> float:
        total, _ = stored_pauses(database)
        return total if total > 0 and abs(metrics_pause(daemon) - total) < 0.01 else 0.0

    total = wait_until(agreed, timeout=30, what="the store's sum equal to /metrics")
    assert THROTTLE_SECONDS - 1 <= total <= 3 * THROTTLE_SECONDS, total

    entry, index, table = asyncio.run(console_figures(site["url"], sim["ca_file"]))
    assert entry["retry_after_seconds_24h"] == pytest.approx(total, abs=0.002)
    cell = re.search(
        rf'id="env-{ENV}".*?class="num paused" data-seconds="([0-9.]+)">([^<]+)<', index, re.S
    )
    assert cell, index[:3000]
    assert float(cell.group(1)) == pytest.approx(total, abs=0.002)
    assert cell.group(2) == f"{int(total)}s"
    assert 'id="table-paused"' in table

    status = run_cli("--config", site["config"], "status", "--json", env=SESSION)
    assert status.returncode == 0, status.stderr
    (env_status,) = [e for e in json.loads(status.stdout)["environments"] if e["name"] == ENV]
    assert env_status["retry_after_seconds_recent"] == pytest.approx(total, abs=0.01)
    # The tables' runs and the environment's own requests' runs (WhoAmI, N:N discovery, the
    # metadata refresh; tests/test_environment_pauses.py) make up the whole.
    own = env_status["environment_requests"]["retry_after_seconds_recent"]
    assert sum(t["retry_after_seconds_recent"] for t in env_status["tables"]) + own == (
        pytest.approx(total, abs=0.01)
    )
