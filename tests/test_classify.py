"""One classification of Dataverse responses, and its translation into the exception tree."""

from __future__ import annotations

from typing import Any

import pytest

from sync.dataverse.classify import Kind, classify, error_fields, to_error
from sync.errors import (
    DeltaTokenExpired,
    ImpersonationError,
    NoApplicationUserError,
    PrivilegeError,
    ReauthenticateSignal,
    ServerError,
    TableError,
    ThrottledError,
    UnusableEnvironmentError,
)


def body(code: str, message: str = "m") -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


@pytest.mark.parametrize(
    ("status", "headers", "document", "kind", "retry_after"),
    [
        (200, {}, {"value": []}, Kind.OK, None),
        (401, {}, None, Kind.REAUTHENTICATE, None),
        (429, {"Retry-After": "7"}, body("0x80072322"), Kind.THROTTLED, 7.0),
        (429, {}, body("-2147015903"), Kind.THROTTLED, 5.0),
        (
            400,
            {},
            body("0x80044352", "Version stamp associated with the client has expired."),
            Kind.DELTA_EXPIRED,
            None,
        ),
        (500, {}, body("-2147204270"), Kind.DELTA_EXPIRED, None),  # decimal form of 0x80044352
        (
            403,
            {},
            body("0x80072560", "The user is not a member of the organization."),
            Kind.NO_APP_USER,
            None,
        ),
        (
            403,
            {},
            body("0x8004A110", "User does not have the privilege to act on behalf another user."),
            Kind.IMPERSONATION,
            None,
        ),
        (
            403,
            {},
            body("0x80040220", "Principal user is missing prvReadAccount privilege"),
            Kind.PRIVILEGE,
            None,
        ),
        (503, {"Retry-After": "3"}, None, Kind.TRANSIENT, 3.0),
        (502, {}, "<html>bad gateway</html>", Kind.TRANSIENT, None),
        (504, {}, None, Kind.TRANSIENT, None),
        (500, {}, body("0x80044150", "Generic SQL error. Sql Number: 1205"), Kind.TRANSIENT, None),
        (400, {}, body("0x80048544"), Kind.TRANSIENT, None),  # query throttling
        # SQL timeout and query throttling exactly as the simulator sends them (reference 8, 6.5)
        (
            500,
            {},
            body(
                "0x80044151",
                "SQL timeout expired. CRM ErrorCode: -2147204783 Sql ErrorCode: -2146232060 "
                "Sql Number: -2",
            ),
            Kind.TRANSIENT,
            None,
        ),
        (
            400,
            {},
            body(
                "0x80048544",
                "This query cannot be executed because it conflicts with query throttling.",
            ),
            Kind.TRANSIENT,
            None,
        ),
        (500, {}, body("-2147204783"), Kind.TRANSIENT, None),  # the signed decimal spelling
        (
            404,
            {},
            body("0x8006088a", "Resource not found for the segment 'acounts'."),
            Kind.TABLE,
            None,
        ),
        (400, {}, body("0x0", "Could not find a property named 'nme'"), Kind.TABLE, None),
        (
            400,
            {},
            body("0x80072491", "Entity x isn't enabled for change tracking."),
            Kind.TABLE,
            None,
        ),
        (501, {}, None, Kind.TABLE, None),
    ],
)
def test_classification_table(
    status: int, headers: dict[str, str], document: object, kind: Kind, retry_after: float | None
) -> None:
    """Each documented response maps to one decision kind (and Retry-After where it matters)."""
    decision = classify(status, headers, document)
    assert kind is decision.kind
    assert retry_after == decision.retry_after


@pytest.mark.parametrize("document", [None, [], "x", {"error": "x"}, {"error": {"code": 5}}])
def test_error_fields_tolerate_any_shape(document: object) -> None:
    """Malformed error bodies never raise; they yield what can be read."""
    code, message = error_fields(document)
    assert message == ""
    assert code in (None, "0x00000005")


@pytest.mark.parametrize(
    ("status", "document", "table", "error_class"),
    [
        (401, None, None, ReauthenticateSignal),
        (429, body("0x80072322"), "account", ThrottledError),
        (503, None, "account", ServerError),
        (400, body("0x80044352"), "account", DeltaTokenExpired),
        (403, body("0x80072560"), None, NoApplicationUserError),
        (403, body("0x80072560"), "account", NoApplicationUserError),
        (403, body("0x8004a110"), "account", ImpersonationError),
        (403, body("0x80040220"), "account", TableError),
        (403, body("0x80040220"), None, PrivilegeError),
        (404, body("0x8006088a"), "account", TableError),
        (404, body("0x8006088a"), None, UnusableEnvironmentError),
    ],
)
def test_translation_into_the_exception_tree(
    status: int, document: object, table: str | None, error_class: type[Exception]
) -> None:
    """Decisions become the exception the rest of dvmirror acts on, with context attached."""
    error = to_error(classify(status, {}, document), environment="prod", tenant="t", table=table)
    assert type(error) is error_class
    assert error.environment == "prod"
    assert table == error.table
    assert status == error.status


def test_throttled_error_carries_retry_after_and_no_app_user_carries_a_fix() -> None:
    """ThrottledError has retry_after; NoApplicationUserError says how to create the user."""
    throttled = to_error(classify(429, {"Retry-After": "12"}, body("0x80072322")), environment="e")
    assert isinstance(throttled, ThrottledError)
    assert throttled.retry_after == 12.0
    missing = to_error(classify(403, {}, body("0x80072560")), environment="e")
    assert isinstance(missing, NoApplicationUserError)
    assert missing.fix is not None
    assert "Application users" in missing.fix
