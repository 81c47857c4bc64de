"""Activity search and dashboard figures, fast on a million events.

The search reads `events` through its indexes (site + device/person/service/verdict + ts)
and pages by keyset (ts, id) rather than OFFSET, never counting the whole table. Charts and
top lists read the rollups (event_hourly, event_daily; see schoolgate.services.rollups),
which the scheduler keeps within about 30 seconds of the events. Hours fold into
the school's local days (the policy's zone) in Python, so a school day is a local day on both sides of a clock change.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from schoolgate.services.common import SiteScope, on_site
from schoolgate.services.errors import InvalidInput
from schoolgate.services.rollups import DEVICE, ROLE, SERVICE, TARGET
from schoolgate.store.models import (
    AccessEvent,
    AccessRequest,
    Alert,
    BanRow,
    EventDaily,
    EventHourly,
    PolicyExceptionRow,
)

MAX_PAGE = 500
MAX_RANGE = timedelta(days=400)
# refused: QUIC refused quietly; redirect: DNS sent elsewhere, answered by schoolgate (the gateway's)
VERDICTS = ("allow", "block", "safe_search", "refused", "redirect")


@dataclass(frozen=True, slots=True)
class EventQuery:
    """Filters for the activity search; all optional except the time range."""

    start: datetime  # aware, inclusive
    end: datetime  # aware, exclusive
    person_id: str | None = None
    device_id: str | None = None
    service: str | None = None
    host: str | None = None  # the host or any subdomain of it
    verdict: str | None = None
    role: str | None = None
    flagged_only: bool = False  # only events with flags (e.g. circumvention)
    limit: int = 50
    # Keyset cursor: the (ts, id) of the last row of the previous page.
    before: tuple[datetime, int] | None = None


@dataclass(frozen=True, slots=True)
class EventPage:
    items: list[AccessEvent]
    next_cursor: tuple[datetime, int] | None  # pass as `before` for the next page; None: last page


@dataclass(frozen=True, slots=True)
class Series:
    """Counts per bucket for each key (service or role), ready for a chart."""

    buckets: list[datetime]  # bucket starts, aware (local midnight or UTC hour)
    counts: dict[str, list[int]]  # key -> one count per bucket
    bucket: str  # "hour" or "day"


@dataclass(frozen=True, slots=True)
class Ranked:
    key: str
    label: str
    count: int


@dataclass(frozen=True)
class Dashboard:
    today_allowed: int
    today_blocked: int
    open_alerts: dict[str, int]
    requests_awaiting_triage: int
    requests_awaiting_headteacher: int
    active_exceptions: int
    active_bans: int
    top_blocked_services: list[Ranked] = field(default_factory=list)
    top_blocked_devices: list[Ranked] = field(default_factory=list)


def _check_range(start: datetime, end: datetime) -> None:
    if start.tzinfo is None or end.tzinfo is None:
        raise InvalidInput("Times must include a time zone.", field="start")
    if end <= start:
        raise InvalidInput("The end of the range must be after its start.", field="end")
    if end - start > MAX_RANGE:
        raise InvalidInput(f"Search at most {MAX_RANGE.days} days at a time.", field="start")


def search_events(session: Session, site: SiteScope, query: EventQuery) -> EventPage:
    """Events newest first matching the filters, one page at a time."""
    _check_range(query.start, query.end)
    if query.verdict is not None and query.verdict not in VERDICTS:
        raise InvalidInput(f"Unknown verdict {query.verdict!r}.", field="verdict")
    limit = max(1, min(query.limit, MAX_PAGE))
    conditions: list[Any] = [on_site(AccessEvent.site, site), AccessEvent.ts >= query.start, AccessEvent.ts < query.end]
    if query.person_id:
        conditions.append(AccessEvent.person_id == query.person_id)
    if query.device_id:
        conditions.append(AccessEvent.device_id == query.device_id)
    if query.service:
        conditions.append(AccessEvent.service == query.service)
    if query.verdict:
        conditions.append(AccessEvent.verdict == query.verdict)
    if query.role:
        conditions.append(AccessEvent.role == query.role)
    if query.flagged_only:
        conditions.append(AccessEvent.flags != "")
    if query.host:
        host = query.host.strip().lower().rstrip(".")
        escaped = host.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        conditions.append((AccessEvent.host == host) | AccessEvent.host.like(f"%.{escaped}", escape="\\"))
    if query.before is not None:
        ts, event_id = query.before
        conditions.append((AccessEvent.ts < ts) | ((AccessEvent.ts == ts) & (AccessEvent.id < event_id)))
    rows = list(
        session.scalars(
            select(AccessEvent)
            .where(*conditions)
            .order_by(AccessEvent.ts.desc(), AccessEvent.id.desc())
            .limit(limit + 1)
        )
    )
    more = len(rows) > limit
    rows = rows[:limit]
    cursor = (rows[-1].ts, rows[-1].id) if more and rows else None
    return EventPage(items=rows, next_cursor=cursor)


def local_midnight(day: date, zone: tzinfo) -> datetime:
    return datetime.combine(day, time(0), tzinfo=zone)


def _floor_hour(when: datetime) -> datetime:
    return when.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def _local_days(start: datetime, end: datetime, zone: tzinfo) -> tuple[date, date]:
    """The first and last of the school's dates (`zone`) that [start, end) touches."""
    return start.astimezone(zone).date(), (end - timedelta(microseconds=1)).astimezone(zone).date()


