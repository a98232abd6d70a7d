"""`dvmirror feed --env E --since N [--until M] [--json | --format jsonl|csv [--out DIR]]`: the
commits after number N, or with --format their rows (sync.commands.feed_export).

Each commit is one page transaction that really changed a mirror of the environment
(store.commits): its number, table, time and how many rows it upserted and deleted. The output
ends with the newest number M (the interval is `N < seq <= M`): a load copies the mirror rows and
`_dv_deletions` rows with `_dv_commit_seq` in that interval and next starts from M. It only
reads, so it is safe while the daemon runs.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table
from rich.text import Text
from sqlalchemy.ext.asyncio import AsyncEngine

from sync.commands.feed_export import Interval, export
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


def check_export(fmt: str | None, out: Path | None, as_json: bool) -> None:
    """One clear line (exit 2) for options that do not go together."""
    if fmt is None:
        if out is not None:
            raise ConfigError("feed: --out needs --format jsonl or --format csv")
        return
    if as_json:
        raise ConfigError("feed: --json lists the commits; --format writes their rows: pick one")
    if fmt == "csv" and out is None:
        raise ConfigError("feed: --format csv writes one file per table: give --out DIR")
    if out is not None and out.exists() and not out.is_dir():
        raise ConfigError(f"feed: --out {out} is not a directory")


async def _export(
    engine: AsyncEngine, interval: Interval, *, fmt: str, out: Path | None, console: Console
) -> int:
    if out is not None:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"feed: cannot create --out {out}: {exc.strerror}") from exc
    written = await export(engine, interval, fmt=fmt, out=out)
    env, since, upper = interval.environment, interval.since, interval.until
    # The rows may be on stdout: the figures go to stderr then.
    say = console if out is not None else Console(stderr=True)
    for path in written:
        say.print(Text(f"wrote {path}"), highlight=False)
    say.print(
        Text(f"{env}: changes {since} < seq <= {upper} (next: --since {upper})"), highlight=False
    )
    return 0


async def run_feed(
    config: Config,
    *,
    env: str,
    since: int,
    until: int | None,
    as_json: bool,
    console: Console,
    fmt: str | None = None,
    out: Path | None = None,
) -> int:
    names = [e.name for _, e in config.environments()]
    if env not in names:
        known = ", ".join(sorted(names)) or "none"
        raise ConfigError(
            f"feed: environment {env!r} is not in {config.path} (configured: {known})"
        )
    if until is not None and until < since:
        raise ConfigError(f"feed: --until {until} is below --since {since}")
    check_export(fmt, out, as_json)
    engine = await open_store(config)
    try:
        found, newest = await commits_since(engine, env, since, until)
        if fmt is not None:
            interval = Interval(env, since, newest)
            return await _export(engine, interval, fmt=fmt, out=out, console=console)
    finally:
        await engine.dispose()
    document = feed_document(env, since, found, newest)
    if as_json:
        console.out(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode(), highlight=False)
    else:
        render_feed(document, console)
    return 0
