"""Single use: an authorization code, a nonce or an id_token (jti/uti) is accepted once.

Entries are kept for as long as the thing could still be presented (a code lives 10 minutes, an
id_token until its exp plus the clock-skew allowance), then forgotten, so memory stays bounded.
"""

from __future__ import annotations

import time
from collections.abc import Callable

MAX_ENTRIES = 100_000


class ReplayGuard:
    """Remembers values seen, each until its own expiry (pure apart from the injected clock)."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._seen: dict[str, float] = {}

    def first_use(self, kind: str, value: str, *, until: float) -> bool:
        """True the first time (kind, value) is presented; False on every later use."""
        now = self._clock()
        if len(self._seen) > MAX_ENTRIES // 2:
            self._seen = {k: exp for k, exp in self._seen.items() if exp > now}
        key = f"{kind}:{value}"
        expires = self._seen.get(key)
        if expires is not None and expires > now:
            return False
        if len(self._seen) >= MAX_ENTRIES:
            return False  # refuse rather than forget: a flood must not reopen replays
        self._seen[key] = until
        return True

    def now(self) -> float:
        return self._clock()
