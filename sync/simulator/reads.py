"""Entity-set reads: collections with paging, ``$count``, single rows, change tracking and deltas.

Paging is stateless: each ``@odata.nextLink`` carries, in its paging cookie, the last key (and
ordering values), plus for change tracking the environment version the read started at. A
page therefore costs O(page) whatever the table size, and a link survives a client restart.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import islice
from typing import Any

import orjson

from sync.simulator.dataset import Table, VersionCounter
from sync.simulator.filters import Node
from sync.simulator.guids import sqlserver_guid_key
from sync.simulator.keyorder import key_ordered_rows
from sync.simulator.odata import (
    MAX_PAGE_SIZE,
    PagingCookie,
    Preferences,
    Query,
    cookie_int,
    decode_deltatoken,
    decode_skiptoken,
    encode_deltatoken,
    encode_skiptoken,
    invalid_skiptoken,
    parse_count,
    parse_filter_option,
    parse_orderby,
    parse_select,
    parse_top,
)
from sync.simulator.protocol import ApiError, ApiResponse, bad_request, base_headers, text_response
from sync.simulator.render import (
    apply_hostility,
    malformed,
    render_row,
    resolve_columns,
    row_renderer,
)
from sync.simulator.selection import (
    check_filter,
    check_orderby,
    cursor_elements,
    cursor_values,
    default_ordered_rows,
    matching_rows,
    ordering,
    sort_rows,
)
from sync.simulator.values import Row

COUNT_LIMIT = 5000
TOTAL_COUNT = "Microsoft.Dynamics.CRM.totalrecordcount"
LIMIT_EXCEEDED = "Microsoft.Dynamics.CRM.totalrecordcountlimitexceeded"
TRACKING_FORBIDDEN = ("$filter", "$orderby", "$expand", "$top")


def expired_token() -> ApiError:
    """0x80044352: the delta token is older than retention or was invalidated."""
    return bad_request(
        "Version stamp associated with the client has expired. Please perform a full sync.",
        "0x80044352",
    )


@dataclass(frozen=True)
class ReadContext:
    """Everything one read needs besides the query: table, clock reading, environment state."""

    table: Table
    counter: VersionCounter
    base_url: str
    now: int
    initial_version: int  # first version of this simulator run
    started_at: int  # when this simulator run started (tokens from before are expired)
    retention_seconds: float
    top_policy: str  # "top_wins" (2021 doc) or "top_ignored" (2024 doc)

    @property
    def entity_set(self) -> str:
        """The table's entity-set name."""
        return self.table.template.entity_set

    def link(self, query_text: str) -> str:
        """An absolute link on this environment's base URL."""
        return f"{self.base_url}/{self.entity_set}" + (f"?{query_text}" if query_text else "")

    def context(self, select: tuple[str, ...] | None, suffix: str = "") -> str:
        """``<base>/$metadata#<set>(<cols>)`` plus an optional suffix such as ``/$delta``."""
        columns = f"({','.join(select)})" if select else ""
        return f"{self.base_url}/$metadata#{self.entity_set}{columns}{suffix}"


def _applied(prefs: Preferences, page_size_applied: bool) -> list[str]:
    applied = []
    if page_size_applied and prefs.maxpagesize:
        applied.append(f"odata.maxpagesize={prefs.maxpagesize}")
    if prefs.annotations:
        applied.append(f'odata.include-annotations="{prefs.annotations}"')
    if prefs.track_changes:
        applied.append("odata.track-changes")
    return applied


def _respond(
    ctx: ReadContext, payload: dict[str, Any], applied: list[str], rows: int, columns: int
) -> ApiResponse:
    """The 200 reply of a read that served `rows` rows of `columns` columns each."""
    headers = base_headers()
    if applied:
        headers["Preference-Applied"] = ", ".join(applied)
    body = orjson.dumps(payload)
    if ctx.table.hostile == "malformed_json":
        body = malformed(body)
    total = len(ctx.table.row_attributes())
    return ApiResponse(200, headers, body, rows, min(columns, total), total)


