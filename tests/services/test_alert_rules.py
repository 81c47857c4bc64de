"""Alert rules over synthetic events: what raises a case, folding, idempotent rescans."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from schoolgate.services.alert_rules import (
    AlertEngine,
    AlertSettings,
    read_cursor,
)
from schoolgate.services.keywords import KeywordList
from schoolgate.store.models import AccessEvent, Alert, AlertHistory

SITE = "testschool"
LONDON = ZoneInfo("Europe/London")
T0 = datetime(2026, 10, 6, 9, 0, tzinfo=UTC)  # 10:00 in London


def event(offset_s: float = 0, **fields: object) -> AccessEvent:
    values: dict[str, object] = {
        "site": SITE,
        "ts": T0 + timedelta(seconds=offset_s),
        "source": "dns",
        "client_ip": "10.0.0.5",
        "device_id": "IPAD-5",
        "device_name": "iPad 5",
        "role": "pupil",
        "host": "www.example.org",
        "verdict": "allow",
        "rule_id": "default",
        "flags": "",
        "count": 1,
    }
    values.update(fields)
    return AccessEvent(**values)


def add(session: Session, events: Sequence[AccessEvent]) -> None:
    session.add_all(events)
    session.flush()


def engine(**overrides: object) -> AlertEngine:
    settings: dict[str, object] = {"repeated_blocks_threshold": 5, "repeated_blocks_window": timedelta(minutes=10)}
    settings.update(overrides)
    return AlertEngine(AlertSettings(**settings))  # type: ignore[arg-type]


def alerts(session: Session) -> list[Alert]:
    return list(session.scalars(select(Alert).order_by(Alert.id)))


CIRCUMVENTION_CASES = [
    ("doh flag", {"flags": "circumvention,doh", "verdict": "block"}, True),
    ("vpn flag only", {"flags": "vpn"}, True),
    ("foreign resolver", {"flags": "foreign_resolver", "source": "gateway"}, True),
    ("quic to watched", {"flags": "quic"}, True),
    ("sni fronting", {"flags": "sni_fronting", "source": "proxy"}, True),
    ("category only", {"category": "circumvention", "verdict": "block"}, True),
    ("flags with spaces and case", {"flags": " Circumvention , x"}, True),
    ("unrelated flag", {"flags": "banned"}, False),
    ("plain block", {"verdict": "block", "category": "social_media"}, False),
]


@pytest.mark.parametrize(("name", "fields", "raises"), CIRCUMVENTION_CASES, ids=[c[0] for c in CIRCUMVENTION_CASES])
def test_circumvention(session: Session, name: str, fields: dict[str, object], raises: bool) -> None:
    add(session, [event(**fields)])
    engine().scan(session, SITE, None, T0)
    found = [a for a in alerts(session) if a.kind == "circumvention"]
    assert bool(found) is raises
    if raises:
        assert found[0].severity == "high" and found[0].device_id == "IPAD-5"


@pytest.mark.parametrize(
    ("offsets", "threshold", "expected_triggers"),
    [
        ([0, 60, 120, 180], 5, 0),  # one short of the threshold
        ([0, 60, 120, 180, 240], 5, 1),  # exactly the threshold
        ([0, 60, 120, 180, 600], 5, 0),  # the first falls out of the 10-minute window exactly at its edge
        ([0, 60, 120, 180, 599], 5, 1),  # ... and just inside it
        ([i * 10 for i in range(10)], 5, 2),  # counting restarts after each firing
        ([i * 10 for i in range(9)], 5, 1),
    ],
)
def test_repeated_blocks_threshold(
    session: Session, offsets: list[int], threshold: int, expected_triggers: int
) -> None:
    add(session, [event(o, verdict="block", host="www.facebook.com", service="facebook") for o in offsets])
    engine(repeated_blocks_threshold=threshold).scan(session, SITE, None, T0)
    found = [a for a in alerts(session) if a.kind == "repeated_blocks"]
    if expected_triggers == 0:
        assert found == []
    else:
        (case,) = found
        assert case.trigger_count == expected_triggers and case.severity == "medium"


def test_repeated_blocks_same_result_across_scans(session: Session) -> None:
    """Scanning event by event gives the same cases as scanning all at once."""
    rule = engine(repeated_blocks_threshold=3)
    for offset in [i * 20 for i in range(7)]:
        add(session, [event(offset, verdict="block")])
        rule.scan(session, SITE, None, T0)
    (case,) = [a for a in alerts(session) if a.kind == "repeated_blocks"]
    assert case.trigger_count == 2  # fired at the 3rd and 6th attempt


def test_repeated_blocks_per_device_and_by_address_when_unknown(session: Session) -> None:
    events = [event(i, verdict="block", device_id="A") for i in range(3)]
    events += [event(i, verdict="block", device_id="B") for i in range(2)]
    events += [event(i, verdict="block", device_id=None, device_name=None, client_ip="10.0.0.77") for i in range(3)]
    add(session, events)
    engine(repeated_blocks_threshold=3).scan(session, SITE, None, T0)
    found = {(a.device_id, a.client_ip) for a in alerts(session) if a.kind == "repeated_blocks"}
    assert found == {("A", "10.0.0.5"), (None, "10.0.0.77")}


SAFEGUARDING_CASES = [
    ("plain", {"search_term": "how to kill myself"}, {"self-harm"}),
    ("upper case", {"search_term": "HOW TO KILL MYSELF"}, {"self-harm"}),
    ("full width", {"search_term": "ｓｕｉｃｉｄｅ"}, {"self-harm"}),
    ("zero width inside", {"search_term": "sui\u200bcide"}, {"self-harm"}),
    ("soft hyphen", {"search_term": "self\u00adharm"}, {"self-harm"}),
    ("accents", {"search_term": "súïcídé"}, {"self-harm"}),
    ("cyrillic look-alikes", {"search_term": "suiсidе"}, {"self-harm"}),
    ("digits for letters", {"search_term": "k1ll mys3lf"}, {"self-harm"}),
    ("hyphenated phrase", {"search_term": "self-harm"}, {"self-harm"}),
    ("extra spaces", {"search_term": "kill    myself"}, {"self-harm"}),
    ("in the url query", {"url": "https://www.google.com/search?q=how+to+make+a+bomb&hl=en"}, {"weapons"}),
    ("percent encoded query", {"url": "https://search.example/?q=join%20isis"}, {"extremism"}),
    ("double encoded query", {"url": "https://search.example/?q=join%2520isis"}, {"extremism"}),
    ("in the fragment", {"url": "https://search.example/#q=everyone+hates+me"}, {"bullying"}),
    ("two categories", {"search_term": "everyone hates me i want to die"}, {"bullying", "self-harm"}),
    ("word boundary: skills", {"search_term": "skills for life"}, set()),
    ("word boundary: inside word", {"search_term": "pornography history"}, set()),
    ("listed word alone", {"search_term": "p0rn"}, {"sexual-content"}),
    ("not in the path", {"url": "https://example.org/suicide-prevention-week"}, set()),
    ("year numbers stay numbers", {"search_term": "1945 war"}, set()),
    ("innocent", {"search_term": "year 5 volcano homework"}, set()),
]


@pytest.mark.parametrize(("name", "fields", "categories"), SAFEGUARDING_CASES, ids=[c[0] for c in SAFEGUARDING_CASES])
def test_safeguarding_terms(session: Session, name: str, fields: dict[str, object], categories: set[str]) -> None:
    add(session, [event(**fields)])
    engine().scan(session, SITE, None, T0)
    found = {a.category for a in alerts(session) if a.kind == "safeguarding_term"}
    assert found == categories
    for case in alerts(session):
        if case.category == "self-harm":
            assert case.severity == "critical"


@pytest.mark.parametrize(
    ("local_time", "role", "raises"),
    [
        ("18:59", "pupil", False),
        ("19:00", "pupil", True),
        ("23:30", "pupil", True),
        ("03:00", "pupil", True),
        ("06:59", "pupil", True),
        ("07:00", "pupil", False),
        ("12:00", "pupil", False),
        ("22:00", "staff", False),
    ],
)
def test_out_of_hours(session: Session, local_time: str, role: str, raises: bool) -> None:
    london = datetime.combine(T0.date(), time.fromisoformat(local_time), tzinfo=LONDON)
    add(session, [event(ts=london.astimezone(UTC), role=role)])
    engine().scan(session, SITE, None, T0)
    assert bool([a for a in alerts(session) if a.kind == "out_of_hours"]) is raises


def test_out_of_hours_in_winter_uses_local_time(session: Session) -> None:
    # 2026-10-26 is GMT: 19:30 UTC is 19:30 local (out of hours); in BST it would be 20:30.
    add(
        session,
        [event(ts=datetime(2026, 10, 26, 18, 59, tzinfo=UTC)), event(ts=datetime(2026, 10, 26, 19, 0, tzinfo=UTC))],
    )
    engine().scan(session, SITE, None, T0)
    (case,) = [a for a in alerts(session) if a.kind == "out_of_hours"]
    assert case.trigger_count == 1 and case.first_seen == datetime(2026, 10, 26, 19, 0, tzinfo=UTC)


def test_folding_and_idempotent_rescans(session: Session) -> None:
    add(session, [event(i, flags="vpn") for i in range(3)])
    rules = engine()
    first = rules.scan(session, SITE, None, T0)
    assert len(first.opened) == 1 and first.events == 3
    (case,) = alerts(session)
    assert case.trigger_count == 3 and case.status == "new"

    # Rescanning from the start, or again from the cursor, changes nothing.
    again = rules.scan(session, SITE, 0, T0)
    assert again.events == 0 and again.opened == [] and again.folded == []
    assert alerts(session)[0].trigger_count == 3
    assert read_cursor(session, SITE) == first.cursor

    # New events fold into the open case and leave a note in its history.
    add(session, [event(100, flags="vpn")])
    later = rules.scan(session, SITE, None, T0 + timedelta(minutes=5))
    assert later.folded == [case.id] and alerts(session)[0].trigger_count == 4
    assert alerts(session)[0].last_seen == T0 + timedelta(seconds=100)
    history = list(session.scalars(select(AlertHistory.action).where(AlertHistory.alert_id == case.id)))
    assert history == ["opened", "retrigger", "retrigger"]

    # Once resolved, the next trigger opens a new case.
    case.status = "resolved"
    add(session, [event(200, flags="vpn")])
    rules.scan(session, SITE, None, T0 + timedelta(minutes=6))
    assert [a.trigger_count for a in alerts(session)] == [4, 1]
    # Another device gets its own case.
    add(session, [event(201, flags="vpn", device_id="OTHER")])
    rules.scan(session, SITE, None, T0 + timedelta(minutes=6))
    assert len(alerts(session)) == 3


def test_cursor_survives_commit_and_batches(session: Session) -> None:
    add(session, [event(i, flags="vpn", device_id=f"D{i % 7}") for i in range(50)])
    session.commit()
    result = AlertEngine(AlertSettings(), batch_size=8).scan(session, SITE, None, T0)
    session.commit()
    assert result.events == 50 and len(result.opened) == 7
    assert session.scalar(select(func.sum(Alert.trigger_count))) == 50
    assert read_cursor(session, SITE) == session.scalar(select(func.max(AccessEvent.id)))


def test_severity_escalates_and_renotifies(session: Session) -> None:
    keywords = KeywordList({"worry": ("medium", ["sad"]), "danger": ("critical", ["want to die"])})
    rules = engine(keywords=keywords)
    add(session, [event(search_term="sad"), event(1, search_term="sad")])
    rules.scan(session, SITE, None, T0)
    # Different categories are different cases.
    add(session, [event(2, search_term="i want to die")])
    rules.scan(session, SITE, None, T0)
    cases = {a.category: a for a in alerts(session)}
    assert cases["worry"].trigger_count == 2 and cases["danger"].severity == "critical"


def test_other_sites_are_ignored(session: Session) -> None:
    add(session, [event(flags="vpn", site="another")])
    engine().scan(session, SITE, None, T0)
    assert alerts(session) == []


def test_a_backlog_is_worked_off_in_bounded_scans(session: Session) -> None:
    add(session, [event(i, flags="vpn") for i in range(20)])
    rules = AlertEngine(AlertSettings(), batch_size=8)
    parts = []
    while True:
        part = rules.scan(session, SITE, None, T0, max_events=8)
        session.commit()
        if not part.events:
            break
        parts.append(part.events)
    assert parts == [8, 8, 4]
    (case,) = alerts(session)
    assert case.trigger_count == 20


def test_a_pupil_saying_a_page_upset_them_raises_a_case_per_device_and_site(session: Session) -> None:
    pressed = {"source": "proxy", "verdict": "block", "rule_id": "pupils-no-social-media", "flags": "upset",
               "person_id": "P5", "person_name": "Sam Pupil", "url": "http://games.example.com/level2"}
    add(session, [
        event(0, verdict="block", host="games.example.com"),  # only shown the page: no case
        event(10, host="games.example.com", **pressed),
        event(20, host="games.example.com", **pressed),  # pressed again: the same case
        event(30, host="scary.example.net", **{**pressed, "url": None}),  # another site: its own case
        event(40, device_id="IPAD-6", device_name="iPad 6", host="games.example.com", **pressed),
    ])
    engine().scan(session, SITE, None, T0 + timedelta(minutes=1))
    upset = [a for a in alerts(session) if a.kind == "pupil_upset"]
    assert [(a.device_id, a.rule_id, a.trigger_count) for a in upset] == [
        ("IPAD-5", "upset:games.example.com", 2),
        ("IPAD-5", "upset:scary.example.net", 1),
        ("IPAD-6", "upset:games.example.com", 1),
    ]
    first = upset[0]
    assert first.severity == "high" and first.person_id == "P5"
    assert first.title == "A pupil said a blocked page upset them: iPad 5 (Sam Pupil)"
    # The evidence in plain words: when (school time), who, which address, which page, which rule.
    assert first.summary.startswith("On Tuesday 6 October at 10:00, iPad 5 (Sam Pupil) at 10.0.0.5")
    assert "http://games.example.com/level2" in first.summary and "pupils-no-social-media" in first.summary
