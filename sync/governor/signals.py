"""What responses tell the governor, parsed leniently (pure), and the daily entitlement counter.

Header values come as Dataverse writes them: `x-ms-ratelimit-time-remaining-xrm-requests:
1,200.00` (seconds, thousands separator), `x-ms-ratelimit-burst-remaining-xrm-requests: 5999`,
`x-ms-dop-hint: 48`, `Retry-After: 7`. Throttling codes come in hex (Web API) or signed decimal
(what Microsoft's ServiceClient compares); both are normalized to lower-case hex.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

THROTTLE_CODES = {
    "0x80072322": "requests",
    "0x80072321": "execution_time",
    "0x80072326": "concurrency",
}
_DECIMAL_TO_HEX = {str(int(code, 16) - (1 << 32)): code for code in THROTTLE_CODES}
DEFAULT_RETRY_AFTER = 5.0
MAX_RETRY_AFTER = 3600.0


def parse_number(value: str | None) -> float | None:
    """Parse a header number leniently: "1,200.00", " 5999 ", "12.5"; None when unusable."""
    if value is None:
        return None
    text = value.strip().replace(",", "").replace("_", "")
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) and number >= 0 else None


def normalize_code(code: object) -> str | None:
    """Error codes come as hex ("0x80072322") or signed decimal ("-2147015902"); return hex."""
    if isinstance(code, int) and not isinstance(code, bool):
        return f"0x{code & 0xFFFFFFFF:08x}"
    if not isinstance(code, str) or not code.strip():
        return None
    text = code.strip().lower()
    if text in _DECIMAL_TO_HEX:
        return _DECIMAL_TO_HEX[text]
    try:
        number = int(text, 16) if text.startswith("0x") else int(text)
    except ValueError:
        return None
    return f"0x{number & 0xFFFFFFFF:08x}"


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
    retry_after = parse_number(headers.get("Retry-After"))
    if status == 429 and retry_after is None:
        retry_after = DEFAULT_RETRY_AFTER
    return RateObservation(
        status=status,
        retry_after=min(retry_after, MAX_RETRY_AFTER) if retry_after is not None else None,
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
