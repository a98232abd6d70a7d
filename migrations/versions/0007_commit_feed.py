"""commit feed and table status: dv_commits, _dv_deletions._dv_commit_seq, the status view

The change feed (sync.store.commits): dv_commits numbers, per environment and in commit order,
every page transaction that really changed a mirror; `_dv_deletions` rows carry the number of
the commit that logged them (NULL for rows logged before this revision). Mirror tables get their
`_dv_commit_seq` column from the mirror DDL (sync.store.mirror_tables), not from here.

The view `dv_table_status` (PostgreSQL: `dvmirror.table_status`) is a stable, documented read of
dv_sync_state for BI tools and dbt tests; its columns are a contract (README "Table status in
SQL"): change them only in a new revision that keeps the old names.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07 11:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# How the phase reads as the initial sync's state; sync.store.table_status.initial_sync_state is
# the same rule for `dvmirror status` (a test checks they agree).
_INITIAL_SYNC = (
    "CASE s.phase WHEN 'new' THEN 'NotStarted' WHEN 'backfill' THEN 'InProgress' "
    "ELSE 'Completed' END"
)
# source_rows_estimate / source_rows_as_of / last_verify: NULL until the verify runs are stored
# (dv_verify_runs); a later revision joins them in under the same column names.
_SQLITE_VIEW = f"""
CREATE VIEW dv_table_status AS
SELECT s.environment AS environment,
       s.table_name AS "table",
       s.phase AS phase,
       {_INITIAL_SYNC} AS initial_sync,
       s.last_success AS last_synced_at,
       CASE WHEN s.last_success IS NULL THEN NULL
            ELSE round((julianday('now') - julianday(s.last_success)) * 86400.0, 3) END
         AS lag_seconds,
       s.row_count AS mirror_rows,
       CAST(NULL AS INTEGER) AS source_rows_estimate,
       CAST(NULL AS TEXT) AS source_rows_as_of,
       CAST(NULL AS TEXT) AS last_verify,
       s.last_error AS last_error,
       s.parked_until AS parked_until
FROM dv_sync_state AS s
"""
_POSTGRES_VIEW = f"""
CREATE VIEW dvmirror.table_status AS
SELECT s.environment AS environment,
       s.table_name AS "table",
       s.phase AS phase,
       {_INITIAL_SYNC} AS initial_sync,
       s.last_success AS last_synced_at,
       round(EXTRACT(EPOCH FROM (now() - s.last_success))::numeric, 3)::double precision
         AS lag_seconds,
       s.row_count AS mirror_rows,
       NULL::bigint AS source_rows_estimate,
       NULL::timestamptz AS source_rows_as_of,
       NULL::timestamptz AS last_verify,
       s.last_error AS last_error,
       s.parked_until AS parked_until
FROM dvmirror.dv_sync_state AS s
"""


def upgrade() -> None:
    op.create_table(
        "dv_commits",
        sa.Column("environment", sa.String(length=63), nullable=False),
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("table_name", sa.String(length=128), nullable=False),
        sa.Column("committed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("upserts", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("deletes", sa.BigInteger(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("environment", "seq", name=op.f("pk_dv_commits")),
    )
    with op.batch_alter_table("_dv_deletions") as batch:
        batch.add_column(sa.Column("_dv_commit_seq", sa.BigInteger(), nullable=True))
        batch.create_index(
            batch.f("ix__dv_deletions_environment__dv_commit_seq"),
            ["environment", "_dv_commit_seq"],
            unique=False,
        )
    postgres = op.get_bind().dialect.name == "postgresql"
    op.execute(_POSTGRES_VIEW if postgres else _SQLITE_VIEW)


def downgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    op.execute(
        "DROP VIEW IF EXISTS " + ("dvmirror.table_status" if postgres else "dv_table_status")
    )
    with op.batch_alter_table("_dv_deletions") as batch:
        batch.drop_index(batch.f("ix__dv_deletions_environment__dv_commit_seq"))
        batch.drop_column("_dv_commit_seq")
    op.drop_table("dv_commits")
