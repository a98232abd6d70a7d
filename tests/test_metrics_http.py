"""Metrics facade and the /metrics + /healthz server, scraped over real HTTP on loopback."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from sync import __version__
from sync.errors import ConfigError, CredentialError, NetworkError
from sync.runtime.http import HealthCheck, HttpServer, parse_listen, start_http_server
from sync.runtime.metrics import Metrics, request_outcome, throttle_code_label, token_failure_reason


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(name="serve")
async def _serve() -> AsyncIterator[Callable[..., Any]]:
    """Factory: start a server on a free loopback port; every server started is stopped."""
    servers: list[HttpServer] = []

    async def start(metrics: Metrics, health: Callable[[], dict[str, Any]]) -> HttpServer:
        server = await start_http_server("127.0.0.1:0", metrics.registry, health)
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()


async def get(url: str, accept: str | None = None) -> tuple[int, str, str]:
    headers = {"Accept": accept} if accept else {}
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as resp:
        return resp.status, resp.headers["Content-Type"], await resp.text()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Parse the exposition text into {(sample name, sorted labels): value}."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def ok_health() -> dict[str, Any]:
    return {"status": "ok"}


async def test_metrics_endpoint_exposes_labelled_counters(serve: Callable[..., Any]) -> None:
    """Facade calls show up on /metrics with environment/table labels and the right values."""
    metrics = Metrics(process_metrics=False)
    metrics.page_committed("contoso_prod", "account", upserted=500, deleted=2)
    metrics.page_committed("contoso_prod", "account", upserted=250, deleted=0)
    metrics.request_finished("contoso_prod", 200)
    metrics.request_finished("contoso_prod", 429)
    metrics.request_finished("contoso_prod", None)
    metrics.throttled("contoso_prod", "0x80072322")
    metrics.retry_after_waited("contoso_prod", 12.5)
    metrics.concurrency("contoso_prod", limit=8, in_flight=3)
    metrics.token_failure("contoso", CredentialError("bad secret"))
    metrics.table_parked("contoso_prod", "contact", True)
    server = await serve(metrics, ok_health)

    status, content_type, text = await get(f"{server.url}/metrics")
    found = samples(text)

    assert status == 200
    assert content_type.startswith("text/plain; version=0.0.4")
    env, env_table = ("environment", "contoso_prod"), ("table", "account")
    assert found[("dvmirror_rows_upserted_total", (env, env_table))] == 750
    assert found[("dvmirror_rows_deleted_total", (env, env_table))] == 2
    assert found[("dvmirror_pages_total", (env, env_table))] == 2
    assert found[("dvmirror_requests_total", (env, ("outcome", "2xx")))] == 1
    assert found[("dvmirror_requests_total", (env, ("outcome", "429")))] == 1
    assert found[("dvmirror_requests_total", (env, ("outcome", "network_error")))] == 1
    assert found[("dvmirror_throttled_total", (("code", "0x80072322"), env))] == 1
    assert found[("dvmirror_retry_after_wait_seconds_total", (env,))] == 12.5
    assert found[("dvmirror_concurrency_limit", (env,))] == 8
    assert found[("dvmirror_requests_in_flight", (env,))] == 3
    assert (
        found[("dvmirror_token_failures_total", (("reason", "credential"), ("tenant", "contoso")))]
        == 1
    )
    assert found[("dvmirror_table_parked", (env, ("table", "contact")))] == 1
    assert found[("dvmirror_info", (("version", __version__),))] == 1


async def test_lag_grows_between_scrapes(serve: Callable[..., Any]) -> None:
    """Lag is now minus the last success, computed at scrape time, so it grows while stuck."""
    clock = FakeClock(10_000.0)
    metrics = Metrics(clock=clock, process_metrics=False)
    metrics.last_success("contoso_prod", "account", 9_000.0)  # seeded from the control DB
    metrics.table_run_finished("contoso_prod", "contact", ok=True)  # now
    metrics.table_run_finished("contoso_prod", "lead", ok=False)
    server = await serve(metrics, ok_health)
    labels = (("environment", "contoso_prod"), ("table", "account"))

    first = samples((await get(f"{server.url}/metrics"))[2])
    clock.now += 60
    second = samples((await get(f"{server.url}/metrics"))[2])

    assert first[("dvmirror_table_lag_seconds", labels)] == 1_000
    assert second[("dvmirror_table_lag_seconds", labels)] == 1_060
    assert second[("dvmirror_table_last_success_timestamp_seconds", labels)] == 9_000
    contact = (("environment", "contoso_prod"), ("table", "contact"))
    assert second[("dvmirror_table_lag_seconds", contact)] == 60
    lead = (("environment", "contoso_prod"), ("table", "lead"))
    assert ("dvmirror_table_lag_seconds", lead) not in second  # never succeeded: no lag sample
    failed = (("environment", "contoso_prod"), ("outcome", "failed"), ("table", "lead"))
    assert second[("dvmirror_table_runs_total", failed)] == 1


def test_governor_snapshots_become_gauges_and_counter_increments() -> None:
    """Snapshot totals turn into counter increments; gauges follow the latest snapshot."""
    metrics = Metrics(process_metrics=False)
    metrics.governor_snapshot(
        "env",
        {
            "concurrency_limit": 6,
            "in_flight": 2,
            "paused_seconds_total": 10.0,
            "throttled": {"requests": 2},
        },
    )
    metrics.governor_snapshot(
        "env",
        {
            "concurrency_limit": 3,
            "in_flight": 0,
            "paused_seconds_total": 14.5,
            "throttled": {"requests": 3, "concurrency": 1, "unknown": 1},
        },
    )
    metrics.governor_snapshot("env", {"paused_seconds_total": 1.0})  # governor rebuilt: reset
    found = samples(generate_latest(metrics.registry).decode())
    env = ("environment", "env")

    assert found[("dvmirror_concurrency_limit", (env,))] == 3
    assert found[("dvmirror_requests_in_flight", (env,))] == 0
    assert found[("dvmirror_retry_after_wait_seconds_total", (env,))] == 15.5
    assert found[("dvmirror_throttled_total", (("code", "0x80072322"), env))] == 3
    assert found[("dvmirror_throttled_total", (("code", "0x80072326"), env))] == 1
    assert found[("dvmirror_throttled_total", (("code", "other"), env))] == 1


async def test_openmetrics_is_negotiated(serve: Callable[..., Any]) -> None:
    """A scraper asking for OpenMetrics gets that format and content type."""
    server = await serve(Metrics(process_metrics=False), ok_health)
    _, content_type, text = await get(
        f"{server.url}/metrics", accept="application/openmetrics-text; version=1.0.0"
    )
    assert content_type.startswith("application/openmetrics-text")
    assert text.rstrip().endswith("# EOF")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self")
def test_process_metrics_come_from_proc_self() -> None:
    """CPU, memory, open files and start time are reported without needing /proc/stat."""
    found = {
        name: value
        for (name, _), value in samples(generate_latest(Metrics().registry).decode()).items()
    }
    assert found["process_resident_memory_bytes"] > 1_000_000
    assert found["process_open_fds"] >= 3
    assert found["process_cpu_seconds_total"] > 0
    assert found["process_start_time_seconds"] > 1_600_000_000


def test_registry_is_private() -> None:
    """Two facades coexist and nothing lands in prometheus_client's global registry."""
    Metrics(process_metrics=False).page_committed("e1", "t", upserted=1, deleted=0)
    Metrics(process_metrics=False).page_committed("e1", "t", upserted=1, deleted=0)
    assert b"dvmirror_" not in generate_latest(REGISTRY)


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (200, "2xx"),
        (204, "2xx"),
        (304, "3xx"),
        (404, "4xx"),
        (429, "429"),
        (503, "5xx"),
        (None, "network_error"),
        (999, "other"),
    ],
)
def test_request_outcome_is_bounded(status: int | None, expected: str) -> None:
    """Status codes fold into a handful of outcome labels."""
    assert request_outcome(status) == expected


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("0x80072322", "0x80072322"),
        ("0X80072326", "0x80072326"),
        (None, "none"),
        ("", "none"),
        ("0xdeadbeef", "other"),
        ("<script>", "other"),
    ],
)
def test_throttle_code_label_is_bounded(code: str | None, expected: str) -> None:
    """Only the documented service-protection codes become label values."""
    assert throttle_code_label(code) == expected


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        (CredentialError("x"), "credential"),
        (NetworkError("x"), "network"),
        (ValueError("x"), "other"),
        ("consent", "consent"),
        ("made-up", "other"),
    ],
)
def test_token_failure_reason_is_bounded(reason: str | BaseException, expected: str) -> None:
    """Token failures are labelled by error class or a known reason, else "other"."""
    assert token_failure_reason(reason) == expected


