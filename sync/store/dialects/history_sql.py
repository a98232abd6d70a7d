"""The SQL of a history table (SCD type 2, sync.store.history) in both dialects.

A history table `<table>__history` (SQLite `<environment>__<table>__history`, PostgreSQL
`<environment>.<table>__history`) has the mirror's columns plus `_dv_version`, `_dv_valid_from`,
`_dv_valid_to` (NULL while current), `_dv_op` (`upsert` or `delete`), `_dv_synced_at` (when
dvmirror recorded the version) and `_dv_commit_seq` (the commit that last wrote the history row).

A wide PostgreSQL table (store.dialects.pg_wide) keeps some columns as keys of `_dv_overflow`;
its history then has its own `_dv_overflow` (store.dialects.pg_history_wide decides which
columns go there: the mirror's, and more when the history's own columns make the row too wide).
`Placement` says where each column is on both sides, and the statements read a value from
wherever the mirror keeps it and write it wherever the history keeps it.

Every statement is derived from the mirror table inside the page's transaction: the rows the
page really changed are the ones carrying its commit number (store.commits), and a key whose
mirror row is gone (or soft-deleted) is a deletion. Moments: PostgreSQL timestamptz; SQLite text
in the Web API form `YYYY-MM-DDTHH:MM:SSZ` (so they compare as text with `modifiedon`);
`_dv_synced_at` as in the mirror.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import orjson

from sync.store.dialects.pg_wide import json_value, key_literal, pack, view_cast
from sync.store.dialects.pg_width import OVERFLOW_COLUMN
from sync.store.dialects.postgres import COLUMN_TYPE
from sync.store.dialects.sqlite import STORAGE
from sync.store.identifiers import quote_ident
from sync.store.layout import (
    COMMIT_SEQ_COLUMN,
    DELETED_COLUMN,
    SYNCED_COLUMN,
    VERSION_COLUMN,
    SqlType,
)

VALID_FROM = "_dv_valid_from"
VALID_TO = "_dv_valid_to"
OP = "_dv_op"
HISTORY_SUFFIX = "__history"
Flavour = Literal["sqlite", "postgresql"]
_SQLITE_MOMENT = "strftime('%Y-%m-%dT%H:%M:%SZ', {})"


def history_table(table: str) -> str:
    """The logical name the dialects give the history table (`account__history`)."""
    return f"{table}{HISTORY_SUFFIX}"


@dataclass(frozen=True)
class Placement:
    """Which columns a wide table keeps in `_dv_overflow`: in the mirror, and in its history
    (PostgreSQL only; both empty on SQLite and for tables that fit)."""

    mirror: frozenset[str] = frozenset()
    history: frozenset[str] = frozenset()

    def source(self, name: str, sql_type: SqlType) -> str:
        """The mirror row `m`'s value of a column, typed."""
        if name in self.mirror:
            return view_cast(sql_type, name, source=f"m.{quote_ident(OVERFLOW_COLUMN)}")
        return f"m.{quote_ident(name)}"

    def json_source(self, name: str, sql_type: SqlType) -> str:
        """The mirror row `m`'s value of a column as the overflow's JSON."""
        if name in self.mirror:
            return f"m.{quote_ident(OVERFLOW_COLUMN)} -> {key_literal(name)}"
        return json_value(sql_type, f"m.{quote_ident(name)}", typed=True)


