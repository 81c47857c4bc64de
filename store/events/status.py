"""Each daemon's heartbeat and counters, one ``daemon_status`` row per site and daemon.

The event writer reports its ledger here every few seconds (and at stop); the supervisor reads
the rows to tell what a daemon that died without flushing may have lost.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from schoolgate.store.coltypes import utcnow
from schoolgate.store.models import DaemonStatus


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

