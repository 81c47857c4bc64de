"""Who is told by e-mail, and when: the people each step of the school's processes waits for.

- The ICT technicians, when an inappropriate-content report arrives (seed 001 §9, appendix B).
- The DSL, when a checked access request would open a site to pupils and waits for her
  safeguarding notes; the headteacher, when a request waits for her decision (appendix A).
- The headteacher, when a device she authorised was moved and its authorisation lapsed (and
  whoever else an audit entry kind in schoolgate.services.notices is for).
- A concern raised about someone (an alert case): about a pupil, or a device nobody owns, the
  DSL (schoolgate.services.digest does that); about a member of staff, the headteacher; about
  the headteacher, the chair of governors or trustees (`[mail] chair_of_governors`; seed 001 §8:
  "the Chair of Board of Trustees"). Never to the person the concern is about: an account linked
  to that person in the people register is left out, whatever its roles.

Recipients come from the one permission table: whoever holds the power the step needs (the
technicians hold ACTION_REPORT, the headteacher DECIDE_REQUEST, the DSL
REVIEW_REQUEST_SAFEGUARDING). Messages say what waits and link to it; safeguarding detail
stays in the console.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from schoolgate.services.mailer import Mailer, build_message
from schoolgate.services.mailtemplates import RenderedMail, link, render
from schoolgate.services.permissions import Permission, permissions_of
from schoolgate.store.models import AccessRequest, Alert, ConsoleUser, ContentReport, Person

STAFF_ROLES = frozenset({"staff", "authorised"})


def usable_address(address: str | None) -> str | None:
    text = (address or "").strip()
    if not text or "@" not in text or any(ch in text for ch in "\r\n,;<>"):
        return None
    return text


def holders(
    session: Session, site: str, permission: Permission, *, exclude_person: str | None = None
) -> list[str]:
    """The e-mail addresses of the active accounts at `site` (or trust-wide) that hold
    `permission`, leaving out any account linked to `exclude_person`."""
    users = session.scalars(
        select(ConsoleUser).where(
            ConsoleUser.active.is_(True),
            ConsoleUser.email.is_not(None),
            or_(ConsoleUser.site == site, ConsoleUser.site.is_(None)),
        )
    ).all()
    found: dict[str, str] = {}
    for user in users:
        if permission not in permissions_of(user.role_names):
            continue
        if exclude_person is not None and user.person_external_id == exclude_person:
            continue
        address = usable_address(user.email)
        if address is not None:
            found.setdefault(address.lower(), address)
    return sorted(found.values(), key=str.lower)


# -- concerns about a person ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConcernRoute:
    """Where a concern about someone goes: the addresses, and who they are in words."""

    recipients: list[str]
    to: str  # "the DSL", "the headteacher", "the chair of governors"
    about_staff: bool


def concern_route(
    session: Session, site: str, person_id: str | None, *, chair: str = "", dsl: Sequence[str] = ()
) -> ConcernRoute:
    """Seed 001 §8: a pupil's concern to the DSL (`dsl`: the DSL and deputies), a member of
    staff's to the headteacher, the headteacher's to the chair; never to the person concerned."""
    person = None
    if person_id:
        person = session.scalars(select(Person).where(Person.site == site, Person.external_id == person_id)).first()
    if person is None or _own_role(person) not in STAFF_ROLES:
        linked = _linked_addresses(session, site, person_id) if person_id else set()
        return ConcernRoute([a for a in dsl if a.lower() not in linked], "the DSL", about_staff=False)
    if _is_headteacher(session, site, person.external_id):
        address = usable_address(chair)
        if address is not None:
            return ConcernRoute([address], "the chair of governors", about_staff=True)
        # No chair is configured: the DSL rather than no one (doctor and the console say so);
        # never the headteacher.
        linked = _linked_addresses(session, site, person.external_id)
        return ConcernRoute([a for a in dsl if a.lower() not in linked], "the DSL", about_staff=True)
    return ConcernRoute(
        holders(session, site, Permission.DECIDE_REQUEST, exclude_person=person.external_id),
        "the headteacher",
        about_staff=True,
    )


def _own_role(person: Person) -> str:
    from schoolgate.services.register import own_role

    return own_role(person)


def _linked_addresses(session: Session, site: str, person_id: str) -> set[str]:
    rows = session.scalars(
        select(ConsoleUser.email).where(
            ConsoleUser.person_external_id == person_id,
            or_(ConsoleUser.site == site, ConsoleUser.site.is_(None)),
        )
    ).all()
    return {address.strip().lower() for address in rows if address}


def _is_headteacher(session: Session, site: str, person_id: str) -> bool:
    users = session.scalars(
        select(ConsoleUser).where(
            ConsoleUser.person_external_id == person_id,
            ConsoleUser.active.is_(True),
            or_(ConsoleUser.site == site, ConsoleUser.site.is_(None)),
        )
    ).all()
    return any(Permission.DECIDE_REQUEST in permissions_of(user.role_names) for user in users)


def about_staff(session: Session, site: str, alert: Alert) -> bool:
    """Whether a case is a concern about a member of staff (routed away from the DSL's digest)."""
    if not alert.person_id:
        return False
    person = session.scalars(
        select(Person).where(Person.site == site, Person.external_id == alert.person_id)
    ).first()
    return person is not None and _own_role(person) in STAFF_ROLES


# -- what waits for whom ---------------------------------------------------------------------


@dataclass(frozen=True)
class Notice:
    """One message to send, and how to mark it sent."""

    recipients: list[str]
    rendered: RenderedMail
    mark: Callable[[Session, datetime], None]


def _mark_report(report_id: int) -> Callable[[Session, datetime], None]:
    def mark(session: Session, now: datetime) -> None:
        report = session.get(ContentReport, report_id)
        if report is not None:
            report.technicians_notified_at = now

    return mark


def _mark_request(request_id: int, column: str) -> Callable[[Session, datetime], None]:
    def mark(session: Session, now: datetime) -> None:
        request = session.get(AccessRequest, request_id)
        if request is not None:
            setattr(request, column, now)

    return mark


def due(session: Session, *, site: str, site_name: str, base_url: str, zone: tzinfo) -> list[Notice]:
    """Every message that is waiting to go, composed (nothing is written); times in the
    school's time `zone`."""
    from schoolgate.services.access_requests import FORWARDED, awaits_dsl, proposal_summary, reference_for
    from schoolgate.services.reports import reference_for as report_reference

    notices: list[Notice] = []
    reports = session.scalars(
        select(ContentReport)
        .where(ContentReport.site == site, ContentReport.status == "open",
               ContentReport.technicians_notified_at.is_(None))
        .order_by(ContentReport.id)
    ).all()
    technicians = holders(session, site, Permission.ACTION_REPORT)
    for report in reports:
        if technicians:
            hosts = sorted({_host(url) for url in report.urls.splitlines() if url.strip()})
            reference = report_reference(report.id)
            rendered = render(
                "report", f"Inappropriate content reported at {site_name}: {reference}",
                zone=zone, report=report, reference=reference, hosts=hosts, base_url=base_url, link=link,
                site_name=site_name,
            )
            notices.append(Notice(technicians, rendered, _mark_report(report.id)))
    requests = session.scalars(
        select(AccessRequest)
        .where(AccessRequest.site == site, AccessRequest.status == FORWARDED)
        .order_by(AccessRequest.id)
    ).all()
    heads = holders(session, site, Permission.DECIDE_REQUEST)
    dsls = holders(session, site, Permission.REVIEW_REQUEST_SAFEGUARDING)
    for request in requests:
        reference = reference_for(request.id)
        summary = proposal_summary(request, zone)
        if awaits_dsl(request):
            if request.dsl_notified_at is None and dsls:
                rendered = render(
                    "request_dsl", f"Safeguarding check needed: access request {reference} at {site_name}",
                    zone=zone, request=request, reference=reference, summary=summary, base_url=base_url, link=link,
                )
                notices.append(Notice(dsls, rendered, _mark_request(request.id, "dsl_notified_at")))
        elif request.headteacher_notified_at is None and heads:
            rendered = render(
                "request_head", f"Your decision: access request {reference} at {site_name}",
                zone=zone, request=request, reference=reference, summary=summary, base_url=base_url, link=link,
            )
            notices.append(Notice(heads, rendered, _mark_request(request.id, "headteacher_notified_at")))
    notices.extend(_audit_notices(session, site=site, site_name=site_name, base_url=base_url, zone=zone))
    return notices


def _audit_notices(session: Session, *, site: str, site_name: str, base_url: str, zone: tzinfo) -> list[Notice]:
    """Changes someone must hear about, from the audit log (schoolgate.services.notices): e.g.
    the headteacher, when a device she authorised was moved and its authorisation lapsed."""
    from schoolgate.services import notices as audit_notices

    found: list[Notice] = []
    for item in audit_notices.untold(session, site):
        if item.addresses:
            recipients = sorted({a for a in map(usable_address, item.addresses) if a})
        else:
            recipients = holders(session, site, item.permission)
        if recipients:
            rendered = render("audit_notice", f"{item.subject} at {site_name}", zone=zone, notice=item,
                              base_url=base_url, link=link, site_name=site_name)
            found.append(Notice(recipients, rendered, item.mark))
    return found


def _host(url: str) -> str:
    from urllib.parse import urlsplit

    try:
        return (urlsplit(url.strip()).hostname or "").lower() or url.strip()[:100]
    except ValueError:
        return url.strip()[:100]


def send(
    session: Session,
    notices: Iterable[Notice],
    *,
    now: datetime,
    mailer: Mailer,
    sender: str,
    commit: Callable[[], None],
) -> int:
    """Send each notice and mark it sent, committing after each, so a failure part-way makes no
    message go out twice; the caller has ended its reading transaction (commit) first, so no
    lock is held while the mail server answers."""
    sent = 0
    for notice in notices:
        mailer.send(
            build_message(sender=sender, recipients=notice.recipients, subject=notice.rendered.subject,
                          text=notice.rendered.text, html=notice.rendered.html)
        )
        notice.mark(session, now)
        session.flush()
        commit()
        sent += 1
    return sent
