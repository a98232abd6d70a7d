"""`dvmirror simulate`: start the simulated Entra, every environment and the admin API.

`run` loads the scenario (a bad one is one line on stderr and exit code 2), makes a throwaway
CA, generates each app's secret or certificate into the state directory (mode 0600), binds
the Entra authority and each environment to its own HTTPS port on 127.0.0.1 and the admin API
to a plain-HTTP loopback port, writes a ready-to-use dvmirror configuration, prints exactly
one JSON line (the contract in SIM_CONTRACT.md) and serves until SIGTERM or SIGINT (exit 0).
Without ``--state-dir`` the state lives in a temporary directory removed at exit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import zlib
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from sync.errors import ConfigError
from sync.simulator.admin import AdminServer
from sync.simulator.credentials import AppCredential, make_credential
from sync.simulator.dataverse_http import MAX_REQUEST_LINE, EnvironmentRuntime, EnvironmentServer
from sync.simulator.entra import Entra
from sync.simulator.faults import EntraFaultInjector, FaultInjector
from sync.simulator.identities import user_roles
from sync.simulator.protection import ServiceProtection
from sync.simulator.scenario import Scenario, load_scenario
from sync.simulator.stallwatch import StallWatch
from sync.simulator.tls import make_tls
from sync.simulator.tokens import TokenAuthority
from sync.simulator.webapi import DataverseModel

LOOPBACK = "127.0.0.1"


def run(scenario: Path, state_dir: Path | None) -> int:
    """Serve the scenario until SIGTERM/SIGINT; 0 on a clean stop, 2 on a bad scenario."""
    try:
        spec = load_scenario(scenario)
    except ConfigError as exc:
        print(f"dvmirror simulate: {exc}", file=sys.stderr)
        return 2
    temporary = state_dir is None
    try:
        directory = (
            Path(tempfile.mkdtemp(prefix="dvmirror-sim-")) if state_dir is None else state_dir
        )
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        print(f"dvmirror simulate: cannot use state directory {state_dir}: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(_serve(spec, Path(scenario), directory.resolve()))
    finally:
        if temporary:
            shutil.rmtree(directory, ignore_errors=True)
    return 0


def _listen() -> socket.socket:
    """A loopback listening socket on a free port, bound before anything needs its URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((LOOPBACK, 0))
    sock.listen(512)
    sock.setblocking(False)
    return sock


def _port(sock: socket.socket) -> int:
    return int(sock.getsockname()[1])


def _seed(base: int, name: str) -> int:
    return zlib.crc32(f"{base}:{name}".encode())


async def _serve(spec: Scenario, scenario_path: Path, directory: Path) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)  # first thing: a stop during startup is clean
    tls = make_tls(directory / "tls")
    credentials = {app.client_id: make_credential(app, directory / "apps") for app in spec.apps}
    entra_sock, admin_sock = _listen(), _listen()
    authority_host = f"https://{LOOPBACK}:{_port(entra_sock)}"
    tokens = TokenAuthority(authority_host)
    runtimes: dict[str, EnvironmentRuntime] = {}
    stalls = StallWatch()  # how late this process stamps arrivals (Retry-After checks)
    env_socks: dict[str, socket.socket] = {}
    for tenant in spec.tenants:
        for env in tenant.environments:
            sock = env_socks[env.name] = _listen()
            runtimes[env.name] = EnvironmentRuntime(
                tenant=tenant,
                spec=env,
                url=f"https://{LOOPBACK}:{_port(sock)}",
                authority_host=authority_host,
                model=DataverseModel(
                    env.tables,
                    _seed(spec.seed, env.name),
                    retention_days=env.change_tracking_retention_days,
                    solutions=env.solutions,
                    relationships=env.relationships,
                ),
                protection=ServiceProtection(env.limits, stamp_uncertainty=stalls.uncertainty),
                faults=FaultInjector(env.faults, _seed(spec.seed, f"faults:{env.name}")),
            )
    resources = {t.name: [runtimes[e.name].url for e in t.environments] for t in spec.tenants}
    entra = Entra(
        spec,
        credentials,
        tokens,
        host=authority_host,
        resources=resources,
        faults=EntraFaultInjector(spec.entra.faults, _seed(spec.seed, "entra")),
    )
    server_tls = tls.server_context()
    runners: list[web.AppRunner] = []
    stall_task = asyncio.create_task(stalls.run())

    async def start(app: web.Application, sock: socket.socket, *, secure: bool) -> None:
        runner = web.AppRunner(
            app, access_log=None, handle_signals=False, max_line_size=MAX_REQUEST_LINE
        )
        await runner.setup()
        runners.append(runner)
        await web.SockSite(runner, sock, ssl_context=server_tls if secure else None).start()

    try:
        await start(entra.application(), entra_sock, secure=True)
        for name, runtime in runtimes.items():
            await start(
                EnvironmentServer(runtime, tokens).application(), env_socks[name], secure=True
            )
        await start(AdminServer(runtimes, entra).application(), admin_sock, secure=False)
        config_file = directory / "dvmirror.toml"
        primary = credentials[spec.apps[0].client_id]
        config_file.write_text(
            render_config(
                spec,
                runtimes=runtimes,
                app=primary,
                authority_host=authority_host,
                ca_file=tls.ca_file,
                directory=directory,
                scenario_path=scenario_path,
            ),
            encoding="utf-8",
        )
        ready: dict[str, Any] = {
            "authority_host": authority_host,
            "ca_file": str(tls.ca_file),
            "admin_url": f"http://{LOOPBACK}:{_port(admin_sock)}",
            **primary.ready_info(),
            "tenants": [
                {
                    "name": t.name,
                    "tenant_id": t.tenant_id,
                    "domain": t.domain,
                    "environments": [
                        {
                            "name": e.name,
                            "url": runtimes[e.name].url,
                            "tables": [x.name for x in e.tables],
                        }
                        for e in t.environments
                    ],
                    "users": [
                        {
                            "name": u.name,
                            "upn": u.upn,
                            "oid": u.oid,
                            "roles": {a.client_id: user_roles(u, a) for a in spec.apps},
                        }
                        for u in t.users
                    ],
                }
                for t in spec.tenants
            ],
            "apps": [
                {
                    **credentials[a.client_id].ready_info(),
                    "redirect_uris": list(a.redirect_uris),
                    "app_id_uri": a.app_id_uri,
                    "app_roles": list(a.app_roles),
                }
                for a in spec.apps
            ],
            "config_file": str(config_file),
            "state_dir": str(directory),
            "scenario": str(scenario_path),
            "pid": os.getpid(),
        }
        sys.stdout.write(orjson.dumps(ready).decode() + "\n")
        sys.stdout.flush()
        await stop.wait()
    finally:
        stall_task.cancel()
        for runner in reversed(runners):
            await runner.cleanup()
        for runtime in runtimes.values():
            runtime.close()


