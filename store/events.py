"""Logging access attempts without ever making a DNS answer wait for the database.

``EventRecord`` is one row of the ``events`` table as plain values. The DNS and proxy
daemons hand records to an ``EventWriter``: ``submit`` appends to a bounded in-memory
queue and returns at once; one writer thread flushes the queue every ``flush_interval``
seconds or every ``batch_size`` rows, each batch in one transaction with one executemany.
If the queue is full the record is dropped and counted, never silently. A batch that fails
because the database is busy or unavailable stays in memory and is retried with backoff.

Every row gets a ``uid`` from the writer (a random per-writer prefix and a sequence number)
and is inserted with ON CONFLICT DO NOTHING: a batch sent again after its acknowledgement
was lost is stored once.

In a multi-academy trust the database is a central PostgreSQL server that a school may lose
touch with. Given a ``spool_path`` the writer does not hold such batches in memory: it puts
them in a local on-disk spool (``store.spool``) and a shipper thread moves them to the
central database, oldest first, when it answers again (``make_event_writer`` sets this up
from the appliance config).

``AllowedAggregator`` sits in front of the writer: allowed traffic is folded to one row per
client and domain per minute (with a ``count``); blocked and flagged attempts pass in full.
"""

from __future__ import annotations

import functools
import json
import logging
import operator
import os
import pwd
import secrets
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
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
from sqlalchemy.orm import Session

from schoolgate.policy.types import Client, Decision, Target, Verdict
from schoolgate.store.coltypes import utcnow
from schoolgate.store.models import AccessEvent, DaemonStatus
from schoolgate.store.spool import DEFAULT_MAX_BYTES, DEFAULT_RESERVE_BYTES, EventSpool, SpoolFull

log = logging.getLogger(__name__)


def _flags_text(flags: frozenset[str] | str) -> str:
    if isinstance(flags, str):
        items: Iterable[str] = flags.split(",")
    else:
        items = flags
    return ",".join(sorted({f.strip() for f in items if f.strip()}))


@dataclass(frozen=True, slots=True)
class EventRecord:
    """One access attempt, as the ``events`` table stores it (see models.AccessEvent)."""

    ts: datetime  # aware
    site: str
    source: str  # dns, proxy, console
    client_ip: str
    host: str
    verdict: str  # schoolgate.policy.types.Verdict value
    rule_id: str
    role: str
    mac: str | None = None
    device_id: str | None = None
    device_name: str | None = None
    person_id: str | None = None
    person_name: str | None = None
    qtype: str | None = None
    url: str | None = None
    search_term: str | None = None
    clause: str = ""
    service: str | None = None
    category: str | None = None
    flags: frozenset[str] | str = frozenset()
    count: int = 1
    uid: str | None = None  # None: the EventWriter gives it one

    def __post_init__(self) -> None:
        if self.ts.tzinfo is None:
            raise ValueError("EventRecord.ts must be an aware datetime")

    @classmethod
    def from_decision(
        cls,
        decision: Decision,
        client: Client,
        target: Target,
        *,
        site: str,
        source: str,
        ts: datetime,
        qtype: str | None = None,
        search_term: str | None = None,
        count: int = 1,
    ) -> EventRecord:
        """The record for one policy decision, so that DNS and proxy log identically.

        ``count`` > 1: the allowed queries of one client and name in one minute, folded."""
        return cls(
            ts=ts,
            site=site,
            source=source,
            client_ip=client.ip,
            mac=client.mac,
            device_id=client.device_id,
            device_name=client.device_name,
            person_id=client.person_id,
            person_name=client.person_name,
            role=decision.role.value,
            host=target.host,
            qtype=qtype,
            url=target.url,
            search_term=search_term,
            verdict=decision.verdict.value,
            rule_id=decision.rule_id,
            clause=decision.clause,
            service=decision.service,
            category=decision.category,
            flags=frozenset(decision.flags),
            count=count,
        )

    @property
    def flag_set(self) -> frozenset[str]:
        text = _flags_text(self.flags)
        return frozenset(text.split(",")) if text else frozenset()

    @property
    def is_plain_allow(self) -> bool:
        """Allowed and not flagged: the kind of traffic that is logged per domain per minute."""
        return self.verdict in (Verdict.ALLOW.value, Verdict.SAFE_SEARCH.value) and not self.flag_set

    def row(self) -> dict[str, Any]:
        """Column values for an insert into ``events``."""
        values = dict(zip(_RECORD_FIELDS, _record_values(self), strict=True))
        flags = self.flags
        values["flags"] = _flags_text(flags) if flags else ""
        values["ts"] = self.ts.astimezone(UTC)
        return values


