"""Attempts (issue 16): `run.attempts_refunded` and the attempt that wrote each `run_event`.

Existing rows get the defaults: no refunded starts, and every old event belongs to attempt 1.

Revision ID: 0002_attempts
Revises: 0001_baseline
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_attempts"
down_revision = "0001_baseline"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "run",
        sa.Column("attempts_refunded", sa.Integer(), nullable=False, server_default="0"),
    )
    op.add_column(
        "run_event", sa.Column("attempt", sa.Integer(), nullable=False, server_default="1")
    )


def downgrade() -> None:
    with op.batch_alter_table("run_event") as batch:
        batch.drop_column("attempt")
    with op.batch_alter_table("run") as batch:
        batch.drop_column("attempts_refunded")