@dataclass(frozen=True)
class HistorySql:
    """The statements of one history table for one column layout (named binds for text())."""

    flavour: Flavour
    history: str  # quoted reference
    mirror: str
    key: str  # quoted primary key
    key_type: SqlType
    columns: tuple[str, ...]  # quoted, primary key first (and `_dv_overflow` last, if wide)
    modifiedon: str | None  # the mirror row `m`'s `modifiedon`, when the table has one
    sources: tuple[str, ...] = ()  # each column's value from the mirror row `m`

    @classmethod
    def build(
        cls,
        flavour: Flavour,
        environment: str,
        table: str,
        columns: Sequence[tuple[str, SqlType]],
        placement: Placement | None = None,
    ) -> HistorySql:
        place = placement or Placement()
        if flavour == "sqlite":
            history = quote_ident(f"{environment}__{history_table(table)}")
            mirror = quote_ident(f"{environment}__{table}")
        else:
            history = f"{quote_ident(environment)}.{quote_ident(history_table(table))}"
            mirror = f"{quote_ident(environment)}.{quote_ident(table)}"
        named = [(name, sql_type) for name, sql_type in columns if name not in place.history]
        names = [quote_ident(name) for name, _ in named]
        sources = [place.source(name, sql_type) for name, sql_type in named]
        packed = [(n, place.json_source(n, t)) for n, t in columns if n in place.history]
        if packed:
            names.append(quote_ident(OVERFLOW_COLUMN))
            sources.append(pack(packed))
        modifiedon = (
            place.source("modifiedon", "timestamp")
            if ("modifiedon", "timestamp") in columns
            else None
        )
        key, key_type = names[0], columns[0][1]
        names_, sources_ = tuple(names), tuple(sources)
        return cls(flavour, history, mirror, key, key_type, names_, modifiedon, sources_)

    # --- expressions -----------------------------------------------------------------------
    def _moment(self, expression: str) -> str:
        return _SQLITE_MOMENT.format(expression) if self.flavour == "sqlite" else expression

    def _param_moment(self, name: str) -> str:
        if self.flavour == "sqlite":
            return _SQLITE_MOMENT.format(f":{name}")
        return f"CAST(CAST(:{name} AS text) AS timestamptz)"  # asyncpg: a text parameter

    def _param_stamp(self, name: str) -> str:
        """A sync stamp as the mirror's `_dv_synced_at` stores it."""
        return f":{name}" if self.flavour == "sqlite" else self._param_moment(name)

    def _greatest(self, a: str, b: str) -> str:
        return f"max({a}, {b})" if self.flavour == "sqlite" else f"GREATEST({a}, {b})"

    def _distinct(self, a: str, b: str, *, negate: bool = False) -> str:
        if self.flavour == "sqlite":
            return f"{a} IS {b}" if negate else f"{a} IS NOT {b}"
        return f"{a} IS {'NOT ' if negate else ''}DISTINCT FROM {b}"

    def _source_time(self, fallback: str) -> str:
        """When the mirror row `m`'s version began: its `modifiedon`, else `fallback`."""
        if not self.modifiedon:
            return fallback
        return f"coalesce({self._moment(self.modifiedon)}, {fallback})"

    def _keys_in(self, column: str) -> str:
        """`column` is one of the keys bound as :ids (see `ids_param`)."""
        if self.flavour == "sqlite":
            return f"{column} IN (SELECT value FROM json_each(:ids))"  # noqa: S608
        return f"{column} = ANY(CAST(CAST(:ids AS text[]) AS {COLUMN_TYPE[self.key_type]}[]))"

    def ids_param(self, ids: Sequence[str]) -> object:
        return orjson.dumps(list(ids)).decode() if self.flavour == "sqlite" else list(ids)

    @property
    def _tail(self) -> str:
        names = (VERSION_COLUMN, VALID_FROM, VALID_TO, OP, SYNCED_COLUMN, COMMIT_SEQ_COLUMN)
        return ", ".join(quote_ident(n) for n in names)

    def _copied(self, alias: str) -> str:
        """The columns' values from the mirror row `m`, or from the history row `alias`."""
        if alias == "m":
            return ", ".join(self._sources)
        return ", ".join(f"{alias}.{c}" for c in self.columns)

    @property
    def _sources(self) -> tuple[str, ...]:
        return self.sources or tuple(f"m.{c}" for c in self.columns)

    # --- a page's upserts (run right after the mirror's upsert) ----------------------------
    # Each statement starts from the page's changed mirror rows and looks their keys up in the
    # history's indexes, so its cost follows the page, not the history table.
    def _begins(self, latest: str) -> str:
        """When a new version of `m` begins: its source time when that is after `latest` (the
        key's latest version began then; NULL: none), else the sync time (a row created again
        with an older `modifiedon`, a revived row), never before `latest`."""
        start = self._source_time(self._param_moment("stamp"))
        synced = self._greatest(self._param_moment("stamp"), latest)
        return f"CASE WHEN {latest} IS NULL OR {start} > {latest} THEN {start} ELSE {synced} END"

    def _new_from(self) -> str:
        """A new version of `m` begins where the key's version closed by this page ended (see
        `close_superseded`: never before the source time), else at the source time."""
        start = self._source_time(self._param_moment("stamp"))
        ended = (
            f"(SELECT max(p.{VALID_TO}) FROM {self.history} AS p "  # noqa: S608
            f"WHERE p.{self.key} = m.{self.key})"
        )
        return self._greatest(start, f"coalesce({ended}, {start})")

    def _changed(self, *, catch_up: bool) -> str:
        """The live mirror rows `m` a statement covers: the page's changed rows (they carry its
        commit number; the index on it finds them), or for a catch-up every row changed after
        :since. Soft-deleted rows are left to `close_gone`."""
        seq, live = quote_ident(COMMIT_SEQ_COLUMN), f"m.{quote_ident(DELETED_COLUMN)} IS NULL"
        if catch_up:
            return f"m.{seq} > :since AND {live}"
        return f"m.{seq} = :seq AND {live}"

    def _unless_open(self) -> str:
        """Skip a key that has an open version: the unique index on open versions decides, one
        index probe per row (an anti-join may be planned as a scan per row)."""
        return f"ON CONFLICT ({self.key}) WHERE {VALID_TO} IS NULL DO NOTHING"

    def close_superseded(self, *, catch_up: bool = False) -> str:
        """Close the open version of each changed row whose version it no longer is."""
        seq, version = quote_ident(COMMIT_SEQ_COLUMN), quote_ident(VERSION_COLUMN)
        end = self._begins(f"h.{VALID_FROM}")  # the open version is the key's latest
        return (
            f"UPDATE {self.history} AS h SET {VALID_TO} = {end}, "  # noqa: S608
            f"{seq} = :seq FROM {self.mirror} AS m "
            f"WHERE {self._changed(catch_up=catch_up)} AND h.{VALID_TO} IS NULL "
            f"AND m.{self.key} = h.{self.key} "
            f"AND (h.{OP} = 'delete' OR {self._distinct(f'h.{version}', f'm.{version}')})"
        )

    def refresh_current(self, *, catch_up: bool = False) -> str:
        """A changed row with the same version (a column added or refilled): its open version
        takes the new values in place; no new version."""
        seq, version = quote_ident(COMMIT_SEQ_COLUMN), quote_ident(VERSION_COLUMN)
        pairs = zip(self.columns[1:], self._sources[1:], strict=True)
        sets = ", ".join(f"{c} = {source}" for c, source in pairs)
        sets = f"{sets}, {seq} = :seq" if sets else f"{seq} = :seq"
        same = self._distinct(f"h.{version}", f"m.{version}", negate=True)
        return (
            f"UPDATE {self.history} AS h SET {sets} FROM {self.mirror} AS m "  # noqa: S608
            f"WHERE {self._changed(catch_up=catch_up)} AND h.{VALID_TO} IS NULL "
            f"AND m.{self.key} = h.{self.key} AND h.{OP} = 'upsert' AND {same}"
        )

    def open_changed(self, *, catch_up: bool = False) -> str:
        """A new open version for each changed row without one (new, or just closed)."""
        values = f"{self._copied('m')}, m.{quote_ident(VERSION_COLUMN)}, {self._new_from()}"
        return (
            f"INSERT INTO {self.history} ({', '.join(self.columns)}, {self._tail}) "  # noqa: S608
            f"SELECT {values}, NULL, 'upsert', {self._param_stamp('stamp')}, :seq "
            f"FROM {self.mirror} AS m WHERE {self._changed(catch_up=catch_up)} "
            f"{self._unless_open()}"
        )

    # --- deletions (run right after the mirror's delete or sweep) --------------------------
    def close_gone(self, *, by_ids: bool) -> str:
        """Close the open `upsert` version of each key (of :ids, or every key) that has no
        live mirror row any more."""
        seq, deleted = quote_ident(COMMIT_SEQ_COLUMN), quote_ident(DELETED_COLUMN)
        picked = f" AND {self._keys_in(f'h.{self.key}')}" if by_ids else ""
        at = self._greatest(f"h.{VALID_FROM}", self._param_moment("at"))
        return (
            f"UPDATE {self.history} AS h SET {VALID_TO} = {at}, {seq} = :seq "  # noqa: S608
            f"WHERE h.{VALID_TO} IS NULL AND h.{OP} = 'upsert'{picked} AND NOT EXISTS "
            f"(SELECT 1 FROM {self.mirror} AS m WHERE m.{self.key} = h.{self.key} "
            f"AND m.{deleted} IS NULL)"
        )

    def open_deletions(self) -> str:
        """A `delete` version (the last values, open) for each version `close_gone` closed:
        closed by this commit and left without an open version."""
        seq = quote_ident(COMMIT_SEQ_COLUMN)
        values = f"{self._copied('h')}, h.{quote_ident(VERSION_COLUMN)}, h.{VALID_TO}"
        return (
            f"INSERT INTO {self.history} ({', '.join(self.columns)}, {self._tail}) "  # noqa: S608
            f"SELECT {values}, NULL, 'delete', {self._param_stamp('at')}, :seq "
            f"FROM {self.history} AS h WHERE h.{seq} = :seq AND h.{OP} = 'upsert' "
            f"AND h.{VALID_TO} IS NOT NULL {self._unless_open()}"
        )

    # --- catching up -----------------------------------------------------------------------
    def newest_numbers(self) -> str:
        """The newest commit numbers of the mirror's live rows and of the history: with history
        on all the time the history's is never lower (a live row's number is that of the page
        that changed it, which wrote its version under the same number)."""
        seq, deleted = quote_ident(COMMIT_SEQ_COLUMN), quote_ident(DELETED_COLUMN)
        # ORDER BY … DESC LIMIT 1 walks the commit-number index backwards (a max() with a WHERE
        # would scan a SQLite table).
        newest_live = (
            f"SELECT {seq} FROM {self.mirror} WHERE {deleted} IS NULL "  # noqa: S608
            f"AND {seq} IS NOT NULL ORDER BY {seq} DESC LIMIT 1"
        )
        return f"SELECT ({newest_live}), (SELECT max({seq}) FROM {self.history})"  # noqa: S608

    # --- retention -------------------------------------------------------------------------
    def prune(self) -> str:
        """Versions that ended before :cutoff, and deletions older than it (nothing a
        point-in-time read after :cutoff can see)."""
        cutoff = self._param_moment("cutoff")
        return (
            f"DELETE FROM {self.history} WHERE ({VALID_TO} IS NOT NULL AND {VALID_TO} < {cutoff}) "  # noqa: S608
            f"OR ({OP} = 'delete' AND {VALID_FROM} < {cutoff})"
        )

    # --- DDL -------------------------------------------------------------------------------
    def seed(self) -> str:
        """Open versions for the live rows a mirror already had when history was turned on."""
        seq, synced = quote_ident(COMMIT_SEQ_COLUMN), quote_ident(SYNCED_COLUMN)
        start = self._source_time(self._moment(f"m.{synced}"))
        values = f"{self._copied('m')}, m.{quote_ident(VERSION_COLUMN)}, {start}"
        return (
            f"INSERT INTO {self.history} ({', '.join(self.columns)}, {self._tail}) "  # noqa: S608
            f"SELECT {values}, NULL, 'upsert', m.{synced}, m.{seq} "
            f"FROM {self.mirror} AS m WHERE m.{quote_ident(DELETED_COLUMN)} IS NULL"
        )


