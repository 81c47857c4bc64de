"""The DSL's daily digest and the immediate alert emails.

Everything that comes from the events (hosts, URLs, device and person names, search terms)
is attacker-controlled text. The HTML part escapes every value it echoes; links are built
only from the configured console address and integer ids.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from schoolgate.services.activity import Ranked, top_devices, top_services
from schoolgate.services.actor import DSL
from schoolgate.services.alert_rules import CIRCUMVENTION_FLAGS
from schoolgate.services.common import advance_mark
from schoolgate.services.keywords import SEVERITIES
from schoolgate.services.mailer import Mailer, build_message
from schoolgate.store.models import AccessEvent, AccessRequest, Alert, ConsoleUser, Generation, UserRole

LONDON = ZoneInfo("Europe/London")
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


@dataclass(frozen=True, slots=True)
class RenderedMail:
    subject: str
    text: str
    html: str


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
    session: Session, *, site: str, site_name: str, now: datetime, since: datetime | None = None
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
    )[:MAX_LISTED_ALERTS]
    lines = [
        AlertLine(a.id, a.severity, a.status, a.title, a.last_seen, a.trigger_count, a.created_at >= since)
        for a in alerts
    ]
    flagged = session.execute(
        select(
            func.coalesce(AccessEvent.device_name, AccessEvent.device_id, AccessEvent.client_ip),
            AccessEvent.flags,
            AccessEvent.category,
            func.coalesce(AccessEvent.service, AccessEvent.host),
            AccessEvent.count,
        )
        .where(
            AccessEvent.site == site,
            AccessEvent.ts >= since,
            AccessEvent.ts < now,
            or_(AccessEvent.flags != "", AccessEvent.category == "circumvention"),
        )
        .limit(50_000)
    ).all()
    attempts: dict[str, int] = {}
    services: dict[str, set[str]] = {}
    for device, flags, category, service, count in flagged:
        names = {f.strip().lower() for f in (flags or "").split(",")}
        if not (names & CIRCUMVENTION_FLAGS) and category != "circumvention":
            continue
        attempts[device] = attempts.get(device, 0) + int(count or 1)
        services.setdefault(device, set()).add(str(service))
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
        site_name=site_name,
        since=since,
        until=now,
        new_by_severity=new_by,
        open_by_severity=open_by,
        alerts=lines,
        top_services=top_services(session, site, since, now, limit=10),
        top_devices=top_devices(session, site, since, now, limit=10),
        circumvention=circumvention,
        awaiting_headteacher=awaiting,
    )


def _local(when: datetime) -> str:
    return when.astimezone(LONDON).strftime("%a %d %b %H:%M")


def _link(base_url: str, path: str) -> str:
    return base_url.rstrip("/") + path


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _one_line(value: str) -> str:
    """Attacker-controlled text on one line in the plain-text part (no forged lines)."""
    return " ".join(value.split())[:300]


def render_digest(content: DigestContent, base_url: str) -> RenderedMail:
    day = content.until.astimezone(LONDON).strftime("%A %d %B %Y")
    subject = f"schoolgate daily summary for {content.site_name}: {day}"
    period = f"{_local(content.since)} to {_local(content.until)} (UK time)"
    open_total = sum(content.open_by_severity.values())
    sev_text = ", ".join(f"{s} {content.open_by_severity[s]}" for s in reversed(SEVERITIES))
    new_text = ", ".join(f"{s} {content.new_by_severity[s]}" for s in reversed(SEVERITIES))

    text: list[str] = [
        subject,
        f"Period: {period}",
        "",
        f"Open alerts: {open_total} ({sev_text})",
        f"New alerts in the period: {new_text}",
        "",
    ]
    parts: list[str] = [
        '<!doctype html><html><body style="font-family:sans-serif">',
        f'<h1 style="font-size:1.2em">{_e(subject)}</h1>',
        f"<p>Period: {_e(period)}</p>",
        f"<p><strong>Open alerts: {open_total}</strong> ({_e(sev_text)})<br>"
        f"New alerts in the period: {_e(new_text)}</p>",
    ]
    if content.alerts:
        text.append("Alerts:")
        parts.append(
            '<h2 style="font-size:1.1em">Alerts</h2><table border="1" cellpadding="4" '
            'style="border-collapse:collapse"><tr><th>Severity</th><th>Status</th><th>Case</th>'
            "<th>Last seen</th><th>Triggers</th></tr>"
        )
        for alert in content.alerts:
            url = _link(base_url, f"/alerts/{int(alert.id)}")
            marker = " (new)" if alert.is_new else ""
            text.append(
                f"  [{alert.severity}] {_one_line(alert.title)}{marker} - {alert.status}, "
                f"{alert.trigger_count} trigger(s), last {_local(alert.last_seen)} - {url}"
            )
            parts.append(
                f"<tr><td>{_e(alert.severity)}</td><td>{_e(alert.status.replace('_', ' '))}{_e(marker)}</td>"
                f'<td><a href="{_e(url)}">{_e(alert.title)}</a></td><td>{_e(_local(alert.last_seen))}</td>'
                f"<td>{int(alert.trigger_count)}</td></tr>"
            )
        parts.append("</table>")
        text.append("")

    def ranked(title: str, rows: Sequence[Ranked]) -> None:
        if not rows:
            return
        text.append(f"{title}:")
        parts.append(f'<h2 style="font-size:1.1em">{_e(title)}</h2><ol>')
        for row in rows:
            text.append(f"  {row.count:>6}  {_one_line(row.label)}")
            parts.append(f"<li>{_e(row.label)}: {int(row.count)}</li>")
        parts.append("</ol>")
        text.append("")

    ranked("Most blocked services and sites", content.top_services)
    ranked("Devices with the most blocked attempts", content.top_devices)
    if content.circumvention:
        text.append("Circumvention attempts:")
        parts.append('<h2 style="font-size:1.1em">Circumvention attempts</h2><ul>')
        for line in content.circumvention:
            text.append(f"  {_one_line(line.device)}: {line.attempts} attempt(s) ({_one_line(line.services)})")
            parts.append(f"<li>{_e(line.device)}: {int(line.attempts)} attempt(s) ({_e(line.services)})</li>")
        parts.append("</ul>")
        text.append("")
    requests_url = _link(base_url, "/requests")
    text.append(f"Access requests awaiting the headteacher: {len(content.awaiting_headteacher)} - {requests_url}")
    parts.append(
        f'<h2 style="font-size:1.1em">Access requests awaiting the headteacher: '
        f"{len(content.awaiting_headteacher)}</h2><ul>"
    )
    for request in content.awaiting_headteacher:
        url = _link(base_url, f"/requests/{int(request.id)}")
        text.append(f"  {request.reference} {_one_line(request.host)} for {_one_line(request.requester)} - {url}")
        parts.append(
            f'<li><a href="{_e(url)}">{_e(request.reference)}</a> {_e(request.host)} for {_e(request.requester)}</li>'
        )
    parts.append("</ul>")
    console = _link(base_url, "/")
    text += [
        "",
        f"Open the console: {console}",
        "This summary was sent by schoolgate. Safeguarding details stay in the console.",
    ]
    parts.append(f'<p><a href="{_e(console)}">Open the console</a></p></body></html>')
    return RenderedMail(subject=subject, text="\n".join(text) + "\n", html="\n".join(parts) + "\n")


def send_digest(
    session: Session,
    *,
    site: str,
    site_name: str,
    now: datetime,
    mailer: Mailer,
    sender: str,
    base_url: str,
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
    content = compose_digest(session, site=site, site_name=site_name, now=now)
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


def render_immediate(alert: Alert, base_url: str, site_name: str) -> RenderedMail:
    url = _link(base_url, f"/alerts/{int(alert.id)}")
    subject = f"schoolgate {alert.severity} alert at {site_name} (case {int(alert.id)})"
    lines = [
        f"A {alert.severity} alert was raised at {_local(alert.first_seen)} (UK time).",
        f"Case: {_one_line(alert.title)}",
        f"Details: {_one_line(alert.summary)}",
        f"Triggers so far: {alert.trigger_count}",
        "",
        f"Open the case: {url}",
    ]
    body = (
        '<!doctype html><html><body style="font-family:sans-serif">'
        f"<p>A <strong>{_e(alert.severity)}</strong> alert was raised at {_e(_local(alert.first_seen))} (UK time).</p>"
        f"<p>Case: {_e(alert.title)}<br>Details: {_e(alert.summary)}<br>Triggers so far: {int(alert.trigger_count)}</p>"
        f'<p><a href="{_e(url)}">Open the case</a></p></body></html>\n'
    )
    return RenderedMail(subject=subject, text="\n".join(lines) + "\n", html=body)


def dispatch_immediate(
    session: Session,
    *,
    site: str,
    site_name: str,
    now: datetime,
    mailer: Mailer,
    sender: str,
    base_url: str,
    severities: Sequence[str] = ("high", "critical"),
    extra_recipients: Sequence[str] = (),
    commit: Any = None,
) -> list[int]:
    """Email each open alert of the given severities not yet notified; mark `notified_at`.

    Each alert is marked after it is sent; a failed send raises, the caller rolls back, and
    the alert is tried again at the next run. `commit`, when given, ends the reading
    transaction before the first send (so no database lock is held while the mail server
    answers: on SQLite that would hold up the DNS and proxy event writers) and commits each
    mark after its send, so one failure does not make earlier alerts go out twice.
    """
    recipients = digest_recipients(session, site, extra_recipients)
    if not recipients:
        return []
    due = session.scalars(
        select(Alert)
        .where(
            Alert.site == site,
            Alert.severity.in_(list(severities)),
            Alert.notified_at.is_(None),
            Alert.status != "resolved",
        )
        .order_by(Alert.id)
    ).all()
    messages = [(alert.id, render_immediate(alert, base_url, site_name)) for alert in due]
    if commit is not None:
        commit()  # nothing written yet: this only ends the transaction
    sent: list[int] = []
    for alert_id, rendered in messages:
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
