"""The governor: pure core driven by a fake clock, the async shell, and the daily budget."""

from __future__ import annotations

import asyncio
import heapq
import math
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from sync.dataverse.headers import normalize_code, parse_number
from sync.governor.budget_store import SqlBudgetStore
from sync.governor.core import GovernorCore
from sync.governor.gate import Governor, GovernorClosedError, InMemoryBudgetStore, TenantBudget
from sync.governor.signals import DailyBudget, RateObservation, observation_from
from sync.governor.window import CostEstimate
from sync.simulator.protection import Limits, ServiceProtection, Throttle
from sync.store.control import metadata


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
    assert core.decide(11.0) == math.inf  # restarts from one in flight, and sent[2] still is
    core.on_release(3.0, sent[2])
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
    ("events", "busy", "expected_limit"),
    [
        ([], True, 4),
        ([ok(dop=8)], True, 8),
        ([ok(dop=100)], True, 10),  # never above the cap
        ([throttle(1), ok(dop=8)], True, 2),  # dop hint after a 429 does not raise
        ([ok(dop=8)] + [ok()] * 9, True, 9),  # additive increase: +1 per `limit` responses
        ([ok(dop=8)] + [ok()] * 30, False, 8),  # no growth while the limit holds nothing back
    ],
)
def test_adaptive_concurrency(
    events: list[RateObservation], busy: bool, expected_limit: int
) -> None:
    """Concurrency starts small, takes the dop hint, grows additively while every slot is in
    use (not while pacing is what holds requests back), halves on a 429."""
    core = GovernorCore(cap=10)
    for index, event in enumerate(events):
        now = float(index)
        target = math.floor(core.limit) if busy else 1
        sent = [core.on_send(now) for _ in range(target - core.in_flight)]
        core.observe(event, now, sent[0] if sent else None)
        for sent_at in sent:
            core.on_release(now, sent_at)
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
    """With a learned 10 s window and 5 requests per window (4 left after ours, 2 kept as
    margin), sends are spaced window ÷ 3 apart, stop when the budget is spent, and resume when
    our first send ages out."""
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
    assert pytest.approx(times) == [10 / 3, 20 / 3]
    assert pytest.approx(core.decide(now)) == 10.0
    assert core.decide(10.0) is None


def run_against_protection(
    limits: Limits,
    *,
    workers: int = 8,
    duration: float = 60.0,
    rows: int = 100,
    transfer: float = 0.005,
    first_rows: int | None = None,
    cap: int = 52,
    key_pages: int = 0,
) -> dict[str, Any]:
    """Drive a GovernorCore against the simulator's own protection model (event-driven).

    Like the simulator's HTTP layer, a request is admitted (or refused) on arrival, executes
    for its modelled time, gets the rate headers, then finishes; its response reaches the
    client `transfer` seconds later, when it is also finished (counted) on the server side.
    `first_rows` makes the first request a small one (the metadata read that starts a real
    scan). `key_pages` first sends that many key-only pages (one column of 22: the cost class
    "keys"), as a key scan before key ranges does; the row pages after them are class "rows".
    Every worker always has a request to make.
    """
    now = [0.0]
    protection = ServiceProtection(limits, clock=lambda: now[0])
    core = GovernorCore(cap=cap)
    queue: list[tuple[float, int, str, Any]] = []
    counter = [0]

    def push(at: float, kind: str, data: Any) -> None:
        counter[0] += 1
        heapq.heappush(queue, (at, counter[0], kind, data))

    idle = set(range(workers))
    tries = dict.fromkeys(range(workers), 0)  # each worker's latest "try": older ones are stale

    def retry(at: float, worker: int) -> None:
        tries[worker] += 1
        push(at, "try", (worker, tries[worker]))

    for worker in range(workers):
        retry(0.0, worker)
    served_rows = 0
    sent_keys = [0]
    pending_small = first_rows is not None
    while queue:
        at, _, kind, data = heapq.heappop(queue)
        if at > duration:
            break
        now[0] = at
        if kind == "try":
            worker, generation = data
            if worker not in idle or generation != tries[worker]:
                continue
            keys_left = key_pages - sent_keys[0]
            cost_class = "keys" if keys_left > 0 else "rows"
            wake = core.decide(at, cost_class)
            if wake is None:
                idle.discard(worker)
                sent_at = core.on_send(at, cost_class)
                ticket = protection.admit("app", 0)
                if isinstance(ticket, Throttle):
                    headers = {
                        "Retry-After": str(ticket.retry_after),
                        **protection.rate_headers("app", 0),
                    }
                    push(at + transfer, "response", (worker, 429, headers, ticket.code, sent_at))
                elif cost_class == "keys":
                    sent_keys[0] += 1
                    cost = limits.execution_time(rows, 1, 22)
                    push(at + cost, "done", (worker, ticket, sent_at, 0, cost))
                else:
                    size = first_rows if pending_small and first_rows is not None else rows
                    pending_small = False
                    cost = limits.execution_time(size)
                    push(at + cost, "done", (worker, ticket, sent_at, size, cost))
            elif wake != math.inf:
                retry(max(wake, at + 1e-6), worker)
        elif kind == "done":  # executed: headers now, counted once the body has gone out
            worker, ticket, sent_at, size, cost = data
            headers = protection.rate_headers("app", 0)
            push(at + transfer, "sent", (worker, ticket, sent_at, size, headers, cost))
        elif kind == "sent":
            worker, ticket, sent_at, size, headers, cost = data
            protection.finish(ticket, rows=size, execution_seconds=cost, status=200)
            served_rows += size
            push(at, "response", (worker, 200, headers, None, sent_at))
        else:
            worker, status, headers, code, sent_at = data
            core.observe(observation_from(status, headers, error_code=code), at, sent_at)
            core.on_release(at, sent_at)
            idle.add(worker)
            for waiting in list(idle):
                retry(at, waiting)
    stats = protection.user("app")
    return {
        "ratio": served_rows / duration / limits.ceiling_rows_per_second(rows),
        "throttled": sum(stats.throttled.values()),
        "violations": stats.violations,
        "max_concurrency": stats.max_concurrency,
        "requests": stats.requests,
        "core": core,
    }


