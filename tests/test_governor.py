"""The governor: pure core driven by a fake clock, the async shell, and the daily budget."""

from __future__ import annotations

import asyncio
import heapq
import math
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from sync.governor import Governor, InMemoryBudgetStore, TenantBudget
from sync.governor_core import GovernorCore
from sync.governor_signals import (
    DailyBudget,
    RateObservation,
    normalize_code,
    observation_from,
    parse_number,
)
from sync.governor_store import SqlBudgetStore
from sync.simulator.protection import Limits, ServiceProtection, Throttle
from sync.store.schema import metadata


def ok(
    burst: int | None = None, time_left: float | None = None, dop: int | None = None
) -> RateObservation:
    return RateObservation(
        status=200, burst_remaining=burst, time_remaining=time_left, dop_hint=dop
    )


def throttle(retry_after: float, code: str = "0x80072322") -> RateObservation:
    return RateObservation(status=429, retry_after=retry_after, throttle_code=code)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1,200.00", 1200.0),
        (" 5999 ", 5999.0),
        ("12.5", 12.5),
        ("", None),
        ("abc", None),
        (None, None),
        ("-3", None),
        ("nan", None),
    ],
)
def test_parse_number_is_lenient(text: str | None, expected: float | None) -> None:
    """Header numbers parse with separators and spaces; garbage and negatives give None."""
    assert expected == parse_number(text)


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("0x80072322", "0x80072322"),
        ("-2147015902", "0x80072322"),
        ("-2147015903", "0x80072321"),
        ("0X80072326", "0x80072326"),
        (-2147015898, "0x80072326"),
        ("", None),
        ("zz", None),
    ],
)
def test_throttle_codes_accept_hex_and_decimal(code: object, expected: str | None) -> None:
    """Hex and signed-decimal forms of the throttling codes normalize to the same hex."""
    assert expected == normalize_code(code)


def test_observation_reads_rate_headers() -> None:
    """Rate headers, dop hint and Retry-After are read from a response."""
    obs = observation_from(
        429,
        {
            "Retry-After": "7",
            "x-ms-ratelimit-burst-remaining-xrm-requests": "5,999",
            "x-ms-ratelimit-time-remaining-xrm-requests": "1,200.00",
            "x-ms-dop-hint": "48",
        },
        error_code="-2147015898",
    )
    assert (obs.retry_after, obs.burst_remaining, obs.time_remaining, obs.dop_hint) == (
        7,
        5999,
        1200,
        48,
    )
    assert obs.throttle_kind == "concurrency"


def test_429_without_retry_after_still_pauses() -> None:
    """A 429 lacking Retry-After pauses for a default time rather than not at all."""
    assert observation_from(429, {}).retry_after == 5.0


def test_nothing_is_sent_inside_a_retry_after_window() -> None:
    """After a 429 every new request waits until Retry-After has passed; in-flight ones finish."""
    core = GovernorCore(initial_concurrency=4)
    sent = [core.on_send(0.0) for _ in range(3)]
    core.observe(throttle(10), 1.0, sent[0])
    core.on_release(1.0, sent[0])
    assert core.decide(1.0) == 11.0
    assert core.decide(10.999) == 11.0
    core.observe(ok(), 2.0, sent[1])  # in flight when the 429 came: fine
    core.on_release(2.0, sent[1])
    assert core.decide(11.0) is None


def test_a_longer_retry_after_extends_the_pause_and_is_counted_once() -> None:
    """Overlapping pauses extend to the latest end; paused seconds count the union."""
    core = GovernorCore()
    core.observe(throttle(10), 0.0)
    core.observe(throttle(5), 2.0)
    core.observe(throttle(20), 5.0)
    assert core.paused_until == 25.0
    assert core.stats.paused_seconds == 25.0


