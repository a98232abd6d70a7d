"""Start the built-in simulator for a test, the way users run it: a subprocess that prints one
JSON ready line, serves real HTTPS, and stops on SIGTERM.

Usage (any fixture scope; the context manager is synchronous, so it also works in async tests)::

    @pytest.fixture(scope="module", name="sim")
    def _sim(tmp_path_factory):
        with running_simulator("basic", tmp_path_factory.mktemp("sim")) as ready:
            yield ready

``ready`` is the parsed ready line: authority_host, ca_file, admin_url, client_id,
client_secret (or certificate), tenants[{name, tenant_id, domain, environments[{name, url,
tables}]}], apps, config_file, state_dir, pid. Helpers below talk to the admin API and build
MSAL clients that trust only the simulator's CA (REQUESTS_CA_BUNDLE must be unset: it
overrides the session's ``verify`` inside requests, hence inside MSAL and azure-identity).
"""

from __future__ import annotations

import asyncio
import json
import os
import selectors
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import msal
import pytest

from tests.cli import clean_env

REPO = Path(__file__).resolve().parents[1]
CA_VARIABLES = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE")


@contextmanager
def running_simulator(
    scenario: str | Path,
    state_dir: Path,
    *,
    env: Mapping[str, str] | None = None,
    startup_timeout: float = 60.0,
    wrapper: Sequence[str] = (),
    pass_fds: Sequence[int] = (),
) -> Iterator[dict[str, Any]]:
    """Run `python -m sync.simulator.main` until the block ends; yield its ready line.

    `wrapper` is a command prefix that runs the simulator and relays its ready line (the peers'
    sandbox, tests/peers.py); `pass_fds` are file descriptors it inherits."""
    state_dir.mkdir(parents=True, exist_ok=True)
    stderr_path = state_dir / "simulator.stderr"
    with stderr_path.open("wb") as stderr:
        process = subprocess.Popen(
            [
                *wrapper,
                sys.executable,
                "-m",
                "sync.simulator.main",
                "--scenario",
                str(scenario),
                "--state-dir",
                str(state_dir),
            ],
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=clean_env(env),
            cwd=REPO,
            pass_fds=tuple(pass_fds),
        )
    try:
        line = _read_line(process, startup_timeout)
        if not line:
            process.kill()
            process.wait(10)
            raise RuntimeError(
                f"simulator did not start: {stderr_path.read_text(errors='replace')[-2000:]}"
            )
        yield json.loads(line)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        if process.stdout is not None:
            process.stdout.close()


@asynccontextmanager
async def async_running_simulator(
    scenario: str | Path, state_dir: Path, *, env: Mapping[str, str] | None = None
) -> AsyncIterator[dict[str, Any]]:
    """`running_simulator` for async fixtures: start and stop happen off the event loop."""
    manager = running_simulator(scenario, state_dir, env=env)
    ready = await asyncio.to_thread(manager.__enter__)
    try:
        yield ready
    finally:
        await asyncio.to_thread(manager.__exit__, None, None, None)


def _read_line(process: subprocess.Popen[bytes], timeout: float) -> bytes:
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    buffer = b""
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while b"\n" not in buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not selector.select(remaining):
                return b""
            chunk = os.read(process.stdout.fileno(), 65536)
            if not chunk:
                return b""
            buffer += chunk
    return buffer.split(b"\n", 1)[0]


@pytest.fixture(name="no_ca_env")
def _no_ca_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Remove CA variables that would silently override `verify=<simulator CA>` in requests."""
    for name in CA_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def environment(ready: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The ready line's entry for one environment (with its tenant)."""
    for tenant in ready["tenants"]:
        for env in tenant["environments"]:
            if env["name"] == name:
                return {**env, "tenant": tenant}
    raise KeyError(name)


def tenant(ready: Mapping[str, Any], name: str) -> dict[str, Any]:
    return next(t for t in ready["tenants"] if t["name"] == name)


def app_info(ready: Mapping[str, Any], client_id: str | None = None) -> dict[str, Any]:
    wanted = client_id or ready["client_id"]
    return next(a for a in ready["apps"] if a["client_id"] == wanted)


def msal_client(
    ready: Mapping[str, Any],
    tenant_id: str,
    *,
    client_id: str | None = None,
    credential: Any = None,
) -> msal.ConfidentialClientApplication:
    """A real MSAL confidential client for the simulated authority (no instance discovery)."""
    app = app_info(ready, client_id)
    if credential is None:
        if app["credential"] == "secret":
            credential = app["client_secret"]
        else:
            cert = app["certificate"]
            credential = {
                "private_key": Path(cert["key"]).read_text(),
                "thumbprint": cert["thumbprint_sha1"],
            }
    return msal.ConfidentialClientApplication(
        app["client_id"],
        client_credential=credential,
        authority=f"{ready['authority_host']}/{tenant_id}",
        instance_discovery=False,
        verify=ready["ca_file"],
    )


def token_for(ready: Mapping[str, Any], env_name: str, *, client_id: str | None = None) -> str:
    """An access token for one environment, acquired through MSAL."""
    env = environment(ready, env_name)
    result = msal_client(
        ready, env["tenant"]["tenant_id"], client_id=client_id
    ).acquire_token_for_client([f"{env['url']}/.default"])
    assert "access_token" in result, result.get("error_description")
    return str(result["access_token"])


def admin(ready: Mapping[str, Any], method: str, path: str, body: Any = None) -> Any:
    """Call the admin API (plain HTTP on loopback) and decode its JSON answer."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"{ready['admin_url']}{path}",
        data=data,
        method=method,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def admin_rows(ready: Mapping[str, Any], env_name: str, table: str) -> list[dict[str, Any]]:
    """The table's current rows as the admin API dumps them (JSON lines)."""
    url = f"{ready['admin_url']}/environments/{env_name}/tables/{table}/rows"
    with urllib.request.urlopen(url, timeout=120) as response:
        return [json.loads(line) for line in response.read().splitlines() if line.strip()]


def user_stats(
    ready: Mapping[str, Any], env_name: str, client_id: str | None = None
) -> dict[str, Any]:
    """The /stats entry of one application user in one environment."""
    wanted = client_id or ready["client_id"]
    for entry in admin(ready, "GET", "/stats")["users"]:
        if entry["environment"] == env_name and entry["client_id"] == wanted:
            return dict(entry)
    raise KeyError((env_name, wanted))
