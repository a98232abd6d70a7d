"""`dvmirror bench --scenario …`: the real command line, on a shrunk latency scenario. Figures are
printed, not asserted (a benchmark is not a timed test); what is asserted is that every figure is
there, each mirror equals its source and nobody violated a Retry-After."""

from __future__ import annotations

import asyncio
import tomllib
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from sync.bench.postgres import PREFIX
from sync.bench.world import MIRROR_APP, POSTGRES_APP, READER_APP, build_world, mirror_config
from sync.simulator.scenario import Scenario
from tests.cli import run_cli

FIGURES = (
    "rows",
    "seconds",
    "rows/s",
    "ratio to reference",
    "ceiling rows/s (full pages)",
    "share of ceiling",
    "requests",
    "peak concurrent requests",
    "429s",
    "Retry-After violations",
    "peak RSS",
    "data",
)


def cells(output: str) -> dict[str, list[str]]:
    """The figure rows of the rich table: label → one cell per column."""
    found: dict[str, list[str]] = {}
    for line in output.splitlines():
        parts = [part.strip() for part in line.strip().strip("│").split("│")]
        if len(parts) > 2 and parts[0]:
            found[parts[0]] = parts[1:]
    return found


def test_latency_bench_runs_reader_and_dvmirror_side_by_side() -> None:
    """Four tables read by four plain chains and by `dvmirror backfill`, then the big table by one
    chain and by dvmirror (key ranges): every figure for all four columns, the two mirrors equal
    to their sources, no Retry-After violations, exit 0."""
    result = run_cli("bench", "--scenario", "latency", "--rows-scale", "0.01", timeout=110)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    table = cells(result.stdout)
    for figure in FIGURES:
        assert len(table.get(figure, [])) == 4, (figure, result.stdout)
    assert table["rows"] == ["800", "800", "2,000", "2,000"]
    assert table["ratio to reference"][0] == table["ratio to reference"][2] == "reference"
    assert float(table["ratio to reference"][1]) > 0
    assert float(table["ratio to reference"][3]) > 0
    assert table["Retry-After violations"] == ["0"] * 4
    assert table["data"][0] == table["data"][2] == "every row read"
    assert table["data"][1].startswith("equal (")
    assert table["data"][3].startswith("equal (")
    assert table["peak RSS"][1].endswith("worker)")
    assert table["peak concurrent requests"][0] == "4"
    # Both sides are also timed alike, from their first request (discovery included): the
    # reader's such seconds hold its page read and more.
    first = table["seconds from the first request"]
    assert len(first) == 4 and all(cell != "n/a" for cell in first), first
    for reader in (0, 2):
        assert float(first[reader]) >= float(table["seconds"][reader])
    assert table["ratio from the first request"][0] == "reference"
    assert float(table["ratio from the first request"][1]) > 0
    cpu = [float(cell) for cell in table["client CPU seconds"]]
    assert min(cpu) >= 0 and cpu[1] > 0 and cpu[3] > 0, cpu
    assert "comparing each mirror with its source" in result.stdout


