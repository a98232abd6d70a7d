"""The per-table state machine, with hand-built pages and a fixed clock (no I/O)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from sync.errors import ForeignLinkError, HostileResponseError, TableError
from sync.mirror import cursor as cur
from sync.mirror.page import DecodedPage
from sync.mirror.typemap import build_schema
from sync.store.layout import TableSchema

BASE = "https://org.example.com"
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
KEY = "4624eff7-53d3-ed11-a7c7-000d3a993550"


def schema(*, tracked: bool) -> TableSchema:
    def attr(name: str, kind: str) -> dict[str, object]:
        return {
            "LogicalName": name,
            "AttributeType": kind,
            "AttributeTypeName": {"Value": f"{kind}Type"},
        }

    entity = {
        "EntitySetName": "accounts",
        "PrimaryIdAttribute": "accountid",
        "ChangeTrackingEnabled": tracked,
    }
    return build_schema(
        entity,
        [
            attr("accountid", "Uniqueidentifier"),
            attr("name", "String"),
            attr("modifiedon", "DateTime"),
        ],
        table="account",
    )


def page(
    next_link: str | None = None,
    delta_link: str | None = None,
    *,
    deleted: list[str] | None = None,
    rows: list[dict[str, object]] | None = None,
) -> DecodedPage:
    return DecodedPage(rows or [], deleted or [], next_link, delta_link, [])


def test_new_tracked_table_starts_a_backfill_with_track_changes() -> None:
    """A new table is loaded in full with change tracking, the start recorded for the sweep."""
    request, state = cur.plan(cur.TableState(), schema(tracked=True), base_url=BASE, now=NOW)
    assert request == cur.Request(
        "rows", f"{BASE}/api/data/v9.2/accounts?$select=accountid,modifiedon,name", True
    )
    assert (state.phase, state.resync_started_at) == ("backfill", NOW)


def test_backfill_pages_store_the_next_link_and_end_with_the_delta_link() -> None:
    """Each page's checkpoint is its nextLink; the last page stores the deltaLink and sweeps."""
    sch = schema(tracked=True)
    request, state = cur.plan(cur.TableState(), sch, base_url=BASE, now=NOW)
    step = cur.advance(state, request, page(f"{BASE}/next"), sch, origin=BASE, now=NOW)
    assert (step.state.next_link, step.cycle_done) == (f"{BASE}/next", False)
    request, state = cur.plan(step.state, sch, base_url=BASE, now=NOW + timedelta(seconds=1))
    assert request.url == f"{BASE}/next"
    assert state.resync_started_at == NOW  # the pass keeps its start across pages (and restarts)
    last = cur.advance(state, request, page(delta_link=f"{BASE}/delta"), sch, origin=BASE, now=NOW)
    assert last.state == cur.TableState("delta", delta_link=f"{BASE}/delta")
    assert (last.sweep_before, last.cycle_done, last.full_pass_done) == (NOW, True, True)


def test_delta_cycle_follows_the_delta_link_and_returns_deletions() -> None:
    """A delta cycle asks the stored delta link and hands tombstones to the writer."""
    sch = schema(tracked=True)
    idle = cur.TableState("delta", delta_link=f"{BASE}/d1")
    request, state = cur.plan(idle, sch, base_url=BASE, now=NOW)
    assert request == cur.Request("delta", f"{BASE}/d1", True)
    step = cur.advance(
        state, request, page(delta_link=f"{BASE}/d2", deleted=[KEY]), sch, origin=BASE, now=NOW
    )
    assert step.state == cur.TableState("delta", delta_link=f"{BASE}/d2")
    assert step.deleted_ids == (KEY,)
    assert step.cycle_done


def test_expired_token_restarts_as_a_resync() -> None:
    """An expired delta token drops the link and starts a full resync from now."""
    state = cur.expired(cur.TableState("delta", delta_link=f"{BASE}/d1"), now=NOW)
    assert (state.phase, state.delta_link, state.resync_started_at) == ("resync", None, NOW)
    request, _ = cur.plan(state, schema(tracked=True), base_url=BASE, now=NOW)
    assert request.kind == "rows"
    assert request.track_changes


def test_watermark_window_overlaps_and_is_capped_at_the_signpost() -> None:
    """Untracked tables read modifiedon from watermark minus overlap up to a signpost fixed at start."""
    sch = schema(tracked=False)
    idle = cur.TableState("watermark", watermark="2026-01-01T00:00:00Z", last_reconcile=NOW)
    request, state = cur.plan(idle, sch, base_url=BASE, now=NOW)
    assert (
        "modifiedon%20ge%202025-12-31T23:55:00Z%20and%20modifiedon%20le%202026-01-02T03:04:05Z"
        in request.url
    )
    assert "$orderby=modifiedon%20asc,accountid%20asc" in request.url
    assert state.signpost == "2026-01-02T03:04:05Z"
    step = cur.advance(state, request, page(), sch, origin=BASE, now=NOW + timedelta(hours=1))
    assert step.state.watermark == "2026-01-02T03:04:05Z"  # never past the signpost
    assert step.cycle_done


