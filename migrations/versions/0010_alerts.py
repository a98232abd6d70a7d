"""alerts: dv_alert_state, dv_alert_deliveries

The daemon keeps, per alert, environment, table and event, whether the condition holds and when
it last sent a message about it (a restart sends nothing twice), and each alert's last delivery
for `dvmirror status`.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07 10:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dv_alert_state",
        sa.Column("alert", sa.String(length=63), nullable=False),
        sa.Column("environment", sa.String(length=63), nullable=False),
        sa.Column("table_name", sa.String(length=128), nullable=False),
        sa.Column("event", sa.String(length=32), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("marker", sa.String(length=64), server_default="", nullable=False),
        sa.Column("detail", sa.Text(), server_default="", nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint(
            "alert", "environment", "table_name", "event", name=op.f("pk_dv_alert_state")
        ),
    )
    op.create_table(
        "dv_alert_deliveries",
        sa.Column("alert", sa.String(length=63), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("event", sa.String(length=32), nullable=False),
        sa.Column("environment", sa.String(length=63), nullable=False),
        sa.Column("table_name", sa.String(length=128), nullable=False),
        sa.Column("outcome", sa.String(length=255), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("last_ok_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("failures", sa.BigInteger(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("alert", name=op.f("pk_dv_alert_deliveries")),
    )


def downgrade() -> None:
    op.drop_table("dv_alert_deliveries")
    op.drop_table("dv_alert_state")
