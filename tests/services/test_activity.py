"""Activity search and dashboard figures over a real SQLite file."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy.orm import Session

from schoolgate.services import activity, rollups
from schoolgate.services.errors import InvalidInput
from schoolgate.store.models import AccessEvent, AccessRequest

SITE = "testschool"
LONDON = ZoneInfo("Europe/London")
NOW = datetime(2026, 10, 27, 12, 0, tzinfo=UTC)


def ev(ts: datetime, **fields: object) -> AccessEvent:
    values: dict[str, object] = {
        "site": SITE,
        "ts": ts,
        "source": "dns",
        "client_ip": "10.0.0.5",
        "role": "pupil",
        "host": "www.example.org",
        "verdict": "allow",
        "rule_id": "r",
        "flags": "",
        "count": 1,
    }
    values.update(fields)
    return AccessEvent(**values)


@pytest.fixture
def events(session: Session) -> list[AccessEvent]:
    rows = []
    # Across the clock change of Sunday 2026-10-25: 23:30 UTC on the 24th is 00:30 BST on the 25th.
    rows.append(
        ev(
            datetime(2026, 10, 24, 22, 30, tzinfo=UTC),
            verdict="block",
            service="facebook",
            host="www.facebook.com",
            device_id="A",
            device_name="iPad A",
        )
    )  # 23:30 BST, the 24th
    rows.append(
        ev(
            datetime(2026, 10, 24, 23, 30, tzinfo=UTC),
            verdict="block",
            service="facebook",
            host="www.facebook.com",
            device_id="A",
            device_name="iPad A",
        )
    )  # 00:30 BST, the 25th
    rows.append(
        ev(
            datetime(2026, 10, 25, 23, 30, tzinfo=UTC),
            verdict="block",
            service="tiktok",
            host="www.tiktok.com",
            device_id="B",
            role="staff",
        )
    )  # 23:30 GMT, the 25th
    for minute in range(30):
        rows.append(
            ev(
                NOW - timedelta(minutes=minute + 1),
                verdict="block" if minute % 3 == 0 else "allow",
                service="facebook" if minute % 3 == 0 else None,
                device_id="A" if minute % 2 else "C",
                person_id="p1" if minute % 2 else None,
                host="m.facebook.com" if minute % 3 == 0 else "bbc.co.uk",
            )
        )
    rows.append(ev(NOW - timedelta(minutes=5), site="another", verdict="block", service="facebook"))
    session.add_all(rows)
    session.flush()
    rollups.catch_up(session, SITE, NOW, zone=LONDON)
    return rows


def test_search_filters_and_keyset_pages(session: Session, events: list[AccessEvent]) -> None:
    start, end = NOW - timedelta(days=7), NOW
    seen: list[int] = []
    cursor = None
    while True:
        page = activity.search_events(session, SITE, activity.EventQuery(start=start, end=end, limit=7, before=cursor))
        seen += [e.id for e in page.items]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == 33
    by_person = activity.search_events(
        session, SITE, activity.EventQuery(start=start, end=end, person_id="p1", limit=100)
    )
    assert len(by_person.items) == 15 and all(e.person_id == "p1" for e in by_person.items)
    by_host = activity.search_events(
        session, SITE, activity.EventQuery(start=start, end=end, host="facebook.com", verdict="block", limit=100)
    )
    assert {e.host for e in by_host.items} == {"m.facebook.com", "www.facebook.com"} and len(by_host.items) == 12
    like_trap = activity.search_events(session, SITE, activity.EventQuery(start=start, end=end, host="%.com"))
    assert like_trap.items == []
    timestamps = [e.ts for e in by_person.items]
    assert timestamps == sorted(timestamps, reverse=True)


def test_search_validation() -> None:
    with pytest.raises(InvalidInput):
        activity.search_events(None, SITE, activity.EventQuery(start=NOW, end=NOW))  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        activity.search_events(None, SITE, activity.EventQuery(start=NOW - timedelta(days=500), end=NOW))  # type: ignore[arg-type]


def test_blocked_over_time_in_local_days_across_the_clock_change(session: Session, events: list[AccessEvent]) -> None:
    start = datetime(2026, 10, 24, tzinfo=LONDON)
    end = datetime(2026, 10, 28, tzinfo=LONDON)
    series = activity.blocked_over_time(session, SITE, start, end, by="service", zone=LONDON)
    assert series.bucket == "day"
    assert [b.date().isoformat() for b in series.buckets] == ["2026-10-24", "2026-10-25", "2026-10-26", "2026-10-27"]
    assert series.counts["facebook"] == [1, 1, 0, 10]
    assert series.counts["tiktok"] == [0, 1, 0, 0]
    by_role = activity.blocked_over_time(session, SITE, start, end, by="role", zone=LONDON)
    assert by_role.counts["staff"] == [0, 1, 0, 0] and sum(by_role.counts["pupil"]) == 12
    hourly = activity.blocked_over_time(session, SITE, NOW - timedelta(hours=2), NOW, by="service", zone=LONDON)
    assert hourly.bucket == "hour" and len(hourly.buckets) == 2 and sum(hourly.counts["facebook"]) == 10


def test_top_lists_and_dashboard(session: Session, events: list[AccessEvent]) -> None:
    session.add(
        AccessRequest(site=SITE, status="forwarded", requester="x", request_date=NOW.date(), url="u", host="h.example")
    )
    top = activity.top_services(session, SITE, NOW - timedelta(days=7), NOW, zone=LONDON)
    assert [(r.key, r.count) for r in top] == [("facebook", 12), ("tiktok", 1)]
    devices = activity.top_devices(session, SITE, NOW - timedelta(days=7), NOW, zone=LONDON)
    assert [(d.key, d.label, d.count) for d in devices] == [("A", "iPad A", 7), ("C", "C", 5), ("B", "B", 1)]
    board = activity.dashboard(session, SITE, NOW, zone=LONDON)
    assert board.today_blocked == 10 and board.today_allowed == 20
    assert board.requests_awaiting_headteacher == 1 and board.requests_awaiting_triage == 0
    assert board.top_blocked_services[0].key == "facebook"
