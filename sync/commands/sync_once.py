"""`dvmirror sync --once`: one incremental cycle for every configured table, then exit.

A table never backfilled gets its backfill; change-tracked tables follow their delta link
(an expired token turns into a full resync that removes rows gone from the source); tables
without change tracking run their watermark window and then a key reconciliation, so that
one `sync --once` leaves every mirror equal to the source, deletions included.
Exit code: 0 ok, 1 a table failed (it is parked, the others go on), 3 authentication failed.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sync.commands.backfill import run_tables
from sync.config.model import Config

# A one-shot command promises convergence, so it reconciles keys every time; the daemon
# reconciles on its own, slower schedule (engine default: daily).
RECONCILE_EVERY_RUN = timedelta(0)


async def run_sync_once(config: Config, *, console: Any) -> int:
    """Run one cycle of every configured table of every environment."""
    return await run_tables(
        config,
        env=None,
        table=None,
        console=console,
        until="cycle",
        command="sync",
        reconcile_every=RECONCILE_EVERY_RUN,
    )
