"""Refresh an environment's metadata tables: once per discovery, cheap when nothing changed.

Per mirrored table, only the casts of the attribute types its mirrored columns have (all sent at
once, through the environment's client and so its governor), plus ManyToOneRelationships when it
has lookups; a daemon passes a StructureCache, so that the structural answers (lookup targets,
relationships, precision, max length) are read again only when the table's mirrored columns
change, or hourly. The rows (sync.mirror.option_metadata) are hashed per metadata table and
Dataverse table; only rows whose hash differs from the stored one are rewritten
(store.metadata_tables), and when an
option's label in the application user's language changed, the mirror's `<col>__label` values
are updated in the same transaction: relabelling is a metadata change only, no row's
versionnumber moves, so change tracking would never bring the new label (reference 13). Those
updates are commits of the change feed (store.relabel), so incremental loaders get them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any

from sqlalchemy import and_, select
from sqlalchemy.ext.asyncio import AsyncEngine

from sync.dataverse.odata import api_url
from sync.errors import AuthError, DvmirrorError, HostileResponseError, TableError
from sync.logs import get_logger
from sync.mirror import option_metadata as om
from sync.mirror.discovery import JsonSource
from sync.mirror.job_types import JobResult
from sync.mirror.typemap import SAFE_COLUMN
from sync.store.control import mirror_columns
from sync.store.dialects import dialect_for
from sync.store.metadata_tables import read_rows, rewrite, stored_hashes
from sync.store.relabel import LabelFix
from sync.store.writer import map_store_errors

log = get_logger(__name__)
LABEL_TABLES = (om.OPTIONSET, om.GLOBAL_OPTIONSET, om.STATE, om.STATUS)


@dataclass(frozen=True)
class RefreshResult:
    changed: tuple[str, ...]  # the metadata tables rewritten
    labels_fixed: int  # mirror rows whose `<col>__label` changed
    requests: int


async def catalogued(
    engine: AsyncEngine, environment: str, tables: Sequence[str]
) -> dict[str, list[om.MirroredAttribute]]:
    """The mirrored attributes of each table that has a mirror (from dv_mirror_columns)."""
    query = select(
        mirror_columns.c.table_name,
        mirror_columns.c.column_name,
        mirror_columns.c.attribute_type,
        mirror_columns.c.display_name,
        mirror_columns.c.description,
    ).where(
        and_(
            mirror_columns.c.environment == environment,
            mirror_columns.c.table_name.in_(list(tables)),
            mirror_columns.c.removed_at.is_(None),
        )
    )
    with map_store_errors("metadata", dialect_for(engine), environment=environment):
        async with engine.connect() as conn:
            rows = (await conn.execute(query)).all()
    by_table: dict[str, list[tuple[str, str, str | None, str | None]]] = {}
    for r in rows:
        by_table.setdefault(r.table_name, []).append(
            (r.column_name, r.attribute_type, r.display_name, r.description)
        )
    return {t: om.mirrored_attributes(c) for t, c in sorted(by_table.items())}


def _values(document: Any, table: str, what: str) -> list[Mapping[str, Any]]:
    items = document.get("value") if isinstance(document, Mapping) else None
    if not isinstance(items, list) or not all(isinstance(i, Mapping) for i in items):
        raise HostileResponseError(
            f"table {table}: the {what} answer has no list of objects", table=table
        )
    return items


MANY_TO_ONE = "ManyToOneRelationships"
# Lookup targets, relationships, precision and max length change only with the schema: a daemon
# reads them again when the table's mirrored columns change, or after this long.
STRUCTURE_MAX_AGE = 3600.0


@dataclass
class StructureCache:
    """The daemon's answers to the structural requests, per table and cast, with the mirrored
    attributes they were read for and when (the option casts, which carry the labels, are read
    at every refresh)."""

    clock: Callable[[], float] = time.monotonic
    answers: dict[tuple[str, str], tuple[tuple[om.MirroredAttribute, ...], float, Any]] = field(
        default_factory=dict
    )

    def get(self, table: str, kind: str, attributes: tuple[om.MirroredAttribute, ...]) -> Any:
        found = self.answers.get((table, kind))
        if found is None or found[0] != attributes or self.clock() - found[1] > STRUCTURE_MAX_AGE:
            return None
        return found[2]

    def put(
        self, table: str, kind: str, attributes: tuple[om.MirroredAttribute, ...], answer: Any
    ) -> None:
        self.answers[(table, kind)] = (attributes, self.clock(), answer)


async def fetch_source(
    client: JsonSource,
    environment_url: str,
    table: str,
    attributes: Sequence[om.MirroredAttribute],
    cache: StructureCache | None = None,
) -> tuple[om.TableSource, int]:
    """One table's metadata answers (all requests at once), and how many requests they took."""
    if not SAFE_COLUMN.fullmatch(table):
        raise TableError(f"{table!r} is not a table logical name", table=table)
    path = f"EntityDefinitions(LogicalName='{table}')"
    kinds = om.casts_needed(attributes)
    if "Lookup" in kinds:
        kinds.append(MANY_TO_ONE)
    attrs = tuple(attributes)
    known = {
        k: cache.get(table, k, attrs)
        for k in kinds
        if cache is not None and k not in om.OPTION_KINDS
    }
    known = {k: v for k, v in known.items() if v is not None}
    wanted = [k for k in kinds if k not in known]

    def url(kind: str) -> str:
        tail = om.MANY_TO_ONE_QUERY if kind == MANY_TO_ONE else f"Attributes/{om.cast_query(kind)}"
        return api_url(environment_url, f"{path}/{tail}")

    # Environment-level metadata requests (cost class "metadata"), not the table's own: they
    # stay out of its run history and its request tally.
    answers = await asyncio.gather(*(client.get(url(k)) for k in wanted))
    fetched = {k: _values(a, table, f"{k} answer") for k, a in zip(wanted, answers, strict=True)}
    if cache is not None:
        for kind, items in fetched.items():
            if kind not in om.OPTION_KINDS:
                cache.put(table, kind, attrs, items)
    values = known | fetched
    many_to_one = values.pop(MANY_TO_ONE, [])
    return om.TableSource(table, attrs, values, many_to_one), len(wanted)


