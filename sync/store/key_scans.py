"""Read and write the progress of a key-only scan (dv_sync_state.key_scan), the first step of a
ranged full pass (sync.mirror.ranged).

Each key page commits `progress()` in its own transaction: the scan's next link, the pass's
start and the key sample so far (bounded: every `step`-th key), so a crash resumes the scan at
its last committed page and cuts the same ranges. The split's commit clears it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import and_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.expression import Executable

from sync.logs import get_logger
from sync.store.checkpoints import utc
from sync.store.control import sync_state
from sync.store.writer import write_control

log = get_logger("dvmirror.store")


@dataclass(frozen=True)
class KeyScanState:
    """Where a key scan stands: the link of its next page, when the pass started, how many
    ranges it is for, and its sample (every `step`-th of the `seen` keys)."""

    next_link: str
    tracked: bool  # a change-tracking scan (its last page carries the delta token)
    started_at: datetime
    ranges: int
    step: int
    seen: int
    keys: tuple[str, ...]


def _key(environment: str, table: str) -> Any:
    return and_(sync_state.c.environment == environment, sync_state.c.table_name == table)


def encode(scan: KeyScanState) -> str:
    return orjson.dumps(
        {
            "next_link": scan.next_link,
            "tracked": scan.tracked,
            "started_at": scan.started_at.isoformat(),
            "ranges": scan.ranges,
            "step": scan.step,
            "seen": scan.seen,
            "keys": list(scan.keys),
        }
    ).decode()


def decode(text: str) -> KeyScanState | None:
    """The stored progress, or None when it is not a well-formed one (the scan starts over)."""
    try:
        raw = orjson.loads(text)
        scan = KeyScanState(
            next_link=raw["next_link"],
            tracked=raw["tracked"],
            started_at=utc(datetime.fromisoformat(raw["started_at"])),  # type: ignore[arg-type]
            ranges=raw["ranges"],
            step=raw["step"],
            seen=raw["seen"],
            keys=tuple(raw["keys"]),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None
    well_formed = (
        isinstance(scan.next_link, str)
        and isinstance(scan.tracked, bool)
        and all(isinstance(n, int) and n >= 1 for n in (scan.ranges, scan.step))
        and isinstance(scan.seen, int)
        and all(isinstance(k, str) for k in scan.keys)
    )
    return scan if well_formed else None


async def load(engine: AsyncEngine, environment: str, table: str) -> KeyScanState | None:
    query = select(sync_state.c.key_scan).where(_key(environment, table))
    async with engine.connect() as conn:
        text = (await conn.execute(query)).scalar_one_or_none()
    if text is None:
        return None
    scan = decode(text)
    if scan is None:
        log.warning("key_scan_progress_unreadable", environment=environment, table=table)
    return scan


def progress(environment: str, table: str, scan: KeyScanState | None) -> Executable:
    """The statement that stores `scan` (None: no scan under way) in a page's transaction."""
    value = encode(scan) if scan is not None else None
    return update(sync_state).where(_key(environment, table)).values(key_scan=value)


async def forget(engine: AsyncEngine, environment: str, table: str) -> None:
    """Drop the progress of a scan that will not go on (the full pass is no longer ranged):
    a later ranged pass must scan afresh, from its own start."""
    stale = (
        update(sync_state)
        .where(_key(environment, table), sync_state.c.key_scan.is_not(None))
        .values(key_scan=None)
    )
    await write_control(engine, [stale], environment=environment, table=table)
