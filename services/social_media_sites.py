"""Seed 001 appendix C, social media site creation approval: the form, its endorsement and the
headteacher's approval, which is what makes the site's administrators authorised.

Seed 001 §3: school accounts are created by the marketing officer and other designated staff
"following approval from the headteacher", who authorises who may administer and post on them.
The journey: the marketing officer (or the headteacher) fills in the form, naming at least two
administrators from the people register -> the marketing officer endorses it ("I approve the
aims and content of the proposed site and the use of the school brand and logo": name,
signature, date) -> the headteacher approves it the same way, signed, with an expiry and a
review date. The approval gives the named administrators the `authorised` role (what lets them
reach the school's social media accounts through the filter) until it expires, or until the
headteacher ends it; then each of them returns to their own role, unless another live approval
still names them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from schoolgate.services.actor import SCHEDULER, Actor, Signature
from schoolgate.services.common import Page, SiteScope, audit, bump_overlay, clean_text, in_scope, on_site
from schoolgate.services.errors import Forbidden, InvalidInput, InvalidTransition, NotFound
from schoolgate.services.permissions import Permission
from schoolgate.store.models import Person, SocialMediaAdmin, SocialMediaSite

SUBMITTED = "submitted"  # waiting for the marketing officer
ENDORSED = "endorsed"  # waiting for the headteacher
APPROVED = "approved"  # the administrators are authorised
DECLINED = "declined"
EXPIRED = "expired"
ENDED = "ended"  # the headteacher ended it before its expiry
OPEN_STATUSES = (SUBMITTED, ENDORSED)
LIVE = APPROVED

AUTHORISED = "authorised"
MIN_ADMINISTRATORS = 2  # appendix C: "the site must have at least two approved administrators"
MAX_APPROVAL_DAYS = 366 * 2
SIGNATURE_MAX_AGE = timedelta(minutes=10)

#: Appendix C's audience and contributor boxes, in its order.
GROUPS: tuple[tuple[str, str], ...] = (
    ("pupils", "Pupils of the school"),
    ("staff", "School staff"),
    ("families", "Pupils' family members"),
    ("external", "External organisations"),
    ("other_schools", "Pupils from other schools"),
    ("public", "Members of the public"),
    ("other", "Other"),
)
GROUP_NAMES = dict(GROUPS)


@dataclass(frozen=True, slots=True)
class Reach:
    """One of the form's "proposed audience" or "proposed contributors" boxes, filled in."""

    groups: frozenset[str] = frozenset()  # keys of GROUPS
    pupil_ages: str = ""  # "Ages: age range", when pupils are ticked
    schools: str = ""  # "Schools involved", when pupils from other schools are ticked
    other: str = ""  # "Other (please give details)"

    def as_json(self) -> str:
        return json.dumps({"groups": sorted(self.groups), "pupil_ages": self.pupil_ages, "schools": self.schools,
                           "other": self.other}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Reach:
        try:
            data = json.loads(text or "{}")
        except ValueError:
            return cls()
        return cls(groups=frozenset(data.get("groups", ())), pupil_ages=data.get("pupil_ages", ""),
                   schools=data.get("schools", ""), other=data.get("other", ""))

    def words(self) -> str:
        parts = []
        for key, name in GROUPS:
            if key not in self.groups:
                continue
            extra = {"pupils": self.pupil_ages, "other_schools": self.schools, "other": self.other}.get(key, "")
            parts.append(f"{name} ({extra})" if extra else name)
        return ", ".join(parts) or "none given"


@dataclass(frozen=True, slots=True)
class SiteForm:
    """Appendix C, the requester's part."""

    platform: str  # the service and kind of site, e.g. "Facebook page", "X account"
    moderator: str  # moderator of the site
    purpose: str  # why they want the site, and its content
    aims: str  # what they hope to achieve
    content: str  # the proposed content
    administrators: Sequence[str]  # people register ids: at least two
    vetting: str  # who will vet external contributors (name and job role)
    host: str  # who will host the site
    security: str  # measures against unwanted contributors, friends and followers
    team: str = ""
    department: str = ""
    audience: Reach = field(default_factory=Reach)
    contributors: Reach = field(default_factory=Reach)
    go_live: date | None = None
    advertising: str = ""  # how contributors will be found
    consent: str = ""  # how parents' consent is obtained when pupils contribute


@dataclass(frozen=True, slots=True)
class Approval:
    """The headteacher's part: approve or decline, signed, with the expiry and review date."""

    approve: bool
    signature: Signature
    reasons: str = ""
    expires: datetime | None = None  # the administrators' authorisation ends (aware)
    review_date: date | None = None


def reference_for(record_id: int) -> str:
    return f"SM-{record_id:06d}"


def _reach(reach: Reach, what: str) -> Reach:
    unknown = reach.groups - set(GROUP_NAMES)
    if unknown:
        raise InvalidInput(f"Unknown {what} box: {', '.join(sorted(unknown))}.", field=what)
    ages = clean_text(reach.pupil_ages, field=what, max_len=100)
    schools = clean_text(reach.schools, field=what, max_len=500)
    other = clean_text(reach.other, field=what, max_len=500)
    if "pupils" in reach.groups and not ages:
        raise InvalidInput(f"Give the pupils' ages for the proposed {what}.", field=what)
    if "other_schools" in reach.groups and not schools:
        raise InvalidInput(f"Name the other schools involved in the proposed {what}.", field=what)
    if "other" in reach.groups and not other:
        raise InvalidInput(f"Give details of the other {what}.", field=what)
    return Reach(reach.groups, ages, schools, other)


def _administrators(session: Session, site: str, ids: Iterable[str]) -> list[Person]:
    wanted = list(dict.fromkeys(i.strip() for i in ids if i and i.strip()))
    if len(wanted) < MIN_ADMINISTRATORS:
        raise InvalidInput(
            f"Name at least {MIN_ADMINISTRATORS} administrators from the people register (appendix C).",
            field="administrators",
        )
    people = {p.external_id: p for p in session.scalars(
        select(Person).where(on_site(Person.site, site), Person.external_id.in_(wanted))
    )}
    missing = [i for i in wanted if i not in people]
    if missing:
        raise InvalidInput(f"Not in the people register: {', '.join(missing)}.", field="administrators")
    inactive = [people[i].name for i in wanted if not people[i].active]
    if inactive:
        raise InvalidInput(f"No longer active in the people register: {', '.join(inactive)}.", field="administrators")
    pupils = [people[i].name for i in wanted if _own_role(people[i]) == "pupil"]
    if pupils:
        raise InvalidInput(f"Pupils cannot administer the school's sites: {', '.join(pupils)}.",
                           field="administrators")
    return [people[i] for i in wanted]


def _own_role(person: Person) -> str:
    from schoolgate.services.register import own_role

    return own_role(person)


def submit(session: Session, *, site: str, now: datetime, actor: Actor, form: SiteForm) -> SocialMediaSite:
    actor.require(Permission.RAISE_SOCIAL_MEDIA_SITE, doing="ask for a social media site")
    text = {
        name: clean_text(getattr(form, name), field=name, max_len=4000, required=True)
        for name in ("platform", "moderator", "purpose", "aims", "content", "vetting", "host", "security")
    }
    if len(text["platform"]) > 100 or len(text["moderator"]) > 200 or len(text["host"]) > 200:
        raise InvalidInput("Keep the platform, moderator and host short.", field="platform")
    optional = {name: clean_text(getattr(form, name), field=name, max_len=4000)
                for name in ("team", "department", "advertising", "consent")}
    if len(optional["team"]) > 200 or len(optional["department"]) > 200:
        raise InvalidInput("Keep the team and department short.", field="team")
    audience = _reach(form.audience, "audience")
    contributors = _reach(form.contributors, "contributors")
    if "pupils" in contributors.groups and not optional["consent"]:
        raise InvalidInput("Pupils would contribute: say how parents' consent is obtained.", field="consent")
    admins = _administrators(session, site, form.administrators)
    record = SocialMediaSite(
        site=site, status=SUBMITTED, **text, **optional, audience=audience.as_json(),
        contributors=contributors.as_json(), administrators=", ".join(p.name for p in admins),
        go_live=form.go_live, requested_by=actor.name, requested_by_name=actor.display_name, created_at=now,
    )
    record.admins = [SocialMediaAdmin(person_external_id=p.external_id, person_name=p.name) for p in admins]
    session.add(record)
    session.flush()
    audit(session, site=site, actor=actor, action="social_site.submit", object_type="social_media_site",
          object_id=record.id, detail={"platform": record.platform, "administrators": [p.external_id for p in admins]},
          now=now)
    return record


def _check_signature(actor: Actor, signature: Signature, now: datetime) -> None:
    if actor.user_id is None or signature.user_id != actor.user_id or signature.username != actor.name:
        raise Forbidden("The signature must be your own.")
    if signature.signed_at.tzinfo is None or not timedelta(seconds=-30) <= now - signature.signed_at <= (
        SIGNATURE_MAX_AGE
    ):
        raise Forbidden("The signature has expired: confirm your password again to sign.")


def endorse(
    session: Session, *, site: str, now: datetime, actor: Actor, record_id: int, signature: Signature
) -> SocialMediaSite:
    """The marketing officer approves the aims and content and the use of the school's brand."""
    actor.require(Permission.ENDORSE_SOCIAL_MEDIA_SITE, doing="endorse social media sites")
    _check_signature(actor, signature, now)
    record = get(session, site, record_id)
    if record.status != SUBMITTED:
        raise InvalidTransition(
            f"{reference_for(record.id)} is {record.status}, not waiting for the marketing officer."
        )
    record.status = ENDORSED
    record.marketing_name = signature.name
    record.marketing_signature = signature.as_text()
    record.marketing_signed_at = now
    session.flush()
    audit(session, site=site, actor=actor, action="social_site.endorse", object_type="social_media_site",
          object_id=record.id, detail={"signature": record.marketing_signature}, now=now)
    return record


def decide(
    session: Session, *, site: str, now: datetime, actor: Actor, record_id: int, approval: Approval
) -> SocialMediaSite:
    """The headteacher's decision. Approving makes each named administrator authorised until the
    expiry (their own role kept, to return to); declining needs reasons."""
    from schoolgate.services.register import set_role

    actor.require(Permission.APPROVE_SOCIAL_MEDIA_SITE, doing="approve social media sites")
    _check_signature(actor, approval.signature, now)
    record = get(session, site, record_id)
    if record.status not in OPEN_STATUSES:
        raise InvalidTransition(f"{reference_for(record.id)} is already {record.status}.")
    reasons = clean_text(approval.reasons, field="reasons", max_len=4000, required=not approval.approve)
    if approval.approve:
        if record.status != ENDORSED:
            raise InvalidTransition(
                "The marketing officer approves the aims, content and use of the school brand first (appendix C)."
            )
        if approval.expires is None or approval.expires.tzinfo is None or approval.expires <= now:
            raise InvalidInput("Give the date the administrators' authorisation ends.", field="expires")
        if approval.expires - now > timedelta(days=MAX_APPROVAL_DAYS):
            raise InvalidInput(f"An approval may last at most {MAX_APPROVAL_DAYS} days; review and renew it.",
                               field="expires")
        if approval.review_date is None or approval.review_date > approval.expires.date():
            raise InvalidInput("Give a review date, on or before the expiry.", field="review_date")
    record.head_name = approval.signature.name
    record.head_signature = approval.signature.as_text()
    record.head_signed_at = now
    record.decision_reasons = reasons
    if not approval.approve:
        record.status = DECLINED
        session.flush()
        audit(session, site=site, actor=actor, action="social_site.decline", object_type="social_media_site",
              object_id=record.id, detail={"reasons": reasons, "signature": record.head_signature}, now=now)
        return record
    record.status = APPROVED
    record.expires = approval.expires
    record.review_date = approval.review_date
    granted = []
    for admin in record.admins:
        person = _person(session, site, admin.person_external_id)
        if person is None or not person.active:
            raise InvalidTransition(f"{admin.person_name} is no longer in the people register; ask again.")
        if person.role != AUTHORISED:
            set_role(person, AUTHORISED)
            admin.granted = True
            granted.append(person.external_id)
    session.flush()
    audit(session, site=site, actor=actor, action="social_site.approve", object_type="social_media_site",
          object_id=record.id, detail={"expires": record.expires.isoformat() if record.expires else None,
                                       "review_date": str(record.review_date), "authorised": granted,
                                       "signature": record.head_signature}, now=now)
    if granted:
        bump_overlay(session, site=site, now=now)
    return record


def _person(session: Session, site: str, external_id: str) -> Person | None:
    return session.scalars(
        select(Person).where(on_site(Person.site, site), Person.external_id == external_id)
    ).first()


def _withdraw(session: Session, site: str, record: SocialMediaSite, now: datetime) -> list[str]:
    """Return each administrator this approval authorised to their own role, unless another live
    approval still names them (or the headteacher authorised them some other way since)."""
    from schoolgate.services.register import own_role, set_role

    others = {
        admin.person_external_id
        for admin in session.scalars(
            select(SocialMediaAdmin).join(SocialMediaSite).where(
                SocialMediaSite.site == record.site, SocialMediaSite.status == LIVE, SocialMediaSite.id != record.id,
                SocialMediaAdmin.withdrawn_at.is_(None),
            )
        )
    }
    withdrawn = []
    for admin in record.admins:
        if admin.withdrawn_at is not None:
            continue
        admin.withdrawn_at = now
        if not admin.granted or admin.person_external_id in others:
            continue
        person = _person(session, site, admin.person_external_id)
        if person is not None and person.role == AUTHORISED:
            set_role(person, own_role(person))
            withdrawn.append(person.external_id)
    return withdrawn


def end(session: Session, *, site: str, now: datetime, actor: Actor, record_id: int, reason: str) -> SocialMediaSite:
    """The headteacher ends an approval before its expiry (the site closed, an administrator left)."""
    actor.require(Permission.APPROVE_SOCIAL_MEDIA_SITE, doing="end social media site approvals")
    record = get(session, site, record_id)
    if record.status != LIVE:
        raise InvalidTransition(f"{reference_for(record.id)} is {record.status}, not in force.")
    why = clean_text(reason, field="reason", max_len=2000, required=True)
    record.status = ENDED
    record.ended_at = now
    withdrawn = _withdraw(session, site, record, now)
    session.flush()
    audit(session, site=site, actor=actor, action="social_site.end", object_type="social_media_site",
          object_id=record.id, detail={"reason": why, "unauthorised": withdrawn}, now=now)
    if withdrawn:
        bump_overlay(session, site=site, now=now)
    return record


def expire_due(session: Session, *, site: str, now: datetime) -> list[int]:
    """The scheduler's sweep: approvals past their expiry end, and their administrators return to
    their own roles. Returns the ids that expired."""
    due = session.scalars(
        select(SocialMediaSite).where(
            SocialMediaSite.site == site, SocialMediaSite.status == LIVE, SocialMediaSite.expires <= now
        ).order_by(SocialMediaSite.id)
    ).all()
    changed = False
    for record in due:
        record.status = EXPIRED
        record.ended_at = now
        withdrawn = _withdraw(session, site, record, now)
        changed = changed or bool(withdrawn)
        session.flush()
        audit(session, site=site, actor=SCHEDULER, action="social_site.expire", object_type="social_media_site",
              object_id=record.id, detail={"unauthorised": withdrawn}, now=now)
    if changed:
        bump_overlay(session, site=site, now=now)
    return [record.id for record in due]


def get(session: Session, site: SiteScope, record_id: int) -> SocialMediaSite:
    record = session.get(SocialMediaSite, record_id)
    if record is None or not in_scope(record.site, site):
        raise NotFound(f"There is no social media site form {record_id}.")
    return record


def list_sites(
    session: Session, site: SiteScope, *, statuses: Sequence[str] | None = None, limit: int = 50, offset: int = 0
) -> Page[SocialMediaSite]:
    conditions = [on_site(SocialMediaSite.site, site)]
    if statuses is not None:
        conditions.append(SocialMediaSite.status.in_(list(statuses)))
    total = session.scalar(select(func.count()).select_from(SocialMediaSite).where(*conditions)) or 0
    rows = session.scalars(
        select(SocialMediaSite).where(*conditions).order_by(SocialMediaSite.id.desc()).limit(limit).offset(offset)
    ).all()
    return Page(items=rows, total=total, limit=limit, offset=offset)


def due_for_review(records: Iterable[SocialMediaSite], today: date) -> list[SocialMediaSite]:
    return [r for r in records if r.status == LIVE and r.review_date is not None and r.review_date <= today]


def reach_of(record: SocialMediaSite) -> Mapping[str, Reach]:
    return {"audience": Reach.from_json(record.audience), "contributors": Reach.from_json(record.contributors)}
