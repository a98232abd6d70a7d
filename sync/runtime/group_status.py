"""What the daemon reports about one environment group: signed in, failing tables, lease lost."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field


@dataclass
class GroupStatus:
    """What the daemon reports about one environment (status line, readiness)."""

    authenticated: bool = False
    first_attempt_done: asyncio.Event = field(default_factory=asyncio.Event)
    last_error: str | None = None
    busy_tables: set[str] = field(default_factory=set)
    lease_lost: bool = False
    failing_tables: dict[str, str] = field(default_factory=dict)  # table → its last error
    auth_error: str | None = None  # the sign-in fails (an AuthError), for alerts

    @property
    def problem(self) -> str | None:
        """Why this environment is not syncing everything right now (None: it is)."""
        if self.last_error is not None:
            return self.last_error
        if self.failing_tables:
            table, error = sorted(self.failing_tables.items())[0]
            more = len(self.failing_tables) - 1
            return f"{table}: {error}" + (f" (and {more} more tables)" if more else "")
        return None
