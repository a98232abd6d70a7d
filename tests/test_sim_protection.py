"""Service protection of the simulator (pure: a fake clock, no sockets)."""

from __future__ import annotations

import pytest

from sync.simulator.protection import (
    CONCURRENCY_CODE,
    EXECUTION_CODE,
    REQUESTS_CODE,
    Limits,
    ServiceProtection,
    Throttle,
    Ticket,
    column_share,
    departures_inside,
)
from sync.simulator.stallwatch import StallWatch

USER = "11111111-1111-1111-1111-111111111111"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(name="clock")
def _clock() -> FakeClock:
    return FakeClock()


def admit_ok(protection: ServiceProtection, server: int = 0) -> Ticket:
    result = protection.admit(USER, server)
    assert isinstance(result, Ticket), result
    return result


def admit_throttled(protection: ServiceProtection, server: int = 0) -> Throttle:
    result = protection.admit(USER, server)
    assert isinstance(result, Throttle), result
    return result


def done(protection: ServiceProtection, ticket: Ticket, seconds: float = 0.0) -> None:
    protection.finish(ticket, rows=10, execution_seconds=seconds, status=200)


def test_request_count_limit_gives_documented_429(clock: FakeClock) -> None:
    """The request after `requests` in the window gets 0x80072322, the documented text and a wait until a slot frees."""
    protection = ServiceProtection(Limits(requests=3, window=10), clock=clock)
    for _ in range(3):
        done(protection, admit_ok(protection))
        clock.advance(1)
    throttle = admit_throttled(protection)
    assert throttle.code == REQUESTS_CODE
    assert (
        throttle.message
        == "Number of requests exceeded the limit of 3 over time window of 10 seconds."
    )
    assert throttle.retry_after == 7  # the first request (t=0) leaves the window at t=10; now t=3
    assert throttle.body() == {"error": {"code": REQUESTS_CODE, "message": throttle.message}}


def test_window_slides_and_admits_again(clock: FakeClock) -> None:
    """Once the Retry-After has passed the oldest request has left the window and the next one is admitted."""
    protection = ServiceProtection(Limits(requests=2, window=10), clock=clock)
    done(protection, admit_ok(protection))
    done(protection, admit_ok(protection))
    throttle = admit_throttled(protection)
    clock.advance(throttle.retry_after)
    done(protection, admit_ok(protection))
    assert protection.user(USER).violations == 0


def test_execution_time_limit_uses_documented_message(clock: FakeClock) -> None:
    """Combined execution time over the budget gives 0x80072321 with the documented wording (double space included)."""
    protection = ServiceProtection(Limits(execution_seconds=1.2, window=300), clock=clock)
    done(protection, admit_ok(protection), seconds=0.7)
    done(protection, admit_ok(protection), seconds=0.7)
    throttle = admit_throttled(protection)
    assert throttle.code == EXECUTION_CODE
    assert throttle.message == (
        "Combined execution time of incoming requests exceeded limit of 1,200  milliseconds over "
        "time window of 300 seconds. Decrease number of concurrent requests or reduce the duration "
        "of requests and try again later."
    )
    assert throttle.retry_after == 300


def test_concurrency_excess_fails_immediately(clock: FakeClock) -> None:
    """A request beyond the concurrency limit is refused at once with 0x80072326; finishing one frees a slot."""
    protection = ServiceProtection(Limits(concurrency=2), clock=clock)
    first = admit_ok(protection)
    admit_ok(protection)
    throttle = admit_throttled(protection)
    assert throttle.code == CONCURRENCY_CODE
    assert throttle.message == "Number of concurrent requests exceeded the limit of 2."
    assert throttle.retry_after == 1
    done(protection, first)
    clock.advance(1)
    admit_ok(protection)
    assert protection.user(USER).max_concurrency == 2