async def test_healthz_ok_then_stale_then_stopping(serve: Callable[..., Any]) -> None:
    """/healthz is 200 while the loop ticks, 503 once ticks stop for 3 intervals, 503 stopping."""
    clock = FakeClock()
    health = HealthCheck(tick_interval=5.0, clock=clock)
    server = await serve(Metrics(process_metrics=False), health)
    url = f"{server.url}/healthz"

    clock.now += 14.0
    health.tick()
    status, content_type, body = await get(url)
    assert (status, content_type) == (200, "application/json")
    assert '"status":"ok"' in body

    clock.now += 15.5  # 3 × 5 s without a tick
    status, _, body = await get(url)
    assert status == 503
    assert '"status":"stale"' in body

    health.tick()
    assert (await get(url))[0] == 200
    health.stopping()
    status, _, body = await get(url)
    assert (status, '"status":"stopping"' in body) == (503, True)


async def test_healthz_probe_error_is_503(serve: Callable[..., Any]) -> None:
    """A health callable that raises yields a 503 JSON answer, not a crash."""

    def broken() -> dict[str, Any]:
        raise RuntimeError("boom")

    server = await serve(Metrics(process_metrics=False), broken)
    status, _, body = await get(f"{server.url}/healthz")
    assert (status, '"status":"error"' in body) == (503, True)