@pytest.mark.parametrize(
    ("events", "expected_limit"),
    [
        ([], 4),
        ([ok(dop=8)], 8),
        ([ok(dop=100)], 10),  # never above the cap
        ([throttle(1), ok(dop=8)], 2),  # dop hint after a 429 does not raise
        ([ok(dop=8)] + [ok()] * 9, 9),  # additive increase: +1 per `limit` responses
    ],
)
def test_adaptive_concurrency(events: list[RateObservation], expected_limit: int) -> None:
    """Concurrency starts small, takes the dop hint, grows additively, halves on a 429."""
    core = GovernorCore(cap=10)
    for index, event in enumerate(events):
        core.observe(event, float(index))
    assert expected_limit == math.floor(core.limit)


def test_concurrency_429_sets_a_ceiling_below_what_failed() -> None:
    """A concurrency 429 with 5 requests out caps concurrency at 4 from then on."""
    core = GovernorCore(initial_concurrency=5)
    sent = [core.on_send(0.0) for _ in range(5)]
    core.observe(throttle(1, "0x80072326"), 0.1, sent[-1])
    for index in range(200):
        core.observe(ok(), 2.0 + index)
    assert core.ceiling == 4
    assert math.floor(core.limit) == 4


def test_in_flight_never_exceeds_the_limit() -> None:
    """With the concurrency limit reached, decide waits for a release (inf)."""
    core = GovernorCore(initial_concurrency=2)
    core.on_send(0.0)
    core.on_send(0.0)
    assert math.inf == core.decide(0.0)


def test_budget_stops_at_the_margin_spaces_the_last_sends_and_resumes_on_aging() -> None:
    """With a learned 10 s window and 5 requests per window (4 left after ours), two more go
    (the last one spaced window/limit = 2 s later), then nothing until our first send ages."""
    core = GovernorCore(initial_concurrency=1, window_hint=10.0)
    core.window_learned = True
    first = core.on_send(0.0)
    core.observe(ok(burst=4), 0.1, first)
    core.on_release(0.1, first)
    times = []
    now = 0.2
    while (wake := core.decide(now)) is None or wake < 10.0:
        if wake is not None:
            now = wake
            continue
        times.append(core.on_send(now))
        core.on_release(now, times[-1])
    assert pytest.approx(times) == [0.2, 2.2]
    assert pytest.approx(core.decide(now)) == 10.0
    assert core.decide(10.0) is None


def run_against_protection(
    limits: Limits, *, workers: int = 8, duration: float = 60.0, rows: int = 100
) -> dict[str, Any]:
    """Drive a GovernorCore against the simulator's own protection model (event-driven)."""
    now = [0.0]
    protection = ServiceProtection(limits, clock=lambda: now[0])
    core = GovernorCore()
    queue: list[tuple[float, int, str, Any]] = []
    counter = [0]

    def push(at: float, kind: str, data: Any) -> None:
        counter[0] += 1
        heapq.heappush(queue, (at, counter[0], kind, data))

    idle = set(range(workers))
    for worker in range(workers):
        push(0.0, "try", worker)
    execution = limits.execution_time(rows)
    served = 0
    while queue:
        at, _, kind, data = heapq.heappop(queue)
        if at > duration:
            break
        now[0] = at
        if kind == "try":
            if data not in idle:
                continue
            wake = core.decide(at)
            if wake is None:
                idle.discard(data)
                sent_at = core.on_send(at)
                ticket = protection.admit("app", 0)
                if isinstance(ticket, Throttle):
                    headers = {
                        "Retry-After": str(ticket.retry_after),
                        **protection.rate_headers("app", 0),
                    }
                    push(at + 0.005, "response", (data, 429, headers, ticket.code, sent_at))
                else:
                    push(at + execution, "done", (data, ticket, sent_at))
            elif wake != math.inf:
                push(max(wake, at + 1e-6), "try", data)
        elif kind == "done":
            worker, ticket, sent_at = data
            headers = protection.rate_headers("app", 0)
            protection.finish(ticket, rows=rows, execution_seconds=execution, status=200)
            served += 1
            push(at + 0.005, "response", (worker, 200, headers, None, sent_at))
        else:
            worker, status, headers, code, sent_at = data
            core.observe(observation_from(status, headers, error_code=code), at, sent_at)
            core.on_release(at, sent_at)
            idle.add(worker)
            for waiting in list(idle):
                push(at, "try", waiting)
    stats = protection.user("app")
    ceiling = limits.ceiling_rows_per_second(rows) / rows
    return {
        "ratio": served / duration / ceiling,
        "throttled": sum(stats.throttled.values()),
        "violations": stats.violations,
        "core": core,
    }


