"""upload_grants and pending_datasets: presigned-upload grants and pending datasets in the database,
shared by every API server (they were files under one server's PREFTUNE_HOME)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "upload_grants",
        sa.Column("file_id", sa.String(length=64), primary_key=True),
        sa.Column("owner_id", sa.String(length=64), sa.ForeignKey("owners.id"), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.Column("claimed_at", sa.Float(), nullable=True),
    )
    op.create_index("ix_upload_grants_owner_id", "upload_grants", ["owner_id"])
    op.create_index("ix_upload_grants_expires", "upload_grants", ["expires_at"])
    op.create_table(
        "pending_datasets",
        sa.Column("owner_id", sa.String(length=64), sa.ForeignKey("owners.id"), primary_key=True),
        sa.Column("name", sa.String(length=63), primary_key=True),
        sa.Column("display_name", sa.String(length=500), nullable=True),
        sa.Column("example_count", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("ready", sa.Boolean(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("pending_datasets")
    op.drop_index("ix_upload_grants_expires", table_name="upload_grants")
    op.drop_index("ix_upload_grants_owner_id", table_name="upload_grants")
    op.drop_table("upload_grants")