THROTTLED_TOML = {  # config/scenarios/throttled.toml: bound by the execution-time budget
    "requests": 40,
    "window": 10,
    "execution_seconds": 2.5,
    "concurrency": 4,
    "base_ms": 25,
    "per_row_ms": 0.095,
    "dop_hint": 4,
}
REAL_SCAN: dict[str, Any] = {"rows": 5000, "transfer": 0.3, "first_rows": 0}  # metadata, pages


@pytest.mark.parametrize(
    ("limits", "duration", "scan", "min_ratio", "max_throttled"),
    [
        # Request-count bound, 10 s to 60 s windows.
        (Limits(requests=100, window=10, dop_hint=8), 200.0, {}, 0.9, 0),
        (Limits(requests=300, window=30, dop_hint=8), 200.0, {}, 0.9, 0),
        (Limits(requests=100, window=10, concurrency=4, dop_hint=2), 60.0, {}, 0.8, 2),
        (Limits(requests=1200, window=60, dop_hint=8), 240.0, {}, 0.9, 0),
        # Execution-time bound: the throttled scenario, then the same at Dataverse's 300 s.
        # (0.85: restarting from one request after each pause costs a little throughput.)
        (Limits(**THROTTLED_TOML), 200.0, REAL_SCAN, 0.85, 3),
        (
            Limits(**{**THROTTLED_TOML, "window": 300, "execution_seconds": 75, "requests": 1200}),
            1500.0,
            REAL_SCAN,
            0.9,
            3,
        ),
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
            {"rows": 5000},
            0.9,
            3,
        ),
    ],
)
def test_paces_just_under_the_limits_without_violations(
    limits: Limits, duration: float, scan: dict[str, Any], min_ratio: float, max_throttled: int
) -> None:
    """Against the simulator's limits model, many workers get ≥ min_ratio of the ceiling,
    almost no 429s (only while learning) and zero violations, learning the window and the
    execution cost per request from the headers alone."""
    result = run_against_protection(limits, duration=duration, **scan)
    assert result["violations"] == 0
    assert result["throttled"] <= max_throttled
    assert result["ratio"] >= min_ratio
    assert result["core"].window_learned
    assert result["core"].window == pytest.approx(limits.window, rel=0.1)
    if limits.execution_time(scan.get("rows", 100)) * 5 >= limits.execution_seconds:
        assert result["core"].cost == pytest.approx(limits.execution_time(5000), rel=0.15)


