"""`dvmirror feed --env E --since N [--until M] [--json]`: the commits after number N (with
`--format jsonl|csv [--out DIR]`, their rows: sync.commands.feed_export).

Each commit is one page transaction that really changed a mirror of the environment
(store.commits): its number, table, time and how many rows it upserted and deleted. The output
ends with the newest number M (the interval is `N < seq <= M`): a load copies the mirror rows and
`_dv_deletions` rows with `_dv_commit_seq` in that interval and next starts from M. It only
reads, so it is safe while the daemon runs.
"""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

from sync.commands.feed_export import Format, check_request, export_interval
from sync.config.model import Config
from sync.errors import ConfigError
from sync.store.commits import Commit, commits_since
from sync.store.open import open_store


def _iso(moment: dt.datetime) -> str:
    utc = moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment.astimezone(dt.UTC)
    return utc.isoformat()


def feed_document(env: str, since: int, found: list[Commit], newest: int) -> dict[str, Any]:
    return {
        "environment": env,
        "since": since,
        "max_seq": newest,
        "commits": [
            {
                "seq": c.seq,
                "table": c.table,
                "committed_at": _iso(c.committed_at),
                "upserts": c.upserts,
                "deletes": c.deletes,
            }
            for c in found
        ],
    }


def render_feed(document: dict[str, Any], console: Console) -> None:
    env, since, newest = document["environment"], document["since"], document["max_seq"]
    if not document["commits"]:
        console.print(f"{env}: no commits after {since} (newest: {newest})", highlight=False)
        return
    table = Table(title=f"{env}: commits {since} < seq <= {newest}", title_justify="left")
    for header, justify in (
        ("Seq", "right"),
        ("Table", "left"),
        ("Committed at", "left"),
        ("Upserts", "right"),
        ("Deletes", "right"),
    ):
        table.add_column(header, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for c in document["commits"]:
        table.add_row(
            str(c["seq"]), c["table"], c["committed_at"], f"{c['upserts']:,}", f"{c['deletes']:,}"
        )
    console.print(table)
    console.print(f"max seq: {newest} (next: --since {newest})", highlight=False)


async def run_feed(
    config: Config,
    *,
    env: str,
    since: int,
    until: int | None,
    as_json: bool,
    console: Console,
    export: tuple[str, Path | None] | None = None,
) -> int:
    names = [e.name for _, e in config.environments()]
    if env not in names:
        known = ", ".join(sorted(names)) or "none"
        raise ConfigError(
            f"feed: environment {env!r} is not in {config.path} (configured: {known})"
        )
    if until is not None and until < since:
        raise ConfigError(f"feed: --until {until} is below --since {since}")
    if export is not None:
        fmt, out = export
        chosen: Format = "csv" if fmt == "csv" else "jsonl"
        return await _export(config, env, since, until, fmt=chosen, out=out)
    engine = await open_store(config)
    try:
        found, newest = await commits_since(engine, env, since, until)
    finally:
        await engine.dispose()
    document = feed_document(env, since, found, newest)
    if as_json:
        console.out(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode(), highlight=False)
    else:
        render_feed(document, console)
    return 0


async def _export(
    config: Config, env: str, since: int, until: int | None, *, fmt: Format, out: Path | None
) -> int:
    check_request(fmt, out)
    engine = await open_store(config)
    try:
        summary = await export_interval(engine, env, since=since, until=until, fmt=fmt, out=out)
    finally:
        await engine.dispose()
    rows = sum(summary.rows.values())
    counts = f"{rows:,} rows of {len(summary.rows)} tables, {summary.deletions:,} deletions"
    if summary.metadata_tables:
        counts += (
            f"; metadata tables changed (copy them again): {', '.join(summary.metadata_tables)}"
        )
    interval = f"{summary.since} < seq <= {summary.until}"
    if out is None:
        print(f"{env}: {interval}: {counts}; next: --since {summary.until}", file=sys.stderr)
    elif summary.folder is None:
        print(f"{env}: no commits after {since} (newest: {summary.until}); nothing written")
    else:
        print(
            f"{env}: wrote {summary.folder} ({interval}: {counts}); next: --since {summary.until}"
        )
    return 0
