"""policy versions

Revision ID: 0011_policy_versions
Revises: 0010_account_resets
Create Date: 2026-12-06 07:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import schoolgate.store.coltypes

revision: str = '0011_policy_versions'
down_revision: str | None = '0010_account_resets'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('policy_versions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('site', sa.String(length=64), nullable=False),
    sa.Column('fingerprint', sa.String(length=64), nullable=False),
    sa.Column('loaded_at', schoolgate.store.coltypes.UTCDateTime(), nullable=False),
    sa.Column('path', sa.String(length=500), nullable=False),
    sa.Column('installed_by', sa.String(length=200), nullable=False),
    sa.Column('file_owner', sa.String(length=100), nullable=False),
    sa.Column('file_modified', schoolgate.store.coltypes.UTCDateTime(), nullable=True),
    sa.Column('summary', sa.Text(), nullable=False),
    sa.Column('changes', sa.Text(), nullable=False),
    sa.Column('snapshot', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_policy_versions'))
    )
    with op.batch_alter_table('policy_versions', schema=None) as batch_op:
        batch_op.create_index('ix_policy_versions_site_loaded_at', ['site', 'loaded_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('policy_versions', schema=None) as batch_op:
        batch_op.drop_index('ix_policy_versions_site_loaded_at')
    op.drop_table('policy_versions')
