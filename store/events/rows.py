"""Event rows and how they are inserted: the statements, the fast paths, text made storable.

``CoreRows`` (dicts through SQLAlchemy: any database, and what the spool stores), ``SqliteRows``
and ``PostgresRows`` (tuples straight to the driver) store identical rows. Every insert is
ON CONFLICT (uid) DO NOTHING, so a row sent twice is stored once. Which failures are the
rows' own fault (never worth a retry) is decided here, in ``is_bad_data``.
"""

from __future__ import annotations

import functools
import operator
import sqlite3
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, TextClause, bindparam, insert, text
from sqlalchemy.exc import (
    DataError,
    DBAPIError,
    IntegrityError,
    ProgrammingError,
    SQLAlchemyError,
    StatementError,
)

from schoolgate.store.coltypes import from_utc_microseconds, posix_microseconds, utc_microseconds
from schoolgate.store.events.record import (
    ASK_FIELDS,
    COMPACT_FIELDS,
    Ask,
    CompactEvent,
    EventRecord,
    ask_facts_valid,
    flags_text,
    from_ask,
    from_compact,
)
from schoolgate.store.models import AccessEvent

# The fast paths (``SqliteRows``, ``PostgresRows``) bind a plain tuple per row, its values in an
# ask's order (record.Ask: the time, name, type and count, then the facts) and the uid last: an
# ask's row is then its four values, its facts tuple as it came and the uid, with only its time
# made storable (the DNS daemon's events come so: no per-field gathering, no flags to convert).
# A compact event's or a record's values are put in that order by one C call.
_TUPLE_COLUMNS = (*ASK_FIELDS, "uid")
_TUPLE_SITE = _TUPLE_COLUMNS.index("site")
_FLAGS_AT = ASK_FIELDS.index("flags")
_AFTER_FLAGS = _FLAGS_AT + 1
_FACTS_FLAGS_AT = _FLAGS_AT - 4  # where the flags are in an ask's facts
_COMPACT_LEN = len(COMPACT_FIELDS)
assert ASK_FIELDS[0] == "ts", "the rows' builders replace the first value with the stored time"
_record_values = operator.attrgetter(*ASK_FIELDS)  # a record's fields in that order, in one C call
_compact_values = operator.itemgetter(*(COMPACT_FIELDS.index(name) for name in ASK_FIELDS))


def _stored_facts(ask: Ask) -> tuple[Any, ...]:
    """An ask's facts with its flags as their stored text (as the DNS events stage makes them;
    anything else is made so here); ValueError for anything that is not an ask."""
    facts = ask_facts_valid(ask)
    flags = facts[_FACTS_FLAGS_AT]
    if type(flags) is str:
        return facts
    return (*facts[:_FACTS_FLAGS_AT], flags_text(flags) if flags else "", *facts[_FACTS_FLAGS_AT + 1 :])


def _tuple_insert(placeholder: str) -> str:
    """The insert statement for tuple rows, in the driver's own placeholder style."""
    names = ", ".join(_TUPLE_COLUMNS)
    values = ", ".join(placeholder for _ in _TUPLE_COLUMNS)
    return f"INSERT INTO events ({names}) VALUES ({values}) ON CONFLICT (uid) DO NOTHING"


_SQLITE_INSERT = _tuple_insert("?")  # sqlite3: qmark
_PG_INSERT = _tuple_insert("%s")  # psycopg: format


# What writing a batch can raise. UnicodeEncodeError is not a database error: the drivers
# raise it while binding text with lone surrogates (bytes a decoder let through as
# surrogateescape), before the database sees anything.
WRITE_ERRORS = (SQLAlchemyError, UnicodeEncodeError)


def is_bad_data(err: Exception) -> bool:
    """Would retrying never help? (A constraint or a value the database refuses.)"""
    if isinstance(err, IntegrityError | DataError | UnicodeEncodeError):
        return True
    if isinstance(err, ProgrammingError):
        # A value of a type the driver cannot send, refused before the server saw it.
        # (Other programming errors, a missing table say, may be mended: retry those.)
        orig = err.orig
        if isinstance(orig, sqlite3.ProgrammingError) and "binding parameter" in str(orig):
            return True
        if type(orig).__module__.startswith("psycopg") and getattr(orig, "sqlstate", "") is None:
            return True  # psycopg's own errors carry no SQLSTATE; the server's always do
    # A StatementError that is not a DBAPIError failed while binding our values.
    return isinstance(err, StatementError) and not isinstance(err, DBAPIError)


