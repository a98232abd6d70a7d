"""`dvmirror feed --format jsonl|csv [--out DIR]` through the real CLI on real SQLite files and
PostgreSQL: the rows and deletions of a closed interval `N < _dv_commit_seq <= M`, exact and
without gaps; applying the intervals one after another gives the mirror. Bad combinations of
options are one line and exit 2."""

from __future__ import annotations

import csv
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.cli import run_cli
from tests.test_commit_feed import (  # noqa: F401
    ENV,
    NOW,
    _engine,
    commit,
    config_for,
    fetch,
    key,
    mirror,
    ref,
    row,
    stamp,
)

SECRET = {"DVMIRROR_CLIENT_SECRET": "feed-test-secret"}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'mirror.db'}"
    return str(request.getfixturevalue("pg_url"))


def feed(config: Path, *args: str) -> Any:
    return run_cli("--config", config, "feed", "--env", ENV, *args, env=SECRET)


def apply(copy: dict[str, str], changes: list[dict[str, Any]]) -> None:
    for change in changes:
        if change["op"] == "delete":
            copy.pop(change["id"], None)
        else:
            copy[str(change["row"]["accountid"])] = change["row"]["name"]


async def test_intervals_of_jsonl_rebuild_the_mirror_and_csv_files_hold_the_same(
    engine: Any, store_url: str, tmp_path: Path
) -> None:
    layout = await mirror(engine)
    t = [stamp(NOW + timedelta(minutes=i)) for i in range(5)]
    await commit(engine, layout, t[0], rows=[row(n, f"n{n}", 1) for n in range(1, 6)])  # 1
    await commit(engine, layout, t[1], rows=[row(2, "two", 2)], deleted_ids=[key(3)])  # 2
    await commit(engine, layout, t[2], rows=[row(1, "n1", 1)])  # identical: no number
    await commit(engine, layout, t[3], deleted_ids=[key(4)])  # 3
    config = config_for(tmp_path, store_url)

    first = feed(config, "--since", "0", "--until", "2", "--format", "jsonl")
    assert first.returncode == 0, first.stderr
    changes = [json.loads(line) for line in first.stdout.splitlines()]
    # Row 2 changed at 2: it comes at 2 (its newest number), not at 1; row 3's deletion at 2;
    # row 4, deleted at 3 before this read, is in no interval up to 2, its deletion is at 3.
    assert [(c["seq"], c["op"]) for c in changes] == [(1, "upsert")] * 2 + [
        (2, "delete"),
        (2, "upsert"),
    ]
    assert "next: --since 2" in first.stderr
    copy: dict[str, str] = {}
    apply(copy, changes)
    await commit(engine, layout, t[4], rows=[row(6, "six", 1)])  # 4, after the first load
    second = feed(config, "--since", "2", "--format", "jsonl")
    assert second.returncode == 0, second.stderr
    apply(copy, [json.loads(line) for line in second.stdout.splitlines()])
    mirrored = await fetch(engine, f"SELECT accountid, name FROM {ref(engine)}")
    assert copy == {str(k): v for k, v in mirrored}
    assert "next: --since 4" in second.stderr

    out = tmp_path / "feed"
    files = feed(config, "--since", "0", "--format", "csv", "--out", str(out))
    assert files.returncode == 0, files.stderr
    rows_file = out / f"{ENV}__account.0-4.csv"
    gone_file = out / f"{ENV}__account.deletions.0-4.csv"
    assert f"wrote {rows_file}" in files.stdout and "next: --since 4" in files.stdout
    with rows_file.open(newline="") as handle:
        written = list(csv.DictReader(handle))
    assert {r["accountid"]: r["name"] for r in written} == copy
    assert [int(r["_dv_commit_seq"]) for r in written] == sorted(
        int(r["_dv_commit_seq"]) for r in written
    )
    with gone_file.open(newline="") as handle:
        assert list(csv.reader(handle)) == [["_dv_commit_seq", "id"], ["2", key(3)], ["3", key(4)]]
    assert not list(out.glob(".*partial"))

    jsonl = feed(config, "--since", "3", "--format", "jsonl", "--out", str(out))
    assert jsonl.returncode == 0, jsonl.stderr
    lines = (out / f"{ENV}__account.3-4.jsonl").read_text().splitlines()
    assert [json.loads(line)["row"]["name"] for line in lines] == ["six"]
    empty = feed(config, "--since", "4", "--format", "jsonl")
    assert empty.returncode == 0 and empty.stdout == ""


def test_options_that_do_not_go_together_are_one_line_and_exit_2(tmp_path: Path) -> None:
    """Checked before the store is opened (there is none here)."""
    config = config_for(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'none.db'}")
    file = tmp_path / "a-file"
    file.write_text("")
    for args, says in (
        (("--format", "csv"), "give --out DIR"),
        (("--format", "jsonl", "--json"), "pick one"),
        (("--out", str(tmp_path / "x")), "--out needs --format"),
        (("--format", "csv", "--out", str(file)), "is a file"),
        (("--format", "xml"), "Invalid value"),
    ):
        result = feed(config, "--since", "0", *args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert says in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "none.db").exists()
