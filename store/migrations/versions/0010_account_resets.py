"""two-admin resets of a headteacher's account

Revision ID: 0010_account_resets
Revises: 0009_console_sessions
Create Date: 2026-12-07 12:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import schoolgate.store.coltypes

revision: str = '0010_account_resets'
down_revision: str | None = '0009_console_sessions'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('account_resets',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('site', sa.String(length=64), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=10), nullable=False),
    sa.Column('requested_by', sa.String(length=100), nullable=False),
    sa.Column('requested_at', schoolgate.store.coltypes.UTCDateTime(), nullable=False),
    sa.Column('completed_by', sa.String(length=100), nullable=True),
    sa.Column('completed_at', schoolgate.store.coltypes.UTCDateTime(), nullable=True),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_account_resets_user_id_users'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_account_resets'))
    )
    with op.batch_alter_table('account_resets', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_account_resets_site'), ['site'], unique=False)
        batch_op.create_index(batch_op.f('ix_account_resets_user_id'), ['user_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('account_resets', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_account_resets_user_id'))
        batch_op.drop_index(batch_op.f('ix_account_resets_site'))
    op.drop_table('account_resets')
