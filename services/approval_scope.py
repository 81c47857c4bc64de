"""What an approval or a block really opens or closes, in words, before anyone signs it.

A domain is enforced as a domain everywhere. Pages under a URL prefix are enforced at the prefix
only where the proxy sees the pages: on a device that trusts the school CA, which it intercepts.
Every other device, including any device the register does not know, gets the whole site: an
approved prefix opens the whole site there, a blocked prefix closes it (schoolgate.policy's
`url_scoped`). The triage, decision and report pages show this statement, and the record keeps
it, so what is signed is never narrower than what is enforced.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from schoolgate.policy.types import ExceptionScope, Role
from schoolgate.services.common import parse_url
from schoolgate.store.models import Device, Person


@dataclass(frozen=True, slots=True)
class Coverage:
    """The registered devices a scope covers, by whether the proxy can see their pages."""

    seen: int  # registered devices that trust the school CA
    unseen: int  # registered devices that do not
    unregistered: bool  # devices the register does not know may be covered too (a role)


@dataclass(frozen=True, slots=True)
class EnforcedScope:
    """What a proposal opens (or a block closes), device by device."""

    target: str  # "domain" or "url"
    value: str  # the domain, or the URL prefix
    host: str
    coverage: Coverage | None  # None for a domain: the same on every device

    @property
    def whole_site_somewhere(self) -> bool:
        """A URL prefix that some covered device will get as the whole site."""
        if self.target != "url" or self.coverage is None:
            return False
        return self.coverage.unseen > 0 or self.coverage.unregistered or self.coverage.seen == 0

    def sentence(self, *, opening: bool = True) -> str:
        """The statement shown before signing and kept in the record."""
        verb = "opens" if opening else "closes"
        if self.target == "domain" or self.coverage is None:
            return f"This {verb} the whole of {self.value} and its subdomains, on every device it covers."
        pages = f"pages under {self.value}"
        whole = f"the whole of {self.host}"
        cover = self.coverage
        others = _count(cover.unseen, "other registered device")
        if cover.unregistered:
            others = f"{others} and on any device the register does not know" if cover.unseen else (
                "any device the register does not know"
            )
        if not self.whole_site_somewhere:
            return (
                f"This {verb} only {pages}: every device it covers ({_count(cover.seen, 'device')}) trusts the "
                "school's certificate, so the filter checks each page."
            )
        if cover.seen == 0 and cover.unseen == 0 and not cover.unregistered:
            return (
                f"No registered device is covered today. On a device that trusts the school's certificate "
                f"this {verb} only {pages}; on any other it {verb} {whole}."
            )
        if cover.seen == 0:
            return (
                f"This {verb} {whole}, not only {pages}: the devices it covers do not trust the school's "
                "certificate, so the filter cannot see which page they open."
            )
        return (
            f"This {verb} {pages} on the {_count(cover.seen, 'device')} that trust the school's certificate, "
            f"but {whole} on {others}: the filter cannot see which page those open."
        )


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def coverage(session: Session, site: str, scope: ExceptionScope, subject: str) -> Coverage:
    """The registered devices an exception of `scope` for `subject` applies to.

    Mirrors how the policy matches an exception (schoolgate.policy.engine): a device by its id
    or MAC, a person's and a group's members' devices, and for a role every device with that
    role (its own, or its owner's) plus any unregistered device on that role's networks."""
    rows = session.execute(
        select(Device.device_id, Device.mac, Device.role, Device.trusts_school_ca, Person.external_id,
               Person.role, Person.groups, Person.active)
        .outerjoin(Person, Device.person_id == Person.id)
        .where(Device.site == site)
    ).all()
    seen = unseen = 0
    for device_id, mac, device_role, trusts, person_id, person_role, groups, active in rows:
        owner_active = person_id is not None and active
        if scope is ExceptionScope.DEVICE:
            covered = subject == device_id or (mac is not None and subject.lower() == mac.lower())
        elif scope is ExceptionScope.PERSON:
            covered = owner_active and person_id == subject
        elif scope is ExceptionScope.GROUP:
            covered = owner_active and subject in {g.strip() for g in (groups or "").split(",")}
        else:
            covered = (device_role or (person_role if owner_active else None)) == subject
        if covered:
            if trusts:
                seen += 1
            else:
                unseen += 1
    return Coverage(seen=seen, unseen=unseen, unregistered=scope is ExceptionScope.ROLE)


def enforced_scope(
    session: Session, site: str, *, target: str, value: str, scope: ExceptionScope | None, subject: str | None
) -> EnforcedScope:
    """The statement for a proposal: `scope` None means every device (a technician's block)."""
    if target != "url":
        return EnforcedScope(target="domain", value=value, host=value, coverage=None)
    _url, host = parse_url(value, field="value")
    if scope is None or subject is None:
        every = coverage_of_everyone(session, site)
        return EnforcedScope(target="url", value=value, host=host, coverage=every)
    return EnforcedScope(target="url", value=value, host=host, coverage=coverage(session, site, scope, subject))


def coverage_of_everyone(session: Session, site: str, roles: frozenset[str] = frozenset()) -> Coverage:
    """Every registered device (with one of `roles`, when given), and any unregistered one."""
    seen = unseen = 0
    rows = session.execute(
        select(Device.role, Device.trusts_school_ca, Person.role)
        .outerjoin(Person, Device.person_id == Person.id)
        .where(Device.site == site)
    ).all()
    for device_role, trusts, person_role in rows:
        if roles and (device_role or person_role) not in roles:
            continue
        if trusts:
            seen += 1
        else:
            unseen += 1
    return Coverage(seen=seen, unseen=unseen, unregistered=True)


def opens_to_pupils(session: Session, site: str, scope: ExceptionScope, subject: str) -> bool:
    """Whether an exception of `scope` for `subject` would open a site to a pupil: then the DSL
    adds the safeguarding risks before the headteacher decides."""
    from schoolgate.services.register import own_role

    pupil = Role.PUPIL.value
    if scope is ExceptionScope.ROLE:
        return subject == pupil
    people = session.scalars(select(Person).where(Person.site == site, Person.active.is_(True))).all()
    if scope is ExceptionScope.PERSON:
        return any(p.external_id == subject and own_role(p) == pupil for p in people)
    if scope is ExceptionScope.GROUP:
        return any(
            own_role(p) == pupil and subject in {g.strip() for g in (p.groups or "").split(",")} for p in people
        )
    devices = session.execute(
        select(Device.role, Person.role, Person.role_before_authorised, Person.year_group)
        .outerjoin(Person, Device.person_id == Person.id)
        .where(Device.site == site, or_(Device.device_id == subject, func.lower(Device.mac) == subject.lower()))
    ).all()
    for device_role, person_role, before, year_group in devices:
        if device_role == pupil:
            return True
        if device_role is None and person_role is not None:
            owner = Person(role=person_role, role_before_authorised=before, year_group=year_group)
            if own_role(owner) == pupil:
                return True
    return False