def insert_events(conn: Connection, rows: list[dict[str, Any]]) -> int:
    """Insert event rows, skipping any whose ``uid`` is already stored; returns rows added.

    One executemany. SQLite and PostgreSQL both have ON CONFLICT DO NOTHING; another
    backend gets a plain insert (a repeated uid is then an integrity error).

    On PostgreSQL the transaction first takes an advisory lock per site, held until it
    commits. Ids come from a sequence when the rows are inserted, so without it two writers
    of one school (DNS workers, the proxy) could commit id 100 after id 105, and a reader
    that remembers "everything up to id N is done" (the rollups) would skip id 100 for good.
    With it, a site's events are committed in id order, as SQLite's one writer at a time
    does anyway. Schools do not wait for each other.
    """
    if not rows:
        return 0
    name = conn.dialect.name
    if name == "postgresql":
        # A textual statement: SQLAlchemy hands it to psycopg's executemany (pipelined, and
        # its row count is the sum over the batch). A Core insert would be rewritten into
        # multi-row VALUES, whose row count psycopg does not report, and RETURNING the ids
        # to count them costs five times as much.
        _lock_sites(conn, {row["site"] for row in rows})
        stmt: Any = _pg_insert_statement(tuple(rows[0]))
        result = conn.execute(stmt, rows)
    elif name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        stmt = sqlite_insert(AccessEvent).on_conflict_do_nothing(index_elements=["uid"])
        result = conn.execute(stmt, rows)
    else:
        result = conn.execute(insert(AccessEvent), rows)
    added = getattr(result, "rowcount", -1)
    return len(rows) if added is None or added < 0 else int(added)


_PG_SITE_LOCK = text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))")


def _lock_sites(conn: Connection, sites: Iterable[str]) -> None:
    """Take the sites' ordering locks (PostgreSQL, see insert_events), held until commit."""
    for site in sorted(sites):  # sorted: two batches never deadlock
        conn.execute(_PG_SITE_LOCK, {"key": f"schoolgate.events:{site}"})


@functools.lru_cache(maxsize=8)
def _pg_insert_statement(columns: tuple[str, ...]) -> TextClause:
    """INSERT ... ON CONFLICT (uid) DO NOTHING for these columns, with the columns' types."""
    table = AccessEvent.__table__
    unknown = [name for name in columns if name not in table.c]
    if unknown:
        raise ValueError(f"not columns of events: {', '.join(unknown)}")
    names = ", ".join(columns)  # only names of the table's columns, checked above
    values = ", ".join(f":{name}" for name in columns)
    stmt = text(f"INSERT INTO events ({names}) VALUES ({values}) ON CONFLICT (uid) DO NOTHING")
    return stmt.bindparams(*(bindparam(name, type_=table.c[name].type) for name in columns))


def insert_sqlite_rows(conn: Connection, rows: list[tuple[Any, ...]]) -> int:
    """Insert rows made by ``SqliteRows`` into SQLite; returns the rows added.

    The same statement as ``insert_events`` builds, sent straight to sqlite3's executemany:
    SQLAlchemy's per-row work (a dict per row, the UTCDateTime conversion) cost more than
    the insert itself, on the thread that shares the GIL with the DNS daemon. The caller's
    transaction is the writer's BEGIN IMMEDIATE one, as on the Core path.
    """
    if not rows:
        return 0
    return _added(conn.exec_driver_sql(_SQLITE_INSERT, rows), len(rows))


def insert_postgres_rows(conn: Connection, rows: list[tuple[Any, ...]]) -> int:
    """Insert rows made by ``PostgresRows`` into PostgreSQL; returns the rows added.

    Like ``insert_events`` (the same site locks first, the same statement), but the tuples
    go straight to psycopg's pipelined executemany without SQLAlchemy's per-row processing.
    """
    if not rows:
        return 0
    _lock_sites(conn, {row[_TUPLE_SITE] for row in rows})
    return _added(conn.exec_driver_sql(_PG_INSERT, rows), len(rows))


