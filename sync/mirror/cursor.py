"""The per-table sync state machine: BACKFILL → DELTA (or WATERMARK) → RESYNC. Pure.

`plan()` decides the next request from the stored state; `advance()` turns the decoded page into
what to write (rows, deleted ids, keys seen, a sweep) and the new state. The engine commits both in
one transaction, so the stored state is always the checkpoint of the last committed page.

Phases (dv_sync_state.phase):

* new        never synced; the next cycle starts a backfill.
* backfill   initial full load. `resync_started_at` marks its start; the last page sweeps every
             row not re-seen since then (`_dv_synced_at` older) and stores the delta link (change
             tracking) or the start as the watermark.
* resync     the same full load after an expired delta token.
* delta      change tracking: follow `delta_link` (and the `next_link` pages of one delta answer).
* watermark  no change tracking: `modifiedon ge watermark - overlap and modifiedon le signpost`,
             signpost fixed when the cycle starts (meltano's signpost rule).
* reconcile  no change tracking: a key-only scan; keys seen are touched, the rest swept.

A cycle runs from an idle state (no `next_link`, no `signpost`) back to an idle state.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Literal
from urllib.parse import parse_qsl, quote, urlsplit, urlunsplit

from sync.dataverse.odata import check_link
from sync.errors import HostileResponseError, TableError
from sync.mirror.page import DecodedPage
from sync.mirror.typemap import UUID_TEXT
from sync.store.checkpoints import TableState
from sync.store.layout import TableSchema

RequestKind = Literal["rows", "delta", "keys"]
API_PATH = "/api/data/v9.2"
DEFAULT_OVERLAP = timedelta(minutes=5)
DEFAULT_RECONCILE_EVERY = timedelta(hours=24)
FULL_PASSES: frozenset[str] = frozenset({"backfill", "resync"})
QUERY_SAFE = ",()':"
#: The longest `$select` sent (percent-encoded): the Web API's GET limit is 32,768 characters,
#: and a next link adds the base URL, a filter and a paging cookie to it.
MAX_SELECT_LENGTH = 24_000


@dataclass(frozen=True)
class Request:
    """One GET to make: the URL and whether it is a change-tracking request."""

    kind: RequestKind
    url: str
    track_changes: bool


@dataclass(frozen=True)
class Step:
    """What to commit for one page, and the state to store with it."""

    state: TableState
    deleted_ids: tuple[str, ...] = ()
    keys_seen: tuple[str, ...] = ()
    sweep_before: datetime | None = None
    cycle_done: bool = False
    full_pass_done: bool = False


def iso(moment: datetime) -> str:
    """UTC timestamp in the Web API form: 2023-04-07T21:59:01Z."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def collection_url(base: str, entity_set: str, params: list[tuple[str, str]]) -> str:
    query = "&".join(f"{k}={quote(v, safe=QUERY_SAFE)}" for k, v in params)
    return f"{base}{API_PATH}/{entity_set}" + (f"?{query}" if query else "")


def select_params(select: Sequence[str]) -> list[tuple[str, str]]:
    """`$select` of these columns, or nothing when naming them would make the URL too long:
    the Web API refuses GET URLs over 32 KB (reference 2.1, a table with a thousand columns
    with long names gets there), and without `$select` it sends every column (the shaper keeps
    the mirrored ones)."""
    joined = ",".join(select)
    if len(quote(joined, safe=QUERY_SAFE)) > MAX_SELECT_LENGTH:
        return []
    return [("$select", joined)]


def rows_url(base: str, schema: TableSchema) -> str:
    return collection_url(base, schema.entity_set, select_params(schema.select))


def keys_url(base: str, schema: TableSchema) -> str:
    return collection_url(base, schema.entity_set, [("$select", schema.primary_key)])


def watermark_url(base: str, schema: TableSchema, low: str, high: str) -> str:
    return collection_url(
        base,
        schema.entity_set,
        [
            *select_params(schema.select),
            ("$filter", f"modifiedon ge {low} and modifiedon le {high}"),
            ("$orderby", f"modifiedon asc,{schema.primary_key} asc"),
        ],
    )


def with_select(link: str, select: tuple[str, ...]) -> str:
    """A delta link with its `$select` replaced (new columns), its token left untouched (a
    link without `$select` already reads every column)."""
    parts = urlsplit(link)
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    if not any(k == "$select" for k, _ in pairs):
        return link
    raw = [p for p in parts.query.split("&") if not p.startswith("$select=")]
    wanted = [f"$select={quote(value, safe=',')}" for _, value in select_params(select)]
    query = "&".join([*wanted, *raw])
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


