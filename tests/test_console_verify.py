"""`dvmirror verify` results in the console: the last verify per table on the environment page
and in the tables API (`last_verify`), a table's last 10 verify runs on its page, and none of
another tenant's runs (their environment answers 404)."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sync.console.verify_figures import label
from sync.store import checkpoints
from sync.verify.plan import Diff
from sync.verify.runner import TableReport, record
from tests.console_harness import Harness, running_console

pytestmark = pytest.mark.timeout(60)
T0 = dt.datetime(2026, 12, 1, 8, 0, tzinfo=dt.UTC)
BEARER = "Bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"


def keys(prefix: str, count: int) -> list[str]:
    return [f"{prefix}-{n}" for n in range(count)]


async def verified(h: Harness, env: str, table: str, at: dt.datetime, **report: Any) -> None:
    """One dv_verify_runs row, written by the verify runner's own `record`."""
    await record(h.store, TableReport(environment=env, table=table, started_at=at, **report), at)


@pytest.fixture(name="h")
async def _harness(tmp_path: Path) -> AsyncIterator[Harness]:
    async with running_console(tmp_path) as harness:
        now = dt.datetime.now(dt.UTC)
        for env, table in (("contoso_prod", "account"), ("fabrikam_prod", "account")):
            await checkpoints.ensure(harness.store, env, table, now=now)
        # contoso_prod/account: an old repair, nine matches, then a mismatch (11 runs).
        await verified(
            harness, "contoso_prod", "account", T0, level=3, outcome="repaired",
            found=Diff(missing=keys("m", 3)), repaired=3,
        )  # fmt: skip
        for n in range(1, 10):
            await verified(harness, "contoso_prod", "account", T0 + dt.timedelta(hours=n), level=2)
        await verified(
            harness, "contoso_prod", "account", T0 + dt.timedelta(hours=10), level=3,
            outcome="mismatch", found=Diff(keys("m", 5), keys("g", 1), keys("s", 2)),
        )  # fmt: skip
        # contoso_prod/contact: never verified. fabrikam_prod/account: stopped.
        await verified(
            harness, "fabrikam_prod", "account", T0, level=2, outcome="stopped",
            detail=f"fabrikam budget low; {BEARER}",
        )  # fmt: skip
        yield harness


async def signed_in(h: Harness, user: str) -> aiohttp.ClientSession:
    browser = h.browser()
    response = await h.sign_in(browser, user)
    assert response.status == 302, await response.text()
    return browser


def last_verify_cell(html: str, table: str) -> str:
    row = re.search(rf'<tr [^>]*id="table-{table}".*?</tr>', html, re.S)
    assert row, f"no row for {table}"
    cell = re.search(r'class="last-verify">(.*?)</td>', row.group(0), re.S)
    assert cell, f"no Last verify cell for {table}"
    return re.sub(r"<[^>]+>", " ", cell.group(1))


def verify_rows(html: str) -> list[list[str]]:
    rows = re.findall(r'<tr class="verify-row[^"]*">(.*?)</tr>', html, re.S)
    return [
        [re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<td[^>]*>(.*?)</td>", r)] for r in rows
    ]


async def test_environment_page_shows_each_tables_last_verify(h: Harness) -> None:
    browser = await signed_in(h, "victor")
    html = await (await browser.get(f"{h.url}/env/contoso_prod")).text()
    assert "<th>Last verify</th>" in html
    account = last_verify_cell(html, "account")
    assert "mismatch 8 rows (5 missing, 1 ghost, 2 stale)" in account
    assert "level 3" in account and "2026-12-01 18:00:00Z" in account
    assert last_verify_cell(html, "contact").strip() == "—"
    assert "fabrikam budget low" not in html


async def test_table_page_lists_the_last_ten_verify_runs_newest_first(h: Harness) -> None:
    browser = await signed_in(h, "olga")
    html = await (await browser.get(f"{h.url}/env/contoso_prod/table/account")).text()
    rows = verify_rows(html)
    assert len(rows) == 10  # the oldest of the 11 (the repair) is left off
    started, _, level, outcome, missing, ghost, stale, repaired, _ = rows[0]
    assert (started, level, outcome) == (
        "2026-12-01 18:00:00Z",
        "3",
        "mismatch 8 rows (5 missing, 1 ghost, 2 stale)",
    )
    assert (missing, ghost, stale, repaired) == ("5", "1", "2", "0")
    assert [r[3] for r in rows[1:]] == ["match"] * 9
    assert [r[0] for r in rows[1:3]] == ["2026-12-01 17:00:00Z", "2026-12-01 16:00:00Z"]
    contact = await (await browser.get(f"{h.url}/env/contoso_prod/table/contact")).text()
    assert verify_rows(contact) == [] and "No verify runs yet" in contact


async def test_tables_api_carries_last_verify(h: Harness) -> None:
    browser = await signed_in(h, "victor")
    document = await (await browser.get(f"{h.url}/api/v1/environments/contoso_prod/tables")).json()
    by_table = {t["table"]: t for t in document["tables"]}
    assert by_table["contact"]["last_verify"] is None
    last = by_table["account"]["last_verify"]
    assert {k: last[k] for k in ("outcome", "level", "missing", "ghost", "stale")} == {
        "outcome": "mismatch", "level": 3, "missing": 5, "ghost": 1, "stale": 2,
    }  # fmt: skip
    assert last["mismatch_rows"] == 8 and last["repaired"] == 0
    assert last["label"] == "mismatch 8 rows (5 missing, 1 ghost, 2 stale)"
    assert dt.datetime.fromisoformat(last["finished_at"]) == T0 + dt.timedelta(hours=10)


async def test_another_tenant_sees_only_its_own_verify_runs(h: Harness) -> None:
    """Fay (Fabrikam) gets 404 for Contoso's pages and API and sees Fabrikam's stopped run,
    its detail with the bearer token masked; a bearer token for the API does the same."""
    browser = await signed_in(h, "fay")
    for path in (
        "/env/contoso_prod",
        "/env/contoso_prod/table/account",
        "/api/v1/environments/contoso_prod/tables",
    ):
        assert (await browser.get(f"{h.url}{path}")).status == 404, path
    html = await (await browser.get(f"{h.url}/env/fabrikam_prod")).text()
    assert "stopped" in last_verify_cell(html, "account") and "mismatch" not in html
    page = await (await browser.get(f"{h.url}/env/fabrikam_prod/table/account")).text()
    (row,) = verify_rows(page)
    assert row[3] == "stopped" and "fabrikam budget low" in row[8]
    assert BEARER.split()[1] not in page
    api = await (await browser.get(f"{h.url}/api/v1/environments/fabrikam_prod/tables")).json()
    (table,) = api["tables"]
    assert table["last_verify"]["outcome"] == "stopped"
    assert BEARER.split()[1] not in str(api)


def test_labels_say_what_the_run_found() -> None:
    counts = {"missing": 2, "ghost": 0, "stale": 1, "repaired": 0, "mismatch_rows": 3}
    assert (
        label({**counts, "outcome": "mismatch"}) == "mismatch 3 rows (2 missing, 0 ghost, 1 stale)"
    )
    assert label({**counts, "outcome": "repaired", "repaired": 1234}) == "repaired 1,234 rows"
    for outcome in ("match", "approximate", "stopped", "failed"):
        assert label({**counts, "outcome": outcome}) == outcome
