"""events: the indexes by person and by service hold only the rows that name one

Revision ID: 0013_partial_event_indexes
Revises: 0012_coverage
Create Date: 2026-12-06 21:05:00

Most events name no person (a shared iPad, a pupil's own phone) and no service, yet every
event paid for an entry in both indexes; the event writer's CPU per blocked query is a budget
on the Pi. Every reader looks up one person or one service by equality, which implies
IS NOT NULL, so the partial indexes serve the same queries.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0013_partial_event_indexes'
down_revision: str | None = '0012_coverage'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PARTIAL = (("ix_events_site_person_ts", "person_id"), ("ix_events_site_service_ts", "service"))


def upgrade() -> None:
    for name, column in PARTIAL:
        op.drop_index(name, table_name="events")
        where = sa.text(f"{column} IS NOT NULL")
        op.create_index(name, "events", ["site", column, "ts"], unique=False,
                        sqlite_where=where, postgresql_where=where)


def downgrade() -> None:
    for name, column in PARTIAL:
        op.drop_index(name, table_name="events")
        op.create_index(name, "events", ["site", column, "ts"], unique=False)
