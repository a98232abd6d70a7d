"""dv_run_history.paused_seconds: the Retry-After pause each run's 429s started

The governor counts the seconds it held an application user back for Retry-After; a run now
keeps its share, so the console and `status` can show the pause of the last 24 h per
environment after the process that paused is gone.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07 11:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("dv_run_history") as batch:
        batch.add_column(
            sa.Column("paused_seconds", sa.Float(), server_default="0", nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("dv_run_history") as batch:
        batch.drop_column("paused_seconds")
