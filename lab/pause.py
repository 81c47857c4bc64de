"""Stopping a daemon dead (SIGSTOP) between two of its database transactions.

A lab test that stops a daemon to see the appliance notice (the DNS daemon silent, say) must not
stop it inside a transaction: a stopped process holding SQLite's write lock is a stopped
database, every writer of the appliance waiting on it, which is not what such a test is about.
So the stop is checked, and when it landed inside a transaction the daemon is let run until that
transaction has ended before it is stopped again.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
from collections.abc import Iterable
from pathlib import Path

from schoolgate.lab.netns import LabError, wait_for
from schoolgate.store.db import DEFAULT_BUSY_TIMEOUT_MS


def is_stopped(pid: int) -> bool:
    """Whether every thread of the process is stopped by a signal (state T)."""
    tasks = Path(f"/proc/{pid}/task")
    return all((task / "stat").read_text().rsplit(")", 1)[1].split()[0] == "T" for task in tasks.iterdir())


def write_lock_free(database: Path, *, busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS) -> bool:
    """Whether a writer can begin a transaction within the busy timeout: what a running writer's
    transaction is bounded by, and what every other writer of the appliance would wait."""
    with contextlib.closing(sqlite3.connect(database, timeout=busy_timeout_ms / 1000, isolation_level=None)) as db:
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError:
            return False
        db.execute("ROLLBACK")
        return True


def resume(pids: Iterable[int]) -> None:
    """SIGCONT to each, ignoring those that have gone."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def stop_between_transactions(pids: Iterable[int], database: Path, *, attempts: int = 10,
                              busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS) -> None:
    """Stop every one of `pids` (a daemon's processes) at a moment when none of them holds the
    database's write lock. Raises LabError, with the processes running again, when that cannot
    be had in `attempts` stops, or when the lock stays held while they run."""
    stopping = sorted(set(pids))
    for _ in range(attempts):
        for pid in stopping:
            os.kill(pid, signal.SIGSTOP)
        # kill() returns before the signal has stopped every thread: wait until it has.
        wait_for(lambda: all(is_stopped(pid) for pid in stopping), timeout=30, what="the processes to stop")
        if write_lock_free(database, busy_timeout_ms=busy_timeout_ms):
            return
        resume(stopping)
        # The stop landed inside a transaction. Stopped again at once, the holder would not have
        # run long enough to end it, and every later stop would find the same transaction open:
        # wait until a writer can begin, which is the moment that transaction has ended.
        if not write_lock_free(database, busy_timeout_ms=busy_timeout_ms):
            raise LabError(f"the database's write lock stayed held for {busy_timeout_ms} ms with the processes"
                           " running: something else is holding it")
    raise LabError(f"every one of {attempts} stops landed inside one of the processes' transactions")
