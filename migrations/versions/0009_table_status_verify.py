"""The table status view takes the source's row count and the last verification from
dv_verify_runs (`dvmirror verify`), under the column names it already had; one column more,
`last_verify_outcome`.

`source_rows_estimate` is the newest run's RetrieveTotalRecordCount figure that has one, and
`source_rows_as_of` when that run asked (Dataverse's own count may be up to 24 h older than
that). `last_verify` is when the newest run finished, `last_verify_outcome` how it ended.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_INITIAL_SYNC = (
    "CASE s.phase WHEN 'new' THEN 'NotStarted' WHEN 'backfill' THEN 'InProgress' "
    "ELSE 'Completed' END"
)


def _view(postgres: bool, *, with_verify: bool = True) -> str:
    """The view of this revision, or (with_verify False) revision 0007's, for the downgrade."""
    schema = "dvmirror." if postgres else ""
    name = "dvmirror.table_status" if postgres else "dv_table_status"
    lag = (
        "round(EXTRACT(EPOCH FROM (now() - s.last_success))::numeric, 3)::double precision"
        if postgres
        else "CASE WHEN s.last_success IS NULL THEN NULL "
        "ELSE round((julianday('now') - julianday(s.last_success)) * 86400.0, 3) END"
    )
    if not with_verify:
        nulls = ("bigint", "timestamptz", "timestamptz") if postgres else ("INTEGER", "TEXT", "TEXT")
        columns = ["source_rows_estimate", "source_rows_as_of", "last_verify"]
        verified = ",\n       ".join(
            f"CAST(NULL AS {kind}) AS {column}" for kind, column in zip(nulls, columns, strict=True)
        )
        return f"""
CREATE VIEW {name} AS
SELECT s.environment AS environment,
       s.table_name AS "table",
       s.phase AS phase,
       {_INITIAL_SYNC} AS initial_sync,
       s.last_success AS last_synced_at,
       {lag} AS lag_seconds,
       s.row_count AS mirror_rows,
       {verified},
       s.last_error AS last_error,
       s.parked_until AS parked_until
FROM {schema}dv_sync_state AS s
"""
    runs = f"{schema}dv_verify_runs"
    same_table = "w.environment = s.environment AND w.table_name = s.table_name"
    return f"""
CREATE VIEW {name} AS
SELECT s.environment AS environment,
       s.table_name AS "table",
       s.phase AS phase,
       {_INITIAL_SYNC} AS initial_sync,
       s.last_success AS last_synced_at,
       {lag} AS lag_seconds,
       s.row_count AS mirror_rows,
       e.source_estimate AS source_rows_estimate,
       e.started_at AS source_rows_as_of,
       v.finished_at AS last_verify,
       s.last_error AS last_error,
       s.parked_until AS parked_until,
       v.outcome AS last_verify_outcome
FROM {schema}dv_sync_state AS s
LEFT JOIN {runs} AS v ON v.id = (
    SELECT max(w.id) FROM {runs} AS w WHERE {same_table})
LEFT JOIN {runs} AS e ON e.id = (
    SELECT max(w.id) FROM {runs} AS w WHERE {same_table} AND w.source_estimate IS NOT NULL)
"""


def _drop(postgres: bool) -> None:
    op.execute("DROP VIEW " + ("dvmirror.table_status" if postgres else "dv_table_status"))


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    _drop(postgres)  # SQLite cannot replace a view, and PostgreSQL cannot reorder its columns
    op.execute(_view(postgres))


def downgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    _drop(postgres)
    op.execute(_view(postgres, with_verify=False))