def blocked_over_time(
    session: Session,
    site: SiteScope,
    start: datetime,
    end: datetime,
    *,
    by: str = "service",
    bucket: str | None = None,
    top: int = 8,
    zone: tzinfo,
) -> Series:
    """Blocked attempts per hour (ranges up to two days) or per local day, split by service or role.

    Reads the rollups: per hour, whole UTC hours that start inside the range; per day, whole
    days of the school (`zone`, the policy's `[school] timezone`) that the range touches.
    Keys beyond the `top` busiest are summed under "other"; no service shows as "(none)".
    """
    _check_range(start, end)
    if by not in ("service", "role"):
        raise InvalidInput("Split by service or by role.", field="by")
    bucket = bucket or ("hour" if end - start <= timedelta(days=2) else "day")
    if bucket not in ("hour", "day"):
        raise InvalidInput("Bucket must be hour or day.", field="bucket")
    rows: list[tuple[datetime, str, int]]
    if bucket == "hour":
        key_column = EventHourly.service if by == "service" else EventHourly.role
        rows = [
            (when, key, count)
            for when, key, count in session.execute(
                select(EventHourly.hour, key_column, func.sum(EventHourly.count))
                .where(
                    on_site(EventHourly.site, site),
                    EventHourly.verdict == "block",
                    EventHourly.hour >= _floor_hour(start),
                    EventHourly.hour < end,
                )
                .group_by(EventHourly.hour, key_column)
            )
        ]
    else:
        first, last = _local_days(start, end, zone)
        rows = [
            (local_midnight(day, zone), key, count)
            for day, key, count in session.execute(
                select(EventDaily.day, EventDaily.key, EventDaily.count).where(
                    on_site(EventDaily.site, site),
                    EventDaily.dimension == (SERVICE if by == "service" else ROLE),
                    EventDaily.verdict == "block",
                    EventDaily.day >= first,
                    EventDaily.day <= last,
                )
            )
        ]
    totals: Counter[str] = Counter()
    per: dict[tuple[datetime, str], int] = defaultdict(int)
    for slot, key, count in rows:
        name = key or "(none)"
        per[(slot, name)] += int(count or 0)
        totals[name] += int(count or 0)
    keep = {name for name, _ in totals.most_common(top)}
    buckets: list[datetime] = []
    if bucket == "hour":
        cursor = _floor_hour(start)
        while cursor < end:
            buckets.append(cursor)
            cursor += timedelta(hours=1)
    else:
        day, last = _local_days(start, end, zone)
        while day <= last:
            buckets.append(local_midnight(day, zone))
            day += timedelta(days=1)
    index = {b: i for i, b in enumerate(buckets)}
    counts: dict[str, list[int]] = {}
    for (slot, name), count in per.items():
        label = name if name in keep else "other"
        series = counts.setdefault(label, [0] * len(buckets))
        position = index.get(slot)
        if position is not None:
            series[position] += count
    ordered = dict(sorted(counts.items(), key=lambda kv: -sum(kv[1])))
    return Series(buckets=buckets, counts=ordered, bucket=bucket)


