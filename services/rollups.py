"""Rolls new events up into the dashboard's count tables (event_hourly, event_daily).

Incremental like the alert engine: a cursor in `generations` (`rollup_cursor`) remembers the
last event id counted, and the counts and the cursor move in one transaction, so a rerun
never counts an event twice. SQL groups each batch by UTC hour (few rows); Python folds the
hours into the school's local days (the policy's zone), which SQL cannot do across clock changes portably.

Ids are assigned in commit order on SQLite (one writer at a time holds the write lock), so
an id cursor never skips an event there.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import Any

from sqlalchemy import BigInteger, func, select, type_coerce
from sqlalchemy.orm import Session

from schoolgate.services.common import advance_mark, read_mark, write_mark
from schoolgate.services.selftest_devices import not_selftest
from schoolgate.store.models import AccessEvent, DaemonStatus, EventDaily, EventHourly, Generation

CURSOR_NAME = "rollup_cursor"
RAN_NAME = "rollups_ran"  # generations row: when the scheduler last brought the rollups up to date
# The scheduler counts every 30 s and beats its heart every 30 s: after this long without either,
# the dashboard stops presenting its figures as current.
STALE_AFTER = timedelta(minutes=3)
SCHEDULER_STATUS = "scheduler"  # its daemon_status row
BATCH = 10_000  # events per transaction: about a second of SQLite's write lock on a Pi
DEVICE = "device"
TARGET = "target"
SERVICE = "service"  # key: the catalogue service, "" for none (the charts)
ROLE = "role"  # key: the role (the charts)


@dataclass(frozen=True)
class RollupResult:
    events: int  # event rows counted
    cursor: int


def hour_expression(session: Session) -> Any:
    """SQL for the start of an event's UTC hour, as text 'YYYY-MM-DD HH:00:00'."""
    if session.get_bind().dialect.name == "postgresql":
        return func.to_char(func.date_trunc("hour", AccessEvent.ts), "YYYY-MM-DD HH24:00:00")
    # SQLite stores events.ts as integer microseconds (store.coltypes.UTCMicroseconds); the
    # division is SQLite's integer one, whole seconds for every time after 1970.
    seconds = type_coerce(AccessEvent.ts, BigInteger) // 1_000_000
    return func.strftime("%Y-%m-%d %H:00:00", seconds, "unixepoch")


