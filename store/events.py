"""Logging access attempts without ever making a DNS answer wait for the database.

``EventRecord`` is one row of the ``events`` table as plain values. The DNS and proxy
daemons hand records to an ``EventWriter``: ``submit`` appends to a bounded in-memory
queue and returns at once; one writer thread flushes the queue every ``flush_interval``
seconds or every ``batch_size`` rows, each batch in one transaction with one executemany.
If the queue is full the record is dropped and counted, never silently. A batch that fails
because the database is busy or unavailable stays in memory and is retried with backoff.

``AllowedAggregator`` sits in front of the writer: allowed traffic is folded to one row per
client and domain per minute (with a ``count``); blocked and flagged attempts pass in full.
"""

from __future__ import annotations

import json
import logging
import operator
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, insert
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, SQLAlchemyError, StatementError
from sqlalchemy.orm import Session

from schoolgate.policy.types import Client, Decision, Target, Verdict
from schoolgate.store.coltypes import utcnow
from schoolgate.store.models import AccessEvent, DaemonStatus

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
    ) -> EventRecord:
        """The record for one policy decision, so that DNS and proxy log identically."""
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
            count=1,
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


def _is_bad_data(err: SQLAlchemyError) -> bool:
    """Would retrying never help? (A constraint or a value the database refuses.)"""
    if isinstance(err, IntegrityError | DataError):
        return True
    # A StatementError that is not a DBAPIError failed while binding our values.
    return isinstance(err, StatementError) and not isinstance(err, DBAPIError)


@dataclass
class _Counters:
    submitted: int = 0  # every submit() call
    written: int = 0  # rows committed
    dropped: int = 0  # overflow + failed + late: never written
    overflow: int = 0  # refused because the queue was full
    late: int = 0  # submitted after stop()
    failed: int = 0  # given up on (bad rows, or the database still failing at stop)
    flushes: int = 0  # committed transactions
    errors: int = 0  # failed flush attempts (each is retried)
    last_error: str | None = None
    last_error_at: datetime | None = None
    last_flush_at: datetime | None = None


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
    ``submitted == written + dropped`` holds exactly.
    """

    RETRY_MIN = 0.05
    RETRY_MAX = 5.0

    def __init__(
        self,
        engine: Engine,
        *,
        max_queue: int = 50_000,
        flush_interval: float = 0.2,
        batch_size: int = 500,
        status: StatusTarget | None = None,
    ) -> None:
        if max_queue < 1 or batch_size < 1 or flush_interval <= 0:
            raise ValueError("max_queue and batch_size must be positive, flush_interval > 0")
        self._engine = engine
        self.max_queue = max_queue
        self.flush_interval = flush_interval
        self.batch_size = batch_size
        self._status = status
        self._queue: deque[EventRecord] = deque()  # rows are built by the writer thread
        self._retry: list[dict[str, Any]] = []  # the batch being retried; owned by the thread
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
        for key in ("last_error_at", "last_flush_at"):
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

    def stop(self, timeout: float = 10.0) -> dict[str, Any]:
        """Flush everything (retrying until ``timeout``), stop the thread, return the stats.

        What still cannot be written when the time is up is counted as failed and dropped.
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
        self._report_status(force=True)
        return self.stats()

    def flush(self, timeout: float = 10.0) -> bool:
        """Write what is queued now, from the calling thread (tests, or a writer not started).

        Returns True if the queue is empty afterwards.
        """
        if self._thread is not None:
            raise RuntimeError("flush() is for a writer whose thread is not running")
        return self._drain(deadline=time.monotonic() + timeout)

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

    def _take_batch(self) -> list[dict[str, Any]]:
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
            batch: list[dict[str, Any]] = []
            for record in records:
                try:
                    batch.append(record.row())
                except Exception as err:  # a malformed record must not kill the writer thread
                    log.warning("malformed event record dropped: %s", err)
                    with self._lock:
                        self._counters.failed += 1
                        self._counters.dropped += 1
                        self._retry_len -= 1
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

    def _write(self, batch: list[dict[str, Any]]) -> bool:
        """One transaction for the batch. True: written, or its bad rows set aside."""
        try:
            with self._engine.begin() as conn:
                conn.execute(insert(AccessEvent), batch)
        except SQLAlchemyError as err:
            self._note_error(err)
            if _is_bad_data(err):
                # Bad data, not a bad database: write row by row and set aside the refused rows.
                return self._write_one_by_one(batch)
            return False
        self._done(len(batch), failed=0)
        return True

    def _write_one_by_one(self, batch: list[dict[str, Any]]) -> bool:
        written = failed = 0
        try:
            with self._engine.begin() as conn:
                for row in batch:
                    try:
                        with conn.begin_nested():
                            conn.execute(insert(AccessEvent), [row])
                        written += 1
                    except SQLAlchemyError as err:
                        if not _is_bad_data(err):
                            raise
                        failed += 1
                        log.warning("event row refused by the database and dropped: %s", err)
        except SQLAlchemyError as err:
            self._note_error(err)
            return False
        self._done(written, failed=failed)
        return True

    def _done(self, written: int, failed: int) -> None:
        with self._lock:
            c = self._counters
            c.written += written
            c.failed += failed
            c.dropped += failed
            c.flushes += 1
            c.last_flush_at = utcnow()
            self._retry = []
            self._retry_len = 0

    def _note_error(self, err: Exception) -> None:
        text = f"{type(err).__name__}: {getattr(err, 'orig', None) or err}"
        with self._lock:
            c = self._counters
            c.errors += 1
            c.last_error = text[:500]
            c.last_error_at = utcnow()
            first = c.errors == 1
        (log.error if first else log.debug)("event flush failed (will retry): %s", text)

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

    def _report_status(self, force: bool = False) -> None:
        target = self._status
        if target is None:
            return
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