def test_the_world_gives_each_side_its_own_user_and_shrinks_every_chain_alike() -> None:
    """An application user per side in every environment; at rows scale s the tables, the page size
    and the per-request time shrink by s (a chain keeps its number of pages); the generated
    scenario and dvmirror configuration are valid TOML the simulator and dvmirror accept."""
    full = build_world("latency")
    quick = build_world("latency", scale=0.1)
    assert [p.key for p in quick.parts] == ["tables", "big"]
    assert quick.page_size == 500
    for big, small in zip(full.parts, quick.parts, strict=True):
        assert [rows // 10 for _, rows in big.tables] == [rows for _, rows in small.tables]
        quick_page = small.limits.execution_time(quick.page_size)
        assert quick_page * 10 == pytest.approx(big.limits.execution_time(full.page_size))
    assert quick.parts[1].split_rows == quick.parts[1].rows // 2
    scenario = Scenario.model_validate(tomllib.loads(quick.scenario_toml()))
    assert scenario == quick.scenario
    for env in scenario.tenants[0].environments:
        assert set(env.application_users) == {MIRROR_APP, READER_APP, POSTGRES_APP}
    ready = {
        "authority_host": "https://127.0.0.1:1",
        "ca_file": "/tmp/ca.pem",
        "apps": [{"client_id": MIRROR_APP, "secret_file": "/tmp/secret"}],
        "tenants": [
            {"environments": [{"name": p.environment, "url": "https://127.0.0.1:2"}]}
            for p in quick.parts
        ],
    }
    config = tomllib.loads(mirror_config(ready, quick.parts[1], Path("/tmp/d"), page_size=500))
    environment = config["tenants"][0]["environments"][0]
    assert environment["split_rows"] == quick.parts[1].split_rows
    assert environment["page_size"] == 500
    assert config["app"]["client_secret"] == {"file": "/tmp/secret"}
    assert config["store"]["url"] == "sqlite+aiosqlite:////tmp/d/mirror.db"
    ready["apps"].append({"client_id": POSTGRES_APP, "secret_file": "/tmp/pg-secret"})
    pg = "postgresql+asyncpg://u@/db?host=/tmp/s"
    config = tomllib.loads(
        mirror_config(
            ready,
            quick.parts[1],
            Path("/tmp/d"),
            page_size=500,
            store_url=pg,
            client_id=POSTGRES_APP,
        )
    )
    assert config["store"]["url"] == pg
    assert config["app"]["client_id"] == POSTGRES_APP
    assert config["app"]["client_secret"] == {"file": "/tmp/pg-secret"}
    assert config["tenants"][0]["environments"] == [environment]  # the same work otherwise


@pytest.mark.postgres
def test_bench_backfills_into_postgresql_beside_sqlite(pg_url: str) -> None:
    """`--postgres URL`: each part also backfills into a fresh PostgreSQL database on that
    server, as its own user; the table names both stores, gives PostgreSQL ÷ SQLite and finds
    every mirror equal to its source; the bench's databases are gone afterwards."""
    result = run_cli(
        "bench", "--scenario", "store", "--rows-scale", "0.01", "--postgres", pg_url, timeout=60
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "dvmirror backfill → SQLite" in result.stdout
    assert "dvmirror backfill → PostgreSQL" in result.stdout
    table = cells(result.stdout)
    assert table["rows"] == ["1,000"] * 3 + ["2,000"] * 3
    ratios = table["PostgreSQL ÷ SQLite"]
    assert ratios[0] == ratios[3] == "—" and ratios[1] == ratios[4] == "reference"
    assert float(ratios[2]) > 0 and float(ratios[5]) > 0
    assert [table["data"][i].startswith("equal (") for i in (1, 2, 4, 5)] == [True] * 4
    assert table["Retry-After violations"] == ["0"] * 6
    assert all(" MB (" in table["peak RSS"][i] for i in (1, 2, 4, 5))  # wrapped: no "worker)"
    assert asyncio.run(bench_databases_left(pg_url)) == []


async def bench_databases_left(url: str) -> list[str]:
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            query = text("SELECT datname FROM pg_database WHERE datname LIKE :p")
            result = await conn.execute(query, {"p": f"{PREFIX}%"})
            return [row[0] for row in result]
    finally:
        await engine.dispose()


def test_bench_refuses_a_scale_outside_zero_to_one() -> None:
    result = run_cli("bench", "--scenario", "latency", "--rows-scale", "0")
    assert result.returncode == 2
    assert "--rows-scale" in result.stderr


def test_the_simulator_gets_one_cpu_and_the_client_side_the_others() -> None:
    from sync.bench.cores import split_cpus

    assert split_cpus({0}) is None
    split = split_cpus({0, 1})
    assert split is not None
    assert (split.server, split.client) == ({1}, {0})
    split = split_cpus({2, 5, 7, 3})
    assert split is not None
    assert (split.server, split.client) == ({7}, {2, 3, 5})
    assert "simulator pinned to CPU 7" in split.describe()


def test_rounds_alternate_which_side_goes_first_and_list_every_ratio() -> None:
    """`--rounds 2`: round 1 starts with the plain reader, round 2 with dvmirror (drift in the
    one simulator process must not always fall on the same side); the summary lists both
    rounds' ratios, and both rounds' mirrors are checked."""
    result = run_cli(
        "bench", "--scenario", "cpu", "--rows-scale", "0.01", "--rounds", "2", timeout=110
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    starts = [
        line
        for line in result.stdout.splitlines()
        if line.startswith("[4 tables at once]")
        and line.endswith(("…", "round 1 of 2", "round 2 of 2"))
    ]
    assert [line.split("] ", 1)[1] for line in starts] == [
        "round 1 of 2",
        "plain reader (4 chains at once) …",
        "dvmirror backfill → SQLite …",
        "round 2 of 2",
        "dvmirror backfill → SQLite …",
        "plain reader (4 chains at once) …",
    ]
    summary = " ".join(result.stdout.split())  # the console wraps long lines
    assert "dvmirror backfill → SQLite, 2 rounds: ratio " in summary
    assert "from the first request " in summary and "(median " in summary
    table = cells(result.stdout)
    assert table["data"][1].startswith("equal (")
    assert table["Retry-After violations"] == ["0", "0"]