def label_fixes(
    old: Mapping[str, list[om.Row]],
    new: Mapping[str, list[om.Row]],
    attributes: Mapping[str, Sequence[om.MirroredAttribute]],
) -> list[LabelFix]:
    """The mirror label updates that follow from a change of the option rows. Pure."""
    kinds = {(t, a.name): a.kind for t, attrs in attributes.items() for a in attrs}
    fixes = []
    for change in om.relabels(om.user_labels(dict(old)), om.user_labels(dict(new)), kinds):
        recompute = (
            partial(om.multi_select_label, labels=dict(change.labels))
            if change.multi_select
            else None
        )
        fixes.append(LabelFix(change.table, change.column, dict(change.changed), recompute))
    return fixes


@dataclass(frozen=True)
class Fetched:
    """The metadata answers of an environment's tables, before anything is written: per
    table, its mirrored attributes and its source, or the error its requests met."""

    attributes: Mapping[str, list[om.MirroredAttribute]]
    sources: Mapping[str, om.TableSource | DvmirrorError]
    requests: int

    def only(self, tables: Sequence[str]) -> Fetched:
        """These tables' answers (those that have a mirror); the first error among them is
        raised."""
        keep = [t for t in self.attributes if t in set(tables)]
        for table in keep:
            answer = self.sources[table]
            if isinstance(answer, DvmirrorError):
                raise answer
        return Fetched({t: self.attributes[t] for t in keep}, {t: self.sources[t] for t in keep}, 0)


async def fetch_metadata(
    client: JsonSource,
    store: AsyncEngine,
    *,
    environment: str,
    environment_url: str,
    tables: Sequence[str],
    cache: StructureCache | None = None,
) -> Fetched:
    """The metadata answers of `tables` (every request at once): nothing is written."""
    attributes = await catalogued(store, environment, tables)

    async def one(table: str) -> tuple[om.TableSource | DvmirrorError, int]:
        try:
            return await fetch_source(client, environment_url, table, attributes[table], cache)
        except DvmirrorError as exc:
            return exc, 0

    answers = await asyncio.gather(*(one(t) for t in attributes))
    sources = {t: answer for t, (answer, _) in zip(attributes, answers, strict=True)}
    return Fetched(attributes, sources, sum(n for _, n in answers))


