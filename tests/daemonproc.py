"""Run `python -m sync --config FILE run` as a subprocess, the way systemd does, and watch it.

stderr goes to a file (not a TTY, so the daemon logs JSON lines); `DaemonProcess.events()`
parses them, `wait_event()` polls for one, `http_url` comes from the `http_listening` event.
`write_config()` builds a configuration for a chosen subset of a simulator's environments.
Every wait is a generous bounded poll on a condition, never a timing assertion.
"""

from __future__ import annotations

import datetime as dt
import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from tests.cli import clean_env

REPO = Path(__file__).resolve().parents[1]
T = TypeVar("T")


def wait_until(
    condition: Callable[[], T], *, timeout: float = 60.0, every: float = 0.2, what: str = ""
) -> T:
    """Poll `condition` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        time.sleep(every)


@dataclass
class EnvSpec:
    """One environment of the simulator to put in the configuration."""

    tables: tuple[str, ...]
    page_size: int | None = None
    interval: str = "2s"


def write_config(
    sim: Mapping[str, Any],
    directory: Path,
    envs: Mapping[str, EnvSpec],
    *,
    path: Path | None = None,
    secret_files: Mapping[str, Path] | None = None,
) -> Path:
    """A configuration for some of the simulator's environments; tenants without any are left out.

    The store is `directory/mirror.db`; /metrics listens on an ephemeral loopback port.
    `secret_files` gives a tenant its own [tenants.app]: the same app, another secret file.
    """
    generated = Path(sim["config_file"]).read_text()
    app = generated[generated.index("[app]") : generated.index("[store]")]
    lines = [
        app,
        f'[store]\nurl = "sqlite+aiosqlite:///{directory / "mirror.db"}"\n',
        f'[daemon]\ndata_dir = "{directory}"\nmetrics_listen = "127.0.0.1:0"\n',
    ]
    for tenant in sim["tenants"]:
        chosen = [env for env in tenant["environments"] if env["name"] in envs]
        if not chosen:
            continue
        lines.append(
            f'[[tenants]]\nname = "{tenant["name"]}"\ntenant_id = "{tenant["tenant_id"]}"\n'
        )
        if secret_files and tenant["name"] in secret_files:
            own = [
                f"client_secret = {{ file = {json.dumps(str(secret_files[tenant['name']]))} }}"
                if line.startswith("client_secret")
                else line
                for line in app.splitlines()[1:]
            ]
            lines.append("[tenants.app]\n" + "\n".join(own) + "\n")
        for env in chosen:
            spec = envs[env["name"]]
            tables = ", ".join(f'"{t}"' for t in spec.tables)
            lines.append(
                f'[[tenants.environments]]\nname = "{env["name"]}"\nurl = "{env["url"]}"\n'
                f'tables = [{tables}]\ninterval = "{spec.interval}"\n'
                + (f"page_size = {spec.page_size}\n" if spec.page_size else "")
            )
    target = path or directory / "dvmirror.toml"
    target.write_text("\n".join(lines))
    return target


@dataclass
class DaemonProcess:
    """A running `dvmirror run` subprocess and its JSON log."""

    config: Path
    log_path: Path
    process: subprocess.Popen[bytes]
    _offset: int = 0
    _events: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def start(
        cls, config: Path, log_path: Path, *, env: Mapping[str, str] | None = None
    ) -> DaemonProcess:
        with log_path.open("ab") as stderr:
            process = subprocess.Popen(
                [sys.executable, "-m", "sync", "--config", str(config), "run"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                env=clean_env({"PYTHONPATH": str(REPO), **(env or {})}),
                cwd=REPO,
            )
        daemon = cls(config, log_path, process)
        # Signals sent before the handlers are installed would kill it: wait for the server,
        # which starts after them.
        daemon.wait_event("http_listening")
        return daemon

    def events(self) -> list[dict[str, Any]]:
        """Every JSON log event so far (non-JSON lines are kept as {"event": None, "line": …})."""
        with self.log_path.open("rb") as log:
            log.seek(self._offset)
            chunk = log.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self._offset += len(complete)
        for line in complete.splitlines():
            try:
                self._events.append(json.loads(line))
            except ValueError:
                self._events.append({"event": None, "line": line.decode(errors="replace")})
        return self._events

    def named(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.events() if e.get("event") == name]

    def wait_event(
        self, name: str, *, count: int = 1, timeout: float = 60.0
    ) -> list[dict[str, Any]]:
        """Wait until `count` events called `name` were logged; fail early if the daemon exits."""

        def found() -> list[dict[str, Any]]:
            events = self.named(name)
            if len(events) < count and self.process.poll() is not None:
                raise AssertionError(f"daemon exited ({self.process.returncode}):\n{self.tail()}")
            return events if len(events) >= count else []

        return wait_until(found, timeout=timeout, what=f"{count} × {name}")

    @property
    def http_url(self) -> str:
        return str(self.named("http_listening")[0]["url"])

    def get(self, path: str) -> tuple[int, str]:
        """GET on the daemon's /metrics or /healthz server."""
        try:
            with urllib.request.urlopen(f"{self.http_url}{path}", timeout=30) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def send(self, sig: signal.Signals) -> None:
        self.process.send_signal(sig)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, then the exit code (killed and failed if it does not exit in time)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
            raise AssertionError(f"daemon ignored SIGTERM:\n{self.tail()}") from None

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def sync_states(database: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """dv_sync_state by (environment, table); empty before the daemon created it."""
    with sqlite3.connect(database, timeout=10) as conn:
        conn.row_factory = sqlite3.Row
        try:
            rows = conn.execute("SELECT * FROM dv_sync_state").fetchall()
        except sqlite3.OperationalError:
            return {}
    return {(r["environment"], r["table_name"]): dict(r) for r in rows}


def as_utc(value: str | None) -> dt.datetime | None:
    """A stored timestamp (SQLite keeps naive UTC text) as an aware datetime."""
    if value is None:
        return None
    moment = dt.datetime.fromisoformat(value)
    return moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment


def mirror_count(database: Path, env: str, table: str) -> int:
    with sqlite3.connect(database, timeout=10) as conn:
        return int(conn.execute(f'SELECT count(*) FROM "{env}__{table}"').fetchone()[0])


def admin_post(sim: Mapping[str, Any], path: str, body: Any) -> Any:
    request = urllib.request.Request(
        f"{sim['admin_url']}{path}",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def churn(sim: Mapping[str, Any], env: str, table: str, seed: int, **counts: int) -> None:
    """Creates, updates and deletes in one simulated table."""
    body = {"creates": 6, "updates": 8, "deletes": 4, "seed": seed} | counts
    admin_post(sim, f"/environments/{env}/tables/{table}/churn", body)


class Churning:
    """Creates, updates and deletes rows in every given table, round after round, in a thread
    until the `with` block ends (`rounds` says how many ran)."""

    def __init__(
        self,
        sim: Mapping[str, Any],
        tables: Mapping[str, tuple[str, ...]],
        *,
        every: float,
        seed: int,
    ) -> None:
        self.sim, self.tables, self.every, self.seed = sim, tables, every, seed
        self.rounds = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stopping.is_set():
            self.rounds += 1
            for env, names in self.tables.items():
                for table in names:
                    churn(
                        self.sim,
                        env,
                        table,
                        self.seed + self.rounds,
                        creates=2,
                        updates=3,
                        deletes=1,
                    )
            self.stopping.wait(self.every)

    def __enter__(self) -> Churning:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stopping.set()
        self.thread.join(30)
