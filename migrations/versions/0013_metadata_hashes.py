"""metadata hashes: dv_metadata_hashes

The Synapse-style metadata tables of each environment (optionsetmetadata, statemetadata, …) are
rewritten, per Dataverse table, only when the hash of its rows changes; this keeps those hashes.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07 13:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dv_metadata_hashes",
        sa.Column("environment", sa.String(length=63), nullable=False),
        sa.Column("metadata_table", sa.String(length=63), nullable=False),
        sa.Column("entityname", sa.String(length=128), nullable=False),
        sa.Column("source_hash", sa.String(length=64), nullable=False),
        sa.Column("row_count", sa.Integer(), nullable=False),
        sa.Column("refreshed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint(
            "environment", "metadata_table", "entityname", name=op.f("pk_dv_metadata_hashes")
        ),
    )


def downgrade() -> None:
    op.drop_table("dv_metadata_hashes")
