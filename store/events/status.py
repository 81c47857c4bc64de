"""Each daemon's heartbeat and counters, one ``daemon_status`` row per site and daemon.

The event writer reports its ledger here every few seconds (and at stop); the supervisor reads
the rows to tell what a daemon that died without flushing may have lost.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, insert, select, update
from sqlalchemy.orm import Session

from schoolgate.store.coltypes import utcnow
from schoolgate.store.models import DaemonStatus

# Core statements on the session's connection, not the ORM's unit of work: every daemon writes
# its row each few seconds, and in a process forked from the supervisor the ORM's code paths
# copy megabytes of shared pages (reference counts written) that a plain statement leaves alone.
_TABLE = cast(Table, DaemonStatus.__table__)  # a declarative class's table is a Table
_COLUMNS = (_TABLE.c.name, _TABLE.c.pid, _TABLE.c.started_at, _TABLE.c.heartbeat_at, _TABLE.c.stats)
# A row whose stats carry this key is of a process that is alive and reporting that the daemon
# is not working, and why (net watch in the event-writing process, retrying a refused NFLOG
# bind): a fresh heartbeat then does not mean the daemon works.
FAILING = "error"


def failing(stats: Mapping[str, Any]) -> str | None:
    """Why the daemon of a status row says it is not working; None if it does not say so."""
    reason = stats.get(FAILING)
    return str(reason) if reason else None


def write_status(  # noqa: PLR0917 (the agreed positional signature)
    session: Session,
    site: str,
    name: str,
    pid: int,
    started_at: datetime,
    stats: Mapping[str, Any],
) -> None:
    """Record a daemon's heartbeat and counters (one row per site and daemon name).

    Runs in the caller's session and transaction; the caller commits. Each name is written by
    one process only, so an update that finds no row is followed by the insert."""
    values = {
        "pid": pid,
        "started_at": started_at,
        "heartbeat_at": utcnow(),
        "stats": json.dumps(dict(stats), sort_keys=True, default=str),
    }
    conn = session.connection()
    where = (_TABLE.c.site == site) & (_TABLE.c.name == name)
    if conn.execute(update(_TABLE).where(where).values(values)).rowcount == 0:
        conn.execute(insert(_TABLE).values(site=site, name=name, **values))


def read_status(session: Session, site: str) -> dict[str, dict[str, Any]]:
    """Each daemon's last heartbeat: {name: {"pid", "started_at", "heartbeat_at", "stats"}}."""
    rows = session.connection().execute(select(*_COLUMNS).where(_TABLE.c.site == site).order_by(_TABLE.c.name))
    result: dict[str, dict[str, Any]] = {}
    for name, pid, started_at, heartbeat_at, text in rows:
        try:
            stats = json.loads(text)
        except ValueError:
            stats = {}
        result[name] = {"pid": pid, "started_at": started_at, "heartbeat_at": heartbeat_at, "stats": stats}
    return result
