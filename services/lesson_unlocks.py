"""A teacher opens a site for their class for the rest of the lesson.

The one power of the `teacher` role: a site the class cannot reach now opens for that class (a
group exception, so DNS and the proxy honour it within seconds through the overlay) until the
next edge of the policy's timeline (the end of the lesson: a break or lunch starting, the school
day ending), never past the school day. What a teacher can open is bounded: never a site in a
locked category (illegal content, circumvention), nor in a harmful-content category or one the
school keeps for the headteacher (`[teachers] refused_categories`: social media by default, as
the seed policies need the headteacher's permission for pupils' social media), nor a site the
technician blocked after a report of inappropriate content (appendix B); a site the class can
already reach, `support` among them, needs no unlock. Each teacher may do it a few
times a day (`[teachers] unlocks_per_day`); every unlock is audited and listed for the
headteacher and the DSL, who can end it early.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from schoolgate.policy.catalogue import CATALOGUE, HARMFUL_CATEGORIES
from schoolgate.policy.timeline import DayKind
from schoolgate.policy.types import Client, Decision, ExceptionScope, Role, Target
from schoolgate.services.actor import Actor
from schoolgate.services.common import Page, SiteScope, audit, bump_overlay, clean_text, in_scope, on_site, parse_url
from schoolgate.services.errors import Forbidden, InvalidTransition, LockedTarget, NotFound, RateLimited
from schoolgate.services.permissions import Permission
from schoolgate.store.models import ConsoleUser, LessonUnlock, Person, PolicyExceptionRow

if TYPE_CHECKING:
    from schoolgate.policy import CompiledPolicy as Policy

#: The locked categories (illegal, circumvention): no one opens them.
ALWAYS_REFUSED = frozenset(c.id for c in CATALOGUE if c.locked)
#: Categories a teacher never opens, whatever the settings: they need the headteacher.
HARMFUL = frozenset(HARMFUL_CATEGORIES)
DEFAULT_REFUSED = frozenset({"social_media", "dating"})


@dataclass(frozen=True)
class UnlockSettings:
    """From `[teachers]` in schoolgate.toml."""

    per_day: int = 3
    refused_categories: frozenset[str] = field(default_factory=lambda: DEFAULT_REFUSED)

    @classmethod
    def from_config(cls, teachers: object) -> UnlockSettings:
        per_day = int(getattr(teachers, "unlocks_per_day", cls.per_day))
        if per_day < 0:
            raise ValueError("teachers.unlocks_per_day must be 0 or more")
        refused = frozenset(getattr(teachers, "refused_categories", DEFAULT_REFUSED))
        return cls(per_day=per_day, refused_categories=refused)

    @property
    def never(self) -> frozenset[str]:
        return ALWAYS_REFUSED | HARMFUL | self.refused_categories


@dataclass(frozen=True, slots=True)
class LessonEnd:
    """When the current lesson ends: the next edge of the policy's timeline, and what it is."""

    at: datetime  # aware, UTC
    what: str  # e.g. "morning break starts"


def _label(name: str) -> str:
    return name.replace("_", " ").replace("-", " ")


def lesson_end(policy: Policy, now: datetime) -> LessonEnd:
    """The end of the lesson going on at `now`; InvalidTransition outside the school day.

    The lesson is what lies between two edges of the school's timeline: any window starting or
    ending (a break, lunch, the end of the school day). It is lesson time when it is a school
    day and a window that runs on school days is active; the next edge comes before that window
    ends, so an unlock never outlives the school day."""
    timeline = policy.timeline
    zone = policy.school.zone
    local = now.astimezone(zone)
    if not policy.calendar.is_school_day(local.date()):
        raise InvalidTransition("Sites can only be opened for a lesson on a school day.")
    utc_day, index, active = timeline.locate(now.timestamp())
    school_windows = [
        bit for bit, window in enumerate(timeline.windows)
        if active >> bit & 1 and window.days in (DayKind.SCHOOL_DAYS, DayKind.STAFF_DAYS)
    ]
    if not school_windows:
        raise InvalidTransition("It is not lesson time: the school day has not started or is over.")
    every = (1 << len(timeline.windows)) - 1
    edge = timeline.next_change(utc_day, index, every)
    if edge is None:
        raise InvalidTransition("The school's timeline has no end to this lesson.")
    ends = datetime.fromtimestamp(edge, UTC)
    after = timeline.active(edge)
    started = [_label(w.name) for bit, w in enumerate(timeline.windows) if after >> bit & 1 and not active >> bit & 1]
    stopped = [_label(w.name) for bit, w in enumerate(timeline.windows) if active >> bit & 1 and not after >> bit & 1]
    what = f"{' and '.join(started)} starts" if started else f"{' and '.join(stopped)} ends"
    # Belt and braces: the same local day, whatever the windows say.
    midnight = datetime.combine(local.date() + timedelta(days=1), time(0), tzinfo=zone)
    if ends > midnight:
        ends, what = midnight.astimezone(UTC), "the day ends"
    return LessonEnd(at=ends, what=what)


