"""verify runs: dv_verify_runs, and why a deletion was logged (_dv_deletions.reason)

`dvmirror verify` (and the daemon every `verify_interval`) compares each mirror table with
Dataverse and writes one row per table and run: what each level found, what was repaired.
`_dv_deletions.reason` says why the mirror deleted a row: NULL for the sync itself, `verify`
for a ghost that `verify --repair` removed.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 11:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dv_verify_runs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("environment", sa.String(length=63), nullable=False),
        sa.Column("table_name", sa.String(length=128), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("level", sa.Integer(), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("source_estimate", sa.BigInteger(), nullable=True),
        sa.Column("mirror_rows", sa.BigInteger(), nullable=True),
        sa.Column("ranges", sa.Integer(), server_default="0", nullable=False),
        sa.Column("missing", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("ghost", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("stale", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("repaired", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("requests", sa.Integer(), server_default="0", nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dv_verify_runs")),
    )
    with op.batch_alter_table("dv_verify_runs") as batch:
        batch.create_index(
            batch.f("ix_dv_verify_runs_environment_table_name_started_at"),
            ["environment", "table_name", "started_at"],
            unique=False,
        )
    with op.batch_alter_table("_dv_deletions") as batch:
        batch.add_column(sa.Column("reason", sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("_dv_deletions") as batch:
        batch.drop_column("reason")
    with op.batch_alter_table("dv_verify_runs") as batch:
        batch.drop_index(batch.f("ix_dv_verify_runs_environment_table_name_started_at"))
    op.drop_table("dv_verify_runs")