def test_rate_headers_count_down(clock: FakeClock) -> None:
    """The burst header counts remaining requests and the time header shows remaining seconds like 1,200.00."""
    protection = ServiceProtection(Limits(), clock=clock)
    assert protection.rate_headers(USER, 0) == {
        "x-ms-ratelimit-burst-remaining-xrm-requests": "6000",
        "x-ms-ratelimit-time-remaining-xrm-requests": "1,200.00",
        "x-ms-dop-hint": "8",
    }
    done(protection, admit_ok(protection), seconds=0.25)
    headers = protection.rate_headers(USER, 0)
    assert headers["x-ms-ratelimit-burst-remaining-xrm-requests"] == "5999"
    assert headers["x-ms-ratelimit-time-remaining-xrm-requests"] == "1,199.75"


def test_requests_on_the_wire_are_not_violations_but_later_ones_are(clock: FakeClock) -> None:
    """Requests arriving right after a 429 were already sent; ones arriving later inside Retry-After count as violations."""
    protection = ServiceProtection(Limits(requests=1, window=60), clock=clock)
    done(protection, admit_ok(protection))
    admit_throttled(protection)
    clock.advance(0.05)
    admit_throttled(protection)
    assert protection.user(USER).violations == 0
    clock.advance(1.0)
    admit_throttled(protection)
    assert protection.user(USER).violations == 1


def test_retry_after_grows_while_the_client_keeps_pushing(clock: FakeClock) -> None:
    """Each violation lengthens the next Retry-After (capped at the window)."""
    protection = ServiceProtection(Limits(requests=1, window=100), clock=clock)
    done(protection, admit_ok(protection))
    clock.advance(95)
    first = admit_throttled(protection)
    assert first.retry_after == 5
    waits = []
    for _ in range(4):
        clock.advance(1)
        waits.append(admit_throttled(protection).retry_after)
    assert waits == sorted(waits)
    assert waits[-1] > first.retry_after
    assert all(wait <= 100 for wait in waits)
    assert protection.user(USER).violations == 4


def test_obedient_client_has_no_violations(clock: FakeClock) -> None:
    """A client that waits exactly Retry-After before every retry is never counted as violating."""
    protection = ServiceProtection(Limits(requests=5, window=10), clock=clock)
    admitted = 0
    while admitted < 30:
        result = protection.admit(USER, 0)
        if isinstance(result, Throttle):
            clock.advance(result.retry_after)
            continue
        done(protection, result)
        admitted += 1
        clock.advance(0.1)
    stats = protection.user(USER)
    assert stats.violations == 0
    assert stats.throttled[REQUESTS_CODE] > 0


def test_each_server_has_its_own_limits(clock: FakeClock) -> None:
    """Without affinity requests go round-robin; each simulated server counts its own requests."""
    protection = ServiceProtection(Limits(requests=1, window=10, servers=2), clock=clock)
    first, second = protection.choose_server(None), protection.choose_server(None)
    assert {first, second} == {0, 1}
    done(protection, admit_ok(protection, first))
    done(protection, admit_ok(protection, second))
    assert protection.choose_server(1) == 1
    admit_throttled(protection, 1)


def test_ceiling_is_the_tightest_of_the_three_limits() -> None:
    """The throughput ceiling is the minimum of the request, execution-time and concurrency bounds, times servers."""
    limits = Limits(
        requests=40, window=10, execution_seconds=3, concurrency=4, base_ms=20, per_row_ms=0.05
    )
    cost = 0.02 + 0.05 * 5000 / 1000
    assert limits.ceiling_rows_per_second(5000) == pytest.approx(3 / (10 * cost) * 5000)
    assert limits.ceiling_rows_per_second(100) == pytest.approx(40 / 10 * 100)
    doubled = limits.model_copy(update={"servers": 2})
    assert doubled.ceiling_rows_per_second(100) == pytest.approx(2 * 40 / 10 * 100)