def _check_tracking(table: Table, query: Query) -> None:
    if not table.spec.change_tracking and table.spec.intersect:  # reference 4.4
        raise bad_request(
            f"Change tracking is not enabled for the related entities of {table.name}.",
            "0x80072492",
        )
    if not table.spec.change_tracking:
        raise bad_request(f"Entity {table.name} isn't enabled for change tracking.", "0x80072491")
    for option in TRACKING_FORBIDDEN:
        if query.has(option):
            raise bad_request(
                f'The "{option}" query parameter isn\'t supported when Change Tracking is enabled.'
            )


def _check_delta_token(ctx: ReadContext, raw_token: str) -> tuple[int, int]:
    """(version, issued) of a usable token; expired (0x80044352) or invalid tokens are 400."""
    version, issued = decode_deltatoken(raw_token)
    if issued < ctx.started_at or ctx.now - issued > ctx.retention_seconds:
        raise expired_token()  # before this run (changes unknown) or past retention
    if version > ctx.counter.value or issued > ctx.now + 60:
        raise bad_request("The $deltatoken value is not valid.", "0x80040203")
    if version < ctx.table.expired_below or version < ctx.initial_version:
        raise expired_token()
    return version, issued


def _key_element(ctx: ReadContext, first: Row, last: Row) -> dict[str, dict[str, str]]:
    return {
        ctx.table.template.primary_id: {
            "last": "{" + last.key.upper() + "}",
            "first": "{" + first.key.upper() + "}",
        }
    }


def _cookie_index(ctx: ReadContext, cookie: PagingCookie) -> int:
    element = cookie.elements.get(ctx.table.template.primary_id, {})
    index = ctx.table.index_of(element.get("last", ""))
    if index is None:
        raise invalid_skiptoken("unknown last key")
    return index


def _tracking_position(ctx: ReadContext, cookie: PagingCookie | None) -> dict[str, str]:
    """The version and start time an initial change-tracking read stands on (its first page's,
    carried in the paging cookie), checked like a delta token."""
    version = cookie_int(cookie, "version") if cookie else ctx.counter.value
    started = cookie_int(cookie, "time") if cookie else ctx.now
    if version > ctx.counter.value or started > ctx.now + 60:
        raise invalid_skiptoken("tracking position from the future")
    if cookie is not None and version < ctx.table.expired_below:
        # The pages stand on the same tracking position as the delta token the read ends
        # with: expiring the table's tokens expires a read under way as well.
        raise expired_token()
    return {"version": str(version), "time": str(started)}


def read_collection(ctx: ReadContext, query: Query, prefs: Preferences) -> ApiResponse:
    """GET ``<set>``: a page of rows, a delta page, or the initial change-tracking read."""
    table = ctx.table
    select = parse_select(query)
    columns = resolve_columns(table, select)
    raw_skip = query.raw_value("$skiptoken")
    cookie = decode_skiptoken(raw_skip) if raw_skip is not None else None
    raw_delta = query.raw_value("$deltatoken")
    tracking = prefs.track_changes or raw_delta is not None or bool(cookie and cookie.tracking)
    if tracking:
        _check_tracking(table, query)
    elif query.has("$expand"):
        raise bad_request("The simulator does not support $expand on entity sets.")
    if raw_delta is not None:
        return _read_delta(
            ctx, query=query, prefs=prefs, select=select, cookie=cookie, raw_token=raw_delta
        )

    node = parse_filter_option(query)
    if node is not None:
        check_filter(table, node)
    orderby = parse_orderby(query)
    check_orderby(table, orderby)
    top = parse_top(query)
    page_size, limit, size_applied = _page_policy(prefs, top, ctx.top_policy)
    page_number = cookie.page_number if cookie else 1
    served = (page_number - 1) * page_size
    take = page_size if limit is None else max(0, min(page_size, limit - served))
    more_allowed = limit is None or served + take < limit

    attrs = _tracking_position(ctx, cookie) if tracking else {}
    rows, elements = _select_page(ctx, node, orderby, cookie, take + 1)
    more = more_allowed and len(rows) > take
    rows = rows[:take]

    payload: dict[str, Any] = {"@odata.context": ctx.context(select)}
    if parse_count(query) or prefs.wants(TOTAL_COUNT) or prefs.wants(LIMIT_EXCEEDED):
        _add_counts(payload, table, node, parse_count(query), prefs)
    if tracking and not more:
        kept = query.link_query(keep={"$select"})
        token = encode_deltatoken(int(attrs["version"]), int(attrs["time"]))
        payload["@odata.deltaLink"] = ctx.link(
            (f"{kept}&" if kept else "") + f"$deltatoken={token}"
        )
    render = row_renderer(table, columns, prefs)
    rendered = [render(row) for row in rows]
    apply_hostility(table, rendered)
    payload["value"] = rendered
    if more:
        next_cookie = PagingCookie(page_number + 1, tracking, attrs, elements)
        rest = query.link_query(drop={"$skiptoken"})
        payload["@odata.nextLink"] = ctx.link(
            (f"{rest}&" if rest else "") + f"$skiptoken={encode_skiptoken(next_cookie)}"
        )
    return _respond(ctx, payload, _applied(prefs, size_applied), len(rendered), len(columns))


