"""The type map and the row shaper: metadata → mirror columns, row JSON → typed tuples."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import orjson
import pytest

from sync.errors import HostileResponseError
from sync.mirror.page import decode_page
from sync.mirror.rowshape import RowShaper, protect_decimals
from sync.mirror.typemap import COLUMN_CHECKS, FORMATS, build_schema

ENTITY = {
    "LogicalName": "account",
    "EntitySetName": "accounts",
    "PrimaryIdAttribute": "accountid",
    "ChangeTrackingEnabled": True,
}
KEY = "4624eff7-53d3-ed11-a7c7-000d3a993550"


def attr(name: str, kind: str, type_name: str = "", **extra: Any) -> dict[str, Any]:
    return {
        "LogicalName": name,
        "AttributeType": kind,
        "AttributeTypeName": {"Value": type_name or f"{kind}Type"},
        "IsValidForRead": True,
        "IsValidODataAttribute": True,
        "AttributeOf": None,
        **extra,
    }


ATTRIBUTES = [
    attr("accountid", "Uniqueidentifier"),
    attr("name", "String"),
    attr("revenue", "Money"),
    attr("ratio", "Double"),
    attr("employees", "Integer"),
    attr("big", "BigInt"),
    attr("active", "Boolean"),
    attr("modifiedon", "DateTime"),
    attr("birthday", "DateTime", DateTimeBehavior={"Value": "DateOnly"}),
    attr("industrycode", "Picklist"),
    attr("tags", "Virtual", "MultiSelectPicklistType"),
    attr("ownerid", "Owner"),
    attr("owneridname", "String", AttributeOf="ownerid"),
    attr("hidden", "String", IsValidODataAttribute=False),
    attr("entityimage", "Virtual", "ImageType"),
    attr("partylist", "PartyList"),
]


def schema() -> Any:
    return build_schema(ENTITY, ATTRIBUTES, table="account")


def row(**values: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "@odata.etag": 'W/"1001"',
        "accountid": KEY,
        "name": "Contoso",
        "revenue": 20000.5,
        "ratio": 0.25,
        "employees": 12,
        "big": 9_000_000_000_000,
        "active": True,
        "modifiedon": "2023-04-07T21:59:01Z",
        "birthday": "1990-05-01",
        "industrycode": 3,
        "industrycode@OData.Community.Display.V1.FormattedValue": "Retail",
        "tags": "1,2",
        "tags@OData.Community.Display.V1.FormattedValue": "A; B",
        "_ownerid_value": "00000001-0000-4000-8000-000000000001",
        "_ownerid_value@Microsoft.Dynamics.CRM.lookuplogicalname": "systemuser",
    }
    return base | values


def page(*rows: dict[str, Any]) -> bytes:
    return orjson.dumps({"@odata.context": "x", "value": list(rows)})


def test_columns_follow_the_documented_type_map() -> None:
    """Each attribute type becomes its mirror column(s); companions and virtuals are skipped."""
    columns = {c.name: c.sql_type for c in schema().columns}
    assert columns == {
        "accountid": "uuid",
        "name": "text",
        "revenue": "numeric",
        "ratio": "float",
        "employees": "integer",
        "big": "bigint",
        "active": "boolean",
        "modifiedon": "timestamp",
        "birthday": "date",
        "industrycode": "integer",
        "industrycode__label": "text",
        "tags": "choices",
        "tags__label": "text",
        "_ownerid_value": "uuid",
        "_ownerid_value__type": "text",
    }
    assert schema().columns[0].name == "accountid"
    assert set(schema().skipped) >= {"owneridname", "hidden", "entityimage", "partylist"}


def test_select_names_lookups_by_their_web_api_name() -> None:
    """$select lists each attribute once, lookups as _x_value, no annotation keys."""
    select = schema().select
    assert "_ownerid_value" in select
    assert "industrycode" in select
    assert not any("@" in s or "__" in s for s in select)


def test_unsafe_attribute_name_refuses_the_table() -> None:
    """An attribute name that is not a safe identifier raises HostileResponseError."""
    with pytest.raises(HostileResponseError, match="not a safe identifier"):
        build_schema(ENTITY, [*ATTRIBUTES, attr('bad name"; drop', "String")], table="account")


def test_a_page_becomes_typed_tuples_with_exact_decimals() -> None:
    """A row keeps every value; Money keeps all its digits as text; labels come from annotations."""
    shaper = RowShaper(schema())
    body = page(row()).replace(b'"revenue":20000.5', b'"revenue":922337203685477.5807')
    decoded = decode_page(body, shaper)
    values = dict(zip(shaper.keys, decoded.tuples[0], strict=True))
    assert values["revenue"] == "922337203685477.5807"
    assert Decimal(values["revenue"]) == Decimal("922337203685477.5807")
    assert values["industrycode@OData.Community.Display.V1.FormattedValue"] == "Retail"
    assert values["@odata.etag"] == 'W/"1001"'


def test_spaced_json_falls_back_to_an_exact_decode() -> None:
    """A page laid out with spaces is decoded again exactly instead of rounding the decimals."""
    shaper = RowShaper(schema())
    body = page(row()).replace(b'"revenue":20000.5', b'"revenue": 1234567890123.4567')
    decoded = decode_page(body, shaper)
    assert decoded.tuples[0][shaper.keys.index("revenue")] == "1234567890123.4567"


def test_protect_decimals_ignores_the_key_inside_a_string() -> None:
    """Only real keys are rewritten: text that looks like one inside a value is left alone."""
    body = b'{"value":[{"name":"x\\"revenue\\":5","revenue":7.10}]}'
    protected, count = protect_decimals(body, ["revenue"])
    assert count == 1
    assert orjson.loads(protected)["value"][0] == {"name": 'x"revenue":5', "revenue": "7.10"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"accountid": None}, "has no accountid"),
        ({"employees": "many"}, "employees (integer; AttributeType Integer) got str, e.g. 'many'"),
        ({"employees": 1.5}, "employees (integer; AttributeType Integer) got float, e.g. 1.5"),
        ({"active": 1}, "active (boolean; AttributeType Boolean) got int, e.g. 1"),
        ({"revenue": "lots"}, "not a JSON number"),
        ({"modifiedon": "yesterday"}, "not a timestamp"),
        ({"_ownerid_value": "not-a-guid"}, "not a uuid"),
        ({'bad key"': 1}, "not a safe identifier"),
        ({"@odata.etag": "W/abc"}, "not a row version"),
    ],
)
def test_hostile_rows_refuse_the_whole_page(change: dict[str, Any], message: str) -> None:
    """A wrong type, a missing key or an unsafe name anywhere refuses the page."""
    with pytest.raises(HostileResponseError, match=re.escape(message)):
        decode_page(page(row(), row(**change)), RowShaper(schema()))


def test_an_annotation_absent_for_a_null_value_is_none_in_every_row() -> None:
    """Dataverse leaves out a null value's annotations: a page mixing such rows with complete
    ones keeps every row in order, the absent keys None and the other values as they came."""
    shaper = RowShaper(schema())
    complete = row()
    sparse = row()
    sparse["industrycode"] = None
    del sparse["industrycode@OData.Community.Display.V1.FormattedValue"]
    rows = [complete, sparse, complete, sparse]
    decoded = decode_page(orjson.dumps({"value": rows}), shaper)
    label = shaper.keys.index("industrycode@OData.Community.Display.V1.FormattedValue")
    assert [t[label] for t in decoded.tuples] == ["Retail", None, "Retail", None]
    (full,) = decode_page(page(complete), shaper).tuples
    assert decoded.tuples[0] == decoded.tuples[2] == full
    expected = list(full)
    expected[label] = expected[shaper.keys.index("industrycode")] = None
    assert decoded.tuples[1] == decoded.tuples[3] == tuple(expected)


def test_missing_key_row_is_refused() -> None:
    """A row without its primary key at all is refused."""
    bad = row()
    del bad["accountid"]
    with pytest.raises(HostileResponseError, match="has no accountid"):
        decode_page(page(bad), RowShaper(schema()))


def test_malformed_json_is_refused() -> None:
    """A body cut in the middle is not valid JSON."""
    with pytest.raises(HostileResponseError, match="not valid JSON"):
        decode_page(page(row())[:-20], RowShaper(schema()))


def test_tombstones_and_links_are_split_out() -> None:
    """Deleted-entity entries become ids; nextLink and deltaLink are kept."""
    tombstone = {"@odata.context": "x#accounts/$deletedEntity", "id": KEY, "reason": "deleted"}
    body = orjson.dumps({"value": [row(), tombstone], "@odata.deltaLink": "https://h/d"})
    decoded = decode_page(body, RowShaper(schema()))
    assert decoded.deleted_ids == [KEY]
    assert len(decoded.tuples) == 1
    assert decoded.delta_link == "https://h/d"


CHECK_SAMPLES = {
    "uuid": [
        KEY,
        KEY.upper(),
        KEY[:-1],
        KEY + "0",
        KEY.replace("-", "", 1) + "0",
        KEY[:8] + "x" + KEY[9:],
        KEY[:35] + "g",
        KEY[:35] + "\u0661",  # an Arabic-Indic digit: a digit, but not ASCII
        KEY[:20] + "\x1f" + KEY[21:],
        KEY + "\x1f" + KEY,
        "",
    ],
    "timestamp": [
        "2023-04-07T21:59:01Z",
        "2023-04-07T21:59:01.1234567Z",
        "2023-04-07T21:59:01.12345678Z",
        "2023-04-07T21:59:01+01:00",
        "2023-04-07 21:59:01Z",
        "2023-04-07T21:59:0aZ",
        "2023-04-07T21:59:01Z\x1f2023-04-07T21:59:01Z",
    ],
    "date": ["1990-05-01", "1990-5-01", "1990-05-01T", "199a-05-01", "\u0661990-05-01"],
}


@pytest.mark.parametrize("sql_type", sorted(CHECK_SAMPLES))
def test_column_checks_accept_exactly_what_the_patterns_accept(sql_type: str) -> None:
    """The fast whole-column checks agree with the format's regular expression, value by value
    and for a whole column mixing good values, bad values and nulls."""
    pattern = re.compile(FORMATS[sql_type])  # type: ignore[index]
    check = COLUMN_CHECKS[sql_type]  # type: ignore[index]
    samples = CHECK_SAMPLES[sql_type]
    good = [s for s in samples if pattern.fullmatch(s)]
    assert good, "each sample list has good values"
    for sample in samples:
        assert check([sample]) == bool(pattern.fullmatch(sample)), sample
        assert check([*good, None, sample, *good]) == bool(pattern.fullmatch(sample)), sample
    assert check([None, None]) and check([])


def test_protect_decimals_quotes_every_numeric_key_in_one_pass() -> None:
    """Several numeric keys, exponents, negatives and nulls: each number of a listed key becomes
    its exact text, other keys and non-numbers stay as they are."""
    body = (
        b'{"value":[{"revenue":-0.10,"budget":1E+3,"hours":12,"count":5},'
        b'{"revenue":null,"budget":99999999999999999.99,"hours":"n/a"}]}'
    )
    protected, count = protect_decimals(body, ["revenue", "budget", "hours"])
    assert count == 4
    assert orjson.loads(protected)["value"] == [
        {"revenue": "-0.10", "budget": "1E+3", "hours": "12", "count": 5},
        {"revenue": None, "budget": "99999999999999999.99", "hours": "n/a"},
    ]
    assert protect_decimals(body, []) == (body, 0)
