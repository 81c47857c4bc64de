"""Logging access attempts without ever making a DNS answer wait for the database.

One module per part, and each way an event can be lost in exactly one of them:

- ``record``: ``EventRecord``, one row of the ``events`` table as plain values.
- ``fold``: ``AllowedAggregator``, allowed traffic folded per client, domain and minute before
  it is submitted. Loss: what it holds when the process is killed (reported as ``held``).
- ``writer``: ``EventWriter``, the bounded queue and the thread that writes it. Loss: a full
  queue (``overflow``), records after stop (``late``), rows the database refuses or that
  are still unwritten at stop without a spool (``failed``).
- ``shipper``: ``SpoolShipper``, the local spool while a trust's central database is away,
  and shipping it back. Loss: no room in the spool (``spool_full``), spooled rows the
  database refuses (``failed``).
- ``ledger``: the counts every part records in, and the one ``lose`` every loss goes through.
- ``rows``: how rows are built and inserted (fast paths for SQLite and psycopg, ON CONFLICT
  (uid) DO NOTHING), and which failures are the rows' own fault.
- ``status``: each daemon's heartbeat and counters in ``daemon_status``.
- ``channel``: compact events handed from a daemon's workers to its event-writing process,
  and ``writing``: that process's body (the DNS daemon's and the proxy's, with their settings).

The names other parts of schoolgate use are importable from here.
"""

from __future__ import annotations

from schoolgate.store.events.fold import AllowedAggregator
from schoolgate.store.events.ledger import LOSS_REASONS, Ledger
from schoolgate.store.events.record import EventRecord
from schoolgate.store.events.rows import (
    CoreRows,
    PostgresRows,
    SqliteRows,
    insert_events,
    insert_postgres_rows,
    insert_sqlite_rows,
    row_format,
    storable_text,
)
from schoolgate.store.events.shipper import SpoolShipper
from schoolgate.store.events.status import read_status, write_status
from schoolgate.store.events.writer import EventWriter, StatusTarget, UidSource, make_event_writer
from schoolgate.store.spool import default_spool_path, spool_paths

__all__ = [
    "LOSS_REASONS",
    "AllowedAggregator",
    "CoreRows",
    "EventRecord",
    "EventWriter",
    "Ledger",
    "PostgresRows",
    "SpoolShipper",
    "SqliteRows",
    "StatusTarget",
    "UidSource",
    "default_spool_path",
    "insert_events",
    "insert_postgres_rows",
    "insert_sqlite_rows",
    "make_event_writer",
    "read_status",
    "row_format",
    "spool_paths",
    "storable_text",
    "write_status",
]
