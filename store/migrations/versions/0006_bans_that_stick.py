"""bans that stick: a ban may last until lifted, and records who supervises

Revision ID: 0006_bans_that_stick
Revises: 0005_alert_evidence
Create Date: 2026-12-06 07:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import schoolgate.store.coltypes

revision: str = "0006_bans_that_stick"
down_revision: str | None = "0005_alert_evidence"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("bans") as batch:
        batch.alter_column("until", existing_type=schoolgate.store.coltypes.UTCDateTime(), nullable=True)
        batch.add_column(sa.Column("supervisor", sa.String(length=200), server_default="", nullable=False))


def downgrade() -> None:
    # The older schema cannot hold a ban without an end: such bans end where they started.
    op.execute("UPDATE bans SET until = starts WHERE until IS NULL")
    with op.batch_alter_table("bans") as batch:
        batch.drop_column("supervisor")
        batch.alter_column("until", existing_type=schoolgate.store.coltypes.UTCDateTime(), nullable=False)
