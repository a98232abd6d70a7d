"""Service protection limits, as Dataverse applies them (pure; the clock is injected).

Per application user and per simulated web server [reference 6.1]: a sliding-window request
count, a sliding-window combined execution time, and a concurrency limit whose excess fails
at once. A throttled request gets HTTP 429 with one of the three documented codes and an
integer ``Retry-After`` [6.2, 6.3]. While a user is inside a ``Retry-After`` period it was
given, further requests are refused too; those arriving after the user could have read the
429 are counted as *violations*, and each violation makes the next ``Retry-After`` longer
("grows if the client keeps pushing"). Every response carries the rate headers
(`rate_headers`). The HTTP layer calls `admit` before work and `finish` after it.
"""

from __future__ import annotations

import math
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

REQUESTS_CODE = "0x80072322"
EXECUTION_CODE = "0x80072321"
CONCURRENCY_CODE = "0x80072326"
# Requests already on the wire when the first 429 left cannot have obeyed it: not violations.
VIOLATION_GRACE = 0.25
# The strict check (`departures_inside`): a request arriving this long after a 429 was sent
# left its client after the client could have read it (loopback delivery takes well under a
# millisecond; this leaves room for both processes' event loops).
STRICT_GRACE = 0.05
KEEP_ARRIVALS = 200_000  # per user: arrival and refusal times kept for the strict check
MAX_PAGE = 5000


