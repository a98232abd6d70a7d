"""column labels: each mirrored column's display name and description at the source

`dvmirror dbt-sources` writes them into sources.yml as the columns' descriptions.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07 11:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("dv_mirror_columns") as batch:
        batch.add_column(sa.Column("display_name", sa.Text(), nullable=True))
        batch.add_column(sa.Column("description", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("dv_mirror_columns") as batch:
        batch.drop_column("description")
        batch.drop_column("display_name")
