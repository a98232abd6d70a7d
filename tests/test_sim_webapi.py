"""Simulated Dataverse Web API semantics through DataverseModel.handle (pure, no sockets)."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import orjson
import pytest

from sync.simulator.dataset import TableSpec
from sync.simulator.guids import sqlserver_guid_key
from sync.simulator.webapi import ApiRequest, ApiResponse, DataverseModel

BASE = "https://127.0.0.1:8443/api/data/v9.2"
START = 1_750_000_000.0
DAY = 86_400
ALL = 'odata.include-annotations="*"'
TRACK = "odata.track-changes"


class Clock:
    """A settable clock for retention tests."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


@pytest.fixture(name="clock")
def _clock() -> Clock:
    return Clock()


@pytest.fixture(name="env")
def _env(clock: Clock) -> DataverseModel:
    specs = [
        TableSpec(name="account", rows=45),
        TableSpec(name="contact", rows=30, change_tracking=False),
        TableSpec(name="opportunity", rows=25),
        TableSpec(name="new_project", rows=40),
    ]
    return DataverseModel(specs, 42, retention_days=7, clock=clock)


def get(
    env: DataverseModel, path: str, query: str = "", prefer: str | None = None, method: str = "GET"
) -> ApiResponse:
    headers = {"Prefer": prefer} if prefer else {}
    return env.handle(ApiRequest(method, path, query, headers, BASE, "user-1", "bu-1", "org-1"))


def follow(env: DataverseModel, link: str, prefer: str | None = None) -> ApiResponse:
    assert link.startswith(BASE + "/")
    parts = urlsplit(link)
    return get(env, parts.path[len("/api/data/v9.2/") :], parts.query, prefer)


def read_all(
    env: DataverseModel, path: str, query: str = "", prefer: str | None = None
) -> list[dict[str, Any]]:
    """Every page of a read; returns the page bodies."""
    pages = [get(env, path, query, prefer).json()]
    while "@odata.nextLink" in pages[-1]:
        pages.append(follow(env, pages[-1]["@odata.nextLink"], prefer).json())
    return pages


