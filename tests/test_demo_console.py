"""`dvmirror demo --console` as a new user runs it: a subprocess that, after the demo's check,
keeps the daemon and the web console up, prints the URL and the users to sign in as, and stops
cleanly on Ctrl-C (SIGINT)."""

from __future__ import annotations

import asyncio
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from tests.cli import clean_env
from tests.simfixtures import _no_ca_env  # noqa: F401

pytestmark = [pytest.mark.usefixtures("no_ca_env"), pytest.mark.slow, pytest.mark.timeout(240)]
OPERATOR = "olivia@contoso.onmicrosoft.com"
DEMO = [sys.executable, "-m", "sync", "demo", "--console", "--console-port", "0", "--duration", "3"]


def read_until(process: subprocess.Popen[str], pattern: str, timeout: float) -> str:
    """Read the demo's stdout until a line matches; the text read (fail with it otherwise)."""
    assert process.stdout is not None
    seen: list[str] = []
    found: list[re.Match[str]] = []

    def reader() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            seen.append(line)
            match = re.search(pattern, line)
            if match:
                found.append(match)
                return

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    thread.join(timeout)
    assert found, f"no line matching {pattern!r} in {timeout} s:\n" + "".join(seen)[-3000:]
    return "".join(seen)


async def sign_in_and_read(url: str, ca_file: Path) -> tuple[int, str, str]:
    """/ without a session redirects to sign-in; through the simulator's picker as the Operator;
    then the index page. Returns (first status, its Location, the index's HTML)."""
    tls = ssl.create_default_context(cafile=str(ca_file))
    async with aiohttp.ClientSession(
        cookie_jar=aiohttp.CookieJar(unsafe=True), connector=aiohttp.TCPConnector(ssl=tls)
    ) as browser:
        first = await browser.get(f"{url}/", allow_redirects=False)
        location = first.headers.get("Location", "")
        picker = await browser.get(f"{url}/auth/login")  # follows on to the authority's picker
        html = await picker.text()
        assert picker.status == 200 and f'data-upn="{OPERATOR}"' in html, html[:2000]
        ctx = re.search(r'name="ctx" value="([^"]+)"', html)
        action = re.search(r'<form method="post" action="([^"]+)"', html)
        assert ctx and action
        target = str(picker.url.join(URL(action.group(1))))
        page = await browser.post(target, data={"ctx": ctx.group(1), "login": OPERATOR})
        return first.status, location, await page.text()


def test_demo_console_serves_until_ctrl_c(tmp_path: Path) -> None:
    """After a short demo, the console's URL and the scenario's users (with roles) are printed;
    / redirects to sign-in, the Operator signs in through the simulator's picker and sees
    Contoso's environments with rows; SIGINT stops daemon and console and the demo exits 0."""
    directory = tmp_path / "demo"
    with subprocess.Popen(
        [*DEMO, "--dir", str(directory)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env({"COLUMNS": "250"}),
    ) as process:
        try:
            printed = read_until(process, r"Web console: http://127\.0\.0\.1:\d+", 180)
            found = re.search(r"Web console: (http://127\.0\.0\.1:\d+)", printed)
            assert found
            url = found.group(1)
            users = read_until(process, r"Press Ctrl-C to stop", 10)
            assert re.search(
                r"olivia@contoso\.onmicrosoft\.com +Olivia Operator .*Mirror\.Operator", users
            )
            assert re.search(r"felix@fabrikam\.onmicrosoft\.com .*Mirror\.Viewer", users)
            assert "nadia@contoso.onmicrosoft.com" in users
            ca_file = directory / "simulator" / "tls" / "ca.pem"
            status, location, html = asyncio.run(sign_in_and_read(url, ca_file))
            assert status == 302 and "/auth/login" in location
            assert 'id="env-contoso_prod"' in html and 'id="env-fabrikam_prod"' not in html
            rows = re.search(r'id="env-contoso_prod".*?class="num rows">([\d,]+)<', html, re.S)
            assert rows and rows.group(1) != "0", html[:3000]
            time.sleep(0.5)
            process.send_signal(signal.SIGINT)
            code = process.wait(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        assert code == 0, process.stderr.read()[-3000:] if process.stderr else code