def plan(
    state: TableState,
    schema: TableSchema,
    *,
    base_url: str,
    now: datetime,
    overlap: timedelta = DEFAULT_OVERLAP,
) -> tuple[Request, TableState]:
    """The next request, and the state to advance from (a cycle's start values filled in)."""
    tracked = schema.change_tracking
    if state.phase == "new" or (
        state.phase == "delta" and state.delta_link is None and not state.next_link
    ):
        state = TableState(
            phase="backfill",
            resync_started_at=now,
            signpost=None if tracked else iso(now),
            last_reconcile=state.last_reconcile,
        )
    if state.phase in FULL_PASSES:
        started = state
        if state.resync_started_at is None:
            started = replace(state, resync_started_at=now)
        if not tracked and started.signpost is None:
            started = replace(started, signpost=iso(started.resync_started_at or now))
        url = state.next_link or rows_url(base_url, schema)
        return Request("rows", url, tracked), started
    if state.phase == "delta":
        link = state.next_link or state.delta_link
        assert link is not None
        return Request("delta", link, True), state
    if state.phase == "reconcile":
        started = state if state.resync_started_at else replace(state, resync_started_at=now)
        return Request("keys", state.next_link or keys_url(base_url, schema), False), started
    # watermark
    if not schema.has_modifiedon:  # nothing to filter on: every cycle is a full pass
        return plan(
            replace(state, phase="resync", resync_started_at=None),
            schema,
            base_url=base_url,
            now=now,
        )
    if state.next_link is not None and state.signpost is not None:
        return Request("rows", state.next_link, False), state
    signpost = state.signpost or iso(now)
    low_moment = (
        parse_iso(state.watermark) - overlap
        if state.watermark
        else datetime(1900, 1, 1, tzinfo=UTC)
    )
    started = replace(state, signpost=signpost)
    return Request(
        "rows", watermark_url(base_url, schema, iso(low_moment), signpost), False
    ), started


def valid_keys(rows: list[dict[str, object]], primary: str, table: str) -> tuple[str, ...]:
    """The primary keys of a key-only page; a row without a valid GUID key is hostile."""
    keys: list[str] = []
    for row in rows:
        key = row.get(primary) if isinstance(row, dict) else None
        if not isinstance(key, str) or not UUID_TEXT.fullmatch(key):
            raise HostileResponseError(
                f"table {table}: a key row has no valid {primary}", table=table
            )
        keys.append(key)
    return tuple(keys)


def _check_page(request: Request, page: DecodedPage, origin: str, table: str) -> None:
    """Links stay in the environment, never loop; tombstones only in delta answers."""
    if page.next_link is not None:
        check_link(page.next_link, origin, table=table)
        if page.next_link == request.url:
            raise HostileResponseError(
                f"table {table}: paging loop (the same nextLink twice)", table=table
            )
    if page.delta_link is not None:
        check_link(page.delta_link, origin, table=table)
    if page.deleted_ids and request.kind != "delta":
        raise HostileResponseError(
            f"table {table}: deleted entries outside a delta answer", table=table
        )


def advance(
    state: TableState,
    request: Request,
    page: DecodedPage,
    schema: TableSchema,
    *,
    origin: str,
    now: datetime,
    reconcile: bool = False,
) -> Step:
    """The new state after `page` (the answer to `request`, planned from `state`)."""
    table = schema.table
    _check_page(request, page, origin, table)
    next_link = page.next_link
    if next_link is not None:
        step_state = replace(state, next_link=next_link)
        keys = valid_keys(page.rows, schema.primary_key, table) if request.kind == "keys" else ()
        return Step(step_state, deleted_ids=tuple(page.deleted_ids), keys_seen=keys)
    # last page of this pass
    if state.phase in FULL_PASSES:
        if schema.change_tracking and page.delta_link is None:
            raise TableError(
                f"table {table}: the last page of a change-tracking load carried no deltaLink",
                table=table,
            )
        if schema.change_tracking:
            final = TableState(
                "delta", None, page.delta_link, None, None, None, state.last_reconcile
            )
        else:  # a full pass is also a key reconciliation
            final = TableState(
                "watermark", None, None, state.signpost, None, None, state.resync_started_at
            )
        return Step(
            final, sweep_before=state.resync_started_at, cycle_done=True, full_pass_done=True
        )
    if state.phase == "delta":
        if page.delta_link is None:
            raise TableError(f"table {table}: a delta answer carried no deltaLink", table=table)
        return Step(
            replace(state, next_link=None, delta_link=page.delta_link),
            deleted_ids=tuple(page.deleted_ids),
            cycle_done=True,
        )
    if state.phase == "reconcile":
        keys = valid_keys(page.rows, schema.primary_key, table)
        final = replace(
            state,
            phase="watermark",
            next_link=None,
            resync_started_at=None,
            last_reconcile=state.resync_started_at,
        )
        return Step(final, keys_seen=keys, sweep_before=state.resync_started_at, cycle_done=True)
    # watermark pass finished: the watermark moves to the signpost, never past it
    final = replace(state, next_link=None, watermark=state.signpost, signpost=None)
    if reconcile:
        return Step(replace(final, phase="reconcile", resync_started_at=None))
    return Step(final, cycle_done=True)


def expired(state: TableState, *, now: datetime) -> TableState:
    """The delta token expired: start a full resync (its end sweeps rows gone from the source)."""
    return TableState("resync", None, None, None, None, now, state.last_reconcile)


def reconcile_due(
    state: TableState, *, now: datetime, every: timedelta = DEFAULT_RECONCILE_EVERY
) -> bool:
    """A table without change tracking needs a key scan every `every` to notice deletions."""
    if state.last_reconcile is None:
        return True
    return now - state.last_reconcile >= every


def synced_at(state: TableState, now: datetime) -> datetime:
    """The `_dv_synced_at` to stamp: never before the current full pass's start (clock steps)."""
    if state.resync_started_at is not None and now < state.resync_started_at:
        return state.resync_started_at
    return now


__all__ = [
    "Request",
    "Step",
    "TableState",
    "advance",
    "expired",
    "iso",
    "plan",
    "reconcile_due",
    "synced_at",
    "with_select",
]