def _select_page(
    ctx: ReadContext,
    node: Node | None,
    orderby: tuple[tuple[str, bool], ...],
    cookie: PagingCookie | None,
    limit: int,
) -> tuple[list[Row], dict[str, dict[str, str]]]:
    """Up to `limit` rows after the cookie's position, and the cookie elements ending the page.

    The default order (no ``$orderby``) is primary-key order, as ``$orderby=<pk>``: SQL
    Server's GUID order (keyorder.py), resuming past the cookie's last key. ``$orderby=<pk>
    [desc]`` streams that order from the last key: O(page). Any other order sorts the matching
    rows, then resumes after the (ordering values, key) the previous page ended at.
    """
    table = ctx.table
    pk = table.template.primary_id
    if not orderby or (len(orderby) == 1 and orderby[0][0] == pk):
        last = table.key(_cookie_index(ctx, cookie)) if cookie else None
        if not orderby:
            found = default_ordered_rows(table, node, after=last, wanted=limit)
        else:
            found = key_ordered_rows(table, node, descending=orderby[0][1], after=last)
        rows = list(islice(found, limit))
        end = rows[min(len(rows), limit - 1) - 1] if rows else None
        return rows, _key_element(ctx, rows[0], end) if rows and end else {}
    order = ordering(table, orderby)
    ordered = sort_rows(list(matching_rows(table, node)), order)
    if cookie:
        last_key = table.key(_cookie_index(ctx, cookie))
        position = (cursor_values(table, orderby, cookie), sqlserver_guid_key(last_key))
        ordered = [item for item in ordered if order.compare(item[0], position) > 0]
    ordered = ordered[:limit]
    rows = [row for _, row in ordered]
    if not ordered:
        return rows, {}
    end_item = ordered[min(len(ordered), limit - 1) - 1]
    elements = cursor_elements(orderby, end_item[0][0])
    elements.update(_key_element(ctx, rows[0], end_item[1]))
    return rows, elements


def _page_policy(prefs: Preferences, top: int | None, policy: str) -> tuple[int, int | None, bool]:
    """(page size, row limit, whether maxpagesize was applied) for the documented $top conflict."""
    if top is not None and policy == "top_wins":
        return MAX_PAGE_SIZE, top, False  # 2021 doc: $top prevents odata.maxpagesize
    if top is not None and prefs.maxpagesize is not None:
        return prefs.maxpagesize, None, True  # 2024 doc: $top is ignored
    return prefs.page_size(), top, True


def _add_counts(
    payload: dict[str, Any], table: Table, node: Any, counted: bool, prefs: Preferences
) -> None:
    total = -1
    if counted:
        if node is None:
            total = table.live_count()
        else:
            total = sum(1 for _ in islice(matching_rows(table, node), COUNT_LIMIT + 1))
        payload["@odata.count"] = min(total, COUNT_LIMIT)
    if prefs.wants(TOTAL_COUNT):
        payload[f"@{TOTAL_COUNT}"] = min(total, COUNT_LIMIT)
    if prefs.wants(LIMIT_EXCEEDED):
        payload[f"@{LIMIT_EXCEEDED}"] = total > COUNT_LIMIT


