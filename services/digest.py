"""The DSL's daily digest and the immediate alert emails.

Everything that comes from the events (hosts, URLs, device and person names, search terms)
is attacker-controlled text. Both are rendered from Jinja templates (services/templates/mail/,
see schoolgate.services.mailtemplates): the HTML part escapes every value it echoes, the text
part keeps each on one line; links are built only from the configured console address and
integer ids.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from schoolgate.services.activity import Ranked, top_devices, top_services
from schoolgate.services.actor import DSL
from schoolgate.services.alert_evidence import ATTEMPT_SPAN
from schoolgate.services.common import advance_mark
from schoolgate.services.keywords import SEVERITIES
from schoolgate.services.mailer import Mailer, build_message
from schoolgate.services.mailtemplates import RenderedMail, link, local_time, render
from schoolgate.services.selftest_devices import not_selftest
from schoolgate.services.signals import classify
from schoolgate.store.models import AccessEvent, AccessRequest, Alert, ConsoleUser, Generation, UserRole
from schoolgate.timewords import day_words, local

DIGEST_MARK = "digest_sent"  # generations row: when the last digest went out
MAX_LISTED_ALERTS = 25
MAX_PERIOD = timedelta(days=7)


@dataclass(frozen=True, slots=True)
class AlertLine:
    id: int
    severity: str
    status: str
    title: str
    last_seen: datetime
    trigger_count: int
    is_new: bool


@dataclass(frozen=True, slots=True)
class RequestLine:
    id: int
    reference: str
    host: str
    requester: str
    triaged_at: datetime | None


@dataclass(frozen=True, slots=True)
class CircumventionLine:
    device: str
    attempts: int
    services: str


@dataclass(frozen=True)
class DigestContent:
    """The facts of one digest, before they are rendered."""

    site_name: str
    since: datetime
    until: datetime
    new_by_severity: dict[str, int]
    open_by_severity: dict[str, int]
    alerts: list[AlertLine] = field(default_factory=list)
    top_services: list[Ranked] = field(default_factory=list)
    top_devices: list[Ranked] = field(default_factory=list)
    circumvention: list[CircumventionLine] = field(default_factory=list)
    awaiting_headteacher: list[RequestLine] = field(default_factory=list)
    health: list[str] = field(default_factory=list)  # the filtering checks: last self-test, coverage
    zone: tzinfo = UTC  # the school's time zone (the policy's [school] timezone): times in words


def digest_recipients(session: Session, site: str, extra: Sequence[str] = ()) -> list[str]:
    """The DSL and deputies (active users with the dsl role who receive the digest) plus `extra`."""
    emails = session.scalars(
        select(ConsoleUser.email)
        .join(UserRole, UserRole.user_id == ConsoleUser.id)
        .where(
            UserRole.role == DSL,
            ConsoleUser.active.is_(True),
            ConsoleUser.receives_digest.is_(True),
            ConsoleUser.email.is_not(None),
            or_(ConsoleUser.site == site, ConsoleUser.site.is_(None)),
        )
    ).all()
    seen: dict[str, str] = {}
    for address in [*emails, *extra]:
        if address and "@" in address and "\n" not in address and "\r" not in address:
            seen.setdefault(address.strip().lower(), address.strip())
    return sorted(seen.values(), key=str.lower)


def last_digest_at(session: Session, site: str) -> datetime | None:
    row = session.get(Generation, (site, DIGEST_MARK))
    return row.changed_at if row is not None and row.value > 0 else None


def mark_digest_sent(session: Session, site: str, now: datetime) -> None:
    advance_mark(session, site, DIGEST_MARK, now)
    session.flush()


def compose_digest(
    session: Session, *, site: str, site_name: str, now: datetime, zone: tzinfo, since: datetime | None = None
) -> DigestContent:
    """Collect the digest's facts for the period since the last digest (at most a week)."""
    if since is None:
        since = last_digest_at(session, site) or now - timedelta(days=1)
    since = max(since, now - MAX_PERIOD)
    open_rows = session.execute(
        select(Alert.severity, func.count())
        .where(Alert.site == site, Alert.status.in_(("new", "in_review")))
        .group_by(Alert.severity)
    ).all()
    new_rows = session.execute(
        select(Alert.severity, func.count())
        .where(Alert.site == site, Alert.created_at >= since, Alert.created_at < now)
        .group_by(Alert.severity)
    ).all()
    open_by = dict.fromkeys(SEVERITIES, 0) | {s: int(c) for s, c in open_rows}
    new_by = dict.fromkeys(SEVERITIES, 0) | {s: int(c) for s, c in new_rows}
    rank = {s: i for i, s in enumerate(SEVERITIES)}
    alerts = sorted(
        session.scalars(
            select(Alert).where(
                Alert.site == site,
                or_(Alert.status.in_(("new", "in_review")), Alert.created_at >= since),
            )
        ),
        key=lambda a: (-rank.get(a.severity, 0), -a.last_seen.timestamp(), -a.id),
    )
    # A concern about a member of staff goes to the headteacher (seed 001 §8), as it arises:
    # not in the DSL's digest, which the person concerned could be among the readers of.
    from schoolgate.services.notifications import about_staff

    alerts = [a for a in alerts if not about_staff(session, site, a)][:MAX_LISTED_ALERTS]
    lines = [
        AlertLine(a.id, a.severity, a.status, a.title, a.last_seen, a.trigger_count, a.created_at >= since)
        for a in alerts
    ]
    # Only what shows intent (services.signals): not QUIC, not DNS sent to another resolver.
    flagged = session.execute(
        select(
            func.coalesce(AccessEvent.device_name, AccessEvent.device_id, AccessEvent.client_ip).label("device"),
            AccessEvent.source,
            AccessEvent.host,
            AccessEvent.url,
            AccessEvent.verdict,
            AccessEvent.rule_id,
            AccessEvent.flags,
            AccessEvent.category,
            AccessEvent.service,
            AccessEvent.ts,
        )
        .where(
            AccessEvent.site == site,
            AccessEvent.ts >= since,
            AccessEvent.ts < now,
            or_(AccessEvent.flags != "", AccessEvent.category == "circumvention"),
            not_selftest(AccessEvent.device_id),
        )
        .order_by(AccessEvent.ts)
        .limit(50_000)
    ).all()
    attempts: dict[str, int] = {}
    services: dict[str, set[str]] = {}
    last_seen: dict[tuple[str, str], datetime] = {}
    for row in flagged:
        signal = classify(row)
        if signal is None or not signal.intent:
            continue
        # One attempt per device and target, however many requests it made within the span.
        key = (row.device, signal.target)
        previous = last_seen.get(key)
        last_seen[key] = row.ts
        if previous is not None and row.ts - previous <= ATTEMPT_SPAN:
            continue
        attempts[row.device] = attempts.get(row.device, 0) + 1
        services.setdefault(row.device, set()).add(row.service or signal.target)
    circumvention = [
        CircumventionLine(device, count, ", ".join(sorted(services[device])[:5]))
        for device, count in sorted(attempts.items(), key=lambda kv: -kv[1])[:15]
    ]
    awaiting = [
        RequestLine(r.id, f"AR-{r.id:06d}", r.host, r.requester, r.triaged_at)
        for r in session.scalars(
            select(AccessRequest)
            .where(AccessRequest.site == site, AccessRequest.status == "forwarded")
            .order_by(AccessRequest.triaged_at, AccessRequest.id)
            .limit(50)
        )
    ]
    return DigestContent(
        health=filtering_health(session, site, now, zone),
        site_name=site_name,
        since=since,
        until=now,
        new_by_severity=new_by,
        open_by_severity=open_by,
        alerts=lines,
        top_services=top_services(session, site, since, now, limit=10, zone=zone),
        top_devices=top_devices(session, site, since, now, limit=10, zone=zone),
        circumvention=circumvention,
        awaiting_headteacher=awaiting,
        zone=zone,
    )


