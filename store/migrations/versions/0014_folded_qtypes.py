"""events.qtype holds every DNS type of a folded attempt ("A,AAAA,HTTPS")

Revision ID: 0014_folded_qtypes
Revises: 0013_partial_event_indexes
Create Date: 2026-12-06 21:30:00

The event writer folds a burst's asks of one name by one device into one row (its count the
number of asks, its qtype the types asked); ten characters held only two of the three types
a phone asks. SQLite does not enforce the width, but the models and the schema must agree,
so its table is rebuilt; the partial indexes are made again as they were.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0014_folded_qtypes'
down_revision: str | None = '0013_partial_event_indexes'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PARTIAL = (("ix_events_site_person_ts", "person_id"), ("ix_events_site_service_ts", "service"))


def _widen(old: int, new: int) -> None:
    # SQLite rebuilds the table in batch mode; its reflection may not carry an index's WHERE,
    # so the partial indexes are dropped first and made again after.
    for name, _ in PARTIAL:
        op.drop_index(name, table_name="events")
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.alter_column("qtype", existing_type=sa.String(length=old), type_=sa.String(length=new),
                              existing_nullable=True)
    for name, column in PARTIAL:
        where = sa.text(f"{column} IS NOT NULL")
        op.create_index(name, "events", ["site", column, "ts"], unique=False,
                        sqlite_where=where, postgresql_where=where)


def upgrade() -> None:
    _widen(10, 40)


def downgrade() -> None:
    # A folded row's types do not fit ten characters: keep the first type asked.
    op.execute("UPDATE events SET qtype = substr(qtype, 1, instr(qtype, ',') - 1) WHERE qtype LIKE '%,%'"
               if op.get_bind().dialect.name == "sqlite" else
               "UPDATE events SET qtype = split_part(qtype, ',', 1) WHERE qtype LIKE '%,%'")
    _widen(40, 10)