_RECORD_FIELDS = tuple(f.name for f in fields(EventRecord))
_record_values = operator.attrgetter(*_RECORD_FIELDS)  # one C call for every field

# The fast paths (``SqliteRows``, ``PostgresRows``) bind a plain tuple per row: the three
# columns they compute first, then every other field as the record holds it.
_PLAIN_FIELDS = tuple(name for name in _RECORD_FIELDS if name not in ("ts", "flags", "uid"))
_plain_values = operator.attrgetter(*_PLAIN_FIELDS)
_TUPLE_COLUMNS = ("ts", "flags", "uid", *_PLAIN_FIELDS)
_TUPLE_SITE = _TUPLE_COLUMNS.index("site")


def _tuple_insert(placeholder: str) -> str:
    """The insert statement for tuple rows, in the driver's own placeholder style."""
    names = ", ".join(_TUPLE_COLUMNS)
    values = ", ".join(placeholder for _ in _TUPLE_COLUMNS)
    return f"INSERT INTO events ({names}) VALUES ({values}) ON CONFLICT (uid) DO NOTHING"


_SQLITE_INSERT = _tuple_insert("?")  # sqlite3: qmark
_PG_INSERT = _tuple_insert("%s")  # psycopg: format


def sqlite_ts_text(ts: datetime) -> str:
    """``ts`` as the text UTCDateTime stores on SQLite ("2026-11-23 10:15:05.000000", UTC).

    isoformat rather than strftime: it is quicker and pads years below 1000 to four digits,
    as SQLAlchemy's SQLite DateTime does.
    """
    return ts.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


# --------------------------------------------------------------------------- daemon status


def write_status(  # noqa: PLR0917 (the agreed positional signature)
    session: Session,
    site: str,
    name: str,
    pid: int,
    started_at: datetime,
    stats: Mapping[str, Any],
) -> None:
    """Record a daemon's heartbeat and counters (one row per site and daemon name).

    Runs in the caller's session; the caller commits.
    """
    now = utcnow()
    text = json.dumps(dict(stats), sort_keys=True, default=str)
    row = session.get(DaemonStatus, (site, name))
    if row is None:
        session.add(DaemonStatus(site=site, name=name, pid=pid, started_at=started_at, heartbeat_at=now, stats=text))
    else:
        row.pid = pid
        row.started_at = started_at
        row.heartbeat_at = now
        row.stats = text
    session.flush()


def read_status(session: Session, site: str) -> dict[str, dict[str, Any]]:
    """Each daemon's last heartbeat: {name: {"pid", "started_at", "heartbeat_at", "stats"}}."""
    rows = session.query(DaemonStatus).filter(DaemonStatus.site == site).order_by(DaemonStatus.name)
    result: dict[str, dict[str, Any]] = {}
    for row in rows:
        try:
            stats = json.loads(row.stats)
        except ValueError:
            stats = {}
        result[row.name] = {
            "pid": row.pid,
            "started_at": row.started_at,
            "heartbeat_at": row.heartbeat_at,
            "stats": stats,
        }
    return result


# --------------------------------------------------------------------------- the writer


# What writing a batch can raise. UnicodeEncodeError is not a database error: the drivers
# raise it while binding text with lone surrogates (bytes a decoder let through as
# surrogateescape), before the database sees anything.
_WRITE_ERRORS = (SQLAlchemyError, UnicodeEncodeError)


def _is_bad_data(err: Exception) -> bool:
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


def _storable_text(value: Any, width: int | None = None) -> Any:
    """Text made storable everywhere: lone surrogates and NUL (which PostgreSQL's text
    cannot hold) become backslash escapes, and text is clipped to its column's width.
    Other values are returned unchanged."""
    if isinstance(value, str):
        text = value.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")
        return text[:width] if width is not None else text
    return value