def filtering_health(session: Session, site: str, now: datetime, zone: tzinfo) -> list[str]:
    """What the DSL should know about the filtering checks: the last self-test, open failures."""
    from schoolgate.services import checklog

    lines: list[str] = []
    last = checklog.last_selftest(session, site)
    if last is None:
        lines.append("No self-test has run yet.")
    elif last.result == checklog.PASS:
        lines.append(f"The last self-test passed ({local_time(last.at, zone)}).")
    else:
        down = " Filtering itself was not working." if last.filtering_down else ""
        lines.append(f"The last self-test FAILED ({local_time(last.at, zone)}): {last.failures} check(s).{down} "
                     f"{last.action}".strip())
    if last is not None and now - last.at > timedelta(days=4):
        lines.append(f"No self-test since {local_time(last.at, zone)}: is the scheduler running?")
    unfixed = checklog.unfixed_failures(session, site)
    if unfixed:
        lines.append(f"{len(unfixed)} failed manual check(s) have no fix recorded yet.")
    return lines


def render_digest(content: DigestContent, base_url: str) -> RenderedMail:
    """The digest as an e-mail, from the templates mail/digest.txt and mail/digest.html."""
    day = day_words(local(content.until, content.zone).date())
    subject = f"schoolgate daily summary for {content.site_name}: {day}"
    return render(
        "digest",
        subject,
        zone=content.zone,
        content=content,
        base_url=base_url,
        link=link,
        period=f"{local_time(content.since, content.zone)} to {local_time(content.until, content.zone)}",
        open_total=sum(content.open_by_severity.values()),
        open_text=", ".join(f"{s} {content.open_by_severity[s]}" for s in reversed(SEVERITIES)),
        new_text=", ".join(f"{s} {content.new_by_severity[s]}" for s in reversed(SEVERITIES)),
        ranked=[
            ("Most blocked services and sites", content.top_services),
            ("Devices with the most blocked attempts", content.top_devices),
        ],
        health=content.health,
    )


