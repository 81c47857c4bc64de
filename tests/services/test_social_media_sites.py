"""Seed 001 appendix C: the marketing officer asks and endorses, the headteacher approves, and the
approval is what makes the named administrators authorised, until it expires or she ends it."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from schoolgate.services import social_media_sites as svc
from schoolgate.services.actor import Actor, Signature
from schoolgate.services.errors import Forbidden, InvalidInput, InvalidTransition
from schoolgate.store.models import AuditEntry, ConsoleUser, Person, UserRole
from schoolgate.store.overlay import read_generation

SITE = "testschool"
NOW = datetime(2026, 10, 6, 9, 0, tzinfo=UTC)


@pytest.fixture
def people(session: Session) -> None:
    session.add_all([
        Person(site=SITE, external_id="S1", name="Ms Media", role="staff"),
        Person(site=SITE, external_id="S2", name="Mr Deputy", role="staff"),
        Person(site=SITE, external_id="S3", name="Mrs Office", role="staff"),
        Person(site=SITE, external_id="P1", name="Ada", role="pupil", year_group=6),
    ])
    session.flush()


@pytest.fixture
def marketing(session: Session) -> Actor:
    user = ConsoleUser(site=SITE, username="media", display_name="Ms Media", password_hash="x",
                       roles=[UserRole(role="marketing")])
    session.add(user)
    session.flush()
    return Actor.from_user(user)


def sign(actor: Actor, at: datetime = NOW) -> Signature:
    assert actor.user_id is not None
    return Signature(user_id=actor.user_id, username=actor.name, name=actor.display_name, signed_at=at,
                     method="password")


def form(**changes: object) -> svc.SiteForm:
    values: dict[str, object] = {
        "platform": "Facebook page", "team": "Office", "department": "Marketing", "moderator": "Ms Media",
        "purpose": "News for parents: events, closures, achievements",
        "aims": "Fewer letters home; parents hear of closures at once",
        "content": "Reminders, good news, closure notices (seed 001 §3 objectives)",
        "audience": svc.Reach(frozenset({"families", "staff"})),
        "contributors": svc.Reach(frozenset({"staff"})),
        "administrators": ["S1", "S2"], "vetting": "Ms Media, marketing officer", "host": "Facebook",
        "go_live": date(2026, 11, 2), "security": "Comments off; followers vetted weekly",
    }
    values.update(changes)
    return svc.SiteForm(**values)  # type: ignore[arg-type]


def approved(session: Session, marketing: Actor, headteacher: Actor, *, admins: list[str] | None = None,
             expires: datetime = NOW + timedelta(days=365), now: datetime = NOW) -> int:
    record = svc.submit(session, site=SITE, now=now, actor=marketing, form=form(administrators=admins or ["S1", "S2"]))
    svc.endorse(session, site=SITE, now=now, actor=marketing, record_id=record.id, signature=sign(marketing, now))
    svc.decide(session, site=SITE, now=now, actor=headteacher, record_id=record.id, approval=svc.Approval(
        approve=True, signature=sign(headteacher, now), expires=expires, review_date=expires.date()))
    return record.id


def role_of(session: Session, external_id: str) -> str:
    return session.scalars(select(Person.role).where(Person.external_id == external_id)).one()


def test_the_approval_makes_the_administrators_authorised_until_it_expires(
    session: Session, people: None, marketing: Actor, headteacher: Actor
) -> None:
    before = read_generation(session, SITE)
    record_id = approved(session, marketing, headteacher, expires=NOW + timedelta(days=30))
    record = svc.get(session, SITE, record_id)
    assert record.status == svc.APPROVED and record.marketing_signature and record.head_signature
    assert (role_of(session, "S1"), role_of(session, "S2"), role_of(session, "S3")) == ("authorised", "authorised",
                                                                                        "staff")
    assert read_generation(session, SITE) > before  # DNS and the proxy reload the register
    assert svc.expire_due(session, site=SITE, now=NOW + timedelta(days=29)) == []
    assert svc.expire_due(session, site=SITE, now=NOW + timedelta(days=30)) == [record_id]
    assert (role_of(session, "S1"), role_of(session, "S2")) == ("staff", "staff")
    assert svc.get(session, SITE, record_id).status == svc.EXPIRED
    actions = list(session.scalars(select(AuditEntry.action).order_by(AuditEntry.seq)))
    assert actions == ["social_site.submit", "social_site.endorse", "social_site.approve", "social_site.expire"]


def test_an_administrator_named_by_another_live_approval_stays_authorised(
    session: Session, people: None, marketing: Actor, headteacher: Actor
) -> None:
    first = approved(session, marketing, headteacher, admins=["S1", "S2"], expires=NOW + timedelta(days=10))
    approved(session, marketing, headteacher, admins=["S2", "S3"], expires=NOW + timedelta(days=100))
    svc.expire_due(session, site=SITE, now=NOW + timedelta(days=11))
    assert svc.get(session, SITE, first).status == svc.EXPIRED
    assert (role_of(session, "S1"), role_of(session, "S2"), role_of(session, "S3")) == ("staff", "authorised",
                                                                                        "authorised")


def test_the_headteacher_ends_an_approval_early(
    session: Session, people: None, marketing: Actor, headteacher: Actor
) -> None:
    record_id = approved(session, marketing, headteacher)
    with pytest.raises(Forbidden):
        svc.end(session, site=SITE, now=NOW, actor=marketing, record_id=record_id, reason="closing the page")
    svc.end(session, site=SITE, now=NOW, actor=headteacher, record_id=record_id, reason="The page is closed")
    assert (role_of(session, "S1"), role_of(session, "S2")) == ("staff", "staff")
    with pytest.raises(InvalidTransition):
        svc.end(session, site=SITE, now=NOW, actor=headteacher, record_id=record_id, reason="again")


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"administrators": ["S1"]}, "administrators", "at least 2 administrators"),
        ({"administrators": ["S1", "S1"]}, "administrators", "at least 2 administrators"),
        ({"administrators": ["S1", "NOBODY"]}, "administrators", "Not in the people register: NOBODY"),
        ({"administrators": ["S1", "P1"]}, "administrators", "Pupils cannot administer"),
        ({"audience": svc.Reach(frozenset({"pupils"}))}, "audience", "pupils' ages"),
        ({"contributors": svc.Reach(frozenset({"pupils"}), pupil_ages="9-11")}, "consent", "parents' consent"),
        ({"audience": svc.Reach(frozenset({"other_schools"}))}, "audience", "Name the other schools"),
        ({"security": " "}, "security", "Please fill in security"),
    ],
)
def test_the_form_asks_what_appendix_c_asks(
    session: Session, people: None, marketing: Actor, changes: dict[str, object], field: str, message: str
) -> None:
    with pytest.raises(InvalidInput, match=message) as refused:
        svc.submit(session, site=SITE, now=NOW, actor=marketing, form=form(**changes))
    assert refused.value.field == field


def test_who_does_what(session: Session, people: None, marketing: Actor, headteacher: Actor,
                       technician: Actor) -> None:
    with pytest.raises(Forbidden):
        svc.submit(session, site=SITE, now=NOW, actor=technician, form=form())
    record = svc.submit(session, site=SITE, now=NOW, actor=marketing, form=form())
    approval = svc.Approval(approve=True, signature=sign(headteacher), expires=NOW + timedelta(days=5),
                            review_date=(NOW + timedelta(days=5)).date())
    with pytest.raises(InvalidTransition, match="marketing officer approves"):
        svc.decide(session, site=SITE, now=NOW, actor=headteacher, record_id=record.id, approval=approval)
    with pytest.raises(Forbidden):
        svc.endorse(session, site=SITE, now=NOW, actor=headteacher, record_id=record.id, signature=sign(headteacher))
    with pytest.raises(Forbidden, match="signature has expired"):
        svc.endorse(session, site=SITE, now=NOW, actor=marketing, record_id=record.id,
                    signature=sign(marketing, NOW - timedelta(hours=1)))
    svc.endorse(session, site=SITE, now=NOW, actor=marketing, record_id=record.id, signature=sign(marketing))
    with pytest.raises(Forbidden):
        svc.decide(session, site=SITE, now=NOW, actor=marketing, record_id=record.id,
                   approval=svc.Approval(approve=True, signature=sign(marketing)))
    with pytest.raises(InvalidInput, match="review date"):
        svc.decide(session, site=SITE, now=NOW, actor=headteacher, record_id=record.id, approval=svc.Approval(
            approve=True, signature=sign(headteacher), expires=NOW + timedelta(days=5),
            review_date=(NOW + timedelta(days=6)).date()))
    with pytest.raises(InvalidInput, match="reasons"):
        svc.decide(session, site=SITE, now=NOW, actor=headteacher, record_id=record.id,
                   approval=svc.Approval(approve=False, signature=sign(headteacher)))
    declined = svc.decide(session, site=SITE, now=NOW, actor=headteacher, record_id=record.id,
                          approval=svc.Approval(approve=False, signature=sign(headteacher), reasons="Not now"))
    assert declined.status == svc.DECLINED and role_of(session, "S1") == "staff"


def test_the_reach_boxes_in_words() -> None:
    reach = svc.Reach(frozenset({"pupils", "families", "other"}), pupil_ages="7-11", other="local press")
    assert reach.words() == "Pupils of the school (7-11), Pupils' family members, Other (local press)"
    assert svc.Reach.from_json(reach.as_json()) == reach
    assert svc.Reach.from_json("not json") == svc.Reach()