def _insert_mended(
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
    def insert(conn: Connection, rows: list[Any]) -> int:
        return insert_events(conn, rows)

    @staticmethod
    def repair(row: dict[str, Any]) -> dict[str, Any]:
        return {name: _storable_text(value, _WIDTHS.get(name)) for name, value in row.items()}

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
        flags = record.flags
        uid = record.uid
        return (
            sqlite_ts_text(record.ts),
            _flags_text(flags) if flags else "",
            uids() if uid is None else uid,
            *_plain_values(record),
        )

    @staticmethod
    def insert(conn: Connection, rows: list[Any]) -> int:
        return insert_sqlite_rows(conn, rows)

    @staticmethod
    def repair(row: tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple(_storable_text(value, width) for value, width in zip(row, _TUPLE_WIDTHS, strict=True))

    @staticmethod
    def as_dicts(rows: list[Any]) -> list[dict[str, Any]]:
        """The rows as ``CoreRows`` makes them (for the spool)."""
        return [_tuple_as_dict(row, datetime.fromisoformat(row[0]).replace(tzinfo=UTC)) for row in rows]


class PostgresRows:
    """Rows as tuples for psycopg (``ts`` naive UTC), inserted with ``insert_postgres_rows``.

    Identical rows to ``CoreRows``, at about half the writer thread's time per row.
    """

    COLUMNS = _TUPLE_COLUMNS
    INSERT = _PG_INSERT

    @staticmethod
    def build(record: EventRecord, uids: Callable[[], str]) -> tuple[Any, ...]:
        flags = record.flags
        uid = record.uid
        return (
            record.ts.astimezone(UTC).replace(tzinfo=None),  # what UTCDateTime binds
            _flags_text(flags) if flags else "",
            uids() if uid is None else uid,
            *_plain_values(record),
        )

    @staticmethod
    def insert(conn: Connection, rows: list[Any]) -> int:
        return insert_postgres_rows(conn, rows)

    @staticmethod
    def repair(row: tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple(_storable_text(value, width) for value, width in zip(row, _TUPLE_WIDTHS, strict=True))

    @staticmethod
    def as_dicts(rows: list[Any]) -> list[dict[str, Any]]:
        """The rows as ``CoreRows`` makes them (for the spool)."""
        return [_tuple_as_dict(row, row[0].replace(tzinfo=UTC)) for row in rows]


RowFormat = type[CoreRows] | type[SqliteRows] | type[PostgresRows]


def row_format(engine: Engine, *, fast: bool = True) -> RowFormat:
    """How the writer builds and inserts rows for this database."""
    if fast and engine.dialect.name == "sqlite" and engine.dialect.driver == "pysqlite":
        return SqliteRows
    if fast and engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg":
        return PostgresRows
    return CoreRows


class UidSource:
    """Unique event ids made at the source, without asking anyone.

    A writer draws 64 random bits when it is made and numbers its events after them; two
    writers (two daemons, or one daemon restarted) share a prefix with probability 2**-64.
    The ids of one writer sort in the order it wrote them.
    """

    def __init__(self, prefix: str | None = None) -> None:
        self.prefix = prefix if prefix is not None else secrets.token_hex(8)
        if not self.prefix or len(self.prefix) > 24:
            raise ValueError("a uid prefix has 1 to 24 characters")
        self._next = 0

    def __call__(self) -> str:
        self._next += 1
        return f"{self.prefix}-{self._next:012x}"


@dataclass
class _Counters:
    submitted: int = 0  # every submit() call
    written: int = 0  # rows committed to the database directly (including ones it already had)
    dropped: int = 0  # overflow + failed + late + spool_full: never written
    overflow: int = 0  # refused because the queue was full
    late: int = 0  # submitted after stop()
    failed: int = 0  # given up on (bad rows, or the database still failing at stop)
    flushes: int = 0  # committed transactions
    errors: int = 0  # failed flush attempts (each is retried)
    duplicates: int = 0  # rows the database already had (sent twice), counted once there
    spooled: int = 0  # rows put in the local spool because the database was away
    spool_full: int = 0  # rows the spool had no room for (also in dropped)
    shipped: int = 0  # rows moved from the spool to the database (by this process)
    ship_errors: int = 0  # failed shipping attempts (each is retried)
    spool_pending: int = 0  # rows in the spool at the last look (any process's)
    last_error: str | None = None
    last_error_at: datetime | None = None
    last_flush_at: datetime | None = None
    last_ship_at: datetime | None = None


@dataclass(frozen=True)
class StatusTarget:
    """Where and how often an EventWriter reports its counters in ``daemon_status``."""

    site: str
    name: str  # dns, proxy, ...
    interval: float = 5.0
    pid: int = field(default_factory=os.getpid)
    started_at: datetime = field(default_factory=utcnow)
    extra: Callable[[], Mapping[str, Any]] | None = None  # the daemon's own counters


class EventWriter:
    """A bounded queue of EventRecords and the one thread that writes them.

    ``submit`` never blocks. Records in the queue and records held back for a retry share
    the bound ``max_queue``; beyond it new records are dropped and counted. After ``stop``,
    ``submitted == written + spooled + dropped`` holds exactly (``spooled`` is 0 without a
    spool).

    With a ``spool_path``, a batch the database cannot take (it is unreachable, or fails for
    any reason other than the rows themselves) goes to the on-disk spool, and so does every
    later batch until the spool is empty again, so that events reach the database in order.
    A shipper thread empties the spool into the database, ``ship_batch`` rows per
    transaction, retrying with backoff while the database is away.

    On SQLite and on PostgreSQL (psycopg) rows are tuples sent straight to the driver
    (``SqliteRows``, ``PostgresRows``); elsewhere dicts through SQLAlchemy (``CoreRows``,
    which the spool stores too). All store the same rows. A batch the database refuses for
    its data is written again row by row, so one bad row costs only itself; text with lone
    surrogates is stored with them escaped.
    """

    RETRY_MIN = 0.05
    RETRY_MAX = 5.0
    SHIP_RETRY_MAX = 2.0  # how long a school waits, at most, to see its spool drain

    def __init__(
        self,
        engine: Engine,
        *,
        max_queue: int = 50_000,
        flush_interval: float = 0.2,
        batch_size: int = 500,
        status: StatusTarget | None = None,
        spool_path: str | Path | None = None,
        spool_max_bytes: int = DEFAULT_MAX_BYTES,
        spool_reserve_bytes: int = DEFAULT_RESERVE_BYTES,
        ship_batch: int = 5000,
        uid_prefix: str | None = None,
        fast_rows: bool = True,
    ) -> None:
        if max_queue < 1 or batch_size < 1 or flush_interval <= 0 or ship_batch < 1:
            raise ValueError("max_queue, batch_size and ship_batch must be positive, flush_interval > 0")
        self._engine = engine
        self.max_queue = max_queue
        self.flush_interval = flush_interval
        self.batch_size = batch_size
        self.ship_batch = ship_batch
        self._status = status
        self._uids = UidSource(uid_prefix)
        self._queue: deque[EventRecord] = deque()  # rows are built by the writer thread
        # fast_rows=False: dicts through SQLAlchemy Core on every database, the reference
        # the fast paths are tested and measured against.
        self._rows: RowFormat = row_format(engine, fast=fast_rows)
        self._retry: list[Any] = []  # the batch being retried; owned by the thread
        self._retry_len = 0  # len(self._retry), readable under the lock by submit()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._counters = _Counters()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._stop_event = threading.Event()
        self._closed = False
        self._last_status = 0.0
        self._stop_deadline = 0.0
        self.spool: EventSpool | None = None
        self._spooling = False  # batches go to the spool until the shipper empties it
        self._ship_failing = False  # the last attempt to ship failed (the database is away)
        self._ship_wake = threading.Event()
        self._ship_stop = threading.Event()
        self._shipper: threading.Thread | None = None
        if spool_path is not None:
            self.spool = EventSpool(spool_path, max_bytes=spool_max_bytes, reserve_bytes=spool_reserve_bytes)
            pending = self.spool.pending()
            self._counters.spool_pending = pending
            if pending:
                log.warning("%d events wait in the spool %s from before; shipping them first", pending, spool_path)
                self._spooling = True

    @property
    def uid_prefix(self) -> str:
        return self._uids.prefix

    # -- producer side

    def submit(self, record: EventRecord) -> bool:
        """Queue a record; False if it was dropped because the queue is full (counted)."""
        with self._lock:
            counters = self._counters
            counters.submitted += 1
            if self._closed:  # after stop(): nobody would ever write it
                counters.late += 1
                counters.dropped += 1
                return False
            if len(self._queue) + self._retry_len >= self.max_queue:
                counters.overflow += 1
                counters.dropped += 1
                return False
            self._queue.append(record)
            if len(self._queue) >= self.batch_size:
                self._wake.notify()
            return True

    def stats(self) -> dict[str, Any]:
        with self._lock:
            values = asdict(self._counters)
            values["queued"] = len(self._queue) + self._retry_len
        for key in ("last_error_at", "last_flush_at", "last_ship_at"):
            if values[key] is not None:
                values[key] = values[key].isoformat()
        return values

    # -- lifecycle

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("EventWriter already started")
        if self._closed:
            raise RuntimeError("EventWriter already stopped; make a new one")
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="schoolgate-event-writer", daemon=True)
        self._thread.start()
        if self.spool is not None:
            self._shipper = threading.Thread(target=self._ship_loop, name="schoolgate-event-shipper", daemon=True)
            self._shipper.start()

    def stop(self, timeout: float = 10.0) -> dict[str, Any]:
        """Flush everything (retrying until ``timeout``), stop the thread, return the stats.

        What still cannot be written when the time is up is counted as failed and dropped;
        with a spool it stays in the spool instead, for the next start to ship.
        """
        thread = self._thread
        with self._lock:
            self._stopping = True
            self._stop_deadline = time.monotonic() + timeout
            self._wake.notify()
        self._stop_event.set()
        if thread is not None:
            thread.join(timeout + 15.0)  # the last attempt may sit in the busy timeout
            if thread.is_alive():
                # A database call that hangs: leave its batch alone (it may still commit) and
                # report it as queued rather than guess whether it was written.
                log.error("event writer did not stop within %.1fs", timeout)
                with self._lock:
                    self._closed = True
                return self.stats()
            self._thread = None
        else:
            self._drain(deadline=time.monotonic() + timeout)
        with self._lock:
            self._closed = True
        self._abandon_rest("stopped before they could be written")
        self._stop_shipper(deadline=self._stop_deadline)
        self._report_status(force=True)
        return self.stats()

    def flush(self, timeout: float = 10.0) -> bool:
        """Write what is queued now, from the calling thread (tests, or a writer not started).

        Returns True if the queue is empty afterwards.
        """
        if self._thread is not None:
            raise RuntimeError("flush() is for a writer whose thread is not running")
        return self._drain(deadline=time.monotonic() + timeout)

    def ship(self, timeout: float = 10.0) -> bool:
        """Ship the spool from the calling thread (a writer whose shipper is not running).

        Returns True if the spool is empty afterwards.
        """
        if self._shipper is not None:
            raise RuntimeError("ship() is for a writer whose shipper is not running")
        if self.spool is None:
            return True
        deadline = time.monotonic() + timeout
        delay = self.RETRY_MIN
        while True:
            if self._ship_round():
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, self.SHIP_RETRY_MAX)

    # -- the writer thread

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._stopping and len(self._queue) < self.batch_size:
                    self._wake.wait(self.flush_interval)
                stopping = self._stopping
            if stopping:
                self._drain(deadline=self._stop_deadline)
                return
            self._drain(deadline=None)
            self._report_status()

    def _take_batch(self) -> list[Any]:
        """The batch to write next: the one being retried, or up to batch_size new rows."""
        if self._retry:
            return self._retry
        while True:
            with self._lock:
                n = min(self.batch_size, len(self._queue))
                records = [self._queue.popleft() for _ in range(n)]
                self._retry_len = n  # still counted against the bound while in flight
            if not records:
                return []
            batch: list[Any] = []
            build = self._rows.build
            uids = self._uids
            for record in records:
                try:
                    row = build(record, uids)
                except Exception as err:  # a malformed record must not kill the writer thread
                    log.warning("malformed event record dropped: %s", err)
                    with self._lock:
                        self._counters.failed += 1
                        self._counters.dropped += 1
                        self._retry_len -= 1
                    continue
                batch.append(row)
            if batch:
                self._retry = batch
                return batch

    def _drain(self, deadline: float | None) -> bool:
        """Write batches until the queue is empty, retrying a failed batch with backoff.

        Without a deadline (the running thread) it retries until it succeeds or stop() is
        called; with one (stop, flush) until the deadline passes. True: queue emptied.
        """
        delay = self.RETRY_MIN
        while True:
            batch = self._take_batch()
            if not batch:
                return True
            if self._write(batch):
                delay = self.RETRY_MIN
                if deadline is None:
                    self._report_status()
                continue
            if deadline is None:
                # The stop event (not the queue's condition, which every submit may signal)
                # so that a busy producer cannot turn the backoff into a hot retry loop.
                if self._stop_event.wait(delay):
                    return False
            else:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                time.sleep(min(delay, remaining))
            delay = min(delay * 2, self.RETRY_MAX)

    def _write(self, batch: list[Any]) -> bool:
        """One transaction for the batch. True: written, spooled, or its bad rows set aside."""
        if self._spooling:
            return self._to_spool(batch)
        try:
            with self._engine.begin() as conn:
                added = self._rows.insert(conn, batch)
        except _WRITE_ERRORS as err:
            self._note_error(err)
            if _is_bad_data(err):
                # Bad data, not a bad database: write row by row and set aside the refused rows.
                return self._write_one_by_one(batch)
            if self.spool is not None:
                self._spooling = True
                return self._to_spool(batch)
            return False
        self._done(len(batch), failed=0, duplicates=len(batch) - added)
        return True

    def _write_one_by_one(self, batch: list[Any]) -> bool:
        written = failed = added = 0
        try:
            with self._engine.begin() as conn:
                for row in batch:
                    try:
                        added += self._insert_one(conn, row)
                        written += 1
                    except _WRITE_ERRORS as err:
                        if not _is_bad_data(err):
                            raise
                        failed += 1
                        log.warning("event row refused by the database and dropped: %s", err)
        except _WRITE_ERRORS as err:
            self._note_error(err)
            if self.spool is not None:  # the database went away half-way through
                self._spooling = True
                return self._to_spool(batch)
            return False
        self._done(written, failed=failed, duplicates=written - added)
        return True

    def _insert_one(self, conn: Connection, row: Any) -> int:
        """Insert one row in a savepoint; text the database cannot hold is escaped, not lost."""
        return _insert_mended(conn, row, self._rows.insert, self._rows.repair)

    def _to_spool(self, batch: list[Any]) -> bool:
        """Put the batch in the local spool. False: try again later (the batch is kept)."""
        assert self.spool is not None
        try:
            rows = self._rows.as_dicts(batch)
            try:
                self.spool.append(rows)
            except UnicodeEncodeError:  # text with lone surrogates: keep it, escaped
                self.spool.append([CoreRows.repair(row) for row in rows])
        except sqlite3.OperationalError as err:
            # The spool file is busy or the disk had a hiccup: keep the batch, try again.
            self._note_error(err)
            return False
        except (SpoolFull, sqlite3.Error, OSError, ValueError) as err:
            # ValueError: a value JSON cannot hold; it could never be shipped either.
            with self._lock:
                c = self._counters
                c.spool_full += len(batch)
                c.dropped += len(batch)
                self._retry = []
                self._retry_len = 0
                first = c.spool_full == len(batch)
            (log.error if first else log.debug)("%d events dropped, not spooled: %s", len(batch), err)
            return True
        with self._lock:
            self._counters.spooled += len(batch)
            self._counters.spool_pending += len(batch)
            self._retry = []
            self._retry_len = 0
        self._ship_wake.set()
        return True

    def _done(self, written: int, failed: int, duplicates: int = 0) -> None:
        with self._lock:
            c = self._counters
            c.written += written
            c.failed += failed
            c.dropped += failed
            c.duplicates += duplicates
            c.flushes += 1
            c.last_flush_at = utcnow()
            self._retry = []
            self._retry_len = 0

    def _note_error(self, err: Exception, *, shipping: bool = False) -> None:
        text = f"{type(err).__name__}: {getattr(err, 'orig', None) or err}"
        with self._lock:
            c = self._counters
            if shipping:
                c.ship_errors += 1
            else:
                c.errors += 1
            c.last_error = text[:500]
            c.last_error_at = utcnow()
            first = c.errors + c.ship_errors == 1
        what = "shipping the event spool" if shipping else "event flush"
        (log.error if first else log.debug)("%s failed (will retry): %s", what, text)

    def _abandon_rest(self, why: str) -> None:
        with self._lock:
            lost = len(self._queue) + len(self._retry)
            self._queue.clear()
            self._retry = []
            self._retry_len = 0
            if lost:
                self._counters.failed += lost
                self._counters.dropped += lost
        if lost:
            log.error("%d events %s", lost, why)

    # -- the shipper thread

    def _ship_loop(self) -> None:
        delay = self.RETRY_MIN
        idle = 1.0  # how often to look at a spool that other daemons may fill
        wait = 0.0
        while not self._ship_stop.is_set():
            self._ship_wake.wait(wait)
            self._ship_wake.clear()
            if self._ship_stop.is_set():
                return
            try:
                done = self._ship_round()
            except Exception:  # the shipper must outlive a broken spool file; it logs and retries
                log.exception("event spool shipping failed")
                done = False
            if done:
                delay = self.RETRY_MIN
                wait = idle
            else:
                # Not the wake event: a writer appending during an outage must not make it spin.
                if self._ship_stop.wait(delay):
                    return
                wait = 0.0
                delay = min(delay * 2, self.SHIP_RETRY_MAX)

    def _ship_round(self, deadline: float | None = None, *, wait_turn: bool = False) -> bool:
        """Ship the spool until it is empty (True), shipping fails, or another process ships.

        ``wait_turn`` (at stop): wait until ``deadline`` for another daemon that is shipping
        to finish, then ship what it left. Without it, rows that one worker spools after its
        sibling's last round would stay behind until the next start.
        """
        spool = self.spool
        assert spool is not None
        try:
            while True:
                if deadline is not None and time.monotonic() > deadline:
                    return False
                pending = spool.pending()
                with self._lock:
                    self._counters.spool_pending = pending
                if pending == 0:
                    self._spooling = False
                    return True
                if not spool.try_acquire_shipping():
                    if wait_turn and deadline is not None:
                        time.sleep(0.05)
                        continue
                    return True  # another daemon of this appliance ships; nothing to retry here
                rows = spool.oldest(self.ship_batch)
                if not rows:
                    continue
                batch = [row for _, row in rows]
                try:
                    with self._engine.begin() as conn:
                        added = insert_events(conn, batch)
                except _WRITE_ERRORS as err:
                    self._note_error(err, shipping=True)
                    if _is_bad_data(err):
                        self._ship_one_by_one(spool, rows)
                        continue
                    self._ship_failing = True
                    return False
                self._ship_failing = False
                # Committed centrally: only now may the spool forget them. A crash right here
                # ships them again, and the uid makes that harmless.
                spool.delete_through(rows[-1][0])
                with self._lock:
                    c = self._counters
                    c.shipped += len(batch)
                    c.duplicates += len(batch) - added
                    c.last_ship_at = utcnow()
        finally:
            spool.release_shipping()

    def _ship_one_by_one(self, spool: EventSpool, rows: list[tuple[int, dict[str, Any]]]) -> None:
        """A spooled row the database refuses must not block the rows behind it."""
        for spool_id, row in rows:
            try:
                with self._engine.begin() as conn:
                    added = _insert_mended(conn, row, insert_events, CoreRows.repair)
            except _WRITE_ERRORS as err:
                if not _is_bad_data(err):
                    return  # the database went away: the caller's next round retries
                log.warning("spooled event refused by the database and dropped: %s", err)
                added = -1
            spool.delete_through(spool_id)
            with self._lock:
                c = self._counters
                if added < 0:
                    c.failed += 1
                else:
                    c.shipped += 1
                    c.duplicates += 1 - added

    def _stop_shipper(self, deadline: float) -> None:
        """Stop the shipper thread, then ship what it can before ``deadline``; close the spool."""
        if self.spool is None:
            return
        self._ship_stop.set()
        self._ship_wake.set()
        if self._shipper is not None:
            self._shipper.join(max(0.0, deadline - time.monotonic()) + 15.0)
            if self._shipper.is_alive():
                # Stuck in a database call: what it ships stays in the spool until committed.
                log.error("event shipper did not stop; the spool %s is left as it is", self.spool.path)
                return
            self._shipper = None
        # One last round while the database answers; if it does not, the next start ships,
        # rather than a daemon's shutdown waiting out the timeout for a server that is away.
        try:
            if not self._ship_failing:
                self._ship_round(deadline=deadline, wait_turn=True)
            left = self.spool.pending()
        except sqlite3.Error:  # a broken spool file must not stop the daemon from stopping
            log.exception("event spool %s could not be read at stop", self.spool.path)
            left = -1
        with self._lock:
            self._counters.spool_pending = left
        if left > 0:
            log.warning("%d events stay in the spool %s for the next start to ship", left, self.spool.path)
        self.spool.close()

    def _report_status(self, force: bool = False) -> None:
        target = self._status
        if target is None:
            return
        if self._spooling and not force:
            return  # the database is away: trying would only hold up the writer thread
        now = time.monotonic()
        if not force and now - self._last_status < target.interval:
            return
        self._last_status = now
        stats: dict[str, Any] = {"events": self.stats()}
        if target.extra is not None:
            try:
                stats.update(target.extra())
            except Exception:  # a daemon's counter callback must not stop the logging
                log.exception("daemon status callback failed")
        try:
            with Session(self._engine) as session, session.begin():
                write_status(session, target.site, target.name, target.pid, target.started_at, stats)
        except SQLAlchemyError as err:
            log.debug("could not write daemon status: %s", err)


def _os_user() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def default_spool_path(data_dir: str | Path, owner: str | None = None) -> Path:
    """Where a daemon keeps events the central database could not take yet.

    One file per OS user: the daemons run as users of their own (schoolgate-dns, ...), and a
    file one of them created need not be writable by the others. Processes of one user (the
    DNS workers) share theirs.
    """
    return Path(data_dir) / f"event-spool-{owner or _os_user()}.db"


def spool_paths(data_dir: str | Path) -> list[Path]:
    """Every daemon's spool file in the data directory."""
    return sorted(Path(data_dir).glob("event-spool-*.db"))


def make_event_writer(
    engine: Engine,
    config: Any = None,
    *,
    spool_path: str | Path | None = None,
    **kwargs: Any,
) -> EventWriter:
    """The EventWriter a daemon should use, spooling to disk when the database is remote.

    ``config`` is the appliance's ``AppConfig`` (anything with ``data_dir``). A local SQLite
    database never needs a spool (it is on the same disk); any other database does, in
    ``default_spool_path(data_dir)``, unless ``spool_path`` names another file. Other keyword
    arguments go to EventWriter (``status``, ``max_queue`` ...).
    """
    if spool_path is None and engine.dialect.name != "sqlite" and config is not None:
        data_dir = getattr(config, "data_dir", None)
        if data_dir is not None:
            spool_path = default_spool_path(data_dir)
    return EventWriter(engine, spool_path=spool_path, **kwargs)


# --------------------------------------------------------------------------- aggregation


class AllowedAggregator:
    """Folds allowed, unflagged traffic into one row per (client, domain) per minute.

    ``submit`` has the writer's signature: blocked and flagged records go straight to the
    writer; plain allowed ones are counted in the current minute's bucket. Buckets are
    handed to the writer when their minute is over (by the aggregator's own timer thread,
    or ``flush_due``) and all at once on ``stop``/``flush_all``.
    """

    def __init__(
        self,
        writer: EventWriter,
        *,
        max_buckets: int = 100_000,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._writer = writer
        self._max_buckets = max_buckets
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[tuple[Any, ...], EventRecord] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.folded = 0  # records absorbed into an existing bucket

    @staticmethod
    def _minute(ts: datetime) -> datetime:
        return ts.astimezone(UTC).replace(second=0, microsecond=0)

    def submit(self, record: EventRecord) -> bool:
        if not record.is_plain_allow:
            return self._writer.submit(record)
        minute = self._minute(record.ts)
        key = (minute, record.site, record.source, record.client_ip, record.mac, record.host, record.verdict)
        overflow: list[EventRecord] = []
        with self._lock:
            existing = self._buckets.get(key)
            if existing is not None:
                self._buckets[key] = replace(existing, count=existing.count + record.count)
                self.folded += 1
                return True
            if len(self._buckets) >= self._max_buckets:
                # A flood of distinct names: hand everything over early rather than grow.
                overflow = list(self._buckets.values())
                self._buckets.clear()
            self._buckets[key] = record
        for folded in overflow:
            self._writer.submit(folded)
        return True

    def flush_due(self, now: datetime | None = None) -> int:
        """Hand over the buckets of minutes that are over; returns how many."""
        current = self._minute(now or self._clock())
        with self._lock:
            due = [k for k in self._buckets if k[0] < current]
            records = [self._buckets.pop(k) for k in due]
        for record in records:
            self._writer.submit(record)
        return len(records)

    def flush_all(self) -> int:
        with self._lock:
            records = list(self._buckets.values())
            self._buckets.clear()
        for record in records:
            self._writer.submit(record)
        return len(records)

    def pending(self) -> int:
        with self._lock:
            return len(self._buckets)

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("AllowedAggregator already started")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="schoolgate-allowed-aggregator", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.flush_all()

    def _run(self) -> None:
        while True:
            self.flush_due()
            now = self._clock()
            to_next_minute = 60.0 - (now.second + now.microsecond / 1e6)
            # A little past the boundary, so that records stamped just before it are in.
            if self._stop.wait(max(0.05, to_next_minute + 0.05)):
                return
