"""What a table job exchanges with its callers: its client, its clock and stamps, its reports."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, Protocol

from sync.dataverse.client import BodyHook
from sync.dataverse.seams import RequestTally
from sync.mirror.discovery import JsonSource
from sync.mirror.page import DecodedPage
from sync.mirror.rowshape import RowShaper

Until = Literal["cycle", "backfill"]


class PageClient(JsonSource, Protocol):
    """What a table job needs from the Web API client (sync.mirror.fetch.ExactClient)."""

    tally: RequestTally

    async def fetch_page(
        self,
        url: str,
        shaper: RowShaper,
        *,
        track_changes: bool,
        impersonate: str | None = None,
        page_size: int | None = None,
        cost_class: str | None = None,
        on_body: BodyHook | None = None,
    ) -> DecodedPage: ...


def utcnow() -> datetime:
    return datetime.now(UTC)


def stamp(moment: datetime) -> str:
    """Fixed-width UTC text: sorts like time, compared with `_dv_synced_at` in SQL."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class PageProgress:
    """Reported after every committed page (progress bars, metrics)."""

    environment: str
    table: str
    phase: str
    rows: int
    deleted: int
    total_estimate: int | None
    cycle_done: bool


@dataclass(frozen=True)
class JobResult:
    environment: str
    table: str
    ok: bool
    error: str | None = None
    auth_failed: bool = False
    pages: int = 0
    rows_upserted: int = 0
    rows_deleted: int = 0