def teacher_classes(session: Session, site: str, user: ConsoleUser) -> list[str]:
    """The classes a teacher may open sites for: the groups of their entry in the people register."""
    if not user.person_external_id:
        return []
    person = session.scalars(
        select(Person).where(on_site(Person.site, site), Person.external_id == user.person_external_id)
    ).first()
    if person is None or not person.active:
        return []
    return sorted({g.strip() for g in (person.groups or "").split(",") if g.strip()})


def _class_clients(session: Session, site: str, group: str) -> list[Client]:
    """A probe client for each year group of the class's pupils (rules may depend on it)."""
    rows = session.execute(
        select(Person.year_group, Person.groups).where(
            on_site(Person.site, site), Person.role == Role.PUPIL.value, Person.active.is_(True)
        )
    ).all()
    years = {year for year, groups in rows if group in {g.strip() for g in (groups or "").split(",")}}
    return [
        Client(ip="0.0.0.0", role=Role.PUPIL, year_group=year, groups=frozenset({group}))
        for year in sorted(years, key=lambda y: -1 if y is None else y)
    ] or [Client(ip="0.0.0.0", role=Role.PUPIL, groups=frozenset({group}))]


def _domains_to_open(policy: Policy, decision: Decision, host: str) -> list[str]:
    """The whole site: every domain of the catalogue service it belongs to (a video site's
    players and pictures live on other domains), else the host's registrable domain."""
    service = policy.service_by_id.get(decision.service) if decision.service else None
    if service is not None and service.domains:
        return list(dict.fromkeys([*service.domains, *service.hosts]))
    from schoolgate.services.access_requests import public_suffix_of

    suffix = public_suffix_of(host)
    if suffix and host != suffix and host.endswith("." + suffix):
        label = host[: -len(suffix) - 1].rsplit(".", 1)[-1]
        return [f"{label}.{suffix}"]
    return [host]


#: The policy engine's rule id for a technician's block (schoolgate.policy.engine).
SITE_BLOCK_RULE_PREFIX = "site-block-"


def _refusal(decisions: Sequence[Decision], never: frozenset[str]) -> str | None:
    for decision in decisions:
        if decision.locked or (decision.category in ALWAYS_REFUSED):
            return "it is blocked for everyone by the school's policy, and no one can open it"
        if decision.rule_id.startswith(SITE_BLOCK_RULE_PREFIX):
            # Appendix B: blocked by the technician after someone reported it as inappropriate.
            return "the ICT technician blocked it after a report of inappropriate content; ask them"
        if decision.category in never:
            what = decision.category.replace("_", " ")
            return (
                f"it is in the {what} category, which only the headteacher can open: ask through the "
                "blocked content access request form"
            )
    return None


def unlocks_today(session: Session, site: str, user: ConsoleUser, *, now: datetime, policy: Policy) -> int:
    """How many sites `user` opened today (the school's local day)."""
    user_id, username = user.id, user.username
    zone = policy.school.zone
    local = now.astimezone(zone)
    day_start = datetime.combine(local.date(), time(0), tzinfo=zone)
    owner = LessonUnlock.user_id == user_id if user_id is not None else LessonUnlock.username == username
    return int(
        session.scalar(
            select(func.count()).select_from(LessonUnlock).where(
                on_site(LessonUnlock.site, site), owner, LessonUnlock.created_at >= day_start,
                LessonUnlock.created_at < day_start + timedelta(days=1),
            )
        )
        or 0
    )


