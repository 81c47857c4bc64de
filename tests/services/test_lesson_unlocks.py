"""A teacher opens a site for their class until the end of the lesson: when the lesson ends, what
may be opened, for whom, how often, and that the policy then allows it for that class only."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from schoolgate.policy import CompiledPolicy, decide, load_policy
from schoolgate.policy.types import Client, ExceptionScope, PolicyException, Role, Target, Verdict
from schoolgate.services import lesson_unlocks as svc
from schoolgate.services.actor import Actor
from schoolgate.services.errors import Forbidden, InvalidTransition, LockedTarget, RateLimited
from schoolgate.store.models import AuditEntry, ConsoleUser, LessonUnlock, Person, PolicyExceptionRow, UserRole
from schoolgate.store.overlay import read_generation

SITE = "testschool"
LONDON = ZoneInfo("Europe/London")

POLICY = """
[school]
id = "testschool"
name = "Test Primary"
timezone = "Europe/London"
block_ipv4 = "10.99.0.1"

[calendar]
terms = [{ name = "Autumn 2", start = 2026-11-02, end = 2026-12-18 }]
closures = [{ date = 2026-11-02, kind = "inset", reason = "INSET day" }]

[windows.school_hours]
from = "08:45"
to = "15:15"
calendar = "staff_days"

[windows.morning_break]
from = "10:30"
to = "10:45"
calendar = "staff_days"

[windows.lunch]
from = "12:00"
to = "13:00"
calendar = "staff_days"

[windows.overnight]
from = "22:00"
to = "06:00"
days = "all"
calendar = "every_day"

[[networks]]
name = "pupils"
cidrs = ["10.0.0.0/8"]
role = "pupil"

[categories.video]
name = "Video"

[categories.social_media]
name = "Social media"

[services.youtube]
name = "YouTube"
category = "video"
domains = ["youtube.com", "ytimg.com", "googlevideo.com"]

[services.facebook]
name = "Facebook"
category = "social_media"
domains = ["facebook.com"]

[services.bookie]
name = "A bookmaker"
category = "gambling"
domains = ["bet.example"]

[services.freevpn]
name = "Free VPN"
category = "circumvention"
domains = ["freevpn.example"]

[lists.games]
format = "plain"
file = "games.txt"
category = "games"

[categories.games]
name = "Games"

[[rules]]
id = "pupils-blocked"
clause = "Online Safety Policy §6"
reason = "not for pupils at school"
action = "block"
roles = ["pupil"]
categories = ["video", "social_media", "gambling", "circumvention", "games"]
year_groups = [5, 6]

[[rules]]
id = "infants-blocked"
clause = "Online Safety Policy §6"
reason = "not for pupils at school"
action = "block"
roles = ["pupil"]
categories = ["video", "social_media", "gambling", "circumvention", "games"]