def _top(
    session: Session, site: SiteScope, dimension: str, start: datetime, end: datetime, *, verdict: str, limit: int,
    zone: tzinfo,
) -> list[Ranked]:
    _check_range(start, end)
    first, last = _local_days(start, end, zone)
    total = func.sum(EventDaily.count)
    rows = session.execute(
        select(EventDaily.key, func.max(EventDaily.label), total)
        .where(
            on_site(EventDaily.site, site),
            EventDaily.dimension == dimension,
            EventDaily.verdict == verdict,
            EventDaily.day >= first,
            EventDaily.day <= last,
        )
        .group_by(EventDaily.key)
        .order_by(total.desc(), EventDaily.key)
        .limit(limit)
    ).all()
    return [Ranked(key=str(key), label=str(label or key), count=int(count or 0)) for key, label, count in rows]


def top_services(
    session: Session, site: SiteScope, start: datetime, end: datetime, *, verdict: str = "block", limit: int = 10,
    zone: tzinfo,
) -> list[Ranked]:
    """Services (or hosts, where no catalogue service matched) with the most events of `verdict`,
    over the whole local days the range touches (from the daily rollup)."""
    return _top(session, site, TARGET, start, end, verdict=verdict, limit=limit, zone=zone)


def top_devices(
    session: Session, site: SiteScope, start: datetime, end: datetime, *, verdict: str = "block", limit: int = 10,
    zone: tzinfo,
) -> list[Ranked]:
    """Devices (or addresses, for unregistered devices) with the most events of `verdict`,
    over the whole local days the range touches (from the daily rollup)."""
    return _top(session, site, DEVICE, start, end, verdict=verdict, limit=limit, zone=zone)


def count_events(session: Session, site: SiteScope, start: datetime, end: datetime, verdict: str) -> int:
    """Events of `verdict` in the UTC hours starting in [start, end) (from the hourly rollup)."""
    return int(
        session.scalar(
            select(func.coalesce(func.sum(EventHourly.count), 0)).where(
                on_site(EventHourly.site, site),
                EventHourly.verdict == verdict,
                EventHourly.hour >= _floor_hour(start),
                EventHourly.hour < end,
            )
        )
        or 0
    )


def dashboard(session: Session, site: SiteScope, now: datetime, *, zone: tzinfo, days: int = 7) -> Dashboard:
    """The figures on the console's front page: today (the school's, in `zone`), open work, the
    last `days` days."""
    from schoolgate.services.alerts import count_open_by_severity

    today = local_midnight(now.astimezone(zone).date(), zone)
    since = now - timedelta(days=days)
    pending: dict[str, int] = {
        str(status): int(count)
        for status, count in session.execute(
            select(AccessRequest.status, func.count())
            .where(on_site(AccessRequest.site, site), AccessRequest.status.in_(("submitted", "forwarded")))
            .group_by(AccessRequest.status)
        ).all()
    }
    active_exceptions = session.scalar(
        select(func.count())
        .select_from(PolicyExceptionRow)
        .where(
            on_site(PolicyExceptionRow.site, site),
            PolicyExceptionRow.revoked_at.is_(None),
            PolicyExceptionRow.starts <= now,
            PolicyExceptionRow.expires > now,
        )
    )
    active_bans = session.scalar(
        select(func.count())
        .select_from(BanRow)
        .where(on_site(BanRow.site, site), BanRow.lifted_at.is_(None), BanRow.starts <= now,
               or_(BanRow.until.is_(None), BanRow.until > now))
    )
    return Dashboard(
        today_allowed=count_events(session, site, today, now + timedelta(seconds=1), "allow"),
        today_blocked=count_events(session, site, today, now + timedelta(seconds=1), "block"),
        open_alerts=count_open_by_severity(session, site),
        requests_awaiting_triage=int(pending.get("submitted", 0)),
        requests_awaiting_headteacher=int(pending.get("forwarded", 0)),
        active_exceptions=int(active_exceptions or 0),
        active_bans=int(active_bans or 0),
        top_blocked_services=top_services(session, site, since, now + timedelta(seconds=1), zone=zone),
        top_blocked_devices=top_devices(session, site, since, now + timedelta(seconds=1), zone=zone),
    )


def recent_alert_subjects(session: Session, site: SiteScope, device_id: str) -> list[Alert]:
    """The cases about one device, newest first (for the device page)."""
    return list(
        session.scalars(
            select(Alert)
            .where(on_site(Alert.site, site), Alert.device_id == device_id)
            .order_by(Alert.last_seen.desc())
        )
    )
