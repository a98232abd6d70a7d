"""resync requests and the audit: dv_resync_requests, dv_audit

`dvmirror resync` and the web console queue a full pass of a table (or of every table of an
environment) in dv_resync_requests; the daemon holding the environment's lease runs it and
writes its progress back. dv_audit records sign-ins, refusals and actions (never a token).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07 06:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dv_resync_requests",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("environment", sa.String(length=63), nullable=False),
        sa.Column("table_name", sa.String(length=128), nullable=True),
        sa.Column("requested_by", sa.String(length=255), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("state", sa.String(length=16), server_default="requested", nullable=False),
        sa.Column("rows_done", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("rows_expected", sa.BigInteger(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("handled_by", sa.String(length=255), nullable=True),
        sa.Column("open_key", sa.String(length=200), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dv_resync_requests")),
    )
    with op.batch_alter_table("dv_resync_requests") as batch:
        batch.create_index(
            batch.f("ix_dv_resync_requests_open_key"), ["open_key"], unique=True
        )
        batch.create_index(
            batch.f("ix_dv_resync_requests_environment_requested_at"),
            ["environment", "requested_at"],
            unique=False,
        )
    op.create_table(
        "dv_audit",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("tenant_id", sa.String(length=255), nullable=True),
        sa.Column("user_oid", sa.String(length=36), nullable=True),
        sa.Column("preferred_username", sa.String(length=255), nullable=True),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("environment", sa.String(length=63), nullable=True),
        sa.Column("target", sa.String(length=255), nullable=True),
        sa.Column("outcome", sa.String(length=255), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dv_audit")),
    )
    with op.batch_alter_table("dv_audit") as batch:
        batch.create_index(batch.f("ix_dv_audit_at"), ["at"], unique=False)
        batch.create_index(
            batch.f("ix_dv_audit_environment_at"), ["environment", "at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("dv_audit") as batch:
        batch.drop_index(batch.f("ix_dv_audit_environment_at"))
        batch.drop_index(batch.f("ix_dv_audit_at"))
    op.drop_table("dv_audit")
    with op.batch_alter_table("dv_resync_requests") as batch:
        batch.drop_index(batch.f("ix_dv_resync_requests_environment_requested_at"))
        batch.drop_index(batch.f("ix_dv_resync_requests_open_key"))
    op.drop_table("dv_resync_requests")