def rows_of(pages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [row for page in pages for row in page["value"]]


def strip(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if "@" not in k}


def error(response: ApiResponse) -> tuple[int, str, str]:
    body = response.json()
    assert list(body) == ["error"]
    assert sorted(body["error"]) == ["code", "message"]
    return response.status, body["error"]["code"], body["error"]["message"]


class TestRows:
    def test_selected_row_shape(self, env: DataverseModel) -> None:
        """A row has its etag, the selected columns, the auto-added currency and the key."""
        response = get(env, "accounts", "$select=name,revenue&$top=1")
        body = response.json()
        assert f"{BASE}/$metadata#accounts(name,revenue)" == body["@odata.context"]
        row = body["value"][0]
        assert list(row) == [
            "@odata.etag",
            "name",
            "revenue",
            "_transactioncurrencyid_value",
            "accountid",
        ]
        assert re.fullmatch(r'W/"\d+"', row["@odata.etag"])
        assert response.headers["OData-Version"] == "4.0"
        assert response.headers["Content-Type"] == "application/json; odata.metadata=minimal"
        assert b'"revenue":' in response.body and re.search(
            rb'"revenue":\d+\.\d{4}[,}]', response.body
        )

    def test_replies_count_the_columns_they_served(self, env: DataverseModel) -> None:
        """A read reports how many of the table's columns its rows carried (what its execution
        time is charged by): the key alone, selected ones plus the auto-added, or all."""
        total = len(env.tables["account"].row_attributes())
        key = get(env, "accounts", "$select=accountid")
        assert (key.rows_served, key.columns_selected, key.columns_total) == (45, 1, total)
        assert list(key.json()["value"][0]) == ["@odata.etag", "accountid"]
        some = get(env, "accounts", "$select=name,revenue")
        assert (some.columns_selected, some.columns_total) == (4, total)  # + currency and key
        full = get(env, "accounts")
        assert (full.columns_selected, full.columns_total) == (total, total)
        one = get(env, f"accounts({key.json()['value'][0]['accountid']})", "$select=name")
        assert (one.rows_served, one.columns_selected, one.columns_total) == (1, 2, total)
        tracked = get(env, "accounts", "$select=accountid", TRACK)
        delta = tracked.json()["@odata.deltaLink"].split("?", 1)[1]
        env.churn("account", creates=2, updates=3, deletes=1, seed=1)
        changes = get(env, "accounts", delta)
        assert (changes.rows_served, changes.columns_selected) == (6, 1)
        assert get(env, "WhoAmI").columns_total == 0  # no rows: nothing to share

    def test_typed_values_render_as_documented(self, env: DataverseModel) -> None:
        """Dates, date-only columns, choices, multi-select and GUIDs render per the reference."""
        rows = rows_of(read_all(env, "new_projects"))
        assert all(re.fullmatch(r"\d{4}-\d{2}-\d{2}", r["new_startdate"]) for r in rows)
        assert all(
            re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z", r["createdon"]) for r in rows
        )
        tags = [r["new_tags"] for r in rows if r["new_tags"] is not None]
        assert tags and all(re.fullmatch(r"\d(,\d)*", t) for t in tags)
        assert all(
            isinstance(r["statecode"], int) and isinstance(r["new_isbillable"], bool) for r in rows
        )
        assert all(re.fullmatch(r"[0-9a-f-]{36}", r["_ownerid_value"]) for r in rows)
        assert any(r["new_notes"] is None for r in rows)

    def test_annotations_only_when_asked(self, env: DataverseModel) -> None:
        """Formatted values and lookup annotations appear only with include-annotations."""
        plain = get(env, "new_projects", "$top=5").json()["value"]
        assert not any("@OData" in key or "@Microsoft" in key for row in plain for key in row)
        annotated = get(env, "new_projects", "$top=40", ALL)
        assert annotated.headers["Preference-Applied"] == 'odata.include-annotations="*"'
        rows = annotated.json()["value"]
        multi = next(r for r in rows if r["new_tags"] and "," in r["new_tags"])
        labels = multi["new_tags@OData.Community.Display.V1.FormattedValue"].split("; ")
        assert len(labels) == len(multi["new_tags"].split(","))
        assert rows[0]["_ownerid_value@Microsoft.Dynamics.CRM.lookuplogicalname"] in (
            "systemuser",
            "team",
        )
        assert rows[0]["statecode@OData.Community.Display.V1.FormattedValue"] in (
            "Active",
            "Inactive",
        )
        assert list(rows[0]).index(
            "_ownerid_value@Microsoft.Dynamics.CRM.lookuplogicalname"
        ) < list(rows[0]).index("_ownerid_value")

    def test_lookup_formatted_value_is_the_target_primary_name(self, env: DataverseModel) -> None:
        """A lookup's FormattedValue is the name of the row it points at."""
        names = {r["accountid"]: r["name"] for r in env.dump_rows("account")}
        prefer = 'odata.include-annotations="OData.Community.Display.V1.FormattedValue"'
        rows = get(env, "new_projects", "$select=_new_accountid_value", prefer).json()["value"]
        linked = [r for r in rows if r["_new_accountid_value"]]
        assert linked
        for row in linked:
            assert (
                names[row["_new_accountid_value"]]
                == row["_new_accountid_value@OData.Community.Display.V1.FormattedValue"]
            )

    def test_single_row_by_key(self, env: DataverseModel) -> None:
        """`accounts(<guid>)` returns the row with an /$entity context, 404 when absent."""
        key = next(env.dump_rows("account"))["accountid"]
        body = get(env, f"accounts({key})", "$select=name").json()
        assert f"{BASE}/$metadata#accounts(name)/$entity" == body["@odata.context"]
        assert key == body["accountid"]
        env.churn("account", creates=0, updates=0, deletes=45, seed=1)
        assert get(env, f"accounts({key})").status == 404


class TestErrors:
    def test_unknown_select_column(self, env: DataverseModel) -> None:
        """An unknown (or wrongly cased) $select column is the documented 400 0x0."""
        assert error(get(env, "accounts", "$select=Name")) == (
            400,
            "0x0",
            "Could not find a property named 'Name' on type 'Microsoft.Dynamics.CRM.account'.",
        )

    @pytest.mark.parametrize("column", ["parentaccountid", "parentaccountidname", "owneridtype"])
    def test_companions_and_navigation_names_are_not_properties(
        self, env: DataverseModel, column: str
    ) -> None:
        """Lookups are selected as `_x_value`; companions are not Web API properties."""
        assert get(env, "accounts", f"$select={column}").status == 400

    @pytest.mark.parametrize("path", ["Accounts", "account", "nothing", "accounts/foo"])
    def test_unknown_segment_is_404(self, env: DataverseModel, path: str) -> None:
        """Unknown (or wrongly cased) entity sets give 404 0x8006088a naming the segment."""
        status, code, message = error(get(env, path))
        assert (status, code) == (404, "0x8006088a")
        assert (
            f"Resource not found for the segment '{path.rsplit('/', maxsplit=1)[-1]}'." == message
        )

    @pytest.mark.parametrize("option", ["$skip=10", "$search=x", "$format=json"])
    def test_unsupported_options(self, env: DataverseModel, option: str) -> None:
        """$skip, $search and $format are 400 with a JSON error body."""
        response = get(env, "accounts", option)
        assert error(response)[0] == 400
        assert response.headers["Content-Type"] == "application/json; odata.metadata=minimal"

    def test_filter_type_mismatch_and_unknown_column(self, env: DataverseModel) -> None:
        """Filtering a number with a string, or an unknown column, is 400 0x0."""
        assert error(get(env, "accounts", "$filter=numberofemployees eq 'x'"))[:2] == (400, "0x0")
        assert (
            "Could not find a property named 'nope'"
            in error(get(env, "accounts", "$filter=nope eq 1"))[2]
        )


class TestQueries:
    @pytest.mark.parametrize(
        ("expression", "check"),
        [
            (
                "numberofemployees gt 25000",
                lambda r: r["numberofemployees"] is not None and r["numberofemployees"] > 25000,
            ),
            (
                "modifiedon ge 2023-06-01T00:00:00Z and modifiedon lt 2024-01-01",
                lambda r: "2023-06-01" <= r["modifiedon"][:10] < "2024-01-01",
            ),
            ("createdon lt 2022-06-01T00:00:00Z", lambda r: r["createdon"] < "2022-06-01"),
            (
                "versionnumber le 100010 or statecode eq 1",
                lambda r: r["versionnumber"] <= 100010 or r["statecode"] == 1,
            ),
            (
                "not (donotemail eq true) and _parentaccountid_value ne null",
                lambda r: not r["donotemail"] and r["_parentaccountid_value"],
            ),
            (
                "startswith(name,'a') or contains(name,'works')",
                lambda r: r["name"].lower().startswith("a") or "works" in r["name"].lower(),
            ),
            ("revenue eq null", lambda r: r["revenue"] is None),
        ],
    )
    def test_filter_matches_brute_force(
        self, env: DataverseModel, expression: str, check: Any
    ) -> None:
        """$filter returns exactly the rows a brute-force check of dump_rows selects."""
        got = [
            strip(r)
            for r in rows_of(
                read_all(env, "accounts", f"$filter={quote(expression)}", "odata.maxpagesize=7")
            )
        ]
        expected = [r for r in env.dump_rows("account") if check(r)]
        assert expected == got
        assert expected

    def test_filter_on_key_and_version_ranges(self, env: DataverseModel) -> None:
        """Key equality and version ranges work, also for rows changed since start."""
        env.churn("account", creates=2, updates=3, deletes=1, seed=4)
        rows = list(env.dump_rows("account"))
        key = rows[10]["accountid"]
        assert [rows[10]] == [
            strip(r) for r in get(env, "accounts", f"$filter=accountid eq {key}").json()["value"]
        ]
        newest = sorted(r["versionnumber"] for r in rows)[-5]
        got = get(env, "accounts", f"$filter=versionnumber ge {newest}").json()["value"]
        assert [r for r in rows if r["versionnumber"] >= newest] == [strip(r) for r in got]

    def test_orderby_pages_through_in_order(self, env: DataverseModel) -> None:
        """$orderby with paging returns every row once, in the requested order."""
        pages = read_all(
            env,
            "accounts",
            "$select=name,numberofemployees&$orderby=numberofemployees desc,name",
            "odata.maxpagesize=6",
        )
        got = [(r["numberofemployees"], r["name"]) for r in rows_of(pages)]
        dump = list(env.dump_rows("account"))
        nulls = [(None, r["name"]) for r in dump if r["numberofemployees"] is None]
        numbers = [
            (r["numberofemployees"], r["name"]) for r in dump if r["numberofemployees"] is not None
        ]
        expected = sorted(numbers, key=lambda x: (-x[0], x[1].casefold())) + sorted(
            nulls, key=lambda x: x[1].casefold()
        )
        assert expected == got
        assert len(pages) == 8

    def test_default_order_is_primary_key_order(self, env: DataverseModel) -> None:
        """Without $orderby rows come in primary-key order, as in a real org: SQL Server's
        uniqueidentifier order, which puts the node first, then the sequential counter (not the
        creation order, which interleaves the nodes)."""
        keys = [
            r["opportunityid"]
            for r in rows_of(read_all(env, "opportunities", "$select=name", "odata.maxpagesize=4"))
        ]
        table = env.tables["opportunity"]
        created = [table.key(i) for i in range(25)]
        assert keys == sorted(created, key=sqlserver_guid_key)
        assert keys != created
        assert len(keys) == 25

    def test_top_limits_rows_without_next_link(self, env: DataverseModel) -> None:
        """$top returns that many rows and no nextLink; with maxpagesize the 2021 rule applies."""
        response = get(env, "accounts", "$top=3", "odata.maxpagesize=2")
        assert len(response.json()["value"]) == 3
        assert "@odata.nextLink" not in response.json()
        assert "Preference-Applied" not in response.headers

    def test_top_ignored_policy_follows_the_2024_page(self, clock: Clock) -> None:
        """With top_policy='top_ignored', maxpagesize wins and $top is ignored."""
        env = DataverseModel(
            [TableSpec(name="account", rows=10)],
            1,
            retention_days=7,
            clock=clock,
            top_policy="top_ignored",
        )
        pages = read_all(env, "accounts", "$top=3", "odata.maxpagesize=4")
        assert [len(p["value"]) for p in pages] == [4, 4, 2]

    def test_count_and_total_record_count_annotations(self, clock: Clock) -> None:
        """$count caps at 5,000 and the totalrecordcount annotations say when it was exceeded."""
        env = DataverseModel(
            [TableSpec(name="account", rows=5003)], 1, retention_days=7, clock=clock
        )
        body = get(env, "accounts", "$select=name&$count=true", "odata.maxpagesize=1," + ALL).json()
        assert body["@odata.count"] == 5000
        assert body["@Microsoft.Dynamics.CRM.totalrecordcount"] == 5000
        assert body["@Microsoft.Dynamics.CRM.totalrecordcountlimitexceeded"] is True
        small = get(env, "accounts", "$count=true&$filter=name eq 'nobody'", ALL).json()
        assert (
            small["@odata.count"],
            small["@Microsoft.Dynamics.CRM.totalrecordcountlimitexceeded"],
        ) == (0, False)
        counted = get(env, "accounts/$count")
        assert (counted.body, counted.headers["Content-Type"]) == (b"5000", "text/plain")

    def test_default_page_is_5000_and_larger_preferences_are_ignored(self, clock: Clock) -> None:
        """Pages hold 5,000 rows by default and when more than 5,000 is asked for."""
        env = DataverseModel(
            [TableSpec(name="account", rows=5001)], 1, retention_days=7, clock=clock
        )
        response = get(env, "accounts", "$select=name", "odata.maxpagesize=6000")
        assert len(response.json()["value"]) == 5000
        assert "Preference-Applied" not in response.headers
        assert len(follow(env, response.json()["@odata.nextLink"]).json()["value"]) == 1


class TestPaging:
    def test_full_paged_read_equals_dump_rows(self, env: DataverseModel) -> None:
        """Following nextLinks returns exactly the rows dump_rows has, once each."""
        pages = read_all(env, "new_projects", "", "odata.maxpagesize=9")
        assert [len(p["value"]) for p in pages] == [9, 9, 9, 9, 4]
        assert list(env.dump_rows("new_project")) == [strip(r) for r in rows_of(pages)]

    def test_next_link_is_absolute_keeps_options_and_echoes_page_size(
        self, env: DataverseModel
    ) -> None:
        """The nextLink is absolute on the same base, keeps $select/$filter and encodes the cookie once."""
        response = get(
            env, "accounts", "$select=name&$filter=statecode%20eq%200", "odata.maxpagesize=5"
        )
        assert response.headers["Preference-Applied"] == "odata.maxpagesize=5"
        link = response.json()["@odata.nextLink"]
        assert link.startswith(
            f"{BASE}/accounts?$select=name&$filter=statecode%20eq%200&$skiptoken=%3Ccookie%20pagenumber=%222%22"
        )
        assert unquote(link.split("$skiptoken=")[1]).endswith('istracking="False" />')

    def test_next_link_survives_a_server_restart(self, env: DataverseModel, clock: Clock) -> None:
        """Paging is stateless: a nextLink works against a fresh model with the same seed."""
        link = get(env, "accounts", "$select=name", "odata.maxpagesize=10").json()[
            "@odata.nextLink"
        ]
        restarted = DataverseModel(
            [TableSpec(name="account", rows=45)], 42, retention_days=7, clock=clock
        )
        assert follow(env, link).json()["value"] == follow(restarted, link).json()["value"]

    def test_tampered_and_re_encoded_links_are_400(self, env: DataverseModel) -> None:
        """A nextLink whose skiptoken was re-encoded or edited is rejected."""
        page = get(env, "accounts", "", "odata.maxpagesize=5").json()
        link, last = page["@odata.nextLink"], page["value"][-1]["accountid"].upper()
        head, token = link.split("$skiptoken=")
        assert follow(env, head + "$skiptoken=" + quote(token, safe="")).status == 400
        assert last in token
        forged = token.replace(last, last[:-1] + ("1" if last[-1] == "0" else "0"), 1)
        assert follow(env, head + "$skiptoken=" + forged).status == 400


class TestChangeTracking:
    def initial(
        self,
        env: DataverseModel,
        path: str = "opportunities",
        query: str = "$select=name",
        size: int = 10,
    ) -> list[dict[str, Any]]:
        return read_all(env, path, query, f"{TRACK}, odata.maxpagesize={size}")

    def test_initial_read_is_paged_and_only_the_last_page_has_the_delta_link(
        self, env: DataverseModel
    ) -> None:
        """The tracked full read pages with istracking=True and ends with a deltaLink keeping $select."""
        first = get(env, "opportunities", "$select=name", f"{TRACK},odata.maxpagesize=10")
        assert "odata.track-changes" in first.headers["Preference-Applied"]
        assert 'istracking="True"' in unquote(first.json()["@odata.nextLink"])
        pages = self.initial(env)
        assert [len(p["value"]) for p in pages] == [10, 10, 5]
        assert ["@odata.deltaLink" in p for p in pages] == [False, False, True]
        assert re.fullmatch(
            re.escape(f"{BASE}/opportunities?$select=name&$deltatoken=")
            + r"\d+%21\d\d%2f\d\d%2f\d{4}%20\d\d%3a\d\d%3a\d\d",
            pages[-1]["@odata.deltaLink"],
        )

    def test_forged_tracking_version_in_a_next_link_is_400(self, env: DataverseModel) -> None:
        """A tracking nextLink whose cookie claims a version the server never reached is rejected."""
        link = get(env, "opportunities", "", f"{TRACK},odata.maxpagesize=5").json()[
            "@odata.nextLink"
        ]
        version = str(env.version)
        assert f"version%253d%2522{version}" in link
        forged = link.replace(f"version%253d%2522{version}", f"version%253d%2522{version}9")
        assert follow(env, forged, TRACK).status == 400
        assert follow(env, link, TRACK).status == 200

    def test_delta_returns_exactly_the_changes_then_tombstones(
        self, env: DataverseModel, clock: Clock
    ) -> None:
        """After churn the delta has the upserts by version, then deletions (incl. created-then-deleted)."""
        link = self.initial(env)[-1]["@odata.deltaLink"]
        before = {r["opportunityid"] for r in env.dump_rows("opportunity")}
        clock.now += 60
        env.churn("opportunity", creates=4, updates=3, deletes=0, seed=1)
        env.churn(
            "opportunity", creates=0, updates=0, deletes=29, seed=2
        )  # everything, new rows too
        body = follow(env, link, TRACK).json()
        assert f"{BASE}/$metadata#opportunities(name)/$delta" == body["@odata.context"]
        assert all(r.get("reason") == "deleted" for r in body["value"])
        ids = {t["id"] for t in body["value"]}
        assert 29 == len(body["value"]) == len(ids)
        assert before < ids  # every seeded row, plus the rows created and deleted since
        assert {f"{BASE}/$metadata#opportunities/$deletedEntity"} == {
            t["@odata.context"] for t in body["value"]
        }
        assert list(body["value"][0]) == ["@odata.context", "id", "reason"]

    def test_delta_upserts_sorted_by_version_before_deletions(
        self, env: DataverseModel, clock: Clock
    ) -> None:
        """Changed rows come first, in version order, with current values; deletions follow."""
        link = self.initial(env, "accounts", "")[-1]["@odata.deltaLink"]
        clock.now += 5
        env.churn("account", creates=2, updates=4, deletes=3, seed=8)
        body = follow(env, link, TRACK).json()
        upserts = [r for r in body["value"] if "reason" not in r]
        deletions = [r for r in body["value"] if "reason" in r]
        assert body["value"] == upserts + deletions
        versions = [r["versionnumber"] for r in upserts]
        assert versions == sorted(versions)
        current = {r["accountid"]: r for r in env.dump_rows("account")}
        assert all(current[r["accountid"]] == strip(r) for r in upserts)
        assert len(deletions) == 3
        assert not {d["id"] for d in deletions} & set(current)

    def test_empty_delta_and_chained_links(self, env: DataverseModel, clock: Clock) -> None:
        """No changes give value [] and a fresh deltaLink; each link only returns newer changes."""
        link = self.initial(env)[-1]["@odata.deltaLink"]
        clock.now += 10
        empty = follow(env, link, TRACK).json()
        assert empty["value"] == []
        assert empty["@odata.deltaLink"] != link
        env.churn("opportunity", creates=0, updates=2, deletes=0, seed=3)
        first = follow(env, empty["@odata.deltaLink"], TRACK).json()
        assert len(first["value"]) == 2
        assert follow(env, first["@odata.deltaLink"], TRACK).json()["value"] == []

    def test_changes_during_the_initial_read_are_not_lost(self, env: DataverseModel) -> None:
        """The deltaLink's version is captured when the initial read started."""
        first = get(env, "opportunities", "$select=name", f"{TRACK},odata.maxpagesize=10").json()
        env.churn("opportunity", creates=1, updates=2, deletes=1, seed=6)
        pages = [first]
        while "@odata.nextLink" in pages[-1]:
            pages.append(
                follow(env, pages[-1]["@odata.nextLink"], f"{TRACK},odata.maxpagesize=10").json()
            )
        delta = follow(env, pages[-1]["@odata.deltaLink"], TRACK).json()["value"]
        assert (sum("reason" not in r for r in delta), sum("reason" in r for r in delta)) == (3, 1)

    def test_large_deltas_are_paged(self, env: DataverseModel, clock: Clock) -> None:
        """A delta larger than maxpagesize pages with nextLinks; the last page has the deltaLink."""
        link = self.initial(env, "new_projects", "$select=new_name")[-1]["@odata.deltaLink"]
        clock.now += 1
        env.churn("new_project", creates=5, updates=12, deletes=6, seed=2)
        pages = [follow(env, link, f"{TRACK},odata.maxpagesize=4").json()]
        while "@odata.nextLink" in pages[-1]:
            assert "@odata.deltaLink" not in pages[-1]
            pages.append(
                follow(env, pages[-1]["@odata.nextLink"], f"{TRACK},odata.maxpagesize=4").json()
            )
        entries = rows_of(pages)
        unpaged = follow(env, link, TRACK).json()
        assert "@odata.nextLink" not in unpaged
        assert unpaged["value"] == entries
        assert len(entries) == len({r.get("new_projectid", r.get("id")) for r in entries}) > 8
        assert "@odata.deltaLink" in pages[-1]
        assert unpaged["@odata.deltaLink"] == pages[-1]["@odata.deltaLink"]
        assert all(p["@odata.context"].endswith("/$delta") for p in pages)

    def test_delta_count(self, env: DataverseModel, clock: Clock) -> None:
        """`<set>/$count?$deltatoken=` counts the pending changes."""
        link = self.initial(env)[-1]["@odata.deltaLink"]
        env.churn("opportunity", creates=1, updates=1, deletes=1, seed=1)
        token = link.split("$deltatoken=")[1]
        assert get(env, "opportunities/$count", f"$deltatoken={token}").body == b"3"

    def test_expired_by_retention_and_by_invalidation(
        self, env: DataverseModel, clock: Clock
    ) -> None:
        """Tokens older than retention, or invalidated, answer 400 0x80044352."""
        expected = (
            400,
            "0x80044352",
            "Version stamp associated with the client has expired. Please perform a full sync.",
        )
        link = self.initial(env)[-1]["@odata.deltaLink"]
        clock.now += 7 * DAY + 1
        assert expected == error(follow(env, link, TRACK))
        fresh = self.initial(env)[-1]["@odata.deltaLink"]
        assert follow(env, fresh, TRACK).status == 200
        env.expire_change_tracking("opportunity")
        assert expected == error(follow(env, fresh, TRACK))
        assert follow(env, self.initial(env)[-1]["@odata.deltaLink"], TRACK).status == 200

    def test_an_initial_read_under_way_expires_with_the_tokens(self, env: DataverseModel) -> None:
        """Expiring the table's tokens also expires the next pages of a tracked initial read
        issued before (they stand on its tracking position); a fresh read works."""
        first = get(env, "opportunities", "$select=name", f"{TRACK},odata.maxpagesize=10")
        link = first.json()["@odata.nextLink"]
        assert follow(env, link, TRACK).status == 200
        env.expire_change_tracking("opportunity")
        assert error(follow(env, link, TRACK))[:2] == (400, "0x80044352")
        assert self.initial(env)[-1]["@odata.deltaLink"]

    def test_tokens_from_a_previous_run_are_expired(
        self, env: DataverseModel, clock: Clock
    ) -> None:
        """After a simulator restart (overlay lost) old delta tokens are expired, not silently wrong."""
        link = self.initial(env)[-1]["@odata.deltaLink"]
        clock.now += 100
        restarted = DataverseModel(
            [TableSpec(name="opportunity", rows=25)], 42, retention_days=7, clock=clock
        )
        assert error(follow(restarted, link, TRACK))[1] == "0x80044352"

    @pytest.mark.parametrize(
        "token", ["garbage", "1%2101%2f01%2f2020", "99999999%2101%2f01%2f2020%2000%3a00%3a00"]
    )
    def test_garbage_token_is_400(self, env: DataverseModel, token: str) -> None:
        """A delta token that was never issued is a 400."""
        assert get(env, "opportunities", f"$deltatoken={token}", TRACK).status == 400

    @pytest.mark.parametrize(
        "option", ["$filter=statecode eq 0", "$orderby=name", "$top=5", "$expand=parentaccountid"]
    )
    def test_query_options_forbidden_with_tracking(self, env: DataverseModel, option: str) -> None:
        """$filter, $orderby, $expand and $top are 400 with track-changes, naming the option."""
        name = option.split("=", maxsplit=1)[0]
        assert (
            400,
            "0x0",
            f'The "{name}" query parameter isn\'t supported when Change Tracking is enabled.',
        ) == error(get(env, "opportunities", option, TRACK))

    def test_table_without_change_tracking(self, env: DataverseModel) -> None:
        """track-changes on a table without change tracking is 400 0x80072491."""
        assert error(get(env, "contacts", "", TRACK)) == (
            400,
            "0x80072491",
            "Entity contact isn't enabled for change tracking.",
        )


class TestMetadata:
    def test_entity_definitions_filters(self, env: DataverseModel) -> None:
        """EntityDefinitions filters on ChangeTrackingEnabled, enums and managed-property paths."""

        def names(query: str) -> list[str]:
            return [e["LogicalName"] for e in get(env, "EntityDefinitions", query).json()["value"]]

        assert names("$select=LogicalName&$filter=ChangeTrackingEnabled eq true") == [
            "account",
            "opportunity",
            "new_project",
        ]
        assert names(
            "$select=LogicalName&$filter=ChangeTrackingEnabled eq false and CanChangeTrackingBeEnabled/Value eq true"
        ) == ["contact"]
        assert (
            len(names("$filter=OwnershipType eq Microsoft.Dynamics.CRM.OwnershipTypes'UserOwned'"))
            == 4
        )
        assert names("$filter=LogicalName eq 'new_project'") == ["new_project"]
        assert get(env, "EntityDefinitions", "$select=Nope").status == 400

    def test_single_entity_and_expanded_attributes(self, env: DataverseModel) -> None:
        """`EntityDefinitions(LogicalName='x')` is the object itself with an /$entity context."""
        body = get(
            env,
            "EntityDefinitions(LogicalName='account')",
            "$select=EntitySetName,PrimaryIdAttribute&$expand=Attributes($select=LogicalName)",
        ).json()
        assert body["@odata.context"].endswith(
            "#EntityDefinitions(EntitySetName,PrimaryIdAttribute,Attributes(LogicalName))/$entity"
        )
        assert (body["EntitySetName"], body["PrimaryIdAttribute"]) == ("accounts", "accountid")
        assert {"MetadataId", "LogicalName", "@odata.type"} == {
            k for a in body["Attributes"] for k in a
        }
        assert get(env, "EntityDefinitions(LogicalName='lead')").status == 404

    @pytest.mark.parametrize("table", ["account", "contact", "opportunity", "new_project"])
    def test_attributes_are_consistent_with_rows(self, env: DataverseModel, table: str) -> None:
        """Row properties are exactly the OData attributes without AttributeOf, with matching types."""
        attrs = get(env, f"EntityDefinitions(LogicalName='{table}')/Attributes").json()["value"]
        entity = get(env, f"EntityDefinitions(LogicalName='{table}')").json()
        rows = rows_of(read_all(env, entity["EntitySetName"]))
        expected: set[str] = set()
        for attr in attrs:
            assert attr["@odata.type"].startswith("#Microsoft.Dynamics.CRM.")
            assert attr["IsValidForRead"] is True
            if not attr["IsValidODataAttribute"] or attr["AttributeOf"]:
                continue
            lookup = attr["AttributeType"] in ("Lookup", "Customer", "Owner")
            name = f"_{attr['LogicalName']}_value" if lookup else attr["LogicalName"]
            expected.add(name)
            values = [r[name] for r in rows if r[name] is not None]
            if lookup:
                assert attr["Targets"]
            if attr["AttributeType"] == "DateTime":
                # The wire shape follows DateTimeBehavior only; Format is for display.
                behavior = attr["DateTimeBehavior"]["Value"]
                width = 10 if behavior == "DateOnly" else 20
                assert behavior != "DateOnly" or attr["Format"] == "DateOnly"
                assert all(len(v) == width for v in values)
            if attr["AttributeType"] in ("Integer", "BigInt", "Picklist", "State", "Status"):
                assert all(isinstance(v, int) and not isinstance(v, bool) for v in values)
            if attr["IsPrimaryId"]:
                assert entity["PrimaryIdAttribute"] == attr["LogicalName"]
        assert all(expected == {k for k in r if "@" not in k} for r in rows)
        companions = [a for a in attrs if a["AttributeOf"]]
        assert companions and all(not a["IsValidODataAttribute"] for a in companions)

    def test_multiselect_and_option_sets(self, env: DataverseModel) -> None:
        """Multi-select is Virtual/MultiSelectPicklistType; casts and $expand=OptionSet give labels."""
        path = "EntityDefinitions(LogicalName='new_project')/Attributes"
        tags = get(
            env,
            f"{path}(LogicalName='new_tags')",
            "$select=AttributeType,AttributeTypeName&$expand=OptionSet",
        ).json()
        assert (
            tags["AttributeType"],
            tags["AttributeTypeName"],
        ) == ("Virtual", {"Value": "MultiSelectPicklistType"})
        assert tags["OptionSet"]["Options"][0]["Label"]["UserLocalizedLabel"]["Label"] == "Design"
        picklists = get(
            env, f"{path}/Microsoft.Dynamics.CRM.PicklistAttributeMetadata", "$select=LogicalName"
        ).json()["value"]
        assert [p["LogicalName"] for p in picklists] == ["new_category"]
        virtual = get(
            env,
            path,
            "$select=LogicalName&$filter=AttributeType eq Microsoft.Dynamics.CRM.AttributeTypeCode'Virtual' and AttributeOf eq null",
        ).json()
        assert [a["LogicalName"] for a in virtual["value"]] == ["new_tags"]


class TestOtherResources:
    def test_whoami_get_and_post(self, env: DataverseModel) -> None:
        """WhoAmI answers GET with the three ids; POST is the documented 404."""
        body = get(env, "WhoAmI").json()
        assert (
            body["UserId"],
            body["BusinessUnitId"],
            body["OrganizationId"],
        ) == ("user-1", "bu-1", "org-1")
        assert body["@odata.context"] == f"{BASE}/$metadata#Microsoft.Dynamics.CRM.WhoAmIResponse"
        assert (
            404,
            "",
            f"No HTTP resource was found that matches the request URI '{BASE}/WhoAmI'.",
        ) == error(get(env, "WhoAmI", method="POST"))

    def test_service_document(self, env: DataverseModel) -> None:
        """The service document lists the entity sets."""
        body = get(env, "").json()
        assert f"{BASE}/$metadata" == body["@odata.context"]
        assert {"accounts", "contacts", "opportunities", "new_projects"} <= {
            v["name"] for v in body["value"]
        }

    def test_retrieve_total_record_count_is_a_snapshot(
        self, env: DataverseModel, clock: Clock
    ) -> None:
        """RetrieveTotalRecordCount returns counts from a snapshot refreshed daily."""
        path = "RetrieveTotalRecordCount(EntityNames=['account','contact'])"
        env.churn("account", creates=5, updates=0, deletes=0, seed=1)
        body = get(env, path).json()["EntityRecordCountCollection"]
        assert body == {
            "Count": 2,
            "IsReadOnly": False,
            "Keys": ["account", "contact"],
            "Values": [45, 30],
        }
        clock.now += DAY
        assert get(env, path).json()["EntityRecordCountCollection"]["Values"] == [50, 30]

    def test_table_for_entity_set(self, env: DataverseModel) -> None:
        """Entity sets map to logical names, case-sensitively."""
        assert (
            env.table_for_entity_set("opportunities"),
            env.table_for_entity_set("Opportunities"),
        ) == ("opportunity", None)


class TestHostileAndDrift:
    def test_hostile_pages(self, env: DataverseModel) -> None:
        """Each hostile kind corrupts the served pages until it is cleared."""
        env.set_hostile("account", "malformed_json")
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(get(env, "accounts").body)
        env.set_hostile("account", "missing_key")
        rows = get(env, "accounts").json()["value"]
        assert sum("accountid" not in r for r in rows) == 1
        env.set_hostile("account", "wrong_type")
        assert isinstance(get(env, "accounts").json()["value"][0]["numberofemployees"], str)
        env.set_hostile("account", "unsafe_attribute")
        assert 'bad name"; drop' in get(env, "accounts").json()["value"][0]
        names = [
            a["LogicalName"]
            for a in get(env, "EntityDefinitions(LogicalName='account')/Attributes").json()["value"]
        ]
        assert 'bad name"; drop' in names
        env.set_hostile("account", None)
        assert list(env.dump_rows("account")) == [
            strip(r) for r in get(env, "accounts").json()["value"]
        ]
        with pytest.raises(ValueError):
            env.set_hostile("account", "spicy")

    def test_added_column_appears_in_metadata_rows_and_deltas(
        self, env: DataverseModel, clock: Clock
    ) -> None:
        """A column added at runtime is in metadata, null on old rows, valued on changed rows."""
        link = TestChangeTracking().initial(env, "accounts", "")[-1]["@odata.deltaLink"]
        env.add_column("account", {"name": "new_score", "type": "Decimal"})
        attr = get(
            env, "EntityDefinitions(LogicalName='account')/Attributes(LogicalName='new_score')"
        ).json()
        assert (attr["AttributeType"], attr["AttributeOf"]) == ("Decimal", None)
        assert all(r["new_score"] is None for r in get(env, "accounts").json()["value"])
        env.churn("account", creates=1, updates=2, deletes=0, seed=5)
        delta = follow(env, link, TRACK).json()["value"]
        assert len(delta) == 3 and all(isinstance(r["new_score"], float) for r in delta)
