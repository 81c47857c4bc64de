"""events.ts on SQLite: an INTEGER of microseconds since the epoch instead of text

Revision ID: 0016_events_integer_time
Revises: 0015_events_verdict_index
Create Date: 2026-12-07 05:20:00

Every blocked query is a row, and its time is a key in three of the table's indexes: as 26
characters of text ("2026-12-01 09:00:00.000000") it is compared byte by byte and written
four times per row. As an integer (store.coltypes.UTCMicroseconds) SQLite's insert is about a
tenth cheaper and the event writer formats no text per row. Readers bind and get back aware
datetimes as before. PostgreSQL keeps its timestamp column: nothing changes there.

On SQLite the stored values are rewritten in place (one UPDATE: the rows and the indexes over
ts, not a copy of the table), then the declared type in the table's schema text is changed as
0014 changes qtype's width (writable_schema, then a new schema version); where that cannot be
done the table is rebuilt as batch mode does. The declared type only sets the column's
affinity: integers are stored as integers under DATETIME's NUMERIC affinity as under BIGINT's
INTEGER affinity, so the in-place change leaves every stored value and index entry as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.exc import OperationalError

revision: str = '0016_events_integer_time'
down_revision: str | None = '0015_events_verdict_index'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
PARTIAL = (("ix_events_site_person_ts", "person_id"), ("ix_events_site_service_ts", "service"))

# SQLAlchemy's SQLite DATETIME text, which every row written by schoolgate has: converted by
# SQLite itself. Any other text (written by hand, say "2026-12-01T09:00:00+01:00") is read
# as UTCDateTime read it, by Python, row by row.
_STORED_TEXT = "'[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9] [0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9][0-9][0-9][0-9]'"
_TO_MICROSECONDS = ("UPDATE events SET ts = CAST(strftime('%s', substr(ts, 1, 19)) AS INTEGER) * 1000000"
                    f" + CAST(substr(ts, 21, 6) AS INTEGER) WHERE typeof(ts) = 'text' AND ts GLOB {_STORED_TEXT}")
# Back to that text; floor division and a non-negative remainder, so that times before 1970
# come back right too.
_SECONDS = "((ts - ((ts % 1000000) + 1000000) % 1000000) / 1000000)"
_TO_TEXT = (f"UPDATE events SET ts = strftime('%Y-%m-%d %H:%M:%S', {_SECONDS}, 'unixepoch') || '.' ||"
            " printf('%06d', ((ts % 1000000) + 1000000) % 1000000) WHERE typeof(ts) = 'integer'")


def _sqlite() -> bool:
    return not context.is_offline_mode() and op.get_bind().dialect.name == "sqlite"


def _convert_the_rest() -> None:
    """Rows whose ts is text in another ISO form: as UTCDateTime read them (naive is UTC)."""
    bind = op.get_bind()
    rest = bind.exec_driver_sql("SELECT id, ts FROM events WHERE typeof(ts) = 'text'").fetchall()
    for row_id, text in rest:
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            raise RuntimeError(f"events row {row_id}: its ts {text!r} is not a time; mend it and upgrade again") from None
        parsed = parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed
        micros = (parsed - _EPOCH) // timedelta(microseconds=1)
        bind.exec_driver_sql("UPDATE events SET ts = ? WHERE id = ?", (micros, row_id))


def _declare_in_place(old: str, new: str) -> bool:
    """Change ts's declared type in SQLite's schema text; False where that cannot be done."""
    bind = op.get_bind()
    schema = bind.exec_driver_sql("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'events'").scalar()
    declared = f"ts {old} NOT NULL"
    if not isinstance(schema, str) or schema.count(declared) != 1:
        return False
    version = int(bind.exec_driver_sql("PRAGMA schema_version").scalar_one())
    bind.exec_driver_sql("PRAGMA writable_schema = ON")
    try:
        bind.exec_driver_sql("UPDATE sqlite_master SET sql = ? WHERE type = 'table' AND name = 'events'",
                             (schema.replace(declared, f"ts {new} NOT NULL"),))
    except OperationalError:  # SQLITE_DBCONFIG_DEFENSIVE forbids it: rebuild instead
        return False
    finally:
        bind.exec_driver_sql("PRAGMA writable_schema = OFF")
    bind.exec_driver_sql(f"PRAGMA schema_version = {version + 1}")
    declared_now = {row[1]: row[2] for row in bind.exec_driver_sql("PRAGMA table_info(events)")}
    if declared_now.get("ts") != new:
        raise RuntimeError(f"events.ts reads as {declared_now.get('ts')!r} after its change to {new}")
    return True


def _declare(old: str, new: str, old_type: sa.types.TypeEngine[Any], new_type: sa.types.TypeEngine[Any]) -> None:
    if _declare_in_place(old, new):
        return
    # The rebuild: its reflection may not carry an index's WHERE, so the partial indexes are
    # dropped first and made again after (as 0014 does).
    for name, _ in PARTIAL:
        op.drop_index(name, table_name="events")
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.alter_column("ts", existing_type=old_type, type_=new_type, existing_nullable=False)
    for name, column in PARTIAL:
        where = sa.text(f"{column} IS NOT NULL")
        op.create_index(name, "events", ["site", column, "ts"], unique=False,
                        sqlite_where=where, postgresql_where=where)


def upgrade() -> None:
    if not _sqlite():
        return  # PostgreSQL keeps its timestamp column
    op.execute(_TO_MICROSECONDS)
    _convert_the_rest()
    _declare("DATETIME", "BIGINT", sa.DateTime(), sa.BigInteger())


def downgrade() -> None:
    if not _sqlite():
        return
    op.execute(_TO_TEXT)
    _declare("BIGINT", "DATETIME", sa.BigInteger(), sa.DateTime())

