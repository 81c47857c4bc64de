"""The event writer's ledger: where every submitted event went, and every way one was lost.

After a writer stops, ``submitted == written + folded + spooled + dropped`` holds exactly, and
``dropped`` is the sum of the loss reasons below; each is recorded through ``lose`` and
nowhere else, so a search for ``lose(`` finds every place an event can be lost:

- ``overflow``: the bounded queue was full (the database was slower than the traffic);
- ``late``: submitted after the writer stopped;
- ``failed``: the database refused the row itself, a record could not be made into a row,
  or the database still failed when the writer had to stop;
- ``spool_full``: the database was away and the local spool had no room left.

Events a process holds in memory before it submits them (allowed traffic folded per minute)
are not in the ledger until submitted; the writer reports them as ``held`` beside it, so a
process killed before it hands them over is known to have lost them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, Literal

from schoolgate.store.coltypes import utcnow

log = logging.getLogger(__name__)

LossReason = Literal["overflow", "late", "failed", "spool_full"]
LOSS_REASONS: tuple[LossReason, ...] = ("overflow", "late", "failed", "spool_full")


@dataclass
class Counts:
    submitted: int = 0  # every submit() call
    written: int = 0  # rows committed to the database directly (including ones it already had)
    # Repeated asks folded into an earlier event's row of the same burst (repeats.py): stored
    # in that row's count, not as rows of their own. A row lost later counts once in dropped.
    folded: int = 0
    dropped: int = 0  # overflow + late + failed + spool_full: never written
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


class Ledger:
    """Counts under one lock, which the writer's queue shares (``submit`` takes it once)."""

    def __init__(self, lock: threading.Lock | None = None) -> None:
        self.lock = lock or threading.Lock()
        self.counts = Counts()

    def lose_locked(self, reason: LossReason, n: int) -> None:
        """Record `n` events lost for `reason`; the caller holds ``lock``."""
        counts = self.counts
        setattr(counts, reason, getattr(counts, reason) + n)
        counts.dropped += n

    def lose(self, reason: LossReason, n: int) -> None:
        with self.lock:
            self.lose_locked(reason, n)

    def add(self, **deltas: int) -> None:
        """Add to counters that are not losses (written, spooled, shipped ...)."""
        with self.lock:
            counts = self.counts
            for name, value in deltas.items():
                setattr(counts, name, getattr(counts, name) + value)

    def note_error(self, err: Exception, *, shipping: bool = False) -> None:
        """A failed attempt that will be retried: counted, and logged the first time."""
        text = f"{type(err).__name__}: {getattr(err, 'orig', None) or err}"
        with self.lock:
            counts = self.counts
            if shipping:
                counts.ship_errors += 1
            else:
                counts.errors += 1
            counts.last_error = text[:500]
            counts.last_error_at = utcnow()
            first = counts.errors + counts.ship_errors == 1
        what = "shipping the event spool" if shipping else "event flush"
        (log.error if first else log.debug)("%s failed (will retry): %s", what, text)

    def snapshot(self, extra: Callable[[], dict[str, Any]] | None = None) -> dict[str, Any]:
        """The counts as plain values (times in ISO 8601), and `extra`'s, taken under the lock."""
        with self.lock:
            values = asdict(self.counts)
            if extra is not None:
                values.update(extra())
        for key in ("last_error_at", "last_flush_at", "last_ship_at"):
            if values[key] is not None:
                values[key] = values[key].isoformat()
        return values