async def test_busy_port_is_a_config_error(serve: Callable[..., Any]) -> None:
    """Listening on a port already taken raises one ConfigError line naming the setting."""
    metrics = Metrics(process_metrics=False)
    first = await serve(metrics, ok_health)
    with pytest.raises(ConfigError) as caught:
        await start_http_server(f"127.0.0.1:{first.port}", metrics.registry, ok_health)
    message = str(caught.value)
    assert "daemon.metrics_listen" in message
    assert "\n" not in message
    assert caught.value.exit_code == 2


async def test_address_not_on_this_host_is_a_config_error() -> None:
    """An address that is not local (TEST-NET-1) cannot be bound and says so in one line."""
    with pytest.raises(ConfigError, match="cannot listen there"):
        await start_http_server(
            "192.0.2.1:9464", Metrics(process_metrics=False).registry, ok_health
        )


@pytest.mark.parametrize("listen", ["9464", "127.0.0.1:", "127.0.0.1:http", ":9464", "h:70000"])
def test_parse_listen_rejects_malformed(listen: str) -> None:
    """Malformed listen strings are ConfigErrors, before any socket is opened."""
    with pytest.raises(ConfigError, match="not host:port"):
        parse_listen(listen)


def test_parse_listen_accepts_ipv6() -> None:
    """Bracketed IPv6 addresses are unwrapped."""
    assert parse_listen("[::1]:9464") == ("::1", 9464)
