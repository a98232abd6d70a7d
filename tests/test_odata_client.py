"""The pure OData rules: URLs, headers, page parsing, tombstones, origin checks, loops."""

from __future__ import annotations

from typing import Any

import pytest

from sync.dataverse.odata import (
    LinkTracker,
    api_url,
    check_link,
    collection_url,
    origin_of,
    parse_page,
    request_headers,
    same_origin,
    whoami_fields,
)
from sync.errors import ForeignLinkError, HostileResponseError

ORG = "https://contoso.crm.dynamics.com"


def test_collection_url_has_select_and_no_double_encoding() -> None:
    """The first page URL carries $select; names are not percent-encoded twice."""
    assert f"{ORG}/api/data/v9.2/accounts?$select=name,accountid" == collection_url(
        ORG + "/", "accounts", ["name", "accountid"]
    )
    assert f"{ORG}/api/data/v9.2/accounts" == collection_url(ORG, "accounts")
    assert f"{ORG}/api/data/v9.2/WhoAmI" == api_url(ORG, "WhoAmI")


@pytest.mark.parametrize(
    ("kwargs", "prefer", "caller"),
    [
        (
            {},
            'odata.include-annotations="OData.Community.Display.V1.FormattedValue,'
            'Microsoft.Dynamics.CRM.lookuplogicalname"',
            None,
        ),
        (
            {"page_size": 500, "track_changes": True, "annotations": False},
            "odata.maxpagesize=500,odata.track-changes",
            None,
        ),
        (
            {"impersonate": "aaaaaaaa-1111-2222-3333-444444444444", "annotations": False},
            None,
            "aaaaaaaa-1111-2222-3333-444444444444",
        ),
    ],
)
def test_request_headers(kwargs: dict[str, Any], prefer: str | None, caller: str | None) -> None:
    """Every GET sends the OData headers; Prefer and CallerObjectId only when asked."""
    headers = request_headers(**kwargs)
    assert headers["Accept"] == "application/json"
    assert "4.0" == headers["OData-MaxVersion"] == headers["OData-Version"]
    assert prefer == headers.get("Prefer")
    assert caller == headers.get("CallerObjectId")


def test_parse_page_splits_rows_tombstones_and_links() -> None:
    """Rows, deleted-entity ids, nextLink and deltaLink come out of one page."""
    document = {
        "@odata.context": f"{ORG}/api/data/v9.2/$metadata#accounts(name)/$delta",
        "@odata.deltaLink": f"{ORG}/api/data/v9.2/accounts?$deltatoken=1%2101",
        "value": [
            {"accountid": "a1", "name": "x"},
            {
                "@odata.context": f"{ORG}/api/data/v9.2/$metadata#accounts/$deletedEntity",
                "id": "d1",
                "reason": "deleted",
            },
        ],
    }
    page = parse_page(document)
    assert page.rows == [{"accountid": "a1", "name": "x"}]
    assert page.deleted_ids == ["d1"]
    assert page.next_link is None
    assert document["@odata.deltaLink"] == page.delta_link


@pytest.mark.parametrize(
    "document",
    [
        [],
        "text",
        {"values": []},
        {"value": {"a": 1}},
        {"value": [1]},
        {"value": [], "@odata.nextLink": 5},
        {"value": [{"@odata.context": "x#accounts/$deletedEntity", "reason": "deleted"}]},
    ],
)
def test_malformed_pages_are_hostile(document: object) -> None:
    """Anything that is not an object with a `value` list of objects is refused."""
    with pytest.raises(HostileResponseError):
        parse_page(document, table="account")


@pytest.mark.parametrize(
    ("url", "same"),
    [
        (f"{ORG}/api/data/v9.2/accounts?$skiptoken=x", True),
        ("https://CONTOSO.crm.dynamics.com:443/api", True),
        ("https://contoso.crm.dynamics.com.evil.example/api", False),
        ("http://contoso.crm.dynamics.com/api", False),
        ("https://contoso.crm.dynamics.com:8443/api", False),
        ("https://evil.example/?u=https://contoso.crm.dynamics.com", False),
        ("/relative/path", False),
    ],
)
def test_origin_check(url: str, same: bool) -> None:
    """Only links on exactly the environment's scheme, host and port count as home."""
    assert same == same_origin(url, ORG)


def test_foreign_link_and_userinfo_are_refused() -> None:
    """A link to another origin, or with credentials in it, raises ForeignLinkError."""
    with pytest.raises(ForeignLinkError):
        check_link("https://evil.example/api", ORG, table="account")
    with pytest.raises(ForeignLinkError):
        check_link("https://user@contoso.crm.dynamics.com/api", ORG)
    assert origin_of("https://127.0.0.1:8443/x") == "https://127.0.0.1:8443"


def test_link_tracker_detects_a_loop() -> None:
    """The same paging link twice is a loop: the table stops with a hostile-response error."""
    tracker = LinkTracker(ORG, "account")
    tracker.follow(f"{ORG}/api/data/v9.2/accounts?$skiptoken=1")
    tracker.follow(f"{ORG}/api/data/v9.2/accounts?$skiptoken=2")
    with pytest.raises(HostileResponseError, match="loop"):
        tracker.follow(f"{ORG}/api/data/v9.2/accounts?$skiptoken=1")


def test_whoami_fields() -> None:
    """WhoAmI yields the three ids, and refuses an answer without them."""
    ids = {"UserId": "u", "BusinessUnitId": "b", "OrganizationId": "o"}
    assert ids == whoami_fields({"@odata.context": "x", **ids})
    with pytest.raises(HostileResponseError):
        whoami_fields({"UserId": "u"})
