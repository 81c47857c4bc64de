"""alert evidence: what the device did, where, when and how often, kept with each case

Revision ID: 0005_alert_evidence
Revises: 0004_workflows
Create Date: 2026-12-06 06:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_alert_evidence"
down_revision: str | None = "0004_workflows"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("alerts") as batch:
        batch.add_column(sa.Column("evidence", sa.Text(), server_default="", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("alerts") as batch:
        batch.drop_column("evidence")