def _index_name(flavour: Flavour, environment: str, table: str, what: str) -> str:
    if flavour == "sqlite":
        return quote_ident(f"ix_{environment}__{history_table(table)}_{what}")
    digest = hashlib.sha256(table.encode()).hexdigest()[:8]
    return quote_ident(f"ix_{table[:36]}_{digest}_h_{what}")


def create_history_sql(
    flavour: Flavour,
    environment: str,
    table: str,
    columns: Sequence[tuple[str, SqlType]],
) -> list[str]:
    """The history table and its indexes: at most one open version per key (a unique partial
    index: a replay can never add a second), (key, valid_from) for point-in-time reads, and the
    commit number (the deletion step and incremental loads)."""
    sql = HistorySql.build(flavour, environment, table, columns)
    storage: dict[SqlType, str] = dict(STORAGE if flavour == "sqlite" else COLUMN_TYPE)
    moment = "TEXT" if flavour == "sqlite" else "timestamptz"
    number = "INTEGER" if flavour == "sqlite" else "bigint"
    parts = [f"{sql.key} {storage[columns[0][1]]} NOT NULL"]
    parts += [f"{quote_ident(c)} {storage[t]}" for c, t in columns[1:]]
    parts += [
        f"{quote_ident(VERSION_COLUMN)} {number}",
        f"{VALID_FROM} {moment} NOT NULL",
        f"{VALID_TO} {moment}",
        f"{OP} {'TEXT' if flavour == 'sqlite' else 'text'} NOT NULL "
        f"CHECK ({OP} IN ('upsert', 'delete'))",
        f"{quote_ident(SYNCED_COLUMN)} {moment} NOT NULL",
        f"{quote_ident(COMMIT_SEQ_COLUMN)} {number}",
    ]
    strict = " STRICT" if flavour == "sqlite" else ""
    seq = quote_ident(COMMIT_SEQ_COLUMN)

    def index(what: str) -> str:
        return _index_name(flavour, environment, table, what)

    return [
        f"CREATE TABLE IF NOT EXISTS {sql.history} ({', '.join(parts)}){strict}",
        f"CREATE UNIQUE INDEX IF NOT EXISTS {index('open')} ON {sql.history} ({sql.key}) "
        f"WHERE {VALID_TO} IS NULL",
        f"CREATE INDEX IF NOT EXISTS {index('from')} ON {sql.history} ({sql.key}, {VALID_FROM})",
        f"CREATE INDEX IF NOT EXISTS {index('seq')} ON {sql.history} ({seq})",
    ]
