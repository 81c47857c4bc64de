"""The DSL's alert cases: list, note, review, assess, resolve.

Cases name children, so every step needs the DSL or the headteacher, and every change is
kept in the case's own history as well as the audit log.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import case, func, or_, select
from sqlalchemy.orm import Session

from schoolgate.services.actor import Actor
from schoolgate.services.common import Page, SiteScope, audit, clean_text, in_scope, on_site
from schoolgate.services.errors import InvalidInput, InvalidTransition, NotFound
from schoolgate.services.keywords import SEVERITIES
from schoolgate.services.permissions import Permission
from schoolgate.store.models import Alert, AlertHistory

NEW = "new"
IN_REVIEW = "in_review"
RESOLVED = "resolved"
STATUSES = (NEW, IN_REVIEW, RESOLVED)
OPEN_STATUSES = (NEW, IN_REVIEW)
ASSESSMENTS = ("true_positive", "false_positive")


@dataclass(frozen=True, slots=True)
class AlertFilter:
    statuses: Sequence[str] | None = None  # default: every status
    severities: Sequence[str] | None = None
    kind: str | None = None
    category: str | None = None
    device_id: str | None = None
    person_id: str | None = None
    since: datetime | None = None  # last_seen at or after
    until: datetime | None = None  # last_seen before
    # The viewer's own entry in the people register: a concern about them is never theirs to
    # read (seed 001 §8; schoolgate.services.notifications routes it to someone else).
    not_about: str | None = None


def _severity_order() -> object:
    return case({s: i for i, s in enumerate(SEVERITIES)}, value=Alert.severity, else_=-1)


def list_alerts(
    session: Session, site: SiteScope, query: AlertFilter = AlertFilter(), *, limit: int = 50, offset: int = 0
) -> Page[Alert]:
    """Cases, open ones first, then by severity (highest first), then most recent."""
    conditions = [on_site(Alert.site, site)]
    if query.statuses:
        conditions.append(Alert.status.in_(list(query.statuses)))
    if query.severities:
        conditions.append(Alert.severity.in_(list(query.severities)))
    if query.kind:
        conditions.append(Alert.kind == query.kind)
    if query.category:
        conditions.append(Alert.category == query.category)
    if query.device_id:
        conditions.append(Alert.device_id == query.device_id)
    if query.person_id:
        conditions.append(Alert.person_id == query.person_id)
    if query.since:
        conditions.append(Alert.last_seen >= query.since)
    if query.until:
        conditions.append(Alert.last_seen < query.until)
    if query.not_about:
        conditions.append(or_(Alert.person_id.is_(None), Alert.person_id != query.not_about))
    total = session.scalar(select(func.count()).select_from(Alert).where(*conditions)) or 0
    is_open = case((Alert.status == RESOLVED, 1), else_=0)
    rows = session.scalars(
        select(Alert)
        .where(*conditions)
        .order_by(is_open, _severity_order().desc(), Alert.last_seen.desc(), Alert.id.desc())  # type: ignore[attr-defined]
        .limit(limit)
        .offset(offset)
    ).all()
    return Page(items=rows, total=total, limit=limit, offset=offset)


def count_open_by_severity(session: Session, site: SiteScope) -> dict[str, int]:
    rows = session.execute(
        select(Alert.severity, func.count())
        .where(on_site(Alert.site, site), Alert.status.in_(OPEN_STATUSES))
        .group_by(Alert.severity)
    ).all()
    counts = dict.fromkeys(SEVERITIES, 0)
    for severity, count in rows:
        counts[severity] = int(count)
    return counts


def get_alert(session: Session, site: SiteScope, alert_id: int, *, not_about: str | None = None) -> Alert:
    """The case; NotFound too when it is about `not_about` (the viewer themself)."""
    alert = session.get(Alert, alert_id)
    if alert is None or not in_scope(alert.site, site) or (not_about and alert.person_id == not_about):
        raise NotFound(f"There is no alert {alert_id}.")
    return alert


def _editable(session: Session, site: str, actor: Actor, alert_id: int, doing: str) -> Alert:
    actor.require(Permission.MANAGE_ALERTS, doing=doing)
    return get_alert(session, site, alert_id)


def _history(session: Session, alert: Alert, actor: Actor, action: str, detail: str, *, now: datetime) -> AlertHistory:
    entry = AlertHistory(alert_id=alert.id, at=now, actor=actor.name, action=action, detail=detail)
    session.add(entry)
    alert.updated_at = now
    session.flush()
    return entry


def add_note(session: Session, *, site: str, now: datetime, actor: Actor, alert_id: int, text: str) -> AlertHistory:
    alert = _editable(session, site, actor, alert_id, "add notes to alerts")
    note = clean_text(text, field="note", max_len=8000, required=True)
    entry = _history(session, alert, actor, "note", note, now=now)
    audit(
        session,
        site=site,
        actor=actor,
        action="alert.note",
        object_type="alert",
        object_id=alert.id,
        detail={"history_id": entry.id},
        now=now,
    )
    return entry


def change_status(session: Session, *, site: str, now: datetime, actor: Actor, alert_id: int, status: str) -> Alert:
    """new <-> in_review; resolving goes through `resolve_alert` (it needs an outcome);
    reopening a resolved case puts it back in review."""
    alert = _editable(session, site, actor, alert_id, "change alert status")
    if status not in (NEW, IN_REVIEW):
        raise InvalidInput("Choose new or in review (resolve a case with its outcome).", field="status")
    if alert.status == status:
        raise InvalidTransition(f"The alert is already {status.replace('_', ' ')}.")
    if alert.status == RESOLVED and status == NEW:
        raise InvalidTransition("A resolved case can only be reopened for review.")
    previous = alert.status
    alert.status = status
    _history(session, alert, actor, "status", f"{previous} -> {status}", now=now)
    audit(
        session,
        site=site,
        actor=actor,
        action="alert.status",
        object_type="alert",
        object_id=alert.id,
        detail={"from": previous, "to": status},
        now=now,
    )
    return alert


def assess_alert(
    session: Session, *, site: str, now: datetime, actor: Actor, alert_id: int, assessment: str, note: str = ""
) -> Alert:
    """Record whether the case is a true or a false positive."""
    alert = _editable(session, site, actor, alert_id, "assess alerts")
    if assessment not in ASSESSMENTS:
        raise InvalidInput("Choose true positive or false positive.", field="assessment")
    text = clean_text(note, field="note", max_len=8000)
    alert.assessment = assessment
    if alert.status == NEW:
        alert.status = IN_REVIEW
    _history(session, alert, actor, "assessment", f"{assessment}{': ' + text if text else ''}", now=now)
    audit(
        session,
        site=site,
        actor=actor,
        action="alert.assess",
        object_type="alert",
        object_id=alert.id,
        detail={"assessment": assessment},
        now=now,
    )
    return alert


def resolve_alert(
    session: Session,
    *,
    site: str,
    now: datetime,
    actor: Actor,
    alert_id: int,
    outcome: str,
    assessment: str | None = None,
) -> Alert:
    """Close the case with its outcome (what was done: spoke to the pupil, informed parents...)."""
    alert = _editable(session, site, actor, alert_id, "resolve alerts")
    if alert.status == RESOLVED:
        raise InvalidTransition("The alert is already resolved.")
    text = clean_text(outcome, field="outcome", max_len=8000, required=True)
    if assessment is not None:
        if assessment not in ASSESSMENTS:
            raise InvalidInput("Choose true positive or false positive.", field="assessment")
        alert.assessment = assessment
    if alert.assessment is None:
        raise InvalidInput("Record whether this was a true or a false positive before resolving.", field="assessment")
    previous = alert.status
    alert.status = RESOLVED
    alert.outcome = text
    _history(session, alert, actor, "status", f"{previous} -> resolved ({alert.assessment}): {text}", now=now)
    audit(
        session,
        site=site,
        actor=actor,
        action="alert.resolve",
        object_type="alert",
        object_id=alert.id,
        detail={"assessment": alert.assessment, "from": previous},
        now=now,
    )
    return alert


def history(session: Session, site: SiteScope, alert_id: int) -> list[AlertHistory]:
    alert = get_alert(session, site, alert_id)
    return list(
        session.scalars(select(AlertHistory).where(AlertHistory.alert_id == alert.id).order_by(AlertHistory.id))
    )
