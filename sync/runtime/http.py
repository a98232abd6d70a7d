"""The daemon's small HTTP server: `/metrics` for Prometheus and `/healthz` for probes.

It listens on `daemon.metrics_listen` (loopback by default). `/healthz` answers 200 with a JSON
document while the health callable reports `"status": "ok"` or `"degraded"`, and 503 otherwise;
`HealthCheck` is the callable the daemon uses: the scheduler calls `tick()` each loop, and the
check turns stale when no tick came for `stale_after` seconds (3 × the tick interval by
default), so a hung loop fails the probe even though the process is alive. An environment that
keeps failing (its service answers 503, its tenant cannot get tokens) makes the daemon
*degraded*, not dead: still 200 (restarting it would not help), with each failing environment
and why in `"degraded"`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler

from sync import __version__
from sync.errors import ConfigError
from sync.logs import get_logger

STALE_FACTOR = 3.0
ALIVE = ("ok", "degraded")  # /healthz statuses answered with 200
SHUTDOWN_TIMEOUT = 2.0  # seconds to let a scrape in progress finish when the daemon stops

HealthProbe = Callable[[], Mapping[str, Any]]
log = get_logger(__name__)


class HealthCheck:
    """Liveness from the scheduler's heartbeat; call it for the /healthz document."""

    def __init__(
        self,
        tick_interval: float,
        *,
        stale_after: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        problems: Callable[[], Mapping[str, str]] | None = None,
    ) -> None:
        self.problems = problems
        self.stale_after = stale_after if stale_after is not None else STALE_FACTOR * tick_interval
        self._clock = clock
        self._last_tick = clock()  # starting counts as a tick: the loop has stale_after to begin
        self._ticks = 0
        self._stopping = False

    def tick(self) -> None:
        """Record that the scheduler loop went round once."""
        self._last_tick = self._clock()
        self._ticks += 1

    def stopping(self) -> None:
        """From now on report "stopping" (503), so load balancers and probes look elsewhere."""
        self._stopping = True

    def __call__(self) -> dict[str, Any]:
        age = max(0.0, self._clock() - self._last_tick)
        if self._stopping:
            status = "stopping"
        elif age > self.stale_after:
            status = "stale"
        else:
            status = "ok"
        failing = dict(self.problems()) if self.problems is not None else {}
        if status == "ok" and failing:
            status = "degraded"
        return {
            "status": status,
            "version": __version__,
            "ticks": self._ticks,
            "last_tick_age_seconds": round(age, 3),
            "stale_after_seconds": self.stale_after,
            "degraded": failing,
        }


def parse_listen(listen: str) -> tuple[str, int]:
    """Split "host:port" (IPv6 as "[::1]:9464") or raise a one-line ConfigError."""
    host, sep, port = listen.strip().rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(
            f"daemon.metrics_listen = {listen!r} is not host:port; write it like 127.0.0.1:9464"
        )
    return host, int(port)


def make_app(registry: CollectorRegistry, health: HealthProbe) -> web.Application:
    """The aiohttp application: GET /metrics and GET /healthz (HEAD works too)."""

    async def healthz(_: web.Request) -> web.Response:
        try:
            document = dict(health())
        except Exception as exc:  # noqa: BLE001 - a broken probe answers 503, not a 500 page
            log.warning("health_probe_failed", error=f"{type(exc).__name__}: {exc}")
            document = {"status": "error", "version": __version__}
        status = 200 if document.get("status") in ALIVE else 503
        return web.Response(
            status=status,
            body=orjson.dumps(document, default=str),
            content_type="application/json",
            headers={"Cache-Control": "no-store"},
        )

    app = web.Application()
    app.router.add_get("/metrics", make_aiohttp_handler(registry))
    app.router.add_get("/healthz", healthz)
    return app


@dataclass
class HttpServer:
    """A running server; `port` is the bound port (useful with port 0)."""

    runner: web.AppRunner
    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def stop(self) -> None:
        await self.runner.cleanup()


async def start_http_server(
    listen: str, registry: CollectorRegistry, health: HealthProbe
) -> HttpServer:
    """Serve /metrics and /healthz on `listen`; a bad or busy address is a ConfigError."""
    host, port = parse_listen(listen)
    runner = web.AppRunner(
        make_app(registry, health), access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:  # includes socket.gaierror for an unknown host name
        await runner.cleanup()
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise ConfigError(
            f"daemon.metrics_listen = {listen!r}: cannot listen there ({reason}); "
            "pick a free port or a local address"
        ) from None
    bound = [address for address in runner.addresses if isinstance(address, tuple)]
    actual_port = int(bound[0][1]) if bound else port
    log.info("http_server_started", listen=listen, port=actual_port)
    return HttpServer(runner=runner, host=host, port=actual_port)


async def stop_http_server(server: HttpServer) -> None:
    """Stop serving; in-progress scrapes get SHUTDOWN_TIMEOUT seconds to finish."""
    await server.stop()