def test_concurrency_limit_is_found_once_and_kept() -> None:
    """Bound by the concurrency limit (4, below the dop hint of 8): one episode of concurrency
    429s sets the ceiling, after which the run stays at ≥ 0.9 of what 4 slots can serve."""
    limits = Limits(concurrency=4, base_ms=25, per_row_ms=0.095, dop_hint=8)
    result = run_against_protection(limits, duration=60.0, **REAL_SCAN)
    assert result["violations"] == 0
    assert result["throttled"] <= 4  # the first burst of 8 against 4 slots
    assert result["core"].ceiling <= 4
    assert result["max_concurrency"] <= 4
    page = limits.execution_time(5000)
    # A slot is held for execution plus transfer, so 4 slots serve page / (page + transfer).
    assert result["ratio"] >= 0.9 * page / (page + REAL_SCAN["transfer"])


def test_execution_429_does_not_stretch_the_learned_window() -> None:
    """An execution-time 429 says nothing about the window's length; a requests 429 grows it."""
    core = GovernorCore(window_hint=10.0)
    core.window_learned = True
    core.observe(throttle(2, "0x80072321"), 1.0, core.on_send(1.0))
    assert core.window == 10.0
    core.observe(throttle(2, "0x80072322"), 5.0, core.on_send(5.0))
    assert core.window == 15.0


@pytest.mark.parametrize(
    ("pairs", "expected"),
    [
        ([(0.5, 1), (0.5, 1)], 0.5),
        ([(0.0, 1), (0.0, 1), (1.5, 1)], 0.5),  # drops that show a response late are carried
        ([(0.02, 1), (0.5, 1), (0.5, 1), (0.5, 1)], 0.38),  # a cheap metadata read, diluted
        ([], None),
    ],
)
def test_cost_estimate_is_drop_over_finished(
    pairs: list[tuple[float, int]], expected: float | None
) -> None:
    """Execution cost per request is the ratio of summed budget drops to finished requests."""
    estimate = CostEstimate()
    for used, finished in pairs:
        estimate.add(used, finished)
    assert estimate.value == (None if expected is None else pytest.approx(expected))


def test_cost_estimate_forgets_what_it_carried_when_discarded() -> None:
    """Finishes carried towards a drop are dropped when the picture is spoiled."""
    estimate = CostEstimate()
    estimate.add(0.0, 3)
    estimate.discard()
    estimate.add(0.5, 1)
    assert estimate.value == 0.5


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


async def test_closing_stops_waiting_requests_but_lets_sent_ones_finish() -> None:
    """After `close`, a request waiting for a slot raises and is never sent; one in flight
    completes and reports normally."""
    governor = Governor("env", initial_concurrency=1)
    finished: list[str] = []

    async def waiter() -> None:
        async with governor.slot():
            finished.append("waiter")

    async with governor.slot() as slot:
        task = asyncio.create_task(waiter())
        await asyncio.sleep(0.01)  # the waiter is now queued behind the one slot
        governor.close()
        slot.observe(200, {})
        finished.append("in flight")
    with pytest.raises(GovernorClosedError):
        await task
    assert finished == ["in flight"]
    assert governor.core.stats.requests == 1


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


async def test_sql_budget_store_adds_what_each_process_spent(tmp_path: Path) -> None:
    """The SQL budget store adds to (tenant, window_start, used) in SQLite; a newer window
    replaces an older one, an older one joins the newer."""
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'control.db'}")
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    store = SqlBudgetStore(engine)
    start = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    later = start + timedelta(days=1)
    assert await store.load("contoso") is None
    assert await store.add("contoso", start, 7) == (start, 7)
    assert await store.add("contoso", start, 2) == (start, 9)
    assert (start, 9) == await store.load("contoso")
    assert await store.add("contoso", later, 3) == (later, 3)  # the window rolled over
    assert await store.add("contoso", start, 1) == (later, 4)  # a late flush joins it
    await engine.dispose()


