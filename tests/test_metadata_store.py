"""The metadata refresh against a real store (SQLite file and PostgreSQL): rows written once,
an unchanged source writes nothing, a malformed answer keeps the previous rows and is one
`<env>/metadata` failure; and when the daemon refreshes (pure)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert, select

from sync.mirror.metadata_refresh import RefreshAfterReads, refresh_environment
from sync.runtime.metadata_loop import MIN_REFRESH_SECONDS, refresh_due
from sync.store.connect import create_engine
from sync.store.control import metadata_hashes, mirror_columns
from sync.store.metadata_tables import read_rows
from sync.store.migrate import upgrade
from tests.mirror_compare import _store_url  # noqa: F401

NOW = datetime(2026, 12, 7, 13, 0, tzinfo=UTC)
ENV = "meta_env"


def option_set(*labels: str) -> dict[str, Any]:
    return {
        "Options": [
            {
                "Value": value,
                "Label": {
                    "LocalizedLabels": [
                        {"Label": text, "LanguageCode": 1033},
                        {"Label": f"{text}-fr", "LanguageCode": 1036},
                    ],
                    "UserLocalizedLabel": {"Label": text, "LanguageCode": 1033},
                },
            }
            for value, text in enumerate(labels, start=1)
        ]
    }


class FakeSource:
    """Metadata answers by cast name (what the refresh asks for)."""

    def __init__(self, answers: Mapping[str, Any]) -> None:
        self.answers = dict(answers)
        self.requests = 0

    async def get(
        self, url: str, *, table: str | None = None, headers: Mapping[str, str] | None = None
    ) -> Any:
        self.requests += 1
        for marker, answer in self.answers.items():
            if marker in url:
                return answer
        return {"value": []}


async def test_refresh_writes_once_and_a_malformed_answer_keeps_the_rows(store_url: str) -> None:
    engine = create_engine(store_url)
    try:
        await upgrade(engine)
        async with engine.begin() as conn:
            await conn.execute(
                insert(mirror_columns),
                [
                    {
                        "environment": ENV,
                        "table_name": "account",
                        "column_name": column,
                        "attribute_type": kind,
                        "sql_type": sql,
                        "added_at": NOW,
                        "display_name": shown,
                    }
                    for column, kind, sql, shown in [
                        ("accountid", "Uniqueidentifier", "uuid", "Account"),
                        ("industrycode", "Picklist", "integer", "Industry"),
                        ("industrycode__label", "Picklist", "text", "Industry"),
                    ]
                ],
            )
        good = {
            "Picklist": {
                "value": [
                    {"LogicalName": "industrycode", "OptionSet": option_set("Retail", "Farm")}
                ]
            }
        }
        source = FakeSource(good)
        first = await refresh_environment(
            source,
            engine,
            environment=ENV,
            environment_url="https://x",
            tables=["account"],
            now=NOW,
        )
        assert len(first.changed) == 6 and source.requests == 1  # one cast: Picklist
        rows = await read_rows(engine, ENV, "optionsetmetadata")
        assert sorted(rows) == [
            ("account", "industrycode", 1, 0, 1036, "Retail-fr"),
            ("account", "industrycode", 1, 1, 1033, "Retail"),
            ("account", "industrycode", 2, 0, 1036, "Farm-fr"),
            ("account", "industrycode", 2, 1, 1033, "Farm"),
        ]
        attributes = await read_rows(engine, ENV, "attributemetadata")
        assert ("account", "industrycode", "Picklist", 11, "Industry", None, None, None) in (
            attributes
        )
        again = await refresh_environment(
            source,
            engine,
            environment=ENV,
            environment_url="https://x",
            tables=["account"],
            now=NOW,
        )
        assert again.changed == ()
        # A run of another table only (`backfill --table contact`) leaves account's rows be.
        async with engine.begin() as conn:
            await conn.execute(
                insert(mirror_columns).values(
                    environment=ENV,
                    table_name="contact",
                    column_name="contactid",
                    attribute_type="Uniqueidentifier",
                    sql_type="uuid",
                    added_at=NOW,
                )
            )
        other = await refresh_environment(
            source,
            engine,
            environment=ENV,
            environment_url="https://x",
            tables=["contact"],
            now=NOW,
        )
        assert len(other.changed) == 6  # contact's first hashes, even of no rows
        assert await read_rows(engine, ENV, "optionsetmetadata") == rows
        assert len(await read_rows(engine, ENV, "attributemetadata")) == 3

        hostile = FakeSource(
            {
                "Picklist": {
                    "value": [{"LogicalName": "industrycode", "OptionSet": {"Options": "x"}}]
                }
            }
        )
        refresh = RefreshAfterReads(
            hostile, engine, environment=ENV, environment_url="https://x", tables=["account"]
        )
        results = await refresh.results(["account"], now=NOW)
        assert [(r.environment, r.table, r.ok) for r in results] == [(ENV, "metadata", False)]
        assert "table account: an OptionSet has no list of options" in (results[0].error or "")
        assert await read_rows(engine, ENV, "optionsetmetadata") == rows
        async with engine.connect() as conn:
            hashes = (await conn.execute(select(metadata_hashes.c.row_count))).all()
        assert len(hashes) == 12
    finally:
        await engine.dispose()


def test_daemon_refreshes_new_mirrors_at_once_and_others_on_the_interval() -> None:
    assert not refresh_due(set(), set(), None, 0.0, 60.0)
    assert refresh_due({"account"}, set(), None, 0.0, 60.0)
    assert not refresh_due({"account"}, {"account"}, 100.0, 160.0, 60.0)  # at most every 5 min
    assert refresh_due({"account"}, {"account"}, 100.0, 100.0 + MIN_REFRESH_SECONDS, 60.0)
    assert refresh_due({"account", "contact"}, {"account"}, 100.0, 101.0, 60.0)
    assert not refresh_due({"account"}, {"account"}, 0.0, 3000.0, 3600.0)
