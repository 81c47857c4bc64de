"""The bounded queue of events and the one thread that writes them to the database.

The DNS, proxy and gateway daemons hand ``EventRecord``s to an ``EventWriter``: ``submit``
appends to a bounded in-memory queue and returns at once (a DNS answer never waits for the
database); one writer thread flushes the queue every ``flush_interval`` seconds or every
``batch_size`` rows, each batch in one transaction with one executemany. A batch that fails
because the database is busy or away is retried with backoff, or, given a spool, goes to the
local spool (shipper.py). Every row gets a ``uid`` from the writer (a random per-writer
prefix and a sequence number), so a batch sent again after its acknowledgement was lost is
stored once.

Loss on this path, each recorded in the ledger: the queue is full (``overflow``), a record
after stop (``late``), a row the database refuses or a record that cannot be made into a
row, and what is still unwritten when the writer must stop without a spool (``failed``).
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from schoolgate.store.coltypes import utcnow
from schoolgate.store.events.ledger import Ledger
from schoolgate.store.events.record import ASK_LEN, CompactEvent, EventRecord
from schoolgate.store.events.repeats import fold_repeats
from schoolgate.store.events.rows import WRITE_ERRORS, RowFormat, insert_mended, is_bad_data, row_format
from schoolgate.store.events.shipper import RETRY_MIN, SpoolShipper
from schoolgate.store.events.status import write_status
from schoolgate.store.spool import DEFAULT_MAX_BYTES, DEFAULT_RESERVE_BYTES, EventSpool, default_spool_path

log = logging.getLogger(__name__)

# What a process holds in memory before it submits (allowed traffic folded per minute):
# () -> (rows, queries). Reported beside the ledger as ``held`` and ``held_queries``.
HeldCounter = Callable[[], tuple[int, int]]


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
        self._head = self._head_of(0)

    def _head_of(self, number: int) -> str:
        return f"{self.prefix}-{number >> _TAIL_BITS:09x}"

    def __call__(self) -> str:
        """The next id: "<prefix>-<the event's number as 12 hex digits>". One per blocked query,
        so the number's text is a remembered head and one of 4,096 ready tails: formatting the
        number cost the writer a fifth of its own time per row."""
        number = self._next + 1
        self._next = number
        tail = number & _TAIL_MASK
        if not tail:
            self._head = self._head_of(number)
        return self._head + _TAILS[tail]


_TAIL_BITS = 12  # three hex digits
_TAIL_MASK = (1 << _TAIL_BITS) - 1
_TAILS = tuple(f"{n:03x}" for n in range(1 << _TAIL_BITS))


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
    the bound ``max_queue``; beyond it new records are dropped and counted. A burst's repeated
    asks are folded into one row before it is written (repeats.py). After ``stop``,
    ``submitted == written + folded + spooled + dropped`` holds exactly (``spooled`` is 0
    without a spool).

    With a ``spool_path``, a batch the database cannot take (it is unreachable, or fails for
    any reason other than the rows themselves) goes to the on-disk spool through the
    writer's ``SpoolShipper`` (see shipper.py), whose thread ships it when the database is
    back. Every count is kept in the writer's ``Ledger`` (see ledger.py).

    On SQLite and on PostgreSQL (psycopg) rows are tuples sent straight to the driver
    (``SqliteRows``, ``PostgresRows``); elsewhere dicts through SQLAlchemy (``CoreRows``,
    which the spool stores too). All store the same rows. A batch the database refuses for
    its data is written again row by row, so one bad row costs only itself; text with lone
    surrogates is stored with them escaped.
    """

    RETRY_MIN = RETRY_MIN
    RETRY_MAX = 5.0

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
        self._status = status
        self._uids = UidSource(uid_prefix)
        # Records, compact events or asks (see record.CompactEvent, record.Ask): rows are built
        # by the writer thread.
        self._queue: deque[EventRecord | CompactEvent] = deque()
        # fast_rows=False: dicts through SQLAlchemy Core on every database, the reference
        # the fast paths are tested and measured against.
        self._rows: RowFormat = row_format(engine, fast=fast_rows)
        self._retry: list[Any] = []  # the batch being retried; owned by the thread
        self._retry_len = 0  # len(self._retry), readable under the lock by submit()
        self._lock = threading.Lock()
        self._ledger = Ledger(self._lock)
        self._wake = threading.Condition(self._lock)
        self._room = threading.Condition(self._lock)  # notified when queued rows are settled
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._write_soon = False  # write_now() was called: write what is queued, however little
        self._stop_event = threading.Event()
        self._closed = False
        self._last_status = 0.0
        self._stop_deadline = 0.0
        self._held: list[HeldCounter] = []
        self._shipper: SpoolShipper | None = None
        if spool_path is not None:
            spool = EventSpool(spool_path, max_bytes=spool_max_bytes, reserve_bytes=spool_reserve_bytes)
            self._shipper = SpoolShipper(engine, spool, self._ledger, ship_batch=ship_batch)

    @property
    def uid_prefix(self) -> str:
        return self._uids.prefix

    @property
    def spool(self) -> EventSpool | None:
        return self._shipper.spool if self._shipper is not None else None

    def count_held(self, counter: HeldCounter) -> None:
        """Report what `counter` says a producer holds in memory, beside the ledger."""
        self._held.append(counter)

    # -- producer side

    def submit(self, record: EventRecord | CompactEvent) -> bool:
        """Queue a record; False if it was dropped because the queue is full (counted).

        A compact event or an ask (record.CompactEvent, record.Ask) is queued as it is and made
        a row by the writer's thread: the producer's cost is the tuple it built.
        """
        with self._lock:
            ledger = self._ledger
            ledger.counts.submitted += 1
            if self._closed:  # after stop(): nobody would ever write it
                ledger.lose_locked("late", 1)
                return False
            if len(self._queue) + self._retry_len >= self.max_queue:
                ledger.lose_locked("overflow", 1)
                return False
            self._queue.append(record)
            if len(self._queue) >= self.batch_size:
                self._wake.notify()
            return True

    submit_compact = submit  # the names the DNS events stage looks for (see its EventSink)
    submit_ask = submit  # an ask (record.Ask) is queued as it is too: its row is built from it

    def submit_many(self, records: Sequence[EventRecord | CompactEvent]) -> int:
        """Queue a batch under one lock (what another process handed over); returns how many
        were queued, the rest dropped and counted as ``overflow`` (or ``late`` after stop)."""
        with self._lock:
            ledger = self._ledger
            ledger.counts.submitted += len(records)
            if self._closed:
                ledger.lose_locked("late", len(records))
                return 0
            room = max(0, self.max_queue - len(self._queue) - self._retry_len)
            taken = records if len(records) <= room else records[:room]
            if len(taken) < len(records):
                ledger.lose_locked("overflow", len(records) - len(taken))
            self._queue.extend(taken)
            if len(self._queue) >= self.batch_size:
                self._wake.notify()
            return len(taken)

    def wait_for_room(self, events: int, timeout: float = 0.2) -> bool:
        """Wait up to `timeout` until `events` more would be queued without an overflow (a
        reader that can leave events waiting in their socket, as channel.receive_events does,
        then takes no more than the writer can hold). True if there is room, or the writer
        has stopped (a submit then counts what comes as late)."""
        need = min(events, self.max_queue)
        with self._lock:
            return self._room.wait_for(
                lambda: self._closed or len(self._queue) + self._retry_len + need <= self.max_queue, timeout)

    def write_now(self) -> None:
        """Have the writer thread write what is queued now, without waiting for a full batch or
        the next flush interval (a process that hands over whole bursts: channel.receive_events)."""
        with self._lock:
            self._write_soon = True
            self._wake.notify()

    def stats(self) -> dict[str, Any]:
        held_rows = held_queries = 0
        for counter in self._held:
            try:
                rows, queries = counter()
            except Exception:  # a producer's counter must not stop the reporting
                log.exception("held-events counter failed")
                continue
            held_rows += rows
            held_queries += queries
        values = self._ledger.snapshot(lambda: {"queued": len(self._queue) + self._retry_len})
        values["held"] = held_rows
        values["held_queries"] = held_queries
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
        if self._shipper is not None:
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
                    self._room.notify_all()
                return self.stats()
            self._thread = None
        else:
            self._drain(deadline=time.monotonic() + timeout)
        with self._lock:
            self._closed = True
            self._room.notify_all()
        self._abandon_rest("stopped before they could be written")
        if self._shipper is not None:
            self._shipper.stop(deadline=self._stop_deadline)
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
        if self._shipper is None:
            return True
        if self._shipper.running:
            raise RuntimeError("ship() is for a writer whose shipper is not running")
        return self._shipper.ship(timeout)

    # -- the writer thread

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._stopping and not self._write_soon and len(self._queue) < self.batch_size:
                    self._wake.wait(self.flush_interval)
                self._write_soon = False
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
            records, folded = fold_repeats(records)
            if folded:
                with self._lock:
                    self._ledger.counts.folded += folded
                    self._retry_len -= folded
                    self._room.notify_all()
            batch: list[Any] = []
            build, build_compact, build_ask = self._rows.build, self._rows.build_compact, self._rows.build_ask
            uids = self._uids
            for record in records:
                try:
                    if not isinstance(record, tuple):
                        row = build(record, uids)
                    elif len(record) == ASK_LEN:
                        row = build_ask(record, uids)
                    else:
                        row = build_compact(record, uids)
                except Exception as err:  # a malformed record must not kill the writer thread
                    log.warning("malformed event record dropped: %s", err)
                    with self._lock:
                        self._ledger.lose_locked("failed", 1)
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
        shipper = self._shipper
        if shipper is not None:
            spooled = shipper.take_if_spooling(batch, self._rows.as_dicts)
            if spooled is not None:
                return self._settled(spooled)
        try:
            with self._engine.begin() as conn:
                added = self._rows.insert(conn, batch)
        except WRITE_ERRORS as err:
            self._ledger.note_error(err)
            if is_bad_data(err):
                # Bad data, not a bad database: write row by row and set aside the refused rows.
                return self._write_one_by_one(batch)
            if shipper is not None:
                return self._settled(shipper.start_spooling(batch, self._rows.as_dicts))
            return False
        if shipper is not None:
            shipper.database_answered()
        self._done(len(batch), failed=0, duplicates=len(batch) - added)
        return True

    def _settled(self, done: bool) -> bool:
        """The batch in hand is settled (spooled or counted lost) when `done`: forget it."""
        if done:
            with self._lock:
                self._retry = []
                self._retry_len = 0
                self._room.notify_all()
        return done

    def _write_one_by_one(self, batch: list[Any]) -> bool:
        written = failed = added = 0
        try:
            with self._engine.begin() as conn:
                for row in batch:
                    try:
                        added += self._insert_one(conn, row)
                        written += 1
                    except WRITE_ERRORS as err:
                        if not is_bad_data(err):
                            raise
                        failed += 1
                        log.warning("event row refused by the database and dropped: %s", err)
        except WRITE_ERRORS as err:
            self._ledger.note_error(err)
            if self._shipper is not None:  # the database went away half-way through
                return self._settled(self._shipper.start_spooling(batch, self._rows.as_dicts))
            return False
        self._done(written, failed=failed, duplicates=written - added)
        return True

    def _insert_one(self, conn: Connection, row: Any) -> int:
        """Insert one row in a savepoint; text the database cannot hold is escaped, not lost."""
        return insert_mended(conn, row, self._rows.insert, self._rows.repair)

    def _done(self, written: int, failed: int, duplicates: int = 0) -> None:
        with self._lock:
            counts = self._ledger.counts
            counts.written += written
            counts.duplicates += duplicates
            counts.flushes += 1
            counts.last_flush_at = utcnow()
            if failed:
                self._ledger.lose_locked("failed", failed)
            self._retry = []
            self._retry_len = 0
            self._room.notify_all()

    def _abandon_rest(self, why: str) -> None:
        with self._lock:
            lost = len(self._queue) + len(self._retry)
            self._queue.clear()
            self._retry = []
            self._retry_len = 0
            self._room.notify_all()
            if lost:
                self._ledger.lose_locked("failed", lost)
        if lost:
            log.error("%d events %s", lost, why)

    def _report_status(self, force: bool = False) -> None:
        target = self._status
        if target is None:
            return
        if self._shipper is not None and self._shipper.spooling and not force:
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