def _toml(value: Any) -> str:
    """A TOML literal for a str, list of str, int or float (JSON strings are valid TOML)."""
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return str(value)


def render_config(
    spec: Scenario,
    *,
    runtimes: dict[str, EnvironmentRuntime],
    app: AppCredential,
    authority_host: str,
    ca_file: Path,
    directory: Path,
    scenario_path: Path,
) -> str:
    """The dvmirror configuration that points at this simulator run."""
    data_dir = directory / "dvmirror"
    lines = [
        f"# Generated by `dvmirror simulate` for {scenario_path}; valid while it runs.",
        "[app]",
        f"client_id = {_toml(app.client_id)}",
    ]
    if app.secret_file is not None:
        lines.append(f"client_secret = {{ file = {_toml(str(app.secret_file))} }}")
    lines += [f"authority_host = {_toml(authority_host)}", f"ca_bundle = {_toml(str(ca_file))}"]
    if app.cert_file is not None and app.key_file is not None:
        lines += [
            "",
            "[app.certificate]",
            f"cert = {_toml(str(app.cert_file))}",
            f"key = {_toml(str(app.key_file))}",
        ]
    lines += [
        "",
        "[store]",
        f"url = {_toml('sqlite+aiosqlite:///' + str(data_dir / 'mirror.db'))}",
        "",
        "[daemon]",
        f"data_dir = {_toml(str(data_dir))}",
        "# an ephemeral port, so that daemons against several simulators never clash",
        'metrics_listen = "127.0.0.1:0"',
    ]
    for tenant in spec.tenants:
        lines += [
            "",
            "[[tenants]]",
            f"name = {_toml(tenant.name)}",
            f"tenant_id = {_toml(tenant.tenant_id)}",
        ]
        for env in tenant.environments:
            lines += [
                "",
                "[[tenants.environments]]",
                f"name = {_toml(env.name)}",
                f"url = {_toml(runtimes[env.name].url)}",
                f"tables = {_toml([t.name for t in env.tables])}",
                f"interval = {_toml(env.interval)}",
            ]
            if env.reconcile_interval is not None:
                lines.append(f"reconcile_interval = {_toml(env.reconcile_interval)}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """``python -m sync.simulator.main --scenario FILE [--state-dir DIR]``."""
    parser = argparse.ArgumentParser(prog="python -m sync.simulator.main")
    parser.add_argument("--scenario", required=True, help="scenario file or bundled name")
    parser.add_argument("--state-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    return run(Path(args.scenario), args.state_dir)


if __name__ == "__main__":
    sys.exit(main())