def test_watermark_cycle_then_reconciles_keys_and_sweeps() -> None:
    """With reconciliation due, the watermark pass is followed by a key scan that sweeps."""
    sch = schema(tracked=False)
    idle = cur.TableState("watermark", watermark="2026-01-01T00:00:00Z")
    request, state = cur.plan(idle, sch, base_url=BASE, now=NOW)
    step = cur.advance(state, request, page(), sch, origin=BASE, now=NOW, reconcile=True)
    assert (step.state.phase, step.cycle_done) == ("reconcile", False)
    request, state = cur.plan(step.state, sch, base_url=BASE, now=NOW)
    assert request == cur.Request("keys", f"{BASE}/api/data/v9.2/accounts?$select=accountid", False)
    last = cur.advance(state, request, page(rows=[{"accountid": KEY}]), sch, origin=BASE, now=NOW)
    assert last.keys_seen == (KEY,)
    assert (last.sweep_before, last.state.phase, last.state.last_reconcile) == (
        NOW,
        "watermark",
        NOW,
    )
    assert last.cycle_done


def test_untracked_backfill_ends_with_its_start_as_watermark() -> None:
    """A full load of an untracked table leaves the watermark at its start (signpost)."""
    sch = schema(tracked=False)
    request, state = cur.plan(cur.TableState(), sch, base_url=BASE, now=NOW)
    assert not request.track_changes
    step = cur.advance(state, request, page(), sch, origin=BASE, now=NOW)
    assert (step.state.phase, step.state.watermark) == ("watermark", "2026-01-02T03:04:05Z")


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        (page("https://evil.example.net/next"), ForeignLinkError),
        (page(delta_link="https://evil.example.net/d"), ForeignLinkError),
        (
            page(f"{BASE}/api/data/v9.2/accounts?$select=accountid,modifiedon,name"),
            HostileResponseError,
        ),
        (page(deleted=[KEY]), HostileResponseError),
        (page(), TableError),  # a tracked load that ends without a delta link
    ],
)
def test_bad_links_are_refused(bad: DecodedPage, error: type[Exception]) -> None:
    """Foreign links, loops, stray tombstones and a missing delta link stop the table."""
    sch = schema(tracked=True)
    request, state = cur.plan(cur.TableState(), sch, base_url=BASE, now=NOW)
    with pytest.raises(error):
        cur.advance(state, request, bad, sch, origin=BASE, now=NOW)


def test_with_select_keeps_the_token() -> None:
    """Widening a delta link's $select leaves its delta token untouched."""
    link = f"{BASE}/api/data/v9.2/accounts?$select=a,b&$deltatoken=919042%2108%2f22%2f2017"
    widened = cur.with_select(link, ("a", "b", "c"))
    assert (
        widened
        == f"{BASE}/api/data/v9.2/accounts?$select=a,b,c&$deltatoken=919042%2108%2f22%2f2017"
    )


def test_reconcile_due_and_synced_at_follow_the_clock() -> None:
    """Reconciliation is due after its interval; stamps never precede the pass start."""
    state = cur.TableState("watermark", last_reconcile=NOW)
    assert not cur.reconcile_due(state, now=NOW + timedelta(hours=1))
    assert cur.reconcile_due(state, now=NOW + timedelta(days=1))
    started = replace(state, resync_started_at=NOW)
    assert cur.synced_at(started, NOW - timedelta(seconds=5)) == NOW


def test_a_select_too_long_for_a_get_url_is_left_out() -> None:
    """The Web API refuses GET URLs over 32 KB: past `MAX_SELECT_LENGTH` no `$select` is sent
    (every column comes back), in first pages, range pages and widened delta links alike."""
    short = tuple(f"new_column{i:04d}" for i in range(100))
    wide = tuple(f"new_extra_inspectionitem{i:04d}_measuredvalue" for i in range(700))
    assert len(",".join(wide)) > cur.MAX_SELECT_LENGTH >= len(",".join(short))
    assert cur.select_params(short) == [("$select", ",".join(short))]
    assert cur.select_params(wide) == []
    link = "https://org.example/api/data/v9.2/things?$select=a&$deltatoken=919058%2108"
    assert cur.with_select(link, wide) == (
        "https://org.example/api/data/v9.2/things?$deltatoken=919058%2108"
    )
    assert cur.collection_url("https://org.example", "things", []) == (
        "https://org.example/api/data/v9.2/things"
    )