async def test_two_processes_share_one_tenant_budget(tmp_path: Path) -> None:
    """Two daemons (two engines on one store) spending one tenant's budget: each flush adds
    its own requests and takes the others' back, so together they stop at the limit."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'control.db'}"
    engines = [create_async_engine(url), create_async_engine(url)]
    async with engines[0].begin() as conn:
        await conn.run_sync(metadata.create_all)
    clock = [1_000_000.0]
    budgets = [
        TenantBudget("contoso", 10, SqlBudgetStore(e), wall_clock=lambda: clock[0]) for e in engines
    ]
    for budget in budgets:
        for _ in range(3):
            assert await budget.wait_until() is None
            budget.spend()
        await budget.flush()
    await budgets[0].flush()  # learns the other's three
    assert [b.core.used for b in budgets] == [6, 6]
    for _ in range(4):
        assert await budgets[1].wait_until() is None
        budgets[1].spend()
    await budgets[1].flush()
    await budgets[0].flush()
    assert budgets[0].core.used == 10
    assert await budgets[0].wait_until() is not None  # spent, by the other process
    for engine in engines:
        await engine.dispose()


async def test_concurrency_grows_while_there_is_demand() -> None:
    """No dop hint: 12 workers (eight key ranges and four tables) keep every slot busy, so the
    limit grows from the initial 4, and the requests in flight follow it."""
    governor = Governor("env")
    peak = 0

    async def worker() -> None:
        nonlocal peak
        for _ in range(12):
            async with governor.slot() as slot:
                peak = max(peak, governor.core.in_flight)
                await asyncio.sleep(0.002)
                slot.observe(200, {})

    await asyncio.gather(*(worker() for _ in range(12)))
    assert math.floor(governor.core.limit) >= 8
    assert peak >= 8


async def test_no_growth_without_demand() -> None:
    """One chain keeps one request in flight: the limit stays where it started."""
    governor = Governor("env")
    for _ in range(50):
        async with governor.slot() as slot:
            slot.observe(200, {})
    assert math.floor(governor.core.limit) == 4


async def test_process_request_cap_spans_governors_and_a_paused_user_holds_none() -> None:
    """daemon.max_concurrency: two users share a cap of 3 requests in flight. While one user
    sits in a Retry-After pause, its waiting requests hold no share of the cap."""
    cap = asyncio.Semaphore(3)
    paused = Governor("paused", initial_concurrency=8, request_cap=cap)
    busy = Governor("busy", initial_concurrency=8, request_cap=cap)
    async with paused.slot() as slot:
        slot.observe(429, {"Retry-After": "0.5"}, error_code="0x80072322")
    in_flight = peak = 0
    done_while_paused = 0

    async def request(governor: Governor) -> None:
        nonlocal in_flight, peak, done_while_paused
        async with governor.slot() as slot:
            in_flight += 1
            peak = max(peak, in_flight)
            await asyncio.sleep(0.01)
            in_flight -= 1
            slot.observe(200, {})
        if governor is busy and time.monotonic() < paused.core.paused_until:
            done_while_paused += 1

    await asyncio.gather(*(request(paused) for _ in range(6)), *(request(busy) for _ in range(12)))
    assert peak <= 3
    assert done_while_paused == 12  # the busy user was not starved by the paused one
    assert cap._value == 3  # every share handed back


@pytest.mark.parametrize("workers", [4, 16])
def test_a_key_scan_before_full_pages_does_not_teach_that_pages_are_cheap(workers: int) -> None:
    """A key scan (20 key-only pages, ~1/22 of a full page's cost) followed by full row pages
    under the throttled scenario's execution-bound limits: costs are learned per class, so at
    most 5% of requests are 429s, and nothing is sent inside a Retry-After window."""
    result = run_against_protection(
        Limits(**THROTTLED_TOML), duration=120.0, rows=5000, key_pages=20, workers=workers
    )
    assert result["violations"] == 0
    assert result["throttled"] <= 0.05 * result["requests"], result
    assert result["ratio"] >= 0.8
    costs = result["core"]._costs
    assert costs.of("rows") == pytest.approx(Limits(**THROTTLED_TOML).execution_time(5000), rel=0.2)
    assert costs.of("keys") < costs.of("rows") / 5


def test_cost_classes_split_a_mixed_sample_by_what_each_is_thought_to_cost() -> None:
    """A pair of responses in which a known cheap class and an unknown dear class finished
    gives the unknown one what the known one leaves; the dearest class is the unit cost."""
    from collections import Counter

    costs = CostEstimate()
    costs.add(0.1, Counter({"keys": 2}))  # 0.05 each
    assert costs.of("keys") == pytest.approx(0.05)
    assert costs.of("rows") is None
    costs.add(1.05, Counter({"keys": 1, "rows": 2}))  # 0.05 + 2 × 0.5
    assert costs.of("rows") == pytest.approx(0.5)
    assert costs.value == pytest.approx(0.5)
    costs.add(0.6, Counter({"keys": 2, "rows": 1}))  # as expected (0.1 + 0.5): scaled 1:1
    assert costs.of("keys") == pytest.approx(0.05)
    assert costs.of("rows") == pytest.approx(0.5)


def test_an_unlearned_cost_class_goes_one_at_a_time() -> None:
    """While the execution budget is in play, a class whose cost is unknown has at most one
    request out; a learned class is not held back."""
    core = GovernorCore(initial_concurrency=8)
    core.observe(ok(burst=100, time_left=10.0), 0.0)
    first = core.on_send(0.0, "rows")
    assert core.decide(0.0, "rows") == math.inf
    assert core.decide(0.0, "keys") is None
    core.on_release(0.5, first)
    assert core.decide(0.5, "rows") is None


def test_a_class_whose_samples_are_spoiled_is_bounded_by_its_latency() -> None:
    """Before the window is learned, a rise of the execution budget (execution leaving the
    window, or two answers read out of order) spoils every later sample. A class first seen
    then is still not held to one request at a time for good: once one of its requests has
    finished, its cost is at most that request's latency, and its requests go concurrently,
    counted at that bound."""
    core = GovernorCore(initial_concurrency=8)
    core.observe(ok(burst=1000, time_left=100.0), 0.0)
    key = core.on_send(0.0, "keys")
    core.observe(ok(burst=999, time_left=100.5), 0.2, key)  # the budget rose: spoiled
    core.on_release(0.2, key)
    first = core.on_send(1.0, "rows")
    assert core.decide(1.0, "rows") == math.inf  # unknown: one at a time
    core.observe(ok(burst=998, time_left=99.9), 1.6, first)
    core.on_release(1.6, first)
    assert core._costs._learned("rows") is None  # the sample was spoiled
    assert core._costs.of("rows") == pytest.approx(0.6)  # but its latency bounds it
    sent = []
    while core.decide(1.6, "rows") is None and len(sent) < 8:
        sent.append(core.on_send(1.6, "rows"))
    assert len(sent) > 1
    assert core.cost == pytest.approx(0.6)  # the budget counts every request at the bound


def test_a_latency_bound_never_skews_what_the_samples_teach() -> None:
    """Bounds only stand in for a class not learned yet: a mixed sample is split by the
    learned costs, and a learned cost replaces the bound."""
    from collections import Counter

    costs = CostEstimate()
    costs.add(0.1, Counter({"keys": 2}))  # 0.05 each
    costs.bound("rows", 3.0)  # a slow answer, most of it queueing
    assert costs.of("rows") == pytest.approx(3.0)
    costs.add(1.05, Counter({"keys": 1, "rows": 2}))  # 0.05 + 2 × 0.5
    assert costs.of("rows") == pytest.approx(0.5)
    assert costs.of("keys") == pytest.approx(0.05)
    assert costs.value == pytest.approx(0.5)


def test_after_a_pause_concurrency_restarts_small_and_grows_back() -> None:
    """A 429 with 8 in flight: once the pause ends, one request may leave, not eight; healthy
    responses double the window each round trip (slow start) up to half of what failed, then
    it grows by one per window."""
    core = GovernorCore(cap=52, initial_concurrency=8)
    sent = [core.on_send(0.0) for _ in range(8)]
    core.observe(throttle(2), 0.1, sent[0])
    core.on_release(0.1, sent[0])
    for sent_at in sent[1:]:
        core.observe(ok(), 0.2)
        core.on_release(0.2, sent_at)
    assert core.decide(1.0) == 2.1  # paused
    now, leaving = 2.1, 0
    while core.decide(now) is None:
        core.on_send(now)
        leaving += 1
    assert leaving == 1  # the first instant after the pause sends one request
    windows = []
    for _ in range(6):
        now += 0.5
        out = core.in_flight
        for _ in range(out):
            core.observe(ok(), now)
            core.on_release(now, None)
        while core.decide(now) is None:
            core.on_send(now)
        windows.append(core.in_flight)
    assert windows == sorted(windows)
    assert windows[0] == 2
    assert windows[2] >= 4  # slow start up to 4 (half of 8) within three round trips
    assert windows[-1] <= 6  # then one more per window


def test_a_recalled_request_counts_nowhere() -> None:
    """A slot recalled before its request left is neither counted as sent by the budget model
    nor as a finished request, and frees its concurrency slot."""
    core = GovernorCore(initial_concurrency=2)
    core.observe(ok(burst=10, time_left=5.0), 0.0)
    kept = core.on_send(0.0)
    recalled = core.on_send(0.0)
    core.observe(throttle(3), 0.1, kept)
    core.on_release(0.1, kept)
    core.on_recall(0.1, recalled)
    assert core.in_flight == 0
    assert core.stats.recalled == 1
    assert core.stats.requests == 1
    assert core._finishes.total() == 0
    assert core.decide(1.0) == pytest.approx(3.1)
