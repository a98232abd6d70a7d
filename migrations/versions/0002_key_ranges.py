"""key ranges: per-range checkpoints of a parallel backfill

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03 09:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dv_key_ranges",
        sa.Column("environment", sa.String(length=63), nullable=False),
        sa.Column("table_name", sa.String(length=128), nullable=False),
        sa.Column("range_no", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("lower_key", sa.String(length=36), nullable=True),
        sa.Column("upper_key", sa.String(length=36), nullable=True),
        sa.Column("next_link", sa.Text(), nullable=True),
        sa.Column("done", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("rows", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("pages", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint(
            "environment", "table_name", "range_no", name=op.f("pk_dv_key_ranges")
        ),
    )


def downgrade() -> None:
    op.drop_table("dv_key_ranges")
