"""`dvmirror feed --format jsonl|csv [--out DIR]` through the real CLI, on real SQLite files and a
real PostgreSQL cluster: the rows of closed commit intervals, loaded one after the other in
commit order, rebuild the mirror exactly, including a row deleted and written again; the folder
appears whole or not at all; bad requests get one line and exit 2."""

from __future__ import annotations

import csv
import json
import random
from datetime import timedelta
from pathlib import Path
from typing import Any

from tests import test_commit_feed as feed_tests
from tests.cli import run_cli
from tests.test_commit_feed import ENV, NOW, commit, config_for, key, mirror, row, stamp

# The same stores as the feed's own tests (SQLite, and PostgreSQL when available).
store_url = feed_tests.store_url
engine_fixture = feed_tests._engine

SECRET = {"DVMIRROR_CLIENT_SECRET": "feed-export-secret"}


def feed(config: Path, *args: str) -> Any:
    return run_cli("--config", config, "feed", "--env", ENV, *args, env=SECRET)


def apply_lines(copy: dict[str, dict[str, Any]], lines: list[dict[str, Any]]) -> None:
    """A downstream load: apply changes in the order given (the feed's commit order)."""
    for line in lines:
        if line["op"] == "delete":
            copy.pop(line["id"], None)
        else:
            copy[line["row"]["accountid"]] = line["row"]


async def mirror_now(engine: Any) -> dict[str, tuple[str, str]]:
    from tests.test_commit_feed import fetch, ref

    found = await fetch(engine, f"SELECT accountid, name, _dv_version FROM {ref(engine)}")
    return {str(k): (n, v) for k, n, v in found}


async def test_intervals_loaded_in_turn_rebuild_the_mirror(
    engine: Any, store_url: str, tmp_path: Path
) -> None:
    """Random upserts and deletions in 40 commits, exported in intervals of varying length to
    stdout (jsonl): applying each interval in the order printed gives exactly the mirror; the
    summary line names the next --since."""
    layout = await mirror(engine)
    config = config_for(tmp_path, store_url)
    rng = random.Random(7)
    copy: dict[str, dict[str, Any]] = {}
    last = 0
    for version, step in enumerate(range(40), start=1):
        upserts = [
            row(rng.randrange(60), f"n{step}-{i}", version) for i in range(rng.randrange(1, 6))
        ]
        gone = [key(rng.randrange(60)) for _ in range(rng.randrange(0, 3))]
        moment = stamp(NOW + timedelta(seconds=step))
        await commit(engine, layout, moment, rows=upserts)
        if gone:
            await commit(engine, layout, moment, deleted_ids=gone)
        if step % 7 == 6:  # a reader loads what is there so far
            result = feed(config, "--since", str(last), "--format", "jsonl")
            assert result.returncode == 0, result.stderr
            lines = [json.loads(x) for x in result.stdout.splitlines()]
            assert [x["seq"] for x in lines] == sorted(x["seq"] for x in lines)
            assert all(last < x["seq"] for x in lines)
            apply_lines(copy, lines)
            assert "next: --since " in result.stderr, result.stderr
            last = int(result.stderr.rsplit("--since ", 1)[1].split()[0])
    # The row deleted and written again in one interval: its deletion comes first.
    await commit(engine, layout, stamp(NOW + timedelta(minutes=5)), deleted_ids=[key(3)])
    await commit(engine, layout, stamp(NOW + timedelta(minutes=6)), rows=[row(3, "back", 999)])
    result = feed(config, "--since", str(last), "--format", "jsonl")
    assert result.returncode == 0, result.stderr
    apply_lines(copy, [json.loads(x) for x in result.stdout.splitlines()])
    expected = await mirror_now(engine)
    assert {k: (v["name"], v["_dv_version"]) for k, v in copy.items()} == expected
    assert copy[key(3)]["name"] == "back"


async def test_out_writes_a_whole_folder_per_interval(
    engine: Any, store_url: str, tmp_path: Path
) -> None:
    """--out DIR --format csv: DIR/<env>-<N>-<M>/ with account.csv (header, rows in commit
    order), _dv_deletions.csv and manifest.json; no partial folder is left; the same interval
    twice is refused; an empty interval writes nothing."""
    layout = await mirror(engine)
    await commit(engine, layout, stamp(NOW), rows=[row(1, "a", 1), row(2, "b, with comma", 1)])
    await commit(engine, layout, stamp(NOW + timedelta(seconds=1)), deleted_ids=[key(1)])
    config = config_for(tmp_path, store_url)
    out = tmp_path / "exports"
    result = feed(config, "--since", "0", "--format", "csv", "--out", str(out))
    assert result.returncode == 0, result.stderr
    folder = out / f"{ENV}-0-2"
    assert f"wrote {folder}" in result.stdout and "next: --since 2" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == [folder.name]  # no .partial left
    with (folder / "account.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["accountid"], r["name"], r["_dv_commit_seq"]) for r in rows] == [
        (key(2), "b, with comma", "1")
    ]
    with (folder / "_dv_deletions.csv").open(newline="") as handle:
        [deleted] = list(csv.DictReader(handle))
    assert (deleted["table"], deleted["id"], deleted["_dv_commit_seq"]) == ("account", key(1), "2")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert (manifest["since"], manifest["until"], manifest["rows"], manifest["deletions"]) == (
        0,
        2,
        {"account": 1},
        1,
    )
    again = feed(config, "--since", "0", "--format", "csv", "--out", str(out))
    assert again.returncode == 2 and "that interval was written" in again.stderr
    empty = feed(config, "--since", "2", "--out", str(out))
    assert empty.returncode == 0 and "nothing written" in empty.stdout
    assert sorted(p.name for p in out.iterdir()) == [folder.name]


async def test_bad_requests_get_one_line(engine: Any, store_url: str, tmp_path: Path) -> None:
    config = config_for(tmp_path, store_url)
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    for args, said in [
        (("--since", "0", "--format", "csv"), "give --out DIR"),
        (("--since", "0", "--format", "jsonl", "--json"), "--json lists commits"),
        (("--since", "0", "--format", "xml"), "'xml' is not one of"),
    ]:
        result = feed(config, *args)
        assert result.returncode == 2, (args, result.stderr)
        assert said in result.stderr and "Traceback" not in result.stderr, result.stderr
