"""The console in a real browser: headless Chromium from Debian's `chromium` and
`chromium-driver` packages, driven with Selenium, against `dvmirror run` serving the console on a
loopback http URL and signing users in through the simulator's Entra user picker (HTTPS).

Nothing here downloads a browser or a driver: the driver's path is given explicitly and Selenium
Manager is told to stay offline. `.ci/run` installs both packages with apt; without them locally
the test skips and says so.
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.console_harness import free_port
from tests.daemonproc import DaemonProcess, EnvSpec, wait_until, write_config
from tests.simfixtures import running_simulator

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SCENARIO = Path(__file__).parent / "scenarios" / "console_browser.toml"
SCREENSHOT = Path(__file__).parent.parent / "docs" / "console.png"
OPERATOR = "olivia@contoso.onmicrosoft.com"
OTHER_TENANT_VIEWER = "felix@fabrikam.onmicrosoft.com"
NARROW = 390
SCROLL_SLACK = 2  # sub-pixel rounding of the layout, not a scrollbar's worth

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(120),
    pytest.mark.skipif(
        not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
        reason="needs Debian's chromium and chromium-driver (/usr/bin/chromium, "
        "/usr/bin/chromedriver): apt-get install chromium chromium-driver (.ci/run does)",
    ),
]

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the test extra")
from selenium.common.exceptions import NoSuchElementException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402


def spki_pins(ca_file: Path) -> str:
    """base64(sha256(SubjectPublicKeyInfo)) of the simulator's server certificate (server.pem
    beside its CA), for Chromium's --ignore-certificate-errors-spki-list: it trusts exactly
    that key, not every certificate. Chromium matches the pin on the leaf, not the CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    pins = []
    for pem in (ca_file.parent / "server.pem", ca_file):
        cert = x509.load_pem_x509_certificate(pem.read_bytes())
        der = cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        pins.append(base64.b64encode(hashlib.sha256(der).digest()).decode())
    return ",".join(pins)


def png_width(data: bytes) -> int:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return int(struct.unpack(">I", data[16:20])[0])


class Browser:
    """One headless Chromium with a fresh profile."""

    def __init__(self, profile: Path, ca_file: Path) -> None:
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for flag in (
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1280,900",
            f"--user-data-dir={profile}",
            # The simulator's authority is HTTPS under its own throwaway CA. Chromium on Linux
            # has no flag to add a CA, and its NSS store needs certutil; this pin trusts only
            # that CA's key (it works with --user-data-dir), not --ignore-certificate-errors.
            f"--ignore-certificate-errors-spki-list={spki_pins(ca_file)}",
        ):
            options.add_argument(flag)
        self.driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
        self.driver.set_page_load_timeout(30)

    def viewport(self, width: int, height: int, *, mobile: bool = False) -> None:
        self.driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile},
        )

    def sign_in(self, console: str, upn: str, next_path: str = "/") -> None:
        """Open a page, get sent to the simulator's picker, choose the user, come back."""
        self.driver.get(f"{console}{next_path}")
        button = wait_until(
            lambda: self.find(f'button[data-upn="{upn}"]'), timeout=20, what="the user picker"
        )
        button.click()
        wait_until(
            lambda: self.driver.current_url.startswith(console) and self.find("#sign-out"),
            timeout=20,
            what=f"{upn} signed in",
        )

    def find(self, css: str) -> Any:
        try:
            return self.driver.find_element(By.CSS_SELECTOR, css)
        except NoSuchElementException:
            return None

    def html(self) -> str:
        return str(self.driver.page_source)

    def quit(self) -> None:
        self.driver.quit()


@pytest.fixture(name="site")
def _site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    # Selenium Manager must never fetch a browser or a driver.
    monkeypatch.setenv("SE_OFFLINE", "true")
    monkeypatch.setenv("SE_AVOID_BROWSER_DOWNLOAD", "true")
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
        config.write_text(
            config.read_text().replace(
                "[[tenants]]",
                f'[console]\nlisten = "127.0.0.1:{port}"\npublic_url = "http://127.0.0.1:{port}"\n'
                'session_key = { env = "SESSION_KEY" }\n\n[[tenants]]',
                1,
            )
        )
        daemon = DaemonProcess.start(config, tmp_path / "daemon.log", env={"SESSION_KEY": "s" * 40})
        browsers: list[Browser] = []

        def browser() -> Browser:
            made = Browser(tmp_path / f"profile-{len(browsers)}", Path(ready["ca_file"]))
            browsers.append(made)
            return made

        try:
            daemon.wait_event("console_listening")
            yield {"url": f"http://127.0.0.1:{port}", "browser": browser, "dir": tmp_path}
        finally:
            for made in browsers:
                made.quit()
            code = daemon.stop()
            assert code == 0, daemon.tail()


