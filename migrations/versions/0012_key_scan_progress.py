"""dv_sync_state.key_scan: the progress of a ranged pass's key-only scan

A key page now commits where the scan stands (its next link, the pass's start and the bounded
key sample), so a crash during the scan resumes it instead of scanning every key again.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


# Plain ALTER TABLE, no batch copy: the dv_table_status view (0007) reads dv_sync_state, and
# SQLite refuses to rename a copy in its place; SQLite adds and drops a column in place.
def upgrade() -> None:
    op.add_column("dv_sync_state", sa.Column("key_scan", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("dv_sync_state", "key_scan")