def _read_delta(
    ctx: ReadContext,
    *,
    query: Query,
    prefs: Preferences,
    select: tuple[str, ...] | None,
    cookie: PagingCookie | None,
    raw_token: str,
) -> ApiResponse:
    """Changes since the token: upserts (by version) then tombstones, paged by maxpagesize."""
    table = ctx.table
    since, _ = _check_delta_token(ctx, raw_token)
    items = _delta_items(ctx, since, cookie)
    until, stamp = (
        (cookie_int(cookie, "to"), cookie_int(cookie, "time"))
        if cookie
        else (ctx.counter.value, ctx.now)
    )
    page_size = prefs.page_size()
    more = len(items) > page_size
    page = items[:page_size]
    columns = resolve_columns(table, select)
    deleted_context = f"{ctx.base_url}/$metadata#{ctx.entity_set}/$deletedEntity"
    render = row_renderer(table, columns, prefs)
    upserts: list[dict[str, Any]] = []
    value: list[dict[str, Any]] = []
    for phase, _, index in page:
        row = table.row(index) if phase == 0 else None
        if row is not None:
            upserts.append(render(row))
            value.append(upserts[-1])
        else:
            value.append(
                {"@odata.context": deleted_context, "id": table.key(index), "reason": "deleted"}
            )
    apply_hostility(table, upserts)
    payload: dict[str, Any] = {"@odata.context": ctx.context(select, "/$delta")}
    if not more:
        kept = query.link_query(keep={"$select"})
        token = encode_deltatoken(until, stamp)
        payload["@odata.deltaLink"] = ctx.link(
            (f"{kept}&" if kept else "") + f"$deltatoken={token}"
        )
    payload["value"] = value
    if more:
        phase, version, index = page[-1]
        next_cookie = PagingCookie(
            (cookie.page_number if cookie else 1) + 1,
            True,
            {"to": str(until), "time": str(stamp), "phase": str(phase)},
            {
                "versionnumber": {"last": str(version)},
                table.template.primary_id: {"last": "{" + table.key(index).upper() + "}"},
            },
        )
        rest = query.link_query(drop={"$skiptoken"})
        payload["@odata.nextLink"] = ctx.link(f"{rest}&$skiptoken={encode_skiptoken(next_cookie)}")
    return _respond(ctx, payload, _applied(prefs, True), len(value), len(columns))


def _delta_items(
    ctx: ReadContext, since: int, cookie: PagingCookie | None
) -> list[tuple[int, int, int]]:
    """(phase, version, index) of every change in (since, until], past the cookie's position."""
    until = cookie_int(cookie, "to") if cookie else ctx.counter.value
    if until > ctx.counter.value:
        raise invalid_skiptoken("version from the future")
    upserts, deletions = ctx.table.changes_between(since, until)
    items = [(0, v, i) for v, i in upserts] + [(1, v, i) for v, i in deletions]
    if cookie is None:
        return items
    phase = cookie_int(cookie, "phase")
    last_version = cookie.elements.get("versionnumber", {}).get("last", "")
    if phase > 1 or not last_version.isdigit():
        raise invalid_skiptoken("bad delta position")
    position = (phase, int(last_version), _cookie_index(ctx, cookie))
    return [item for item in items if item > position]


def count_collection(ctx: ReadContext, query: Query, prefs: Preferences) -> ApiResponse:
    """GET ``<set>/$count``: the number as text/plain (capped at 5,000), or the delta's size."""
    raw_delta = query.raw_value("$deltatoken")
    if raw_delta is not None:
        _check_tracking(ctx.table, query)
        since, _ = _check_delta_token(ctx, raw_delta)
        return text_response(str(len(_delta_items(ctx, since, None))))
    node = parse_filter_option(query)
    if node is None:
        total = ctx.table.live_count()
    else:
        check_filter(ctx.table, node)
        total = sum(1 for _ in islice(matching_rows(ctx.table, node), COUNT_LIMIT + 1))
    return text_response(str(min(total, COUNT_LIMIT)))


def read_single(ctx: ReadContext, key: str, query: Query, prefs: Preferences) -> ApiResponse:
    """GET ``<set>(<guid>)``: one row with ``…/$entity`` context; 404 when it does not exist."""
    table = ctx.table
    select = parse_select(query)
    columns = resolve_columns(table, select)
    index = table.index_of(key)
    row = table.row(index) if index is not None else None
    if row is None:
        raise ApiError(404, "0x80040217", f"{table.name} With Id = {key.lower()} Does Not Exist")
    payload = {"@odata.context": ctx.context(select, "/$entity")}
    payload.update(render_row(table, row, columns, prefs))
    return _respond(ctx, payload, _applied(prefs, False), 1, len(columns))
