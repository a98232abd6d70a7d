"""What responses tell the governor (pure; headers parsed by sync.dataverse.headers), and the
daily entitlement counter."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sync.dataverse.headers import THROTTLE_CODES, normalize_code, parse_number, retry_after


@dataclass(frozen=True)
class RateObservation:
    """What one response tells the governor."""

    status: int
    retry_after: float | None = None
    throttle_code: str | None = None
    burst_remaining: int | None = None
    time_remaining: float | None = None
    dop_hint: int | None = None

    @property
    def throttled(self) -> bool:
        return self.status == 429

    @property
    def throttle_kind(self) -> str:
        return THROTTLE_CODES.get(self.throttle_code or "", "unknown")


def observation_from(
    status: int, headers: Mapping[str, str], *, error_code: object = None
) -> RateObservation:
    """Read the service-protection headers of a response (a case-insensitive mapping)."""
    burst = parse_number(headers.get("x-ms-ratelimit-burst-remaining-xrm-requests"))
    dop = parse_number(headers.get("x-ms-dop-hint"))
    return RateObservation(
        status=status,
        retry_after=retry_after(headers, status),
        throttle_code=normalize_code(error_code) if status == 429 else None,
        burst_remaining=int(burst) if burst is not None else None,
        time_remaining=parse_number(headers.get("x-ms-ratelimit-time-remaining-xrm-requests")),
        dop_hint=max(1, int(dop)) if dop is not None else None,
    )


@dataclass
class DailyBudget:
    """The Power Platform 24-hour request entitlement of one tenant (pure; wall-clock seconds).

    Dataverse evaluates it over a rolling 24 hours; we keep a fixed window starting at the
    first request, which is cheap to persist (tenant, window_start, used).
    """

    limit: int
    window_start: float | None = None
    used: int = 0
    window: float = 86400.0

    def roll(self, now: float) -> None:
        if self.window_start is None or now >= self.window_start + self.window:
            self.window_start = now
            self.used = 0

    def wait_until(self, now: float) -> float | None:
        """None if a request may be spent now, else when the window renews."""
        self.roll(now)
        if self.used < self.limit:
            return None
        assert self.window_start is not None
        return self.window_start + self.window

    def spend(self, now: float, count: int = 1) -> None:
        self.roll(now)
        self.used += count
