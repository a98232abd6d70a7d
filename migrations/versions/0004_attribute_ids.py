"""attribute ids: the MetadataId of each mirrored column's attribute

A column deleted at the source and created again under the same name is a new attribute (a new
MetadataId) whose values all start empty; the catalogue keeps the id to notice it.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04 06:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("dv_mirror_columns") as batch:
        batch.add_column(sa.Column("attribute_id", sa.String(length=36), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("dv_mirror_columns") as batch:
        batch.drop_column("attribute_id")