def parse_hour(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def read_cursor(session: Session, site: str, *, lock: bool = False) -> int:
    return read_mark(session, site, CURSOR_NAME, lock=lock)


def _write_cursor(session: Session, site: str, value: int, now: datetime) -> None:
    write_mark(session, site, CURSOR_NAME, value, now)


def _upsert(session: Session, model: type[Any], rows: list[dict[str, Any]], keys: list[str], label: bool) -> None:
    """Add `count` to existing rows (and refresh the label), inserting the missing ones."""
    if not rows:
        return
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        insert: Any = pg_insert
    else:
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        insert = sqlite_insert
    # One statement compiled once, run with many parameter sets (executemany); a multi-row
    # VALUES clause would be compiled afresh for every batch.
    statement = insert(model.__table__)
    updates: dict[str, Any] = {"count": model.__table__.c.count + statement.excluded.count}
    if label:
        updates["label"] = func.coalesce(func.nullif(statement.excluded.label, ""), model.__table__.c.label)
    session.connection().execute(statement.on_conflict_do_update(index_elements=keys, set_=updates), rows)


def update_rollups(session: Session, site: str, now: datetime, *, zone: tzinfo, batch: int = BATCH) -> RollupResult:
    """Count the events after the cursor (up to `batch` ids per call); the caller commits. Days
    are the school's (`zone`: the policy's `[school] timezone`)."""
    cursor = read_cursor(session, site, lock=True)
    last = session.scalar(select(func.max(AccessEvent.id)).where(AccessEvent.id > cursor))
    if last is None:
        return RollupResult(0, cursor)
    upper = min(int(last), cursor + batch)
    # The self-test's own questions are not the school's traffic (see services.selftest_devices).
    in_batch = [AccessEvent.site == site, AccessEvent.id > cursor, AccessEvent.id <= upper,
                not_selftest(AccessEvent.device_id)]
    hour = hour_expression(session)
    total = func.sum(AccessEvent.count)
    counted = 0

    # One expression object in SELECT and GROUP BY: built twice, each would bind its own ""
    # parameter, and PostgreSQL cannot tell that $3 and $5 are the same grouping expression.
    service = func.coalesce(AccessEvent.service, "")
    hourly = session.execute(
        select(hour, AccessEvent.verdict, AccessEvent.role, service, total)
        .where(*in_batch)
        .group_by(hour, AccessEvent.verdict, AccessEvent.role, service)
    ).all()
    hourly_rows = [
        {"site": site, "hour": parse_hour(h), "verdict": v, "role": r, "service": s[:60], "count": int(c or 0)}
        for h, v, r, s, c in hourly
    ]
    counted = sum(row["count"] for row in hourly_rows)

    daily: dict[tuple[str, str, date, str], list[Any]] = defaultdict(lambda: [0, ""])
    for row in hourly_rows:
        day = row["hour"].astimezone(zone).date()
        daily[(SERVICE, row["verdict"], day, row["service"])][0] += row["count"]
        daily[(ROLE, row["verdict"], day, row["role"])][0] += row["count"]
    device_key = func.coalesce(AccessEvent.device_id, AccessEvent.client_ip)
    for h, verdict, key, name, person, count in session.execute(
        select(
            hour,
            AccessEvent.verdict,
            device_key,
            func.max(AccessEvent.device_name),
            func.max(AccessEvent.person_name),
            total,
        )
        .where(*in_batch)
        .group_by(hour, AccessEvent.verdict, device_key)
    ):
        entry = daily[(DEVICE, verdict, parse_hour(h).astimezone(zone).date(), str(key)[:255])]
        entry[0] += int(count or 0)
        # "" when nothing names the device: a later event with its name then fills it in.
        label = f"{name or key} ({person})" if person else str(name or "")
        if label:
            entry[1] = label
    target_key = func.coalesce(AccessEvent.service, AccessEvent.host)
    for h, verdict, key, count in session.execute(
        select(hour, AccessEvent.verdict, target_key, total)
        .where(*in_batch)
        .group_by(hour, AccessEvent.verdict, target_key)
    ):
        entry = daily[(TARGET, verdict, parse_hour(h).astimezone(zone).date(), str(key)[:255])]
        entry[0] += int(count or 0)
        entry[1] = str(key)[:300]
    daily_rows = [
        {
            "site": site,
            "dimension": dim,
            "verdict": verdict,
            "day": day,
            "key": key,
            "count": count,
            "label": label[:300],
        }
        for (dim, verdict, day, key), (count, label) in daily.items()
    ]
    _upsert(session, EventHourly, hourly_rows, ["site", "hour", "verdict", "role", "service"], label=False)
    _upsert(session, EventDaily, daily_rows, ["site", "dimension", "verdict", "day", "key"], label=True)
    _write_cursor(session, site, upper, now)
    session.flush()
    return RollupResult(counted, upper)


def catch_up(
    session: Session, site: str, now: datetime, *, zone: tzinfo, batch: int = BATCH, max_batches: int = 1000
) -> int:
    """Run `update_rollups` until the cursor reaches the newest event; returns events counted.

    The caller commits; for a large backlog, call `update_rollups` per transaction instead.
    """
    counted = 0
    for _ in range(max_batches):
        before = read_cursor(session, site)
        result = update_rollups(session, site, now, zone=zone, batch=batch)
        counted += result.events
        if result.cursor == before:
            break
    return counted


def mark_ran(session: Session, site: str, now: datetime) -> None:
    """Note that the rollups are up to date as of `now` (the scheduler, after each run)."""
    advance_mark(session, site, RAN_NAME, now)


@dataclass(frozen=True)
class Freshness:
    """How current the dashboard's figures are, and whether the scheduler that fills them runs.

    `as_of` is on the appliance's clock (the one the events are stamped with); the scheduler's
    heartbeat is on the wall clock of the machine that wrote it, so each is compared with its own.
    """

    as_of: datetime | None  # the rollups were complete up to this instant; None: never
    heartbeat_at: datetime | None  # the scheduler's last heartbeat; None: never
    stale: bool
    reason: str  # for the dashboard's warning; "" when fresh

    @property
    def scheduler_down(self) -> bool:
        return self.stale


def freshness(session: Session, site: str, now: datetime, wall_now: datetime) -> Freshness:
    ran = session.get(Generation, (site, RAN_NAME))
    as_of = ran.changed_at if ran is not None and ran.value > 0 else None
    status = session.get(DaemonStatus, (site, SCHEDULER_STATUS))
    heartbeat = status.heartbeat_at if status is not None else None
    if heartbeat is None and as_of is None:
        return Freshness(None, None, True, "The scheduler has never run, so these figures have never been counted.")
    if heartbeat is None or wall_now - heartbeat > STALE_AFTER:
        return Freshness(as_of, heartbeat, True, "The scheduler is not running (no heartbeat for over 3 minutes).")
    if as_of is None or now - as_of > STALE_AFTER:
        return Freshness(as_of, heartbeat, True, "The scheduler runs but has not counted the events recently.")
    return Freshness(as_of, heartbeat, False, "")
