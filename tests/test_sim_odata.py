"""Pure OData pieces of the simulator: $filter, query options, Prefer, skiptoken and deltatoken."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, unquote

import pytest

from sync.simulator.filters import Call, Compare, Logical, Not, evaluate, parse_filter
from sync.simulator.odata import (
    PagingCookie,
    decode_deltatoken,
    decode_skiptoken,
    encode_deltatoken,
    encode_skiptoken,
    parse_orderby,
    parse_preferences,
    parse_query,
    parse_select,
)
from sync.simulator.protocol import ApiError

RECORD: dict[str, Any] = {
    "name": "Contoso O'Brien Ltd",
    "revenue": 1500.5,
    "numberofemployees": 42,
    "donotemail": False,
    "modifiedon": int(datetime(2024, 3, 1, 12, 0, tzinfo=UTC).timestamp()),
    "birthdate": int(datetime(1990, 5, 17, tzinfo=UTC).timestamp()),
    "_parentaccountid_value": "0000002a-1111-4aaa-8bbb-cccccccccccc",
    "description": None,
}


def matches(text: str, record: dict[str, Any] = RECORD) -> bool:
    return evaluate(parse_filter(text), record.get)


class TestFilterParsing:
    def test_and_binds_tighter_than_or(self) -> None:
        """`a or b and c` parses as `a or (b and c)`, as OData specifies."""
        node = parse_filter("a eq 1 or b eq 2 and c eq 3")
        assert isinstance(node, Logical)
        assert node.op == "or"
        assert isinstance(node.right, Logical)
        assert node.right.op == "and"

    def test_not_parentheses_and_functions_build_the_expected_tree(self) -> None:
        """`not (…)` and string functions become Not/Call nodes with typed literals."""
        node = parse_filter("not (contains(name,'x') and revenue ge 10.5)")
        assert isinstance(node, Not)
        assert isinstance(node.operand, Logical)
        left = node.operand.left
        right = node.operand.right
        assert isinstance(left, Call)
        assert left.func == "contains"
        assert isinstance(right, Compare)
        assert right.literal.kind == "number"

    def test_enum_literal_keeps_only_the_member_name(self) -> None:
        """`Microsoft.Dynamics.CRM.OwnershipTypes'UserOwned'` compares as the string 'UserOwned'."""
        node = parse_filter("OwnershipType eq Microsoft.Dynamics.CRM.OwnershipTypes'UserOwned'")
        assert isinstance(node, Compare)
        assert (node.literal.kind, node.literal.value) == ("enum", "UserOwned")

    @pytest.mark.parametrize(
        "text",
        [
            "name eq",
            "name eqq 'x'",
            "(name eq 'x'",
            "name eq 'x')",
            "contains(name)",
            "eq 'x'",
            "name eq 'unterminated",
            "modifiedon gt 2024-13-45T00:00:00Z",
            "",
        ],
    )
    def test_malformed_filters_are_400_with_code_0x0(self, text: str) -> None:
        """Syntax errors answer 400 with the OData parser's code 0x0."""
        with pytest.raises(ApiError) as caught:
            parse_filter(text)
        assert (caught.value.status, caught.value.code) == (400, "0x0")


class TestFilterEvaluation:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("name eq 'contoso o''brien ltd'", True),  # case-insensitive, '' escape
            ("name ne 'Contoso O''Brien Ltd'", False),
            ("numberofemployees gt 41 and numberofemployees le 42", True),
            ("numberofemployees lt 42 or revenue ge 1500.5", True),
            ("not (numberofemployees eq 42)", False),
            ("not numberofemployees eq 1 and donotemail eq false", True),
            ("revenue gt 1500.49 and revenue lt 1500.51", True),
            ("modifiedon gt 2024-03-01T11:59:59Z", True),
            ("modifiedon ge 2024-03-01T13:00:00+01:00", True),
            ("modifiedon gt 2024-03-01T12:00:00Z", False),
            ("birthdate eq 1990-05-17", True),
            ("_parentaccountid_value eq 0000002A-1111-4AAA-8BBB-CCCCCCCCCCCC", True),
            ("startswith(name,'CONTOSO') and endswith(name,'ltd')", True),
            ("contains(name,'brien')", True),
            ("contains(name,'fabrikam')", False),
            ("description eq null", True),
            ("description ne null", False),
            ("contains(description,'x')", False),
            ("description gt 'a'", False),
            ("(numberofemployees eq 1 or numberofemployees eq 42) and name ne null", True),
        ],
    )
    def test_expressions_evaluate_like_dataverse(self, text: str, expected: bool) -> None:
        """Comparisons, logic, dates, GUIDs, functions and nulls evaluate as documented."""
        assert expected == matches(text)


class TestQueryOptions:
    @pytest.mark.parametrize("option", ["$skip", "$search", "$format", "$foo", "$SELECT"])
    def test_unsupported_system_options_are_400(self, option: str) -> None:
        """$skip, $search, $format and unknown or wrongly cased system options are rejected."""
        with pytest.raises(ApiError) as caught:
            parse_query(f"{option}=1")
        assert caught.value.status == 400

    def test_repeated_option_is_400(self) -> None:
        """A system query option may be given at most once."""
        with pytest.raises(ApiError):
            parse_query("$select=name&$select=name")

    def test_values_are_decoded_once_and_raw_values_kept_for_links(self) -> None:
        """Decoded values feed parsing; raw values are reused verbatim in next links."""
        query = parse_query("$select=name%2Crevenue&$filter=name%20eq%20'a%2Bb'&custom=1")
        assert query.get("$select") == "name,revenue"
        assert query.get("$filter") == "name eq 'a+b'"
        assert parse_select(query) == ("name", "revenue")
        assert (
            query.link_query(drop={"custom"})
            == "$select=name%2Crevenue&$filter=name%20eq%20'a%2Bb'"
        )

    def test_orderby_parses_directions(self) -> None:
        """$orderby yields (property, descending) pairs and rejects other direction words."""
        assert parse_orderby(parse_query("$orderby=name,createdon%20desc")) == (
            ("name", False),
            ("createdon", True),
        )
        with pytest.raises(ApiError):
            parse_orderby(parse_query("$orderby=name%20down"))


