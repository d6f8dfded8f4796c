"""evaluations: held-out evaluations of a model or adapter on a preference file

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "evaluations",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("owner_id", sa.String(length=64), nullable=False),
        sa.Column("model", sa.String(length=1000), nullable=False),
        sa.Column("file_id", sa.String(length=64), nullable=False),
        sa.Column("base", sa.String(length=1000), nullable=True),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("model_path", sa.Text(), nullable=False),
        sa.Column("base_model_path", sa.Text(), nullable=True),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("runner_id", sa.String(length=200), nullable=True),
        sa.Column("progress", sa.JSON(), nullable=True),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("error_code", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=True),
        sa.Column("finished_at", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(["owner_id"], ["owners.id"]),
        sa.ForeignKeyConstraint(["file_id"], ["files.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_evaluations_owner_created", "evaluations", ["owner_id", "created_at"])
    op.create_index("ix_evaluations_status_created", "evaluations", ["status", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_evaluations_status_created", table_name="evaluations")
    op.drop_index("ix_evaluations_owner_created", table_name="evaluations")
    op.drop_table("evaluations")
