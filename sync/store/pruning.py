"""Housekeeping of the control tables that grow with every run and page: `dv_run_history` and
`dv_commits` keep `daemon.history_days`. Run by the daemon every hour and by `dvmirror migrate`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from sync.store.checkpoints import history_cutoff, prune_run_history
from sync.store.control import commits
from sync.store.writer import write_control


@dataclass(frozen=True)
class Pruned:
    runs: int
    commits: int


async def prune_commits(engine: AsyncEngine, cutoff: datetime) -> int:
    """Delete the commit records older than `cutoff`; return how many. Each environment's newest
    record stays whatever its age: it holds the counter the next number follows. Mirror rows
    keep their `_dv_commit_seq`, so a load by number is unaffected; only `feed`'s listing of
    those old commits goes."""
    kept = commits.alias("kept")
    newest_of_env = (
        select(func.max(kept.c.seq)).where(kept.c.environment == commits.c.environment)
    ).scalar_subquery()
    statement = delete(commits).where(
        commits.c.committed_at < cutoff, commits.c.seq < newest_of_env
    )
    result = await write_control(engine, [statement], environment="*", table="dv_commits")
    return int(getattr(result, "rowcount", 0) or 0)


async def prune_history(engine: AsyncEngine, keep_days: int, *, now: datetime) -> Pruned:
    """Both prunes, with the same cutoff."""
    runs = await prune_run_history(engine, keep_days, now=now)
    return Pruned(runs, await prune_commits(engine, history_cutoff(now, keep_days)))
