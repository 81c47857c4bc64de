"""Folding allowed traffic: one row per client and domain per minute, with a ``count``.

``AllowedAggregator`` sits in front of the proxy's writer (the DNS daemon folds in its events
stage). Blocked and flagged attempts pass in full. What it holds in memory is counted as
held (``pending``/``held_queries``), so a process killed before a minute is handed over is
known to have lost it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from schoolgate.store.coltypes import utcnow
from schoolgate.store.events.record import EventRecord
from schoolgate.store.events.writer import EventWriter


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
        self._held_queries = 0  # the counts of the buckets held now
        writer.count_held(self.held)

    def held(self) -> tuple[int, int]:
        """(rows, queries) held in memory now: lost if the process is killed before handing over."""
        with self._lock:
            return len(self._buckets), self._held_queries

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
            self._held_queries += record.count
            if existing is not None:
                self._buckets[key] = replace(existing, count=existing.count + record.count)
                self.folded += 1
                return True
            if len(self._buckets) >= self._max_buckets:
                # A flood of distinct names: hand everything over early rather than grow.
                overflow = list(self._buckets.values())
                self._buckets.clear()
                self._held_queries = record.count
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
            self._held_queries -= sum(r.count for r in records)
        for record in records:
            self._writer.submit(record)
        return len(records)

    def flush_all(self) -> int:
        with self._lock:
            records = list(self._buckets.values())
            self._buckets.clear()
            self._held_queries = 0
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
