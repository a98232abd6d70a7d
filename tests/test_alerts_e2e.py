"""Alerts end to end: a daemon subprocess against the simulator; one environment answers 503
(its table parks), a local HTTPS receiver gets exactly one `table_parked` message, and one
`recovered` once the fault is lifted; a restart in between sends nothing again."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from sync.simulator.tls import make_tls
from tests.daemonproc import DaemonProcess, EnvSpec, wait_until, write_config
from tests.simfixtures import _no_ca_env, admin, running_simulator  # noqa: F401

pytestmark = [pytest.mark.usefixtures("no_ca_env"), pytest.mark.slow, pytest.mark.timeout(300)]
SCENARIO = Path(__file__).parent / "scenarios" / "outages.toml"
ENVS = {"out_down": EnvSpec(("account",), interval="1s")}
HOOK_PATH = "/webhook/secret-token-part"


@pytest.fixture(scope="module", name="sim")
def _sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with running_simulator(SCENARIO, tmp_path_factory.mktemp("sim-alerts")) as ready:
        yield ready


class Receiver:
    """An HTTPS webhook receiver on its own thread and event loop."""

    def __init__(self, directory: Path) -> None:
        self.tls = make_tls(directory, extra_names=())
        self.messages: list[dict[str, Any]] = []
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()
        self.ready.wait(10)

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def hook(request: web.Request) -> web.Response:
            self.messages.append(await request.json())
            return web.Response(text="ok")

        app = web.Application()
        app.router.add_post(HOOK_PATH, hook)
        self.runner = web.AppRunner(app)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(
            self.runner, "127.0.0.1", self.port, ssl_context=self.tls.server_context()
        )
        self.loop.run_until_complete(site.start())
        self.ready.set()
        self.loop.run_forever()

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    def events(self) -> list[tuple[str, str | None]]:
        return [(m["event"], m["table"]) for m in list(self.messages)]


def test_a_parked_table_alerts_once_then_recovered(sim: dict[str, Any], tmp_path: Path) -> None:
    receiver = Receiver(tmp_path / "hook-tls")
    config = write_config(sim, tmp_path, ENVS)
    config.write_text(
        config.read_text()
        + '\n[[alerts]]\nname = "ops"\nurl = { env = "DVMIRROR_TEST_HOOK" }\nformat = "json"\n'
        + f'ca_bundle = "{receiver.tls.ca_file}"\n'
        + 'events = ["table_parked", "auth_failed", "recovered"]\n'
    )
    env = {"DVMIRROR_TEST_HOOK": f"https://127.0.0.1:{receiver.port}{HOOK_PATH}"}
    log = tmp_path / "daemon.log"
    daemon = DaemonProcess.start(config, log, env=env)
    try:
        wait_until(
            lambda: (
                daemon.named("cycle_finished")
                or daemon.named("table_synced")
                or daemon.named("status_changed")
            ),
            timeout=90,
            what="the daemon running",
        )
        admin(sim, "POST", "/faults", {"environment": "out_down", "http_503": 1.0})
        wait_until(lambda: receiver.messages, timeout=120, what="the table_parked message")
        assert receiver.events() == [("table_parked", "account")]
        # A restart while it is still parked sends nothing again.
        assert daemon.stop() == 0, daemon.tail()
        daemon = DaemonProcess.start(config, log, env=env)
        wait_until(lambda: daemon.named("environment_ready"), timeout=60, what="restarted")
        wait_until(
            lambda: len(daemon.named("table_retry_scheduled")) >= 1,
            timeout=60,
            what="the table failing again after the restart",
        )
        admin(sim, "POST", "/faults", {"environment": "out_down", "http_503": 0.0})
        wait_until(lambda: len(receiver.messages) >= 2, timeout=120, what="the recovery")
        assert receiver.events() == [("table_parked", "account"), ("recovered", "account")]
        assert receiver.messages[1]["condition"] == "table_parked"
    finally:
        admin(sim, "POST", "/faults", {"environment": "out_down", "http_503": 0.0})
        code = daemon.stop()
        receiver.stop()
    assert code == 0, daemon.tail()
    assert "secret-token-part" not in log.read_text()
    assert receiver.events() == [("table_parked", "account"), ("recovered", "account")]