async def apply_metadata(
    store: AsyncEngine, fetched: Fetched, *, environment: str, now: datetime, requests: int
) -> RefreshResult:
    """Rewrite the metadata rows whose hash changed, with the label fixes they imply."""
    attributes = dict(fetched.attributes)
    sources = [s for s in fetched.sources.values() if not isinstance(s, DvmirrorError)]
    rows = om.all_rows(sources)
    parts: dict[tuple[str, str], list[om.Row]] = {
        (name, table): [] for name in om.TABLES for table in attributes
    }
    for name, table_rows in rows.items():
        for row in table_rows:
            parts[(name, row[0])].append(row)
    digests = {part: om.rows_hash(part_rows) for part, part_rows in parts.items()}
    stored = await stored_hashes(store, environment)
    changed = {part: (parts[part], d) for part, d in digests.items() if stored.get(part) != d}
    if not changed:
        return RefreshResult((), 0, requests)
    names = tuple(name for name in om.TABLES if any(part[0] == name for part in changed))
    entities = sorted({entity for _, entity in changed})
    old = {
        name: await read_rows(store, environment, name, entities) if name in names else rows[name]
        for name in LABEL_TABLES
    }
    fixes = label_fixes(old, rows, attributes)
    fixed = await rewrite(store, environment, changed, fixes, now=now)
    log.info(
        "metadata_tables_refreshed",
        environment=environment,
        tables=list(names),
        entities=entities,
        labels_fixed=fixed,
        requests=requests,
    )
    return RefreshResult(names, fixed, requests)


async def refresh_environment(
    client: JsonSource,
    store: AsyncEngine,
    *,
    environment: str,
    environment_url: str,
    tables: Sequence[str],
    now: datetime,
    cache: StructureCache | None = None,
) -> RefreshResult:
    """Bring the environment's metadata tables up to date with the source."""
    fetched = await fetch_metadata(
        client,
        store,
        environment=environment,
        environment_url=environment_url,
        tables=tables,
        cache=cache,
    )
    chosen = fetched.only(tables)
    return await apply_metadata(
        store, chosen, environment=environment, now=now, requests=fetched.requests
    )


class RefreshAfterReads:
    """A one-shot command's refresh of an environment's metadata tables, fetched as soon as
    every table has made its last read and written once the tables ran.

    The answers are read after the last page of every table has arrived, as they would be
    after the run (so the labels are no older than any row's), but while those pages are
    still decoded and committed: the refresh's round trips no longer follow the run. Each
    table's job reports its last read (TableJob's `on_reads_over`); a table that fails is
    left out of what is written. A failure is one failed result (`<env>/metadata: …`, exit
    code 1), the previous metadata rows kept.
    """

    def __init__(
        self,
        client: JsonSource,
        store: AsyncEngine,
        *,
        environment: str,
        environment_url: str,
        tables: Sequence[str],
    ) -> None:
        self._store = store
        self._environment = environment
        self._unread = set(tables)
        self._all_read = asyncio.Event()
        fetch = partial(
            fetch_metadata,
            client,
            store,
            environment=environment,
            environment_url=environment_url,
            tables=list(tables),
        )
        self._task = asyncio.ensure_future(self._after_reads(fetch)) if tables else None

    def reads_over(self, table: str) -> Callable[[], None]:
        """What `table`'s job calls once it will read no more."""

        def told() -> None:
            self._unread.discard(table)
            if not self._unread:
                self._all_read.set()

        return told

    async def _after_reads(self, fetch: Callable[[], Awaitable[Fetched]]) -> Fetched:
        await self._all_read.wait()
        return await fetch()

    async def results(self, ran: Sequence[str], *, now: datetime) -> list[JobResult]:
        """Write the metadata of the tables that ran (`ran`); [] or the one failed result."""
        task, self._task = self._task, None
        if task is None:
            return []
        self._all_read.set()  # every job has ended by now, whatever it reported
        try:
            fetched = await task
            chosen = fetched.only(ran)
            if chosen.attributes:
                await apply_metadata(
                    self._store,
                    chosen,
                    environment=self._environment,
                    now=now,
                    requests=fetched.requests,
                )
        except DvmirrorError as exc:
            log.warning("metadata_tables_failed", environment=self._environment, error=exc.message)
            return [
                JobResult(
                    self._environment, "metadata", False, exc.message, isinstance(exc, AuthError)
                )
            ]
        return []

    async def cancel(self) -> None:
        """Stop a fetch still waiting or under way (the command is stopping)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])
            if not task.cancelled():
                task.exception()  # retrieved: the command is stopping anyway