@pytest.mark.parametrize(
    ("limits", "duration", "rows", "min_ratio", "max_throttled"),
    [
        (Limits(requests=100, window=10, dop_hint=8), 200.0, 100, 0.9, 0),
        (Limits(requests=300, window=30, dop_hint=8), 200.0, 100, 0.9, 0),
        (Limits(requests=100, window=10, concurrency=4, dop_hint=2), 60.0, 100, 0.8, 2),
        (
            Limits(
                requests=40,
                window=10,
                execution_seconds=3,
                concurrency=4,
                base_ms=20,
                per_row_ms=0.05,
                dop_hint=4,
            ),
            60.0,
            5000,
            0.9,
            5,
        ),
        (Limits(requests=1200, window=60, dop_hint=8), 240.0, 100, 0.9, 0),
    ],
)
def test_paces_just_under_the_limits_without_violations(
    limits: Limits, duration: float, rows: int, min_ratio: float, max_throttled: int
) -> None:
    """Against the simulator's limits model, many workers get ≥ min_ratio of the ceiling,
    almost no 429s and zero violations, learning the window from the headers alone."""
    result = run_against_protection(limits, duration=duration, rows=rows)
    assert result["violations"] == 0
    assert result["throttled"] <= max_throttled
    assert result["ratio"] >= min_ratio
    assert result["core"].window_learned
    assert result["core"].window == pytest.approx(limits.window, rel=0.1)


def test_daily_budget_waits_for_the_window_then_renews() -> None:
    """A spent daily budget blocks until its 24 h window renews, then counts from zero."""
    budget = DailyBudget(limit=2)
    budget.spend(100.0)
    budget.spend(101.0)
    assert budget.wait_until(102.0) == 100.0 + 86400
    assert budget.wait_until(100.0 + 86400) is None
    assert budget.used == 0


async def test_shell_pause_blocks_every_worker_until_retry_after() -> None:
    """In the async shell, no slot is granted inside a Retry-After window (by the clock)."""
    governor = Governor("env", initial_concurrency=4)
    granted: list[float] = []

    async def worker() -> None:
        async with governor.slot():
            granted.append(time.monotonic())

    async with governor.slot() as slot:
        slot.observe(429, {"Retry-After": "0.2"}, error_code="0x80072322")
    paused_until = governor.core.paused_until
    await asyncio.gather(*(worker() for _ in range(5)))
    assert len(granted) == 5
    assert min(granted) >= paused_until
    snapshot = governor.snapshot()
    assert snapshot["throttled"] == {"requests": 1}
    assert snapshot["waited_on_retry_after"] > 0


async def test_shell_spends_and_persists_the_daily_budget() -> None:
    """Each request spends the tenant's daily budget; when spent, the governor says so."""
    store = InMemoryBudgetStore()
    budget = TenantBudget("contoso", 2, store)
    governor = Governor("env", daily=budget)
    for _ in range(2):
        async with governor.slot():
            pass
    await budget.flush()
    assert store.rows["contoso"][1] == 2
    assert await budget.wait_until() is not None
    assert governor.snapshot()["daily_exhausted_until"] is not None


async def test_sql_budget_store_round_trips(tmp_path: Path) -> None:
    """The SQL budget store saves and loads (tenant, window_start, used) in SQLite."""
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'control.db'}")
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    store = SqlBudgetStore(engine)
    start = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert await store.load("contoso") is None
    await store.save("contoso", start, 7)
    await store.save("contoso", start, 9)
    assert (start, 9) == await store.load("contoso")
    await engine.dispose()
