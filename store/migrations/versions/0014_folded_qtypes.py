"""events.qtype holds every DNS type of a folded attempt ("A,AAAA,HTTPS")

Revision ID: 0014_folded_qtypes
Revises: 0013_partial_event_indexes
Create Date: 2026-12-06 21:30:00

The event writer folds a burst's asks of one name by one device into one row (its count the
number of asks, its qtype the types asked); ten characters held only two of the three types
a phone asks. SQLite does not enforce the width, but the models and the schema must agree.
On SQLite only the declared type in the table's schema text is changed, in place, by SQLite's
documented procedure for schema changes that leave the stored rows as they are (writable_schema,
then a new schema version): a batch rebuild would copy the whole events table, minutes and
gigabytes on a school's SD card for a year of events, and a widened VARCHAR changes nothing on
disk. Where that cannot be done (offline SQL, a schema text not as expected, a defensive
SQLite) the table is rebuilt as batch mode does.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.exc import OperationalError

revision: str = '0014_folded_qtypes'
down_revision: str | None = '0013_partial_event_indexes'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PARTIAL = (("ix_events_site_person_ts", "person_id"), ("ix_events_site_service_ts", "service"))


def _declare_in_place(old: int, new: int) -> bool:
    """Change qtype's declared width in SQLite's schema text; False where that cannot be done."""
    if context.is_offline_mode():
        return False
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        return False
    schema = bind.exec_driver_sql("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'events'").scalar()
    declared = f"qtype VARCHAR({old})"
    if not isinstance(schema, str) or schema.count(declared) != 1:
        return False
    version = int(bind.exec_driver_sql("PRAGMA schema_version").scalar_one())
    bind.exec_driver_sql("PRAGMA writable_schema = ON")
    try:
        bind.exec_driver_sql("UPDATE sqlite_master SET sql = ? WHERE type = 'table' AND name = 'events'",
                             (schema.replace(declared, f"qtype VARCHAR({new})"),))
    except OperationalError:  # SQLITE_DBCONFIG_DEFENSIVE forbids it: rebuild instead
        return False
    finally:
        bind.exec_driver_sql("PRAGMA writable_schema = OFF")
    # Every connection, this one included, reads the schema again.
    bind.exec_driver_sql(f"PRAGMA schema_version = {version + 1}")
    # SQLite parses the new text now (a quick_check would read the whole file: minutes on a Pi).
    declared_now = {row[1]: row[2] for row in bind.exec_driver_sql("PRAGMA table_info(events)")}
    if declared_now.get("qtype") != f"VARCHAR({new})":
        raise RuntimeError(f"events.qtype reads as {declared_now.get('qtype')!r} after its change to VARCHAR({new})")
    return True


def _widen(old: int, new: int) -> None:
    if _declare_in_place(old, new):
        return
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
