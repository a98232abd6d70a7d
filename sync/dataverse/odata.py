"""The OData side of the Web API, pure: URLs, request headers, page parsing, link rules.

Rules from the reference (section 3.2): a nextLink is followed verbatim (never re-encoded),
the same `odata.maxpagesize` goes with every page, and the delta link arrives on the last page.
Ours on top: a link is only followed while it stays on the environment's own origin (the
token must never travel elsewhere), and a link seen twice is a loop.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

from sync.errors import ForeignLinkError, HostileResponseError

API_PATH = "/api/data/v9.2"
ANNOTATIONS = "OData.Community.Display.V1.FormattedValue,Microsoft.Dynamics.CRM.lookuplogicalname"
DELETED_ENTITY = "/$deletedEntity"


def api_url(environment_url: str, path: str) -> str:
    """`https://org.crm.dynamics.com` + `WhoAmI` → the Web API URL."""
    return f"{environment_url.rstrip('/')}{API_PATH}/{path.lstrip('/')}"


def collection_url(
    environment_url: str,
    entity_set: str,
    columns: Iterable[str] | None = None,
    *,
    filter_: str | None = None,
) -> str:
    """The first page URL of an entity set, with `$select` (and optionally `$filter`)."""
    query: list[str] = []
    if columns:
        query.append("$select=" + ",".join(quote(c, safe="_") for c in columns))
    if filter_:
        query.append("$filter=" + quote(filter_, safe="_'()-:."))
    url = api_url(environment_url, quote(entity_set, safe="_"))
    return f"{url}?{'&'.join(query)}" if query else url


def request_headers(
    *,
    page_size: int | None = None,
    track_changes: bool = False,
    impersonate: str | None = None,
    annotations: bool = True,
) -> dict[str, str]:
    """The OData headers for a GET: JSON, OData 4.0, page size, annotations, tracking."""
    prefer: list[str] = []
    if page_size:
        prefer.append(f"odata.maxpagesize={page_size}")
    if annotations:
        prefer.append(f'odata.include-annotations="{ANNOTATIONS}"')
    if track_changes:
        prefer.append("odata.track-changes")
    headers = {
        "Accept": "application/json",
        "OData-MaxVersion": "4.0",
        "OData-Version": "4.0",
    }
    if prefer:
        headers["Prefer"] = ",".join(prefer)
    if impersonate:
        headers["CallerObjectId"] = impersonate
    return headers


def origin_of(url: str) -> str:
    """scheme://host[:port], lower-cased, default ports dropped."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    port = parts.port
    if port is None or (scheme, port) in (("https", 443), ("http", 80)):
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def same_origin(url: str, origin: str) -> bool:
    try:
        return origin_of(url) == origin_of(origin)
    except ValueError:  # a malformed port
        return False


def check_link(link: str, origin: str, *, table: str | None = None) -> str:
    """Return the link if it stays on `origin`; else raise ForeignLinkError (no token sent)."""
    if not same_origin(link, origin) or urlsplit(link).username is not None:
        raise ForeignLinkError(
            f"refusing to follow a link to {_redacted_origin(link)}: it leaves the environment "
            f"{origin}, and the token must not travel there",
            table=table,
        )
    return link


def _redacted_origin(link: str) -> str:
    try:
        return origin_of(link) or "(no host)"
    except ValueError:
        return "(malformed URL)"


@dataclass
class LinkTracker:
    """Remembers the links a table has followed, to stop a paging loop."""

    origin: str
    table: str | None = None
    seen: set[str] = field(default_factory=set)

    def follow(self, link: str) -> str:
        check_link(link, self.origin, table=self.table)
        if link in self.seen:
            raise HostileResponseError(
                "the server sent the same paging link twice (paging loop); stopping this table",
                table=self.table,
            )
        self.seen.add(link)
        return link


@dataclass(frozen=True)
class Page:
    """One parsed page: rows to upsert, ids deleted, and where to go next."""

    rows: list[dict[str, Any]]
    deleted_ids: list[str]
    next_link: str | None
    delta_link: str | None
    context: str | None = None


def parse_page(document: object, *, table: str | None = None) -> Page:
    """Split a decoded page into rows, tombstones and links; refuse anything malformed."""
    if not isinstance(document, Mapping):
        raise HostileResponseError("the page is not a JSON object", table=table)
    value = document.get("value")
    if not isinstance(value, list):
        raise HostileResponseError("the page has no `value` list", table=table)
    rows: list[dict[str, Any]] = []
    deleted: list[str] = []
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            raise HostileResponseError(f"row {index} of the page is not an object", table=table)
        if _is_tombstone(item):
            identifier = item.get("id")
            if not isinstance(identifier, str) or not identifier:
                raise HostileResponseError(f"deleted-entity entry {index} has no id", table=table)
            deleted.append(identifier)
        else:
            rows.append(item)
    return Page(
        rows=rows,
        deleted_ids=deleted,
        next_link=_link(document, "@odata.nextLink", table),
        delta_link=_link(document, "@odata.deltaLink", table),
        context=document.get("@odata.context")
        if isinstance(document.get("@odata.context"), str)
        else None,
    )


def _is_tombstone(item: Mapping[str, Any]) -> bool:
    context = item.get("@odata.context")
    return isinstance(context, str) and context.endswith(DELETED_ENTITY)


def _link(document: Mapping[str, Any], key: str, table: str | None) -> str | None:
    link = document.get(key)
    if link is None:
        return None
    if not isinstance(link, str) or not link:
        raise HostileResponseError(f"`{key}` is not a URL", table=table)
    return link


def whoami_fields(document: object) -> dict[str, str]:
    """UserId, BusinessUnitId and OrganizationId from a WhoAmI response."""
    if not isinstance(document, Mapping):
        raise HostileResponseError("WhoAmI did not answer with a JSON object")
    out: dict[str, str] = {}
    for key in ("UserId", "BusinessUnitId", "OrganizationId"):
        value = document.get(key)
        if not isinstance(value, str):
            raise HostileResponseError(f"WhoAmI answer lacks {key}")
        out[key] = value
    return out


def header_dict(headers: Mapping[str, str]) -> dict[str, str]:
    """Lower-cased copy of response headers (for logs and tests)."""
    return {k.lower(): v for k, v in headers.items()}
