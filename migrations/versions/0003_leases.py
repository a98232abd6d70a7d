"""leases: fencing tokens, live daemons, the lease token of each checkpoint

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-10 09:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("dv_leases") as batch:
        batch.add_column(sa.Column("token", sa.BigInteger(), server_default="0", nullable=False))
    with op.batch_alter_table("dv_sync_state") as batch:
        batch.add_column(sa.Column("lease_token", sa.BigInteger(), nullable=True))
    op.create_table(
        "dv_daemons",
        sa.Column("holder", sa.String(length=255), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("holder", name=op.f("pk_dv_daemons")),
    )


def downgrade() -> None:
    op.drop_table("dv_daemons")
    with op.batch_alter_table("dv_sync_state") as batch:
        batch.drop_column("lease_token")
    with op.batch_alter_table("dv_leases") as batch:
        batch.drop_column("token")