def open_for_lesson(
    session: Session,
    *,
    site: str,
    now: datetime,
    actor: Actor,
    user: ConsoleUser,
    policy: Policy,
    settings: UnlockSettings,
    group: str,
    url: str,
    reason: str = "",
) -> LessonUnlock:
    """Open the site of `url` for `group` until the end of the lesson (see the module text)."""
    actor.require(Permission.OPEN_FOR_LESSON, doing="open a site for their class")
    if actor.user_id != user.id:
        raise Forbidden("A teacher opens sites for their own classes only.")
    group = clean_text(group, field="group", max_len=60, required=True)
    if group not in teacher_classes(session, site, user):
        raise Forbidden(f"{group} is not one of your classes in the people register.", field="group")
    why = clean_text(reason, field="reason", max_len=500)
    page, host = parse_url(url)
    ending = lesson_end(policy, now)

    from schoolgate.policy import decide

    probes = _class_clients(session, site, group)
    decisions = [decide(policy, probe, Target(host=host), now) for probe in probes]
    blocked = [d for d in decisions if d.blocked]
    if not blocked:
        raise InvalidTransition(f"{host} is already open for {group} now: it needs no unlock.")
    refusal = _refusal(blocked, settings.never)
    if refusal is not None:
        raise LockedTarget(f"{host} cannot be opened for a lesson: {refusal}.", field="url")
    if settings.per_day <= 0:
        raise Forbidden("Opening sites for a lesson is turned off at this school.")
    used = unlocks_today(session, site, user, now=now, policy=policy)
    if used >= settings.per_day:
        raise RateLimited(
            f"You have opened {used} sites today, the most a teacher may in one day. "
            "Ask the ICT technician, or use the blocked content access request form."
        )
    domains = _domains_to_open(policy, blocked[0], host)
    for domain in domains:  # every domain of the site must be openable, not only the one given
        extra = [decide(policy, probe, Target(host=domain), now) for probe in probes]
        refusal = _refusal([d for d in extra if d.blocked], settings.never)
        if refusal is not None:
            raise LockedTarget(f"{domain} (part of {host}) cannot be opened for a lesson: {refusal}.", field="url")

    unlock = LessonUnlock(
        site=site, user_id=user.id, username=user.username, teacher=user.display_name, group=group, host=host,
        url=page, reason=why, starts=now, ends=ending.at, ends_with=ending.what, created_at=now,
    )
    session.add(unlock)
    session.flush()
    rows = [
        PolicyExceptionRow(
            site=site, scope=ExceptionScope.GROUP.value, subject=group, domain=domain, url_prefix=None,
            starts=now, expires=ending.at, created_by=actor.name, created_at=now, lesson_unlock_id=unlock.id,
            reason=f"Opened by {user.display_name} for {group} until the lesson ends ({ending.what})"
            + (f": {why}" if why else ""),
            enforced_scope=f"Opens the whole of {domain} and its subdomains for {group}.",
        )
        for domain in domains
    ]
    session.add_all(rows)
    session.flush()
    audit(
        session, site=site, actor=actor, action="lesson.open", object_type="lesson_unlock", object_id=unlock.id,
        detail={"group": group, "host": host, "url": page, "domains": domains, "until": ending.at.isoformat(),
                "ends_with": ending.what, "exceptions": [r.id for r in rows], "reason": why},
        now=now,
    )
    bump_overlay(session, site=site, now=now)
    return unlock


def get_unlock(session: Session, site: SiteScope, unlock_id: int) -> LessonUnlock:
    unlock = session.get(LessonUnlock, unlock_id)
    if unlock is None or not in_scope(unlock.site, site):
        raise NotFound(f"There is no lesson unlock {unlock_id}.")
    return unlock


def end_early(session: Session, *, site: str, now: datetime, actor: Actor, unlock_id: int) -> LessonUnlock:
    """End an unlock now: the teacher who opened it, or the headteacher, DSL or technician."""
    unlock = get_unlock(session, site, unlock_id)
    own = actor.user_id is not None and unlock.user_id == actor.user_id
    if not own:
        actor.require(Permission.END_LESSON_UNLOCK, doing="end another teacher's lesson unlock")
    if unlock.ended_early_at is not None or unlock.ends <= now:
        raise InvalidTransition("That unlock has already ended.")
    unlock.ended_early_at = now
    unlock.ended_by = actor.name
    for row in session.scalars(select(PolicyExceptionRow).where(PolicyExceptionRow.lesson_unlock_id == unlock.id)):
        if row.revoked_at is None:
            row.revoked_at = now
    session.flush()
    audit(session, site=site, actor=actor, action="lesson.end", object_type="lesson_unlock", object_id=unlock.id,
          detail={"group": unlock.group, "host": unlock.host}, now=now)
    bump_overlay(session, site=site, now=now)
    return unlock


def list_unlocks(
    session: Session, site: SiteScope, *, user_id: int | None = None, since: datetime | None = None,
    limit: int = 50, offset: int = 0,
) -> Page[LessonUnlock]:
    """Newest first; `user_id`: one teacher's; `since`: opened at or after."""
    conditions = [on_site(LessonUnlock.site, site)]
    if user_id is not None:
        conditions.append(LessonUnlock.user_id == user_id)
    if since is not None:
        conditions.append(LessonUnlock.created_at >= since)
    total = session.scalar(select(func.count()).select_from(LessonUnlock).where(*conditions)) or 0
    rows = session.scalars(
        select(LessonUnlock).where(*conditions).order_by(LessonUnlock.created_at.desc(), LessonUnlock.id.desc())
        .limit(limit).offset(offset)
    ).all()
    return Page(items=rows, total=total, limit=limit, offset=offset)


def is_live(unlock: LessonUnlock, now: datetime) -> bool:
    return unlock.ended_early_at is None and unlock.starts <= now < unlock.ends