def _added(result: Any, sent: int) -> int:
    added = getattr(result, "rowcount", -1)
    return sent if added is None or added < 0 else int(added)


def _tuple_as_dict(row: tuple[Any, ...], ts: datetime) -> dict[str, Any]:
    values = dict(zip(_TUPLE_COLUMNS, row, strict=True))
    values["ts"] = ts
    return values


def _column_widths() -> dict[str, int]:
    from schoolgate.store.models import AccessEvent

    widths: dict[str, int] = {}
    for column in AccessEvent.__table__.columns:
        length = getattr(column.type, "length", None)
        if isinstance(length, int):
            widths[column.name] = length
    return widths


# PostgreSQL refuses text longer than a VARCHAR column (SQLite stores it anyway); a device name
# or host over the width must cost its tail, not the whole event.
_WIDTHS = _column_widths()
_TUPLE_WIDTHS = tuple(_WIDTHS.get(name) for name in _TUPLE_COLUMNS)


def storable_text(value: Any, width: int | None = None) -> Any:
    """Text made storable everywhere: lone surrogates and NUL (which PostgreSQL's text
    cannot hold) become backslash escapes, and text is clipped to its column's width.
    Other values are returned unchanged."""
    if isinstance(value, str):
        text = value.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")
        return text[:width] if width is not None else text
    return value


def insert_mended(
    conn: Connection,
    row: Any,
    insert: Callable[[Connection, list[Any]], int],
    repair: Callable[[Any], Any],
) -> int:
    """Insert one row in a savepoint; if its text is what the database refused, escaped."""
    try:
        with conn.begin_nested():
            return insert(conn, [row])
    except (UnicodeEncodeError, DataError):
        mended = repair(row)
        if mended == row:
            raise
        with conn.begin_nested():
            return insert(conn, [mended])


class CoreRows:
    """Rows as dicts, inserted through SQLAlchemy: any database, and what the spool stores."""

    @staticmethod
    def build(record: EventRecord, uids: Callable[[], str]) -> dict[str, Any]:
        row = record.row()
        if row["uid"] is None:
            row["uid"] = uids()
        return row

    @staticmethod
    def build_compact(event: CompactEvent, uids: Callable[[], str]) -> dict[str, Any]:
        return CoreRows.build(from_compact(event), uids)

    @staticmethod
    def build_ask(ask: Ask, uids: Callable[[], str]) -> dict[str, Any]:
        return CoreRows.build(from_compact(from_ask(ask)), uids)

    @staticmethod
    def insert(conn: Connection, rows: list[Any]) -> int:
        return insert_events(conn, rows)

    @staticmethod
    def repair(row: dict[str, Any]) -> dict[str, Any]:
        return {name: storable_text(value, _WIDTHS.get(name)) for name, value in row.items()}

    @staticmethod
    def as_dicts(rows: list[Any]) -> list[dict[str, Any]]:
        return rows