class TestPreferences:
    def test_one_header_and_joined_headers_read_the_same(self) -> None:
        """Preferences in one comma-separated header or several joined headers are equivalent."""
        one = parse_preferences('odata.maxpagesize=500,odata.include-annotations="*"')
        joined = parse_preferences('odata.include-annotations="*", odata.maxpagesize=500')
        assert one == joined
        assert one.maxpagesize == 500

    def test_quoted_annotation_list_keeps_its_commas(self) -> None:
        """A comma inside the quoted include-annotations value does not split preferences."""
        prefs = parse_preferences(
            'odata.include-annotations="OData.Community.Display.V1.FormattedValue,'
            'Microsoft.Dynamics.CRM.lookuplogicalname", odata.track-changes'
        )
        assert prefs.track_changes
        assert prefs.wants("OData.Community.Display.V1.FormattedValue")
        assert prefs.wants("Microsoft.Dynamics.CRM.lookuplogicalname")
        assert not prefs.wants("Microsoft.Dynamics.CRM.associatednavigationproperty")

    def test_wildcards_select_annotations(self) -> None:
        """`*` asks for every annotation, `Namespace.*` for that namespace."""
        assert parse_preferences('odata.include-annotations="*"').wants("anything.at.all")
        prefs = parse_preferences('odata.include-annotations="Microsoft.Dynamics.CRM.*"')
        assert prefs.wants("Microsoft.Dynamics.CRM.lookuplogicalname")
        assert not prefs.wants("OData.Community.Display.V1.FormattedValue")

    @pytest.mark.parametrize("value", ["6000", "0", "-1", "abc"])
    def test_page_size_outside_1_to_5000_is_ignored(self, value: str) -> None:
        """maxpagesize above 5,000 (2024 doc) or invalid is ignored: pages of 5,000."""
        prefs = parse_preferences(f"odata.maxpagesize={value}")
        assert prefs.maxpagesize is None
        assert prefs.page_size() == 5000


class TestSkiptoken:
    COOKIE = PagingCookie(
        3,
        True,
        {"version": "100042", "time": "1700000000"},
        {
            "name": {"last": 'A "quoted" <name>'},
            "accountid": {"last": "{0000002A-56A4-4E50-AA15-72E118DE865F}", "first": "{0}"},
        },
    )

    def test_round_trip(self) -> None:
        """An encoded skiptoken decodes back to the same cookie."""
        assert decode_skiptoken(encode_skiptoken(self.COOKIE)) == self.COOKIE

    def test_shape_matches_the_documented_link(self) -> None:
        """The link form is the documented cookie, URL-encoded exactly once around an encoded inner cookie."""
        token = encode_skiptoken(
            PagingCookie(2, False, {}, {"contactid": {"last": "{A}", "first": "{B}"}})
        )
        assert token == (
            "%3Ccookie%20pagenumber=%222%22%20pagingcookie=%22%253ccookie%2520page%253d%25221%2522%253e"
            "%253ccontactid%2520last%253d%2522%257bA%257d%2522%2520first%253d%2522%257bB%257d%2522"
            "%2520%252f%253e%253c%252fcookie%253e%22%20istracking=%22False%22%20/%3E"
        )
        assert unquote(token).startswith('<cookie pagenumber="2" pagingcookie="%3ccookie%20page')

    def test_re_encoded_token_is_rejected(self) -> None:
        """Encoding the link's skiptoken a second time is a 400, as the docs warn."""
        with pytest.raises(ApiError) as caught:
            decode_skiptoken(quote(encode_skiptoken(self.COOKIE), safe=""))
        assert caught.value.status == 400

    @pytest.mark.parametrize(
        "mangle",
        [
            lambda t: t.replace("pagenumber=%223%22", "pagenumber=%224%22"),  # page mismatch
            lambda t: t.replace("istracking=%22True%22", "istracking=%22Maybe%22"),
            lambda t: t.replace("%253c%252fcookie%253e", ""),  # inner cookie cut short
            lambda t: unquote(unquote(t)),  # decoded too often by the client
            lambda t: t[:-6],
            lambda t: "garbage",
        ],
    )
    def test_tampered_tokens_are_rejected(self, mangle: Any) -> None:
        """Any token the server could not have issued is a 400, never a wrong page."""
        with pytest.raises(ApiError) as caught:
            decode_skiptoken(mangle(encode_skiptoken(self.COOKIE)))
        assert caught.value.status == 400


class TestDeltatoken:
    def test_matches_the_documented_example(self) -> None:
        """`919042!08/22/2017 08:10:44` encodes exactly as in Microsoft's sample deltaLink."""
        instant = int(datetime(2017, 8, 22, 8, 10, 44, tzinfo=UTC).timestamp())
        assert encode_deltatoken(919042, instant) == "919042%2108%2f22%2f2017%2008%3a10%3a44"
        assert (919042, instant) == decode_deltatoken("919042%2108%2f22%2f2017%2008%3a10%3a44")

    @pytest.mark.parametrize(
        "raw", ["", "abc", "12!", "12!13/45/2020%2000:00:00", "!01/01/2020 00:00:00"]
    )
    def test_garbage_is_400(self, raw: str) -> None:
        """A delta token that does not parse is a 400."""
        with pytest.raises(ApiError) as caught:
            decode_deltatoken(raw)
        assert caught.value.status == 400
