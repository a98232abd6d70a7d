"""DateTime values as the real Web API sends them (reference 5.3, S27).

The wire shape follows DateTimeBehavior, never Format: DateOnly behaviour → `Edm.Date`
("2024-05-01"); UserLocal and TimeZoneIndependent → a full `Edm.DateTimeOffset`
("2024-05-01T07:00:00Z"), even when Format is DateOnly. A mirror that believed Format parked
every standard table on `overriddencreatedon`; these tests pin the three combinations on the
simulator's standard tables, the product's type map, and whole mirrors over HTTPS.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from sync.commands.demo_compare import as_sent
from sync.errors import HostileResponseError
from sync.mirror.page import decode_page
from sync.mirror.rowshape import RowShaper
from sync.mirror.typemap import build_schema
from sync.simulator.dataset import TableSpec
from sync.simulator.webapi import ApiRequest, DataverseModel
from tests import mirror_compare as compare
from tests.cli import clean_env
from tests.simfixtures import _no_ca_env, running_simulator  # noqa: F401

BASE = "https://127.0.0.1:8443/api/data/v9.2"
TIMESTAMP = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")
DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
ENTITY = {
    "LogicalName": "opportunity",
    "EntitySetName": "opportunities",
    "PrimaryIdAttribute": "opportunityid",
    "ChangeTrackingEnabled": True,
}
KEY = "4624eff7-53d3-ed11-a7c7-000d3a993550"
# (attribute, table, DateTimeBehavior, Format, mirror type): the real attributes of a real org.
REAL_ATTRIBUTES = [
    ("overriddencreatedon", "account", "UserLocal", "DateOnly", "timestamp"),
    ("overriddencreatedon", "contact", "UserLocal", "DateOnly", "timestamp"),
    ("overriddencreatedon", "opportunity", "UserLocal", "DateOnly", "timestamp"),
    ("overriddencreatedon", "new_project", "UserLocal", "DateOnly", "timestamp"),
    ("estimatedclosedate", "opportunity", "UserLocal", "DateOnly", "timestamp"),
    ("actualclosedate", "opportunity", "UserLocal", "DateOnly", "timestamp"),
    ("createdon", "account", "UserLocal", "DateAndTime", "timestamp"),
    ("birthdate", "contact", "DateOnly", "DateOnly", "date"),
    ("new_startdate", "new_project", "DateOnly", "DateOnly", "date"),
    ("new_deadline", "new_project", "TimeZoneIndependent", "DateOnly", "timestamp"),
    ("new_handoverat", "new_project", "TimeZoneIndependent", "DateAndTime", "timestamp"),
]


def date_attribute(name: str, behavior: str | None, fmt: str | None) -> dict[str, Any]:
    item: dict[str, Any] = {
        "LogicalName": name,
        "AttributeType": "DateTime",
        "AttributeTypeName": {"Value": "DateTimeType"},
        "IsValidForRead": True,
        "IsValidODataAttribute": True,
        "AttributeOf": None,
    }
    if behavior is not None:
        item["DateTimeBehavior"] = {"Value": behavior}
    if fmt is not None:
        item["Format"] = fmt
    return item


def schema_with(item: dict[str, Any]) -> Any:
    key = {
        "LogicalName": "opportunityid",
        "AttributeType": "Uniqueidentifier",
        "AttributeTypeName": {"Value": "UniqueidentifierType"},
    }
    return build_schema(ENTITY, [key, item], table="opportunity")


class TestTypeMap:
    @pytest.mark.parametrize(
        ("behavior", "fmt", "expected"),
        [
            ("DateOnly", "DateOnly", "date"),
            ("UserLocal", "DateOnly", "timestamp"),
            ("UserLocal", "DateAndTime", "timestamp"),
            ("TimeZoneIndependent", "DateOnly", "timestamp"),
            ("TimeZoneIndependent", "DateAndTime", "timestamp"),
            (None, "DateOnly", "timestamp"),  # no behaviour: the default, UserLocal
            (None, None, "timestamp"),
        ],
    )
    def test_behavior_not_format_decides_the_mirror_type(
        self, behavior: str | None, fmt: str | None, expected: str
    ) -> None:
        """Only DateTimeBehavior DateOnly is a date; Format DateOnly alone stays a timestamp."""
        columns = schema_with(date_attribute("estimatedclosedate", behavior, fmt)).columns
        assert expected == columns[1].sql_type

    def test_userlocal_dateonly_format_keeps_the_value_exactly(self) -> None:
        """A UserLocal/DateOnly-format value passes through as the exact text that was sent."""
        schema = schema_with(date_attribute("estimatedclosedate", "UserLocal", "DateOnly"))
        page = {
            "value": [
                {"opportunityid": KEY, "estimatedclosedate": "2024-04-30T22:00:00Z"},
            ]
        }
        body = orjson.dumps(page).replace(b"}]", b',"@odata.etag":"W/\\"7\\""}]')
        decoded = decode_page(body, RowShaper(schema))
        assert decoded.tuples == [(KEY, "2024-04-30T22:00:00Z", 'W/"7"')]

    def test_a_value_of_the_wrong_shape_names_the_attribute_its_metadata_and_a_sample(self) -> None:
        """A date column that receives a timestamp parks the table with everything needed to
        trace it: attribute, AttributeType, Format, DateTimeBehavior and one sample value."""
        schema = schema_with(date_attribute("birthdate", "DateOnly", "DateOnly"))
        rows = [
            {"opportunityid": KEY, "birthdate": None, "@odata.etag": 'W/"1"'},
            {"opportunityid": KEY, "birthdate": "2024-05-01T07:00:00Z", "@odata.etag": 'W/"2"'},
        ]
        with pytest.raises(HostileResponseError) as caught:
            decode_page(orjson.dumps({"value": rows}), RowShaper(schema))
        message = str(caught.value)
        assert "table opportunity" in message
        assert "column birthdate" in message
        assert "AttributeType DateTime, Format DateOnly, DateTimeBehavior DateOnly" in message
        assert "'2024-05-01T07:00:00Z'" in message
        assert "nothing from it was written" in message


@pytest.fixture(name="model", scope="module")
def _model() -> DataverseModel:
    specs = [
        TableSpec(name="account", rows=60),
        TableSpec(name="contact", rows=60),
        TableSpec(name="opportunity", rows=200),
        TableSpec(name="new_project", rows=60),
    ]
    return DataverseModel(specs, 11, retention_days=7)


def api(model: DataverseModel, path: str, query: str = "") -> Any:
    request = ApiRequest("GET", path, query, {}, BASE, "user-1", "bu-1", "org-1")
    response = model.handle(request)
    assert response.status == 200, response.body[:300]
    return response.json()


class TestSimulatorSendsRealShapes:
    @pytest.mark.parametrize(("name", "table", "behavior", "fmt", "mirror_type"), REAL_ATTRIBUTES)
    def test_metadata_and_rows_follow_the_behavior(
        self,
        model: DataverseModel,
        name: str,
        table: str,
        behavior: str,
        fmt: str,
        mirror_type: str,
    ) -> None:
        """The real attributes carry their real behaviour and format, and every value has the
        shape the behaviour dictates (a full timestamp unless the behaviour is DateOnly)."""
        cast = "Microsoft.Dynamics.CRM.DateTimeAttributeMetadata"
        items = api(
            model,
            f"EntityDefinitions(LogicalName='{table}')/Attributes/{cast}",
            "$select=LogicalName,Format,DateTimeBehavior",
        )["value"]
        item = next(i for i in items if i["LogicalName"] == name)
        assert (behavior, fmt) == (item["DateTimeBehavior"]["Value"], item["Format"])
        set_name = api(model, f"EntityDefinitions(LogicalName='{table}')")["EntitySetName"]
        values = [r[name] for r in api(model, set_name, f"$select={name}")["value"]]
        present = [v for v in values if v is not None]
        assert present, f"{table}.{name} has no values to check"
        shape = DATE if mirror_type == "date" else TIMESTAMP
        assert all(shape.fullmatch(v) for v in present), present[:3]

    def test_user_local_dates_are_local_midnights_not_utc_midnights(
        self, model: DataverseModel
    ) -> None:
        """estimatedclosedate is the user's local midnight in UTC: a client that cuts the time
        off (or expects "YYYY-MM-DD") gets some days wrong, as against a real org."""
        rows = api(model, "opportunities", "$select=estimatedclosedate")["value"]
        times = {r["estimatedclosedate"][11:] for r in rows if r["estimatedclosedate"]}
        assert "00:00:00Z" not in times
        assert {"07:00:00Z", "23:00:00Z"} <= times

    def test_time_zone_independent_date_format_is_midnight_as_picked(
        self, model: DataverseModel
    ) -> None:
        """TimeZoneIndependent with the DateOnly format is stored as picked: midnight, with a time."""
        rows = api(model, "new_projects", "$select=new_deadline")["value"]
        assert {r["new_deadline"][10:] for r in rows if r["new_deadline"]} == {"T00:00:00Z"}


@pytest.fixture(name="realistic", scope="module")
def _realistic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with running_simulator("realistic", tmp_path_factory.mktemp("sim-realistic")) as ready:
        yield ready


@pytest.fixture(name="demo", scope="module")
def _demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with running_simulator("demo", tmp_path_factory.mktemp("sim-demo")) as ready:
        yield ready


def backfill_with_the_cli(
    ready: dict[str, Any], env: str, *, store_url: str | None = None, workdir: Path | None = None
) -> Path | str:
    """`dvmirror backfill --env E` with the configuration the simulator wrote, as a user would
    (into `store_url` instead of its SQLite file when given)."""
    config = Path(ready["config_file"])
    if store_url is not None:
        assert workdir is not None
        text = re.sub(
            r'(?m)^url = "sqlite\+aiosqlite:///[^"]*"$', f'url = "{store_url}"', config.read_text()
        )
        config = workdir / "dvmirror.toml"
        config.write_text(text)
    completed = subprocess.run(
        ["dvmirror", "--config", str(config), "backfill", "--env", env],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-2000:]
    if store_url is not None:
        return store_url
    return Path(ready["state_dir"]) / "dvmirror" / "mirror.db"


def mirror_types(database: Path | str, env: str, table: str) -> dict[str, str]:
    rows = compare.query(
        database,
        "SELECT column_name, sql_type FROM dv_mirror_columns "
        "WHERE environment = ? AND table_name = ? AND removed_at IS NULL",
        env,
        table,
    )
    return {str(name): str(kind) for name, kind in rows}


def assert_real_datetimes_mirrored(ready: dict[str, Any], database: Path | str, env: str) -> None:
    tables = next(
        e["tables"] for t in ready["tenants"] for e in t["environments"] if e["name"] == env
    )
    checked = 0
    for name, table, _behavior, _fmt, mirror_type in REAL_ATTRIBUTES:
        if table not in tables:
            continue
        assert mirror_types(database, env, table)[name] == mirror_type, (table, name)
        source = {
            r[compare.PRIMARY[table]]: r[name] for r in compare.source_rows(ready, env, table)
        }
        mirrored = compare.mirror_rows(database, env, table)
        assert mirrored is not None
        assert {k: as_sent(r[name]) for k, r in mirrored.items()} == source, (table, name)
        assert any(v is not None for v in source.values())
        checked += 1
    assert checked >= 3
    for table in tables:  # and every other column too
        compare.assert_converged(ready, database, env, table)


@pytest.mark.slow
@pytest.mark.usefixtures("no_ca_env")
def test_realistic_scenario_mirrors_every_standard_table_exactly(
    realistic: dict[str, Any],
) -> None:
    """The realistic org (account, contact, opportunity, a custom table): nothing is parked,
    and overriddencreatedon, estimatedclosedate and birthdate hold the right types and values."""
    database = backfill_with_the_cli(realistic, "northwind_prod")
    assert_real_datetimes_mirrored(realistic, database, "northwind_prod")


@pytest.mark.slow
@pytest.mark.usefixtures("no_ca_env")
def test_demo_scenario_mirrors_the_real_datetime_attributes(demo: dict[str, Any]) -> None:
    """The demo's production environment has the same attributes, mirrored exactly."""
    database = backfill_with_the_cli(demo, "contoso_prod")
    assert_real_datetimes_mirrored(demo, database, "contoso_prod")


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.usefixtures("no_ca_env")
def test_realistic_scenario_mirrors_exactly_into_postgres(
    realistic: dict[str, Any], pg_url: str, tmp_path: Path
) -> None:
    """The same org into PostgreSQL: timestamps as timestamptz, DateOnly as date, and every value
    (read back as the text the Web API sent) equal to the source."""
    database = backfill_with_the_cli(
        realistic, "northwind_prod", store_url=pg_url, workdir=tmp_path
    )
    assert_real_datetimes_mirrored(realistic, database, "northwind_prod")