class SqliteRows:
    """Rows as tuples of the values SQLite stores, inserted with ``insert_sqlite_rows``.

    Identical rows to ``CoreRows`` (the tests compare every column), at about two thirds of
    the writer thread's time per row.
    """

    COLUMNS = _TUPLE_COLUMNS
    INSERT = _SQLITE_INSERT

    @staticmethod
    def build(record: EventRecord, uids: Callable[[], str]) -> tuple[Any, ...]:
        values = _record_values(record)
        flags = values[_FLAGS_AT]
        uid = record.uid
        return (
            utc_microseconds(values[0]),  # what UTCMicroseconds stores on SQLite
            *values[1:_FLAGS_AT],
            flags_text(flags) if flags else "",
            *values[_AFTER_FLAGS:],
            uids() if uid is None else uid,
        )

    @staticmethod
    def build_compact(event: CompactEvent, uids: Callable[[], str]) -> tuple[Any, ...]:
        """The row of a compact event, without making its record first (the proxy's events
        and the DNS daemon's own names come so)."""
        if len(event) != _COMPACT_LEN:
            raise ValueError(f"a compact event has {_COMPACT_LEN} fields, not {len(event)}")
        values = _compact_values(event)
        flags = values[_FLAGS_AT]
        return (
            posix_microseconds(values[0]),
            *values[1:_FLAGS_AT],
            flags_text(flags) if flags else "",
            *values[_AFTER_FLAGS:],
            uids(),
        )

    @staticmethod
    def build_ask(ask: Ask, uids: Callable[[], str]) -> tuple[Any, ...]:
        """The row of an ask (the DNS daemon's blocked queries: this is the writer thread's
        work per blocked query): its values as they came, the time made storable."""
        return (posix_microseconds(ask[0]), ask[1], ask[2], ask[3], *_stored_facts(ask), uids())

    @staticmethod
    def insert(conn: Connection, rows: list[Any]) -> int:
        return insert_sqlite_rows(conn, rows)

    @staticmethod
    def repair(row: tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple(storable_text(value, width) for value, width in zip(row, _TUPLE_WIDTHS, strict=True))

    @staticmethod
    def as_dicts(rows: list[Any]) -> list[dict[str, Any]]:
        """The rows as ``CoreRows`` makes them (for the spool)."""
        return [_tuple_as_dict(row, from_utc_microseconds(row[0])) for row in rows]


class PostgresRows:
    """Rows as tuples for psycopg (``ts`` naive UTC), inserted with ``insert_postgres_rows``.

    Identical rows to ``CoreRows``, at about half the writer thread's time per row.
    """

    COLUMNS = _TUPLE_COLUMNS
    INSERT = _PG_INSERT

    @staticmethod
    def build(record: EventRecord, uids: Callable[[], str]) -> tuple[Any, ...]:
        values = _record_values(record)
        flags = values[_FLAGS_AT]
        uid = record.uid
        return (
            values[0].astimezone(UTC).replace(tzinfo=None),  # what UTCMicroseconds binds on PostgreSQL
            *values[1:_FLAGS_AT],
            flags_text(flags) if flags else "",
            *values[_AFTER_FLAGS:],
            uids() if uid is None else uid,
        )

    @staticmethod
    def build_compact(event: CompactEvent, uids: Callable[[], str]) -> tuple[Any, ...]:
        """The row of a compact event, without making its record first (as SqliteRows)."""
        if len(event) != _COMPACT_LEN:
            raise ValueError(f"a compact event has {_COMPACT_LEN} fields, not {len(event)}")
        values = _compact_values(event)
        flags = values[_FLAGS_AT]
        return (
            _naive_utc(values[0]),
            *values[1:_FLAGS_AT],
            flags_text(flags) if flags else "",
            *values[_AFTER_FLAGS:],
            uids(),
        )

    @staticmethod
    def build_ask(ask: Ask, uids: Callable[[], str]) -> tuple[Any, ...]:
        """The row of an ask (as SqliteRows)."""
        return (_naive_utc(ask[0]), ask[1], ask[2], ask[3], *_stored_facts(ask), uids())

    @staticmethod
    def insert(conn: Connection, rows: list[Any]) -> int:
        return insert_postgres_rows(conn, rows)

    @staticmethod
    def repair(row: tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple(storable_text(value, width) for value, width in zip(row, _TUPLE_WIDTHS, strict=True))

    @staticmethod
    def as_dicts(rows: list[Any]) -> list[dict[str, Any]]:
        """The rows as ``CoreRows`` makes them (for the spool)."""
        return [_tuple_as_dict(row, row[0].replace(tzinfo=UTC)) for row in rows]


def _naive_utc(ts: float) -> datetime:
    """POSIX seconds as the naive UTC datetime UTCMicroseconds binds on PostgreSQL."""
    return datetime.fromtimestamp(ts, UTC).replace(tzinfo=None)


RowFormat = type[CoreRows] | type[SqliteRows] | type[PostgresRows]


def row_format(engine: Engine, *, fast: bool = True) -> RowFormat:
    """How the writer builds and inserts rows for this database."""
    if fast and engine.dialect.name == "sqlite" and engine.dialect.driver == "pysqlite":
        return SqliteRows
    if fast and engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg":
        return PostgresRows
    return CoreRows

