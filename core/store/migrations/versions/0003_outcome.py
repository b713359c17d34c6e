"""Test outcome (issue 15): `run.outcome`, "passed" | "failed" for finished test runs.

Nullable: other runs, and test runs finished before this revision, have none. Indexed, since
runs lists filter by it (`?outcome=failed`).

Revision ID: 0003_outcome
Revises: 0002_attempts
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_outcome"
down_revision = "0002_attempts"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("run", sa.Column("outcome", sa.String(16), nullable=True))
    op.create_index("ix_run_outcome", "run", ["outcome"])


def downgrade() -> None:
    op.drop_index("ix_run_outcome", table_name="run")
    with op.batch_alter_table("run") as batch:
        batch.drop_column("outcome")
