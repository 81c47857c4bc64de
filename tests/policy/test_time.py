"""Time: windows, term dates, INSET days, overnight windows and the clock changes.

2026-10-25: clocks go back at 02:00 BST -> 01:00 GMT, so 01:30 happens twice.
2027-03-28: clocks go forward at 01:00 GMT -> 02:00 BST, so 01:30 never happens.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from schoolgate.policy import Client, Role, Target, Verdict, decide
from schoolgate.policy.engine import CompiledPolicy
from schoolgate.policy.loader import load_policy
from schoolgate.policy.timeline import Calendar, DayKind, Span, Term, Timeline, Window, make_span, parse_clock

LONDON = ZoneInfo("Europe/London")
GUEST = Client(ip="10.41.30.15")
STAFF = Client(ip="10.41.10.15")


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def local(text: str, fold: int = 0) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=LONDON, fold=fold)


# -- the overnight window (22:00-06:00 every day) across both clock changes ---------------------

OVERNIGHT = [
    # (instant, verdict for a guest, valid_until)
    (local("2026-10-24 21:59"), Verdict.ALLOW, utc("2026-10-24 21:00")),  # 22:00 BST
    (local("2026-10-24 23:00"), Verdict.BLOCK, utc("2026-10-25 06:00")),  # ends 06:00 GMT
    (local("2026-10-25 01:30", fold=0), Verdict.BLOCK, utc("2026-10-25 06:00")),  # first 01:30 (BST)
    (local("2026-10-25 01:30", fold=1), Verdict.BLOCK, utc("2026-10-25 06:00")),  # second 01:30 (GMT)
    (utc("2026-10-25 05:59:59"), Verdict.BLOCK, utc("2026-10-25 06:00")),
    (utc("2026-10-25 06:00"), Verdict.ALLOW, utc("2026-10-25 22:00")),  # now GMT: 22:00 = 22:00 UTC
    (local("2027-03-27 22:30"), Verdict.BLOCK, utc("2027-03-28 05:00")),  # ends 06:00 BST
    (utc("2027-03-28 01:30"), Verdict.BLOCK, utc("2027-03-28 05:00")),  # 02:30 BST
    (utc("2027-03-28 05:00"), Verdict.ALLOW, utc("2027-03-28 21:00")),  # 22:00 BST
]


@pytest.fixture
def overnight_policy(write_policy: Callable[..., Path]) -> CompiledPolicy:
    return load_policy(
        write_policy(
            """
            [school]
            id = "t"
            name = "T"
            timezone = "Europe/London"
            block_ipv4 = "10.0.0.1"
            [calendar]
            terms = [{ start = 2026-09-03, end = 2027-07-21 }]
            [windows.overnight]
            from = "22:00"
            to = "06:00"
            days = "all"
            calendar = "every_day"
            [[networks]]
            cidrs = ["10.41.30.0/24"]
            role = "guest"
            [[rules]]
            id = "guest-wifi-overnight"
            clause = "c"
            reason = "the guest Wi-Fi is closed overnight"
            roles = ["guest"]
            when = ["overnight"]
            action = "block"
            """
        )
    )


@pytest.mark.parametrize(("now", "verdict", "until"), OVERNIGHT, ids=[str(c[0]) for c in OVERNIGHT])
def test_overnight_window_across_clock_changes(
    overnight_policy: CompiledPolicy, now: datetime, verdict: Verdict, until: datetime
) -> None:
    decision = decide(overnight_policy, GUEST, Target("example.org"), now)
    assert decision.verdict is verdict
    assert decision.valid_until == until


def test_both_0130s_of_the_autumn_change_are_different_instants() -> None:
    first, second = local("2026-10-25 01:30", fold=0), local("2026-10-25 01:30", fold=1)
    assert second.timestamp() - first.timestamp() == 3600


# -- a window across the change lasts the real time between its wall-clock edges ----------------


@pytest.fixture
def night_policy(write_policy: Callable[..., Path]) -> CompiledPolicy:
    return load_policy(
        write_policy(
            """
            [school]
            id = "t"
            name = "T"
            timezone = "Europe/London"
            block_ipv4 = "10.0.0.1"
            [calendar]
            terms = [{ start = 2026-09-03, end = 2027-07-21 }]
            [windows.small_hours]
            from = "00:30"
            to = "02:30"
            days = "all"
            calendar = "every_day"
            [[rules]]
            id = "small-hours"
            clause = "c"
            reason = "r"
            when = ["small_hours"]
            action = "block"
            """
        )
    )


def test_window_on_the_autumn_change_lasts_three_hours(night_policy: CompiledPolicy) -> None:
    start = local("2026-10-25 00:30")  # BST: 23:30 UTC on the 24th
    decision = decide(night_policy, STAFF, Target("example.org"), start)
    assert decision.verdict is Verdict.BLOCK
    assert decision.valid_until == utc("2026-10-25 02:30")  # 02:30 GMT
    assert decision.valid_until - start == timedelta(hours=3)


def test_window_on_the_spring_change_lasts_one_hour(night_policy: CompiledPolicy) -> None:
    start = local("2027-03-28 00:30")  # GMT
    decision = decide(night_policy, STAFF, Target("example.org"), start)
    assert decision.verdict is Verdict.BLOCK
    assert decision.valid_until == utc("2027-03-28 01:30")  # 02:30 BST
    assert decision.valid_until - start == timedelta(hours=1)
    after = decide(night_policy, STAFF, Target("example.org"), utc("2027-03-28 01:30"))
    assert after.verdict is Verdict.ALLOW
    assert after.valid_until == utc("2027-03-28 23:30")  # next night, 00:30 BST


# -- term dates, INSET days and the spring holiday around the March change ---------------------


def test_staff_on_last_day_of_spring_term_wait_for_summer_term_in_bst(example: CompiledPolicy) -> None:
    # Friday 26 March 2027 after school (GMT); the next school hours are Monday 12 April, 08:45 BST.
    decision = decide(example, STAFF, Target("facebook.com"), local("2027-03-26 16:00"))
    assert decision.verdict is Verdict.ALLOW
    assert decision.valid_until == utc("2027-04-12 07:45")


def test_bank_holiday_closure_in_term(example: CompiledPolicy) -> None:
    decision = decide(example, STAFF, Target("facebook.com"), local("2027-05-03 11:00"))
    assert decision.verdict is Verdict.ALLOW
    assert decision.valid_until == local("2027-05-04 08:45")


def test_inset_days_at_the_start_of_the_year(example: CompiledPolicy) -> None:
    # 1-2 September are INSET days before the autumn term starts: staff rules apply.
    decision = decide(example, STAFF, Target("facebook.com"), local("2026-09-01 09:00"))
    assert (decision.verdict, decision.rule_id) == (Verdict.BLOCK, "staff-social-media-school-hours")
    assert example.calendar.describe_day(date(2026, 9, 1)).startswith("INSET day")
    assert not example.calendar.is_school_day(date(2026, 9, 1))
    assert example.calendar.is_staff_day(date(2026, 9, 1))
    assert example.calendar.is_school_day(date(2026, 9, 3))


# -- the timeline on its own ---------------------------------------------------------------------


def _timeline(*windows: Window) -> Timeline:
    calendar = Calendar(
        (Term("Autumn", date(2026, 9, 3), date(2026, 12, 18)),),
        {date(2026, 11, 2): "INSET day", date(2026, 11, 3): "polling day"},
        frozenset({date(2026, 11, 2)}),
    )
    return Timeline(windows, calendar, LONDON)


WEEKDAYS = frozenset(range(5))
EVERY = frozenset(range(7))


@pytest.mark.parametrize(
    ("kind", "day", "active"),
    [
        (DayKind.SCHOOL_DAYS, "2026-11-04", True),  # Wednesday in term
        (DayKind.SCHOOL_DAYS, "2026-11-02", False),  # INSET
        (DayKind.SCHOOL_DAYS, "2026-11-03", False),  # closure
        (DayKind.SCHOOL_DAYS, "2026-11-07", False),  # Saturday
        (DayKind.SCHOOL_DAYS, "2026-12-21", False),  # holiday
        (DayKind.STAFF_DAYS, "2026-11-02", True),
        (DayKind.STAFF_DAYS, "2026-11-03", False),
        (DayKind.NON_SCHOOL_DAYS, "2026-11-03", True),
        (DayKind.NON_SCHOOL_DAYS, "2026-11-04", False),
        (DayKind.NON_SCHOOL_DAYS, "2026-12-25", True),
        (DayKind.EVERY_DAY, "2026-12-25", True),
    ],
)
def test_day_kinds(kind: DayKind, day: str, active: bool) -> None:
    days = EVERY if kind in (DayKind.EVERY_DAY, DayKind.NON_SCHOOL_DAYS) else WEEKDAYS
    timeline = _timeline(Window("w", (Span(600, 660),), days, kind))
    assert bool(timeline.active(local(f"{day} 10:30").timestamp())) is active


def test_several_spans_and_weekday_sets() -> None:
    breaks = Window("breaks", (Span(630, 645), Span(720, 780)), frozenset({0, 2}), DayKind.SCHOOL_DAYS)
    timeline = _timeline(breaks)
    monday, tuesday = "2026-11-09", "2026-11-10"
    assert timeline.active(local(f"{monday} 10:40").timestamp()) == 1
    assert timeline.active(local(f"{monday} 11:00").timestamp()) == 0
    assert timeline.active(local(f"{monday} 12:59").timestamp()) == 1
    assert timeline.active(local(f"{tuesday} 12:30").timestamp()) == 0
    utc_day, index, _ = timeline.locate(local(f"{monday} 11:00").timestamp())
    assert timeline.next_change(utc_day, index, 1) == local(f"{monday} 12:00").timestamp()


def test_overlapping_windows_report_each_edge() -> None:
    day = Window("day", (Span(525, 915),), WEEKDAYS, DayKind.SCHOOL_DAYS)
    lunch = Window("lunch", (Span(720, 780),), WEEKDAYS, DayKind.SCHOOL_DAYS)
    timeline = _timeline(day, lunch)
    ts = local("2026-11-04 12:30").timestamp()
    utc_day, index, mask = timeline.locate(ts)
    assert timeline.names(mask) == ["day", "lunch"]
    assert timeline.next_change(utc_day, index, 0b11) == local("2026-11-04 13:00").timestamp()
    assert timeline.next_change(utc_day, index, 0b01) == local("2026-11-04 15:15").timestamp()
    assert timeline.next_change(utc_day, index, 0) is None


def test_a_window_that_never_opens_has_no_foreseeable_change() -> None:
    never = Window("never", (Span(600, 660),), WEEKDAYS, DayKind.SCHOOL_DAYS)
    timeline = Timeline((never,), Calendar(), LONDON)  # no terms: no school days
    utc_day, index, _ = timeline.locate(local("2026-11-04 10:30").timestamp())
    assert timeline.next_change(utc_day, index, 1) is None


@pytest.mark.parametrize(
    ("text", "minutes"), [("08:45", 525), ("0:00", 0), ("23:59", 1439), ("24:00", 1440), (" 7:05 ", 425)]
)
def test_parse_clock(text: str, minutes: int) -> None:
    assert parse_clock(text) == minutes


@pytest.mark.parametrize("text", ["25:00", "12:60", "noon", "12", "12:5x", "-1:00", "24:01"])
def test_parse_clock_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="time of day"):
        parse_clock(text)


def test_spans() -> None:
    assert make_span(1320, 360) == Span(1320, 1800)  # 22:00-06:00 runs into the next day
    assert make_span(0, 1440) == Span(0, 1440)
    with pytest.raises(ValueError, match="same time"):
        make_span(600, 600)
    with pytest.raises(ValueError, match="24:00"):
        make_span(1440, 60)


def test_roles_do_not_change_the_timeline(example: CompiledPolicy) -> None:
    authorised = Client(ip="10.41.10.15", role=Role.AUTHORISED)
    decision = decide(example, authorised, Target("www.facebook.com"), local("2026-11-23 11:00"))
    assert decision.verdict is Verdict.ALLOW
    assert decision.valid_until is None  # the authorised rule has no window