[default]
action = "allow"
clause = "Online Safety Policy"
reason = "not restricted"
"""


def local(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=LONDON).astimezone(UTC)


LESSON = local("2026-11-23 10:15")  # a Monday in term


@pytest.fixture(scope="module")
def lesson_policy(tmp_path_factory: pytest.TempPathFactory) -> CompiledPolicy:
    folder: Path = tmp_path_factory.mktemp("lesson-policy")
    (folder / "games.txt").write_text("coolmathgames.com\n", encoding="utf-8")
    (folder / "policy.toml").write_text(POLICY, encoding="utf-8")
    return load_policy(folder / "policy.toml")


@pytest.fixture
def teacher(session: Session) -> ConsoleUser:
    session.add_all([
        Person(site=SITE, external_id="T1", name="Mr Green", role="staff", groups="5A,choir"),
        Person(site=SITE, external_id="P51", name="Ada", role="pupil", year_group=5, groups="5A"),
        Person(site=SITE, external_id="P61", name="Ben", role="pupil", year_group=6, groups="6B"),
    ])
    user = ConsoleUser(site=SITE, username="green", display_name="Mr Green", password_hash="x",
                       person_external_id="T1", roles=[UserRole(role="teacher")])
    session.add(user)
    session.flush()
    return user


def actor_of(user: ConsoleUser) -> Actor:
    return Actor.from_user(user)


def open_site(session: Session, user: ConsoleUser, policy: CompiledPolicy, url: str, *, group: str = "5A",
              now: datetime = LESSON, settings: svc.UnlockSettings | None = None) -> LessonUnlock:
    return svc.open_for_lesson(
        session, site=SITE, now=now, actor=actor_of(user), user=user, policy=policy,
        settings=settings or svc.UnlockSettings(), group=group, url=url, reason="Volcano video for science",
    )


def with_exceptions(session: Session, policy: CompiledPolicy) -> CompiledPolicy:
    rows = session.scalars(select(PolicyExceptionRow)).all()
    return policy.with_overlay(exceptions=[
        PolicyException(id=r.id, scope=ExceptionScope(r.scope), subject=r.subject, domain=r.domain,
                        url_prefix=r.url_prefix, starts=r.starts, expires=r.revoked_at or r.expires)
        for r in rows
    ])


@pytest.mark.parametrize(
    ("when", "ends", "what"),
    [
        ("2026-11-23 10:15", "2026-11-23 10:30", "morning break starts"),
        ("2026-11-23 10:40", "2026-11-23 10:45", "morning break ends"),
        ("2026-11-23 08:45", "2026-11-23 10:30", "morning break starts"),
        ("2026-11-23 13:30", "2026-11-23 15:15", "school hours ends"),
        ("2026-11-23 15:14", "2026-11-23 15:15", "school hours ends"),
    ],
)
def test_the_lesson_ends_at_the_next_edge_of_the_timeline(
    lesson_policy: CompiledPolicy, when: str, ends: str, what: str
) -> None:
    end = svc.lesson_end(lesson_policy, local(when))
    assert (end.at, end.what) == (local(ends), what)


@pytest.mark.parametrize(
    "when",
    [
        "2026-11-23 08:30",  # before school
        "2026-11-23 15:15",  # the school day is over
        "2026-11-23 23:00",  # overnight: a window, but not a school one
        "2026-11-21 11:00",  # Saturday
        "2026-11-02 11:00",  # INSET day: staff are in, pupils are not
        "2026-12-21 11:00",  # holiday
    ],
)
def test_no_lesson_outside_the_school_day(lesson_policy: CompiledPolicy, when: str) -> None:
    with pytest.raises(InvalidTransition):
        svc.lesson_end(lesson_policy, local(when))


def test_a_teacher_opens_a_site_for_their_class_until_the_lesson_ends(
    session: Session, teacher: ConsoleUser, lesson_policy: CompiledPolicy
) -> None:
    before = read_generation(session, SITE)
    unlock = open_site(session, teacher, lesson_policy, "https://www.youtube.com/watch?v=volcano")
    assert (unlock.group, unlock.host, unlock.ends, unlock.ends_with) == (
        "5A", "www.youtube.com", local("2026-11-23 10:30"), "morning break starts")
    rows = session.scalars(select(PolicyExceptionRow).order_by(PolicyExceptionRow.id)).all()
    # The whole service opens (its player and pictures live on other domains), for the class only.
    assert [(r.scope, r.subject, r.domain, r.expires) for r in rows] == [
        ("group", "5A", d, local("2026-11-23 10:30")) for d in ("youtube.com", "ytimg.com", "googlevideo.com")]
    assert all(r.lesson_unlock_id == unlock.id for r in rows)
    assert read_generation(session, SITE) == before + 1  # DNS and the proxy reload within seconds
    (entry,) = session.scalars(select(AuditEntry).where(AuditEntry.action == "lesson.open")).all()
    assert entry.actor == "green" and '"group":"5A"' in entry.detail

    layered = with_exceptions(session, lesson_policy)
    ada = Client(ip="10.0.0.5", person_id="P51", role=Role.PUPIL, year_group=5, groups=frozenset({"5A"}))
    ben = Client(ip="10.0.0.6", person_id="P61", role=Role.PUPIL, year_group=6, groups=frozenset({"6B"}))
    opened = decide(layered, ada, Target("r4.googlevideo.com"), LESSON)
    assert opened.verdict is Verdict.ALLOW and opened.valid_until == local("2026-11-23 10:30")
    assert decide(layered, ben, Target("www.youtube.com"), LESSON).verdict is Verdict.BLOCK
    after = decide(layered, ada, Target("www.youtube.com"), local("2026-11-23 10:30"))
    assert after.verdict is Verdict.BLOCK  # the lesson is over


def test_a_listed_site_opens_its_registrable_domain(
    session: Session, teacher: ConsoleUser, lesson_policy: CompiledPolicy
) -> None:
    open_site(session, teacher, lesson_policy, "https://www.coolmathgames.com/addition")
    (row,) = session.scalars(select(PolicyExceptionRow)).all()
    assert row.domain == "coolmathgames.com"


@pytest.mark.parametrize(
    ("url", "error", "message"),
    [
        ("https://www.facebook.com/", LockedTarget, "only the headteacher can open"),  # social media
        ("https://bet.example/", LockedTarget, "only the headteacher can open"),  # harmful content
        ("https://freevpn.example/", LockedTarget, "no one can open it"),  # circumvention: locked
        ("https://www.bbc.co.uk/bitesize", InvalidTransition, "already open"),  # needs no unlock
    ],
)
def test_what_a_teacher_cannot_open(
    session: Session, teacher: ConsoleUser, lesson_policy: CompiledPolicy, url: str, error: type[Exception],
    message: str,
) -> None:
    with pytest.raises(error, match=message):
        open_site(session, teacher, lesson_policy, url)
    assert session.scalars(select(PolicyExceptionRow)).all() == []


def test_a_site_the_technician_blocked_after_a_report_stays_blocked(
    session: Session, teacher: ConsoleUser, lesson_policy: CompiledPolicy
) -> None:
    from schoolgate.policy.types import SiteBlock

    reported = lesson_policy.with_overlay(
        blocks=[SiteBlock(id=4, domain="scary.example.org", url_prefix=None, roles=frozenset())]
    )
    with pytest.raises(LockedTarget, match="after a report of inappropriate content"):
        open_site(session, teacher, reported, "https://scary.example.org/video")


def test_only_their_own_classes_and_only_in_lesson_time(
    session: Session, teacher: ConsoleUser, lesson_policy: CompiledPolicy
) -> None:
    with pytest.raises(Forbidden, match="not one of your classes"):
        open_site(session, teacher, lesson_policy, "https://www.youtube.com/", group="6B")
    with pytest.raises(InvalidTransition, match="not lesson time"):
        open_site(session, teacher, lesson_policy, "https://www.youtube.com/", now=local("2026-11-23 16:00"))
    unlinked = ConsoleUser(site=SITE, username="supply", display_name="Supply", password_hash="x",
                           roles=[UserRole(role="teacher")])
    session.add(unlinked)
    session.flush()
    with pytest.raises(Forbidden, match="not one of your classes"):
        open_site(session, unlinked, lesson_policy, "https://www.youtube.com/")
    technician = ConsoleUser(site=SITE, username="tech", display_name="Tech", password_hash="x",
                             person_external_id="T1", roles=[UserRole(role="technician")])
    session.add(technician)
    session.flush()
    with pytest.raises(Forbidden, match="teacher"):
        open_site(session, technician, lesson_policy, "https://www.youtube.com/")


def test_a_daily_cap_per_teacher(session: Session, teacher: ConsoleUser, lesson_policy: CompiledPolicy) -> None:
    settings = svc.UnlockSettings(per_day=2)
    open_site(session, teacher, lesson_policy, "https://www.youtube.com/", settings=settings)
    open_site(session, teacher, lesson_policy, "https://coolmathgames.com/", group="choir", settings=settings)
    with pytest.raises(RateLimited, match="opened 2 sites today"):
        open_site(session, teacher, lesson_policy, "https://coolmathgames.com/", settings=settings)
    tomorrow = LESSON + timedelta(days=1)
    open_site(session, teacher, lesson_policy, "https://coolmathgames.com/", now=tomorrow, settings=settings)
    with pytest.raises(Forbidden, match="turned off"):
        open_site(session, teacher, lesson_policy, "https://coolmathgames.com/", now=tomorrow,
                  settings=svc.UnlockSettings(per_day=0))


def test_ending_an_unlock_early(session: Session, teacher: ConsoleUser, lesson_policy: CompiledPolicy,
                                dsl: Actor) -> None:
    unlock = open_site(session, teacher, lesson_policy, "https://www.youtube.com/")
    other = ConsoleUser(site=SITE, username="blue", display_name="Ms Blue", password_hash="x",
                        roles=[UserRole(role="teacher")])
    session.add(other)
    session.flush()
    with pytest.raises(Forbidden):
        svc.end_early(session, site=SITE, now=LESSON, actor=Actor.from_user(other), unlock_id=unlock.id)
    svc.end_early(session, site=SITE, now=LESSON + timedelta(minutes=5), actor=dsl, unlock_id=unlock.id)
    assert unlock.ended_by == "dsl"
    assert {r.revoked_at for r in session.scalars(select(PolicyExceptionRow))} == {LESSON + timedelta(minutes=5)}
    with pytest.raises(InvalidTransition):
        svc.end_early(session, site=SITE, now=LESSON, actor=actor_of(teacher), unlock_id=unlock.id)
    again = open_site(session, teacher, lesson_policy, "https://coolmathgames.com/")
    svc.end_early(session, site=SITE, now=LESSON, actor=actor_of(teacher), unlock_id=again.id)  # their own
    page = svc.list_unlocks(session, SITE)
    assert [u.id for u in page.items] == [again.id, unlock.id] and page.total == 2


def test_settings_from_the_configuration() -> None:
    from schoolgate.config import TeachersConfig

    settings = svc.UnlockSettings.from_config(TeachersConfig(unlocks_per_day=5, refused_categories=["video"]))
    assert settings.per_day == 5 and "video" in settings.never and "gambling" in settings.never
    assert "illegal" in settings.never and "circumvention" in settings.never
    with pytest.raises(ValueError, match="unlocks_per_day"):
        svc.UnlockSettings.from_config(TeachersConfig(unlocks_per_day=-1))
