"""Tried as a new user would: `dvmirror demo --console`, then signing in with a browser, shows
fresh tables within a minute.

The demo runs as a subprocess; headless Chromium (Debian's chromium and chromium-driver, never
downloaded) opens the printed URL, is sent to the simulator's user picker, picks the printed
Operator and comes back. Within 60 s of the console's URL being printed, every environment the
Operator sees lists every table with a last success under a minute old. Ctrl-C (SIGINT) then
stops the demo with exit 0.
"""

from __future__ import annotations

import datetime as dt
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.cli import clean_env
from tests.daemonproc import wait_until
from tests.simfixtures import _no_ca_env  # noqa: F401
from tests.test_console_browser import CHROMEDRIVER, CHROMIUM, Browser
from tests.test_demo_console import DEMO, read_until

pytestmark = [
    pytest.mark.usefixtures("no_ca_env"),
    pytest.mark.slow,
    pytest.mark.long,  # the demo's own run comes first: well over 20 s on 2 cores
    pytest.mark.timeout(300),
    pytest.mark.skipif(
        not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
        reason="needs Debian's chromium and chromium-driver: apt-get install chromium "
        "chromium-driver (.ci/run does)",
    ),
]
FRESH_WITHIN = 60.0  # seconds from the console's URL to fresh tables in the browser
LAG_UNDER = 60.0


def stale_tables(browser: Browser, console: str, envs: list[str]) -> list[str]:
    """Every table of these environments whose last success is missing or a minute old."""
    stale = []
    now = dt.datetime.now(dt.UTC)
    for env in envs:
        browser.driver.get(f"{console}/env/{env}")
        rows = browser.driver.find_elements("css selector", "#tables .table-row")
        if not rows:
            stale.append(f"{env}: no tables")
        for row in rows:
            table = row.get_attribute("data-table")
            success = row.find_element("css selector", ".last-success").text.strip()
            lag = row.find_element("css selector", ".lag").text.strip()
            if not re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ", success):
                stale.append(f"{env}/{table}: last success {success!r}")
                continue
            at = dt.datetime.strptime(success, "%Y-%m-%d %H:%M:%SZ").replace(tzinfo=dt.UTC)
            if (now - at).total_seconds() >= LAG_UNDER or not re.fullmatch(r"\d+s", lag):
                stale.append(f"{env}/{table}: last success {success}, lag {lag}")
    return stale


def test_demo_console_in_a_browser_shows_fresh_tables_within_a_minute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The printed Operator signs in through the picker in Chromium; within 60 s of the URL
    being printed every environment they see has every table synced less than a minute ago;
    another tenant's environments are not listed; SIGINT ends the demo with 0."""
    monkeypatch.setenv("SE_OFFLINE", "true")
    monkeypatch.setenv("SE_AVOID_BROWSER_DOWNLOAD", "true")
    directory = tmp_path / "demo"
    with subprocess.Popen(
        [*DEMO, "--dir", str(directory)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env({"COLUMNS": "250"}),
    ) as process:
        browser: Browser | None = None
        try:
            printed = read_until(process, r"Web console: http://127\.0\.0\.1:\d+", 240)
            console_up = time.monotonic()
            found = re.search(r"Web console: (http://127\.0\.0\.1:\d+)", printed)
            assert found
            console = found.group(1)
            users = read_until(process, r"Press Ctrl-C to stop", 10)
            operator = re.search(r"^\s*(\S+@\S+)\s+.*\[(\w+)\].*Mirror\.Operator", users, re.M)
            assert operator, users
            upn = operator.group(1)

            browser = Browser(tmp_path / "profile", directory / "simulator" / "tls" / "ca.pem")
            browser.sign_in(console, upn)
            envs = re.findall(r'id="env-(\w+)"', browser.html())
            assert envs, browser.html()[:3000]
            assert not any(e.startswith("fabrikam") for e in envs), envs
            left = FRESH_WITHIN - (time.monotonic() - console_up)
            assert left > 0, "signing in alone took more than a minute"
            last: list[list[str]] = []

            def fresh() -> bool:
                last.append(stale_tables(browser, console, envs))  # type: ignore[arg-type]
                return not last[-1]

            try:
                wait_until(fresh, timeout=left, every=2.0, what="fresh tables")
            except AssertionError:
                raise AssertionError(
                    f"not fresh {FRESH_WITHIN:.0f} s after the console was up: {last[-1]}"
                ) from None
            process.send_signal(signal.SIGINT)
            code = process.wait(timeout=60)
        finally:
            if browser is not None:
                browser.quit()
            if process.poll() is None:
                process.kill()
                process.wait()
        assert code == 0, process.stderr.read()[-3000:] if process.stderr else code
