"""device ownership

Revision ID: 0003_device_ownership
Revises: 0002_check_log
Create Date: 2026-12-06 06:10:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0003_device_ownership'
down_revision: str | None = '0002_check_log'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Existing devices get no value: "not recorded" until the technician says whose they are.
    with op.batch_alter_table('devices', schema=None) as batch_op:
        batch_op.add_column(sa.Column('ownership', sa.String(length=20), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('devices', schema=None) as batch_op:
        batch_op.drop_column('ownership')