def test_operator_resyncs_a_table_and_another_tenants_viewer_sees_none_of_it(
    site: dict[str, Any],
) -> None:
    """In Chromium, Contoso's Operator signs in through the simulator's user picker, sees both of
    Contoso's tables with their rows, presses "Resync this table" and, reloading, watches the
    request reach done; the page fits 390 px without horizontal scrolling, and a 1280 px
    screenshot is saved (to docs/console.png with DVMIRROR_UPDATE_SCREENSHOT=1). Fabrikam's Viewer then sees only Fabrikam: no Contoso
    on the index, no resync button, and Contoso's page answers 404."""
    console = site["url"]
    operator: Browser = site["browser"]()
    operator.viewport(1280, 900)
    operator.sign_in(console, OPERATOR)
    assert operator.find("#env-contoso_prod") and not operator.find("#env-fabrikam_prod")

    def tables_synced() -> bool:
        operator.driver.get(f"{console}/env/contoso_prod")
        rows = [operator.find(f"#table-{t} .rows") for t in ("account", "contact")]
        return all(r is not None and r.text not in ("", "0") for r in rows)

    wait_until(tables_synced, timeout=40, every=1.0, what="contoso's tables mirrored")
    assert operator.find("#tables") and operator.find("#resync-env-button")

    operator.driver.get(f"{console}/env/contoso_prod/table/account")
    operator.find("#resync-table-button").click()
    wait_until(lambda: operator.find("#resync-requests .request-row"), timeout=10, what="request")

    def resync_done() -> bool:
        operator.driver.refresh()  # the page refreshes itself every 10 s; do not wait for it
        assert not operator.find("#resync-requests .request-failed"), operator.html()
        return operator.find("#resync-requests .request-done") is not None

    wait_until(resync_done, timeout=30, every=1.0, what="the resync request done")

    operator.driver.get(f"{console}/env/contoso_prod")
    wide = operator.driver.get_screenshot_as_png()
    assert png_width(wide) == 1280
    (site["dir"] / "console-1280.png").write_bytes(wide)
    if os.environ.get("DVMIRROR_UPDATE_SCREENSHOT") == "1":  # README's picture, on purpose only
        SCREENSHOT.parent.mkdir(exist_ok=True)
        SCREENSHOT.write_bytes(wide)

    operator.viewport(NARROW, 844, mobile=True)
    for path in ("/", "/env/contoso_prod", "/env/contoso_prod/table/account"):
        operator.driver.get(f"{console}{path}")
        time.sleep(0.2)  # layout after the override settles
        narrow = operator.driver.get_screenshot_as_png()
        assert png_width(narrow) == NARROW
        scroll = operator.driver.execute_script(
            "return Math.max(document.body.scrollWidth, document.documentElement.scrollWidth)"
        )
        assert scroll <= NARROW + SCROLL_SLACK, f"{path} scrolls sideways at {NARROW} px: {scroll}"
    (site["dir"] / "console-390.png").write_bytes(narrow)

    viewer: Browser = site["browser"]()
    viewer.sign_in(console, OTHER_TENANT_VIEWER)
    assert viewer.find("#env-fabrikam_prod") and not viewer.find("#env-contoso_prod")
    assert "contoso" not in viewer.html().lower()
    viewer.driver.get(f"{console}/env/fabrikam_prod")
    assert viewer.find("#tables") and not viewer.find(".resync-button")
    viewer.driver.get(f"{console}/env/fabrikam_prod/table/account")
    assert viewer.find("#table-name") and not viewer.find("#resync-table-button")
    viewer.driver.get(f"{console}/env/contoso_prod")
    assert not viewer.find("#tables") and "contoso_prod" not in viewer.html()