class Limits(BaseModel):
    """Service protection limits of one environment (defaults are the documented ones)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    requests: int = Field(default=6000, ge=1, description="requests per window")
    window: float = Field(default=300.0, gt=0, description="sliding window, seconds")
    execution_seconds: float = Field(default=1200.0, gt=0, description="execution time per window")
    concurrency: int = Field(default=52, ge=1)
    servers: int = Field(default=1, ge=1, le=64, description="web servers, each with own limits")
    base_ms: float = Field(default=5.0, ge=0, description="modelled execution time per request")
    per_row_ms: float = Field(
        default=0.01, ge=0, description="... plus this per row served with all its columns"
    )
    dop_hint: int = Field(default=8, ge=1, description="x-ms-dop-hint")

    def execution_time(
        self, rows: int, selected_columns: int | None = None, total_columns: int | None = None
    ) -> float:
        """Modelled execution seconds of one request serving `rows` rows.

        ``base_ms + per_row_ms × rows × share``, where the share of the table's columns the
        rows carried is ``max(1, selected_columns) / total_columns`` (at most 1): a key-only page
        (``$select=<pk>``) costs one column's share per row, as Microsoft's guidance to select
        only the columns you need implies; the floor of one column keeps it from being free.
        Without column counts (no ``$select`` serves every column) the share is 1.
        """
        share = column_share(selected_columns, total_columns)
        return (self.base_ms + self.per_row_ms * rows * share) / 1000.0

    def ceiling_rows_per_second(
        self,
        page: int = MAX_PAGE,
        selected_columns: int | None = None,
        total_columns: int | None = None,
    ) -> float:
        """The most rows per second these limits allow a client reading `page`-row pages of
        full rows, or of `selected_columns` of `total_columns` columns (`execution_time`)."""
        cost = self.execution_time(page, selected_columns, total_columns)
        by_requests = self.requests / self.window * page
        by_execution = self.execution_seconds / (self.window * cost) * page if cost else math.inf
        by_concurrency = self.concurrency * page / cost if cost else math.inf
        return min(by_requests, by_execution, by_concurrency) * self.servers


def column_share(selected_columns: int | None, total_columns: int | None) -> float:
    """The share of a table's columns a row carried: ``max(1, selected) / total``, at most 1;
    1 when either count is unknown (``None`` or a total of 0)."""
    if selected_columns is None or not total_columns:
        return 1.0
    return min(1.0, max(1, selected_columns) / total_columns)


@dataclass(frozen=True)
class Throttle:
    """A refused request: HTTP 429 with this code, message and Retry-After."""

    code: str
    message: str
    retry_after: int

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message}}


@dataclass(frozen=True)
class Ticket:
    """An admitted request; hand it back to `finish`."""

    user: str
    server: int
    admitted_at: float


@dataclass
class UserStats:
    """Counters for one application user in one environment."""

    requests: int = 0
    admitted: int = 0
    throttled: Counter[str] = field(default_factory=Counter)
    violations: int = 0
    max_concurrency: int = 0
    in_flight: int = 0
    rows_served: int = 0
    execution_seconds: float = 0.0
    statuses: Counter[int] = field(default_factory=Counter)
    batches: int = 0  # admitted $batch requests (each one request for the limits)
    batch_operations: int = 0  # operations inside them (each one for the 24-hour entitlement)
    # Continuation pages served (nextLink requests: $skiptoken), by link: a link served twice
    # is a page its client fetched again (after a crash, the page in flight is read again).
    continuations: Counter[str] = field(default_factory=Counter)
    retry_given_at: float = -math.inf
    retry_until: float = -math.inf
    arrivals: list[float] = field(default_factory=list)  # every request, on arrival
    # How much earlier each arrival may really have come (the loop's recent stalls).
    arrival_slack: list[float] = field(default_factory=list)
    refusals: list[tuple[float, int]] = field(default_factory=list)  # (429 sent at, Retry-After)

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "admitted": self.admitted,
            "throttled": dict(self.throttled),
            "throttled_total": sum(self.throttled.values()),
            "violations": self.violations,
            "max_concurrency": self.max_concurrency,
            "in_flight": self.in_flight,
            "rows_served": self.rows_served,
            "execution_seconds": round(self.execution_seconds, 3),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "batches": self.batches,
            "batch_operations": self.batch_operations,
            "continuations": sum(self.continuations.values()),
            "continuations_repeated": sum(n - 1 for n in self.continuations.values() if n > 1),
            "strict_violations": len(
                departures_inside(self.arrivals, self.refusals, slack=self.arrival_slack)
            ),
        }


def departures_inside(
    arrivals: list[float],
    refusals: list[tuple[float, int]],
    grace: float = STRICT_GRACE,
    *,
    slack: list[float] | None = None,
) -> list[float]:
    """Arrival times that fall inside a Retry-After window the client had already received:
    after a 429 was sent (plus `grace`) and before its Retry-After ended. `slack[i]` is how
    much earlier arrival i may really have come (the simulator's loop stalls, see
    `stallwatch`): an arrival counts only if all its possible times are inside, from the
    earliest (stamp minus slack: after the 429 plus grace?) to the stamp itself (before the
    window's end?). Pure."""
    windows = sorted((sent + grace, sent + retry_after) for sent, retry_after in refusals)
    earliest = sorted(
        (arrival - (slack[i] if slack is not None and i < len(slack) else 0.0), arrival)
        for i, arrival in enumerate(arrivals)
    )
    inside: list[float] = []
    index, open_until = 0, -math.inf
    for first_possible, arrival in earliest:
        while index < len(windows) and windows[index][0] <= first_possible:
            open_until = max(open_until, windows[index][1])
            index += 1
        if arrival < open_until:
            inside.append(arrival)
    return inside


@dataclass
class _Bucket:
    """The sliding windows of one user on one server."""

    arrivals: deque[float] = field(default_factory=deque)
    executions: deque[tuple[float, float]] = field(default_factory=deque)
    execution_total: float = 0.0
    in_flight: int = 0
    violations: deque[float] = field(default_factory=deque)
    blocked_until: float = -math.inf
    blocked_code: str = REQUESTS_CODE


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


class ServiceProtection:
    """The service protection state of one environment (all its users and servers)."""

    def __init__(
        self,
        limits: Limits,
        *,
        clock: Callable[[], float] = time.monotonic,
        stamp_uncertainty: Callable[[float], float] = lambda now: 0.0,
    ) -> None:
        self._limits = limits
        self._clock = clock
        self._stamp_uncertainty = stamp_uncertainty
        self._buckets: dict[tuple[str, int], _Bucket] = {}
        self._users: dict[str, UserStats] = {}
        self._next_server = 0

    @property
    def limits(self) -> Limits:
        return self._limits

    def set_limits(self, limits: Limits) -> None:
        """Change the limits at runtime; windows already recorded are kept."""
        self._limits = limits

    def reset(self) -> None:
        """Forget every window, block and counter."""
        self._buckets.clear()
        self._users.clear()

    def choose_server(self, requested: int | None) -> int:
        """Honour server affinity when it names a server, else go round-robin."""
        if requested is not None and 0 <= requested < self._limits.servers:
            return requested
        server = self._next_server % self._limits.servers
        self._next_server = server + 1
        return server

    def admit(self, user: str, server: int) -> Ticket | Throttle:
        """Admit a request now, or say why not (HTTP 429)."""
        now = self._clock()
        limits = self._limits
        bucket = self._bucket(user, server, now)
        stats = self.user(user)
        stats.requests += 1
        if len(stats.arrivals) < KEEP_ARRIVALS:
            stats.arrivals.append(now)
            stats.arrival_slack.append(self._stamp_uncertainty(now))
        violated = stats.retry_given_at + VIOLATION_GRACE <= now < stats.retry_until
        if violated:
            stats.violations += 1
            bucket.violations.append(now)
        throttle: tuple[str, str, float] | None = None
        if now < bucket.blocked_until:
            throttle = (
                bucket.blocked_code,
                self._message(bucket.blocked_code),
                bucket.blocked_until - now,
            )
        elif len(bucket.arrivals) >= limits.requests:
            oldest_to_leave = bucket.arrivals[len(bucket.arrivals) - limits.requests]
            throttle = (
                REQUESTS_CODE,
                self._message(REQUESTS_CODE),
                oldest_to_leave + limits.window - now,
            )
        elif bucket.execution_total >= limits.execution_seconds:
            throttle = (
                EXECUTION_CODE,
                self._message(EXECUTION_CODE),
                self._execution_wait(bucket, now),
            )
        elif bucket.in_flight >= limits.concurrency:
            throttle = (CONCURRENCY_CODE, self._message(CONCURRENCY_CODE), 1.0)
        if throttle is not None:
            code, message, wait = throttle
            growth = 2 ** min(len(bucket.violations), 16) - 1
            retry_after = int(min(max(1, math.ceil(wait)) + growth, max(1.0, limits.window)))
            bucket.blocked_until = max(bucket.blocked_until, now + retry_after)
            bucket.blocked_code = code
            if now >= stats.retry_until:
                stats.retry_given_at = now
            stats.retry_until = max(stats.retry_until, now + retry_after)
            stats.throttled[code] += 1
            stats.statuses[429] += 1
            if len(stats.refusals) < KEEP_ARRIVALS:
                stats.refusals.append((now, retry_after))
            return Throttle(code=code, message=message, retry_after=retry_after)
        bucket.arrivals.append(now)
        bucket.in_flight += 1
        stats.admitted += 1
        stats.in_flight += 1
        stats.max_concurrency = max(stats.max_concurrency, stats.in_flight)
        return Ticket(user=user, server=server, admitted_at=now)

    def throttle_now(self, user: str | None, seconds: float) -> None:
        """Refuse `user`'s (every user's, for None) next requests for `seconds` on every
        server, as if a limit had just been hit: the first request to arrive gets a 429 with
        that Retry-After, and so does every one after it inside the window."""
        now = self._clock()
        users = [user] if user is not None else list(self._users)
        for name in users:
            for server in range(self._limits.servers):
                bucket = self._bucket(name, server, now)
                bucket.blocked_until = max(bucket.blocked_until, now + seconds)
                bucket.blocked_code = REQUESTS_CODE

    def finish(self, ticket: Ticket, *, rows: int, execution_seconds: float, status: int) -> None:
        """Record an admitted request's execution time and rows once it is done."""
        now = self._clock()
        bucket = self._bucket(ticket.user, ticket.server, now)
        bucket.in_flight = max(0, bucket.in_flight - 1)
        bucket.executions.append((now, execution_seconds))
        bucket.execution_total += execution_seconds
        stats = self.user(ticket.user)
        stats.in_flight = max(0, stats.in_flight - 1)
        stats.rows_served += rows
        stats.execution_seconds += execution_seconds
        stats.statuses[status] += 1

    def note_continuation(self, user: str, link: str) -> None:
        """A nextLink page (one with a $skiptoken) was served to `user`."""
        self.user(user).continuations[link] += 1

    def count_batch(self, user: str, operations: int) -> None:
        """Note an admitted ``$batch`` of that many operations (the limits already counted it
        as one request; entitlements count each operation, reference 6.6)."""
        stats = self.user(user)
        stats.batches += 1
        stats.batch_operations += operations

    def rate_headers(self, user: str, server: int) -> dict[str, str]:
        """The headers Dataverse puts on every response [reference 2.9, 6.3]."""
        now = self._clock()
        bucket = self._bucket(user, server, now)
        limits = self._limits
        burst = max(0, limits.requests - len(bucket.arrivals))
        time_left = max(0.0, limits.execution_seconds - bucket.execution_total)
        return {
            "x-ms-ratelimit-burst-remaining-xrm-requests": str(burst),
            "x-ms-ratelimit-time-remaining-xrm-requests": f"{time_left:,.2f}",
            "x-ms-dop-hint": str(limits.dop_hint),
        }

    def user(self, user: str) -> UserStats:
        stats = self._users.get(user)
        if stats is None:
            stats = self._users[user] = UserStats()
        return stats

    def users(self) -> dict[str, UserStats]:
        return dict(self._users)

    def _bucket(self, user: str, server: int, now: float) -> _Bucket:
        bucket = self._buckets.get((user, server))
        if bucket is None:
            bucket = self._buckets[(user, server)] = _Bucket()
        horizon = now - self._limits.window
        while bucket.arrivals and bucket.arrivals[0] <= horizon:
            bucket.arrivals.popleft()
        while bucket.executions and bucket.executions[0][0] <= horizon:
            bucket.execution_total -= bucket.executions.popleft()[1]
        if not bucket.executions:
            bucket.execution_total = 0.0  # no float drift once the window empties
        while bucket.violations and bucket.violations[0] <= horizon:
            bucket.violations.popleft()
        return bucket

    def _execution_wait(self, bucket: _Bucket, now: float) -> float:
        """Seconds until enough execution time leaves the window to get under the limit."""
        total = bucket.execution_total
        for finished, seconds in bucket.executions:
            total -= seconds
            if total < self._limits.execution_seconds:
                return finished + self._limits.window - now
        return self._limits.window

    def _message(self, code: str) -> str:
        limits = self._limits
        window = _number(limits.window)
        if code == REQUESTS_CODE:
            return (
                f"Number of requests exceeded the limit of {limits.requests} "
                f"over time window of {window} seconds."
            )
        if code == EXECUTION_CODE:
            milliseconds = round(limits.execution_seconds * 1000)
            # The double space before "milliseconds" is in Microsoft's documented text.
            return (
                f"Combined execution time of incoming requests exceeded limit of "
                f"{milliseconds:,}  milliseconds over time window of {window} seconds. "
                "Decrease number of concurrent requests or reduce the duration of requests "
                "and try again later."
            )
        return f"Number of concurrent requests exceeded the limit of {limits.concurrency}."
