"""Events the central database could not take: into the local spool, and shipped when it is back.

A school in a multi-academy trust writes to the trust's central PostgreSQL database. When a
batch cannot be written because the database is away, the writer hands it to the
``SpoolShipper``: it goes into the on-disk spool (``store.spool``), and so does every later
batch of this writer until the spool is empty again, so that events reach the database in
order. The shipper's thread moves the spool to the database, ``ship_batch`` rows per
transaction, oldest first, retrying with backoff while the database is away. The spool is
shared by the appliance's daemons; one of them ships at a time (the spool's lock file).

Loss on this path: a batch the spool has no room for (``spool_full``), and a spooled row the
database refuses for its own data (``failed``). Rows left in the spool at stop are not lost:
the next start ships them.

Two races are closed here. A batch the writer spools while the shipper finds the spool empty
and ends spooling would sit unshipped: the emptiness check and the end of spooling happen
under the same gate as the writer's append. And a writer whose own shipping failed during an
outage, while a sibling worker shipped after the database came back, used to skip its last
round at stop (believing the database still away) and leave its final rows behind: at stop
the shipper now skips only when nothing has been shipped by anyone since its own failure.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine

from schoolgate.store.coltypes import utcnow
from schoolgate.store.events.ledger import Ledger
from schoolgate.store.events.rows import WRITE_ERRORS, CoreRows, insert_events, insert_mended, is_bad_data
from schoolgate.store.spool import EventSpool, SpoolFull

log = logging.getLogger(__name__)

RETRY_MIN = 0.05
SHIP_RETRY_MAX = 2.0  # how long a school waits, at most, to see its spool drain
IDLE_LOOK_S = 1.0  # how often to look at a spool that other daemons may fill


class SpoolShipper:
    """One writer's side of the shared spool: appending while the database is away, shipping."""

    def __init__(self, engine: Engine, spool: EventSpool, ledger: Ledger, *, ship_batch: int = 5000) -> None:
        self._engine = engine
        self.spool = spool
        self._ledger = ledger
        self.ship_batch = ship_batch
        # Held while the writer decides to spool and appends, and while the shipper finds the
        # spool empty and ends spooling: the two never interleave.
        self._gate = threading.Lock()
        self._spooling = False
        # The spool's first row when this writer's last shipping attempt failed; None after a
        # success. If the first row is still the same at stop, nobody has shipped since.
        self._failed_front: int | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        pending = spool.pending()
        with ledger.lock:
            ledger.counts.spool_pending = pending
        if pending:
            log.warning("%d events wait in the spool %s from before; shipping them first", pending, spool.path)
            self._spooling = True

    @property
    def spooling(self) -> bool:
        return self._spooling

    # -- the writer's side

    def take_if_spooling(self, batch: list[Any], as_dicts: Callable[[list[Any]], list[dict[str, Any]]]) -> bool | None:
        """While spooling, the batch goes to the spool: True when settled (spooled or counted
        lost), False to retry it later. None: not spooling, write it to the database."""
        with self._gate:
            if not self._spooling:
                return None
            return self._append(batch, as_dicts)

    def start_spooling(self, batch: list[Any], as_dicts: Callable[[list[Any]], list[dict[str, Any]]]) -> bool:
        """The database failed this batch: spool it, and every batch after it until shipped."""
        with self._gate:
            self._spooling = True
            return self._append(batch, as_dicts)

    def database_answered(self) -> None:
        """The writer wrote to the database directly: it is there."""
        self._failed_front = None

    def _append(self, batch: list[Any], as_dicts: Callable[[list[Any]], list[dict[str, Any]]]) -> bool:
        try:
            rows = as_dicts(batch)
            try:
                self.spool.append(rows)
            except UnicodeEncodeError:  # text with lone surrogates: keep it, escaped
                self.spool.append([CoreRows.repair(row) for row in rows])
        except sqlite3.OperationalError as err:
            # The spool file is busy or the disk had a hiccup: keep the batch, try again.
            self._ledger.note_error(err)
            return False
        except (SpoolFull, sqlite3.Error, OSError, ValueError) as err:
            # ValueError: a value JSON cannot hold; it could never be shipped either.
            with self._ledger.lock:
                self._ledger.lose_locked("spool_full", len(batch))
                first = self._ledger.counts.spool_full == len(batch)
            (log.error if first else log.debug)("%d events dropped, not spooled: %s", len(batch), err)
            return True
        with self._ledger.lock:
            self._ledger.counts.spooled += len(batch)
            self._ledger.counts.spool_pending += len(batch)
        self._wake.set()
        return True

    # -- the shipper's thread

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="schoolgate-event-shipper", daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread is not None

    def _loop(self) -> None:
        delay = RETRY_MIN
        wait = 0.0
        while not self._stop.is_set():
            self._wake.wait(wait)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                done = self.ship_round()
            except Exception:  # the shipper must outlive a broken spool file; it logs and retries
                log.exception("event spool shipping failed")
                done = False
            if done:
                delay = RETRY_MIN
                wait = IDLE_LOOK_S
            else:
                # Not the wake event: a writer appending during an outage must not make it spin.
                if self._stop.wait(delay):
                    return
                wait = 0.0
                delay = min(delay * 2, SHIP_RETRY_MAX)

    def _set_pending(self, pending: int) -> None:
        with self._ledger.lock:
            self._ledger.counts.spool_pending = pending

    def _end_spooling_if_empty(self) -> bool:
        with self._gate:
            pending = self.spool.pending()
            self._set_pending(pending)
            if pending == 0:
                self._spooling = False
                return True
            return False

    def ship_round(self, deadline: float | None = None, *, wait_turn: bool = False) -> bool:
        """Ship the spool until it is empty (True), shipping fails, or another process ships.

        ``wait_turn`` (at stop): wait until ``deadline`` for another daemon that is shipping
        to finish, then ship what it left. Without it, rows that one worker spools after its
        sibling's last round would stay behind until the next start.
        """
        spool = self.spool
        try:
            while True:
                if deadline is not None and time.monotonic() > deadline:
                    return False
                if self._end_spooling_if_empty():
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
                except WRITE_ERRORS as err:
                    self._ledger.note_error(err, shipping=True)
                    if is_bad_data(err):
                        self._ship_one_by_one(rows)
                        continue
                    self._failed_front = rows[0][0]
                    return False
                self._failed_front = None
                # Committed centrally: only now may the spool forget them. A crash right here
                # ships them again, and the uid makes that harmless.
                spool.delete_through(rows[-1][0])
                with self._ledger.lock:
                    counts = self._ledger.counts
                    counts.shipped += len(batch)
                    counts.duplicates += len(batch) - added
                    counts.last_ship_at = utcnow()
        finally:
            spool.release_shipping()

    def _ship_one_by_one(self, rows: list[tuple[int, dict[str, Any]]]) -> None:
        """A spooled row the database refuses must not block the rows behind it."""
        for spool_id, row in rows:
            try:
                with self._engine.begin() as conn:
                    added = insert_mended(conn, row, insert_events, CoreRows.repair)
            except WRITE_ERRORS as err:
                if not is_bad_data(err):
                    return  # the database went away: the caller's next round retries
                log.warning("spooled event refused by the database and dropped: %s", err)
                added = -1
            self.spool.delete_through(spool_id)
            if added < 0:
                self._ledger.lose("failed", 1)
            else:
                self._ledger.add(shipped=1, duplicates=1 - added)

    def ship(self, timeout: float) -> bool:
        """Ship from the calling thread until the spool is empty (True) or `timeout` passes."""
        deadline = time.monotonic() + timeout
        delay = RETRY_MIN
        while True:
            if self.ship_round():
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, SHIP_RETRY_MAX)

    def _worth_a_last_round(self) -> bool:
        """At stop: is the database likely to answer? Not if this writer's last attempt failed
        and nobody (this process or a sibling) has shipped a row since, in which case a last
        round would only wait out the connection timeout for a server that is away."""
        failed_front = self._failed_front
        if failed_front is None:
            return True
        return self.spool.front() != failed_front

    def stop(self, deadline: float) -> None:
        """Stop the thread, then ship what it can before ``deadline``; close the spool."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(max(0.0, deadline - time.monotonic()) + 15.0)
            if self._thread.is_alive():
                # Stuck in a database call: what it ships stays in the spool until committed.
                log.error("event shipper did not stop; the spool %s is left as it is", self.spool.path)
                return
            self._thread = None
        try:
            if self._worth_a_last_round():
                self.ship_round(deadline=deadline, wait_turn=True)
            left = self.spool.pending()
        except sqlite3.Error:  # a broken spool file must not stop the daemon from stopping
            log.exception("event spool %s could not be read at stop", self.spool.path)
            left = -1
        self._set_pending(left)
        if left > 0:
            log.warning("%d events stay in the spool %s for the next start to ship", left, self.spool.path)
        self.spool.close()
