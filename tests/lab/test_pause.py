"""Stopping a daemon between two of its transactions, with a real SQLite database and a real
process that holds the write lock most of the time."""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from schoolgate.lab.netns import LabError, wait_for
from schoolgate.lab.pause import is_stopped, resume, stop_between_transactions, write_lock_free

# Holds the write lock for 50 ms of its own CPU time in every transaction, then sleeps 10 ms: a
# process stopped at a random moment is nearly always inside a transaction, and once resumed it
# needs CPU time, not merely time, to end it (as a daemon's Python work inside a transaction does).
# It counts its transactions in the table.
BUSY_WRITER = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], timeout=30, isolation_level=None)
while True:
    db.execute("BEGIN IMMEDIATE")
    db.execute("UPDATE done SET n = n + 1")
    until = time.thread_time() + 0.05
    while time.thread_time() < until:
        pass
    db.execute("COMMIT")
    time.sleep(0.01)
"""
BUSY_TIMEOUT_MS = 2_000  # a transaction of the writer above ends well within it, however busy the machine


def transactions(database: Path) -> int:
    with contextlib.closing(sqlite3.connect(database, timeout=30)) as db:
        return int(db.execute("SELECT n FROM done").fetchone()[0])


@pytest.fixture
def database(tmp_path: Path) -> Path:
    path = tmp_path / "schoolgate.db"
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE done (n INTEGER)")
        db.execute("INSERT INTO done VALUES (0)")
        db.commit()
    return path


@pytest.fixture
def busy_writer(database: Path) -> Iterator[subprocess.Popen[bytes]]:
    child = subprocess.Popen([sys.executable, "-c", BUSY_WRITER, str(database)])
    try:
        wait_for(lambda: transactions(database) > 0, timeout=60, what="the writer's first transaction")
        yield child
    finally:
        resume([child.pid])
        child.kill()
        child.wait()


def test_a_process_that_nearly_always_holds_the_lock_is_stopped_between_two_transactions(
    database: Path, busy_writer: subprocess.Popen[bytes]
) -> None:
    # Five times over: a stop once landed inside a transaction and was taken again at once, so
    # the holder never ran long enough to commit and every later stop found the lock held.
    for _ in range(5):
        stop_between_transactions([busy_writer.pid], database, busy_timeout_ms=BUSY_TIMEOUT_MS)
        assert is_stopped(busy_writer.pid)
        assert write_lock_free(database, busy_timeout_ms=0)
        before = transactions(database)
        resume([busy_writer.pid])
        wait_for(lambda before=before: transactions(database) > before, timeout=60, what="the writer to go on")


def test_a_lock_held_by_another_process_is_said_to_be_so(
    database: Path, busy_writer: subprocess.Popen[bytes]
) -> None:
    with contextlib.closing(sqlite3.connect(database, isolation_level=None)) as holder:
        holder.execute("BEGIN IMMEDIATE")  # once the writer's transaction has ended: 30 s timeout
        with pytest.raises(LabError, match="something else is holding it"):
            stop_between_transactions([busy_writer.pid], database, busy_timeout_ms=200)
        holder.execute("ROLLBACK")
    assert not is_stopped(busy_writer.pid)  # left running
