"""One classification of Dataverse responses (pure): status + headers + error body → `Decision`.

`classify` looks only at values; `to_error` turns a decision into the exception the rest of
dvmirror understands (sync/errors.py). The client calls both, once, at the HTTP boundary.

| Response                                        | Kind           | Raised as                    |
|-------------------------------------------------|----------------|------------------------------|
| 2xx                                             | OK             | (nothing)                    |
| 401                                             | REAUTHENTICATE | ReauthenticateSignal         |
| 429 (any of the three throttling codes)         | THROTTLED      | ThrottledError(retry_after)  |
| code 0x80044352 (any status)                    | DELTA_EXPIRED  | DeltaTokenExpired            |
| 403 0x80072560                                  | NO_APP_USER    | NoApplicationUserError       |
| 403 "act on behalf" (0x8004a110, 0x80040224)    | IMPERSONATION  | ImpersonationError           |
| 403 other (0x80040220 missing privilege, …)     | PRIVILEGE      | TableError (reading a table) |
|                                                 |                | / PrivilegeError (otherwise) |
| 408, 5xx, SQL deadlock/timeout, query throttling| TRANSIENT      | ServerError(retry_after)     |
| 501, other 4xx (bad query, unknown entity set)  | TABLE          | TableError (reading a table) |
|                                                 |                | / UnusableEnvironmentError   |
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sync.dataverse.headers import DEFAULT_RETRY_AFTER, normalize_code, retry_after
from sync.errors import (
    DeltaTokenExpired,
    DvmirrorError,
    ImpersonationError,
    NoApplicationUserError,
    PrivilegeError,
    ReauthenticateSignal,
    ServerError,
    TableError,
    ThrottledError,
    UnusableEnvironmentError,
)

EXPIRED_DELTA = "0x80044352"
NOT_MEMBER = "0x80072560"
MISSING_PRIVILEGE = "0x80040220"
IMPERSONATION_CODES = frozenset({"0x8004a110", "0x80040224", "0x80040225"})
TRANSIENT_CODES = frozenset(
    {
        "0x80044150",  # Generic SQL error (deadlock, Sql Number 1205)
        "0x80044151",  # SQL timeout expired (-2147204783)
        "0x80048544",  # query throttling
    }
)
MESSAGE_LIMIT = 300


class Kind(enum.Enum):
    OK = "ok"
    REAUTHENTICATE = "reauthenticate"
    THROTTLED = "throttled"
    TRANSIENT = "transient"
    DELTA_EXPIRED = "delta_expired"
    NO_APP_USER = "no_app_user"
    IMPERSONATION = "impersonation"
    PRIVILEGE = "privilege"
    TABLE = "table"


@dataclass(frozen=True)
class Decision:
    kind: Kind
    status: int
    code: str | None = None
    message: str = ""
    retry_after: float | None = None


def error_fields(body: object) -> tuple[str | None, str]:
    """The (normalized code, message) of a Web API error body, tolerating any shape."""
    if not isinstance(body, Mapping):
        return None, ""
    error = body.get("error")
    if not isinstance(error, Mapping):
        return None, ""
    message = error.get("message")
    text = message if isinstance(message, str) else ""
    return normalize_code(error.get("code")), text[:MESSAGE_LIMIT]


def classify(status: int, headers: Mapping[str, str], body: object) -> Decision:
    """Decide what a response means. `body` is the parsed JSON (or None)."""
    code, message = error_fields(body)
    if 200 <= status < 300:
        return Decision(Kind.OK, status)
    if code == EXPIRED_DELTA:
        return Decision(Kind.DELTA_EXPIRED, status, code, message)
    kind = _kind_for(status, code, message)
    return Decision(kind, status, code, message, retry_after(headers, status))


def _kind_for(status: int, code: str | None, message: str) -> Kind:
    by_status = {401: Kind.REAUTHENTICATE, 429: Kind.THROTTLED}
    if status in by_status:
        return by_status[status]
    if status == 403:
        if code == NOT_MEMBER:
            return Kind.NO_APP_USER
        if code in IMPERSONATION_CODES or "behalf" in message.lower():
            return Kind.IMPERSONATION
        return Kind.PRIVILEGE
    if code in TRANSIENT_CODES or status in (408, 500, 502, 503, 504):
        return Kind.TRANSIENT
    return Kind.TABLE


def to_error(
    decision: Decision,
    *,
    environment: str,
    tenant: str | None = None,
    table: str | None = None,
) -> DvmirrorError:
    """The exception for a non-OK decision, with a message that says what to do."""
    where = f"{environment}/{table}" if table else environment
    if decision.code:
        detail = f" ({decision.code}: {decision.message})"
    else:
        detail = f" ({decision.message})" if decision.message else ""
    context: dict[str, Any] = {
        "environment": environment,
        "tenant": tenant,
        "table": table,
        "status": decision.status,
        "code": decision.code,
    }
    http = f"{where}: HTTP {decision.status}{detail}"
    kind = decision.kind
    if kind is Kind.THROTTLED:
        retry = decision.retry_after if decision.retry_after is not None else DEFAULT_RETRY_AFTER
        return ThrottledError(
            f"{where}: throttled by service protection{detail}; retry after {retry:g}s",
            retry_after=retry,
            **context,
        )
    if kind is Kind.TRANSIENT:
        return ServerError(http, retry_after=decision.retry_after, **context)
    if kind is Kind.NO_APP_USER:
        return NoApplicationUserError(
            f"{where}: the app has no application user in this environment{detail}",
            fix=NO_APP_USER_FIX,
            **context,
        )
    if kind is Kind.PRIVILEGE and not table:
        return PrivilegeError(f"{where}: access denied{detail}", fix=PRIVILEGE_FIX, **context)
    messages: dict[Kind, tuple[type[DvmirrorError], str]] = {
        Kind.REAUTHENTICATE: (ReauthenticateSignal, f"{where}: Dataverse rejected the token (401)"),
        Kind.DELTA_EXPIRED: (
            DeltaTokenExpired,
            f"{where}: the change-tracking token expired{detail}; resyncing the table",
        ),
        Kind.IMPERSONATION: (
            ImpersonationError,
            f"{where}: the application user may not impersonate the configured user{detail}; "
            "give its security role prvActOnBehalfOfAnotherUser (the Delegate role) or remove "
            "`impersonate` for this table",
        ),
        Kind.PRIVILEGE: (
            TableError,
            f"{where}: the application user may not read this table{detail}; add the missing "
            "privilege (Organization-level Read) to its security role",
        ),
    }
    error_class, message = messages.get(
        kind, (TableError if table else UnusableEnvironmentError, http)
    )
    return error_class(message, **context)


NO_APP_USER_FIX = (
    "Create an application user: Power Platform admin center → Environments → <environment> → "
    "Settings → Users + permissions → Application users → New app user; pick this app "
    "(its Application (client) ID) and a business unit, then assign a security role that reads the "
    "mirrored tables at Organization level."
)
PRIVILEGE_FIX = (
    "Give the application user's security role the missing privilege (see the message; "
    "Organization-level Read for mirrored tables) in the Power Platform admin center → "
    "Environments → <environment> → Settings → Security roles."
)
