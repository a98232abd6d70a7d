"""What a Web API response says about service protection, parsed once and leniently. Pure.

The one home of Retry-After parsing and of the throttling error codes. Header values come as
Dataverse writes them: `x-ms-ratelimit-time-remaining-xrm-requests: 1,200.00` (seconds, thousands
separator), `x-ms-ratelimit-burst-remaining-xrm-requests: 5999`, `x-ms-dop-hint: 48`,
`Retry-After: 7` (reference 2.9, 6.3). Throttling codes come in hex (Web API) or signed decimal
(what Microsoft's ServiceClient compares); both are normalized to lower-case hex.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

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


def retry_after(headers: Mapping[str, str], status: int) -> float | None:
    """The Retry-After of a response in seconds, capped; a 429 without one gets the default."""
    seconds = parse_number(headers.get("Retry-After"))
    if seconds is None and status == 429:
        seconds = DEFAULT_RETRY_AFTER
    return min(seconds, MAX_RETRY_AFTER) if seconds is not None else None