def test_execution_time_scales_with_the_share_of_columns_selected() -> None:
    """base_ms + per_row_ms × rows × max(1, selected) / total: no column counts (or all columns)
    is the full cost, a key-only page one column's share, never less, never more than full."""
    limits = Limits(base_ms=200, per_row_ms=3)
    full = 0.2 + 3 * 5000 / 1000
    assert limits.execution_time(5000) == pytest.approx(full)
    assert limits.execution_time(5000, 22, 22) == pytest.approx(full)
    assert limits.execution_time(5000, None, 22) == pytest.approx(full)
    assert limits.execution_time(5000, 1, 22) == pytest.approx(0.2 + 15 / 22)
    assert limits.execution_time(5000, 0, 22) == limits.execution_time(5000, 1, 22)  # the floor
    assert limits.execution_time(5000, 30, 22) == pytest.approx(full)
    assert limits.execution_time(5000, 11, 22) == pytest.approx(0.2 + 7.5)
    assert limits.execution_time(0, 1, 22) == pytest.approx(0.2)
    assert column_share(1, 22) == pytest.approx(1 / 22) and column_share(3, 0) == 1.0


def test_ceiling_of_key_only_pages_is_higher() -> None:
    """The ceiling describes full-row pages unless column counts say otherwise."""
    limits = Limits(requests=6000, execution_seconds=1200, base_ms=200, per_row_ms=3)
    full = limits.ceiling_rows_per_second()
    assert full == limits.ceiling_rows_per_second(5000, 22, 22)
    assert full == pytest.approx(1200 / (300 * 15.2) * 5000)
    assert limits.ceiling_rows_per_second(5000, 1, 22) > 10 * full


def test_reset_forgets_windows_and_counters(clock: FakeClock) -> None:
    """After reset a throttled user is admitted again and its counters start from zero."""
    protection = ServiceProtection(Limits(requests=1, window=100), clock=clock)
    done(protection, admit_ok(protection))
    admit_throttled(protection)
    protection.reset()
    admit_ok(protection)
    assert protection.user(USER).requests == 1


# --- the strict Retry-After check and the stamps' own uncertainty ---------------------------


def test_an_arrival_well_after_a_429_and_before_its_end_is_inside() -> None:
    refusals = [(10.0, 2)]
    assert departures_inside([10.01, 10.5, 11.99, 12.0, 12.3], refusals) == [10.5, 11.99]


def test_slack_excuses_only_arrivals_that_may_have_come_before_the_429() -> None:
    # Stamped 0.2 s after the 429 while the loop had stalled 0.3 s: it may have come first.
    assert departures_inside([10.2], [(10.0, 2)], slack=[0.3]) == []
    # Stalled 0.1 s: even its earliest time is 0.1 s after the 429 (grace 0.05 s).
    assert departures_inside([10.2], [(10.0, 2)], slack=[0.1]) == [10.2]
    # Slack never pulls an arrival after the window's end back into it.
    assert departures_inside([12.004], [(10.0, 2)], slack=[0.05]) == []


def test_overlapping_windows_extend_to_the_latest_end() -> None:
    refusals = [(10.0, 2), (11.5, 2)]
    assert departures_inside([12.5, 13.6], refusals) == [12.5]


def test_stall_watch_reports_the_worst_recent_stall_and_a_stall_going_on() -> None:
    watch = StallWatch()
    assert watch.uncertainty(5.0) == 0.0  # not running: stamps are taken as exact
    watch.tick(1.000, expected=1.000)
    watch.tick(1.005, expected=1.005)
    assert watch.uncertainty(1.006) == pytest.approx(0.001)
    watch.tick(1.205, expected=1.010)  # a 195 ms stall
    assert watch.uncertainty(1.206) == pytest.approx(0.195)
    assert watch.uncertainty(1.306) == pytest.approx(0.195)  # since the last tick: 0.101
    watch.tick(1.800, expected=1.800)
    assert watch.uncertainty(1.801) == pytest.approx(0.001)  # the stall left the memory
    assert watch.uncertainty(2.5) == pytest.approx(0.7)  # no tick for 0.7 s: stalled now
