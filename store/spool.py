"""A local, on-disk spool for events the central database could not take yet.

A school in a multi-academy trust writes its events to the trust's central PostgreSQL
database. When that database cannot be reached, the appliance keeps filtering and the event
writer puts its batches here instead: a small SQLite file in the appliance's data directory.
A shipper (see ``store.events``) moves them to the central database, oldest first, once it
is back, and deletes them from the spool only after the central database committed them.
Every event carries its ``uid``, so a batch shipped twice (a crash between that commit and
the delete) is stored once.

The spool is shared by every daemon of the appliance (one file, SQLite WAL); a lock file
makes sure only one of them ships at a time. Its size is bounded: by ``max_bytes`` and by
the free space the file system must keep (``reserve_bytes``); beyond that ``append`` refuses
and the caller counts the events as dropped.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import pwd
import shutil
import sqlite3
import threading
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 2 * 1024**3  # about 4 million events: days of a school's blocked traffic
DEFAULT_RESERVE_BYTES = 256 * 1024**2  # never fill the data disk: SQLite and logs need room
_BUSY_TIMEOUT_S = 10.0


class SpoolFull(Exception):
    """The spool may not grow: its own bound or the disk's free-space reserve is reached."""


def _encode(row: dict[str, Any]) -> str:
    values = dict(row)
    ts = values.get("ts")
    if isinstance(ts, datetime):
        values["ts"] = ts.isoformat()
    return json.dumps(values, separators=(",", ":"), ensure_ascii=False)


# Columns the events table gained after the spool's format was set: a row spooled by an
# older version lacks them, and a batch of rows must all name the same columns.
ADDED_COLUMNS: dict[str, Any] = {"identity_source": None}


def _decode(text: str) -> dict[str, Any]:
    values: dict[str, Any] = json.loads(text)
    for name, default in ADDED_COLUMNS.items():
        values.setdefault(name, default)
    ts = values.get("ts")
    if isinstance(ts, str):
        values["ts"] = datetime.fromisoformat(ts)
    return values


class EventSpool:
    """Rows for the ``events`` table, kept in order in a local SQLite file.

    One connection per instance, guarded by a lock: the writer thread appends and the
    shipper thread reads and deletes.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        reserve_bytes: int = DEFAULT_RESERVE_BYTES,
    ) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.reserve_bytes = reserve_bytes
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._ship_lock_file: int | None = None
        try:
            self._conn = self._open()
        except sqlite3.DatabaseError as err:
            if isinstance(err, sqlite3.OperationalError):
                raise  # busy or unreadable: not a reason to throw the file away
            # Not a database any more (a disk error, a truncated copy): keep it for a look,
            # start a new one; the daemon must keep logging.
            aside = self.path.with_name(f"{self.path.name}.broken-{int(time.time())}")
            log.error("event spool %s is damaged (%s); moved to %s, starting afresh", self.path, err, aside)
            self.path.rename(aside)
            for suffix in ("-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"{self.path}{suffix}")
            self._conn = self._open()

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode survives a crash of the process; only a power cut may lose
            # the last batches.
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS spooled_events ("
                " id INTEGER PRIMARY KEY AUTOINCREMENT,"
                " uid TEXT,"
                " row TEXT NOT NULL)"
            )
        except BaseException:
            conn.close()
            raise
        return conn

    def close(self) -> None:
        with self._lock:
            self._conn.close()
        self.release_shipping()

    # -- the writer's side

    def size_bytes(self) -> int:
        total = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(FileNotFoundError):
                total += os.stat(f"{self.path}{suffix}").st_size
        return total

    def _check_room(self) -> None:
        if self.size_bytes() >= self.max_bytes:
            raise SpoolFull(f"event spool {self.path} reached its bound of {self.max_bytes} bytes")
        free = shutil.disk_usage(self.path.parent).free
        if free < self.reserve_bytes:
            raise SpoolFull(f"only {free} bytes free on the disk of {self.path} (keeping {self.reserve_bytes})")

    def append(self, rows: Sequence[dict[str, Any]]) -> int:
        """Add rows at the end, in one transaction; raises SpoolFull (nothing added)."""
        if not rows:
            return 0
        encoded = [(row.get("uid"), _encode(row)) for row in rows]
        with self._lock:
            self._check_room()
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.executemany("INSERT INTO spooled_events (uid, row) VALUES (?, ?)", encoded)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
        return len(encoded)

    # -- the shipper's side

    def pending(self) -> int:
        with self._lock:
            (count,) = self._conn.execute("SELECT count(*) FROM spooled_events").fetchone()
        return int(count)

    def oldest(self, limit: int) -> list[tuple[int, dict[str, Any]]]:
        """Up to ``limit`` rows from the front, as (spool id, row values)."""
        with self._lock:
            found = self._conn.execute("SELECT id, row FROM spooled_events ORDER BY id LIMIT ?", (limit,)).fetchall()
        return [(int(spool_id), _decode(text)) for spool_id, text in found]

    def front(self) -> int | None:
        """The id of the oldest row, None when the spool is empty. It moves only when rows are
        shipped (deleted after the central database committed them)."""
        with self._lock:
            (first,) = self._conn.execute("SELECT min(id) FROM spooled_events").fetchone()
        return None if first is None else int(first)

    def delete_through(self, last_id: int) -> None:
        """Forget the rows up to ``last_id``, which the central database has committed.

        ``oldest`` hands out a prefix of the spool, and appends only ever add higher ids
        (each in a transaction of its own, ids taken under SQLite's write lock), so the rows
        up to ``last_id`` are exactly the ones shipped.
        """
        with self._lock:
            self._conn.execute("DELETE FROM spooled_events WHERE id <= ?", (last_id,))

    def try_acquire_shipping(self) -> bool:
        """Become the one process that ships (non-blocking); held until released or exit."""
        if self._ship_lock_file is not None:
            return True
        fd = os.open(f"{self.path}.ship.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._ship_lock_file = fd
        return True

    def release_shipping(self) -> None:
        fd, self._ship_lock_file = self._ship_lock_file, None
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


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