def send_digest(
    session: Session,
    *,
    site: str,
    site_name: str,
    now: datetime,
    mailer: Mailer,
    sender: str,
    base_url: str,
    zone: tzinfo,
    extra_recipients: Sequence[str] = (),
    release: Callable[[], None] | None = None,
) -> bool:
    """Compose and send the digest, then mark it sent; False when there is nobody to send to.

    `release`, when given, ends the caller's transaction once the digest is composed (nothing
    is written before that), so no database lock is held while the mail server answers: on
    SQLite that lock would hold up the DNS and proxy event writers for up to the mail timeout.
    """
    recipients = digest_recipients(session, site, extra_recipients)
    if not recipients:
        return False
    content = compose_digest(session, site=site, site_name=site_name, now=now, zone=zone)
    rendered = render_digest(content, base_url)
    if release is not None:
        release()
    mailer.send(
        build_message(
            sender=sender, recipients=recipients, subject=rendered.subject, text=rendered.text, html=rendered.html
        )
    )
    mark_digest_sent(session, site, now)
    return True


def render_immediate(alert: Alert, base_url: str, site_name: str, zone: tzinfo) -> RenderedMail:
    subject = f"schoolgate {alert.severity} alert at {site_name} (case {int(alert.id)})"
    return render("alert", subject, zone=zone, alert=alert, base_url=base_url, link=link)


def dispatch_immediate(
    session: Session,
    *,
    site: str,
    site_name: str,
    now: datetime,
    mailer: Mailer,
    sender: str,
    base_url: str,
    zone: tzinfo,
    severities: Sequence[str] = ("high", "critical"),
    extra_recipients: Sequence[str] = (),
    commit: Any = None,
    chair: str = "",
) -> list[int]:
    """Email each open alert of the given severities not yet notified; mark `notified_at`.

    Each goes where seed 001 §8 sends it (schoolgate.services.notifications.concern_route): a
    pupil's to the DSL and deputies, a member of staff's to the headteacher (at any severity:
    staff concerns are not in the DSL's digest), the headteacher's to the chair of governors;
    never to the person it is about.

    Each alert is marked after it is sent; a failed send raises, the caller rolls back, and
    the alert is tried again at the next run. `commit`, when given, ends the reading
    transaction before the first send (so no database lock is held while the mail server
    answers: on SQLite that would hold up the DNS and proxy event writers) and commits each
    mark after its send, so one failure does not make earlier alerts go out twice.
    """
    from schoolgate.services.notifications import concern_route

    dsl = digest_recipients(session, site, extra_recipients)
    unsent = session.scalars(
        select(Alert)
        .where(Alert.site == site, Alert.notified_at.is_(None), Alert.status != "resolved")
        .order_by(Alert.id)
    ).all()
    messages = []
    for case in unsent:
        route = concern_route(session, site, case.person_id, chair=chair, dsl=dsl)
        if route.recipients and (route.about_staff or case.severity in severities):
            messages.append((case.id, route.recipients, render_immediate(case, base_url, site_name, zone)))
    if commit is not None:
        commit()  # nothing written yet: this only ends the transaction
    sent: list[int] = []
    for alert_id, recipients, rendered in messages:
        mailer.send(
            build_message(
                sender=sender, recipients=recipients, subject=rendered.subject, text=rendered.text, html=rendered.html
            )
        )
        alert = session.get(Alert, alert_id)
        if alert is not None:
            alert.notified_at = now
            session.flush()
        sent.append(alert_id)
        if commit is not None:
            commit()
    return sent
