"""The dashboard rollups agree with the events they count, incrementally and idempotently."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.orm import Session

from schoolgate.services import rollups
from schoolgate.store.models import AccessEvent, EventDaily, EventHourly

SITE = "testschool"
LONDON = ZoneInfo("Europe/London")
# Spans the autumn clock change (Sunday 2026-10-25 02:00 BST -> 01:00 GMT).
START = datetime(2026, 10, 24, 20, 0, tzinfo=UTC)


def synthetic(n: int, seed: int) -> list[AccessEvent]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        device = rng.choice(["A", "B", None])
        rows.append(
            AccessEvent(
                site=rng.choice([SITE, SITE, SITE, "other"]),
                ts=START + timedelta(minutes=rng.randrange(60 * 30)),
                source="dns",
                client_ip=f"10.0.0.{rng.randrange(1, 4)}",
                device_id=device,
                device_name=f"iPad {device}" if device else None,
                person_name="Amira" if device == "A" else None,
                role=rng.choice(["pupil", "staff"]),
                host=f"h{rng.randrange(4)}.example",
                verdict=rng.choice(["allow", "block", "safe_search"]),
                rule_id="r",
                service=rng.choice(["facebook", "tiktok", None]),
                flags="",
                count=rng.choice([1, 1, 3]),
            )
        )
    return rows


def expected(events: list[AccessEvent]) -> tuple[Counter[tuple[object, ...]], Counter[tuple[object, ...]]]:
    hourly: Counter[tuple[object, ...]] = Counter()
    daily: Counter[tuple[object, ...]] = Counter()
    for e in events:
        if e.site != SITE:
            continue
        hour = e.ts.replace(minute=0, second=0, microsecond=0)
        hourly[(hour, e.verdict, e.role, e.service or "")] += e.count
        day = e.ts.astimezone(LONDON).date()
        daily[("device", e.verdict, day, e.device_id or e.client_ip)] += e.count
        daily[("target", e.verdict, day, e.service or e.host)] += e.count
        daily[("service", e.verdict, day, e.service or "")] += e.count
        daily[("role", e.verdict, day, e.role)] += e.count
    return hourly, daily


def stored(session: Session) -> tuple[Counter[tuple[object, ...]], Counter[tuple[object, ...]]]:
    hourly = Counter(
        {
            (r.hour, r.verdict, r.role, r.service): r.count
            for r in session.scalars(select(EventHourly).where(EventHourly.site == SITE))
        }
    )
    daily = Counter(
        {
            (r.dimension, r.verdict, r.day, r.key): r.count
            for r in session.scalars(select(EventDaily).where(EventDaily.site == SITE))
        }
    )
    return hourly, daily


def test_rollups_match_the_events_in_any_batching(session: Session) -> None:
    events = synthetic(600, seed=1)
    session.add_all(events[:250])
    session.flush()
    rollups.update_rollups(session, SITE, START, zone=LONDON, batch=97)  # one partial batch
    rollups.catch_up(session, SITE, START, zone=LONDON, batch=97)
    session.add_all(events[250:])
    session.flush()
    rollups.catch_up(session, SITE, START, zone=LONDON, batch=1000)
    assert stored(session) == expected(events)
    # Running again counts nothing twice.
    assert rollups.catch_up(session, SITE, START, zone=LONDON) == 0
    assert stored(session) == expected(events)
    assert rollups.read_cursor(session, SITE) == max(e.id for e in events)


def test_local_days_and_labels(session: Session) -> None:
    late = [
        # 23:30 UTC on the 24th is 00:30 BST on the 25th; 23:30 UTC on the 25th is 23:30 GMT on the 25th.
        AccessEvent(
            site=SITE,
            ts=datetime(2026, 10, 24, 23, 30, tzinfo=UTC),
            source="dns",
            client_ip="10.0.0.9",
            device_id="A",
            device_name="iPad A",
            person_name="Amira",
            role="pupil",
            host="x.example",
            verdict="block",
            rule_id="r",
            flags="",
            count=1,
        ),
        AccessEvent(
            site=SITE,
            ts=datetime(2026, 10, 25, 23, 30, tzinfo=UTC),
            source="dns",
            client_ip="10.0.0.9",
            device_id="A",
            device_name=None,
            role="pupil",
            host="x.example",
            verdict="block",
            rule_id="r",
            flags="",
            count=1,
        ),
    ]
    session.add_all(late)
    session.flush()
    rollups.catch_up(session, SITE, START, zone=LONDON)
    rows = session.scalars(select(EventDaily).where(EventDaily.dimension == "device")).all()
    assert [(r.day, r.count, r.label) for r in rows] == [(date(2026, 10, 25), 2, "iPad A (Amira)")]


def test_freshness_says_as_of_when_and_whether_the_scheduler_runs(session: Session) -> None:
    from schoolgate.store.models import DaemonStatus

    now = START + timedelta(hours=2)
    wall = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
    never = rollups.freshness(session, SITE, now, wall)
    assert (never.stale, never.as_of, never.heartbeat_at) == (True, None, None)
    assert "never run" in never.reason
    rollups.mark_ran(session, SITE, now - timedelta(minutes=1))
    beat = wall - timedelta(seconds=20)
    session.add(DaemonStatus(site=SITE, name="scheduler", pid=1, started_at=wall, heartbeat_at=beat))
    session.flush()
    fresh = rollups.freshness(session, SITE, now, wall)
    assert (fresh.stale, fresh.as_of, fresh.reason) == (False, now - timedelta(minutes=1), "")
    # The heartbeat is on the wall clock, the counts on the appliance's clock: each checked by its own.
    down = rollups.freshness(session, SITE, now, wall + timedelta(minutes=4))
    assert down.stale and "not running" in down.reason and down.as_of == now - timedelta(minutes=1)
    behind = rollups.freshness(session, SITE, now + timedelta(minutes=10), wall)
    assert behind.stale and "not counted" in behind.reason


def test_days_are_the_schools_own(session: Session) -> None:
    """A day in the rollups is a day on the school's clock, its policy's `[school] timezone`:
    22:30 UTC on Saturday 24 October is still Saturday evening in London and already Sunday
    morning in Tokyo."""
    at = datetime(2026, 10, 24, 22, 30, tzinfo=UTC)  # 23:30 BST Saturday; 07:30 JST Sunday
    session.add(AccessEvent(site=SITE, ts=at, source="dns", client_ip="10.0.0.9", device_id="T", role="pupil",
                            host="x.example", verdict="block", rule_id="r", flags="", count=1))
    session.flush()
    rollups.catch_up(session, SITE, at, zone=ZoneInfo("Asia/Tokyo"))
    days = {r.day for r in session.scalars(select(EventDaily).where(EventDaily.dimension == "device"))}
    assert days == {date(2026, 10, 25)}
    assert at.astimezone(LONDON).date() == date(2026, 10, 24)  # where a London school counts it
