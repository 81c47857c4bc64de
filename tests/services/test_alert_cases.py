"""The DSL's case work: notes, status, assessment, resolution (bans: test_bans.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from schoolgate.services import alerts
from schoolgate.services.actor import Actor
from schoolgate.services.errors import Forbidden, InvalidInput, InvalidTransition
from schoolgate.store import audit as store_audit
from schoolgate.store.models import Alert, AuditEntry

SITE = "testschool"
NOW = datetime(2026, 10, 6, 9, 0, tzinfo=UTC)


def make_alert(session: Session, **fields: object) -> Alert:
    values: dict[str, object] = {
        "site": SITE,
        "kind": "circumvention",
        "rule_id": "circumvention",
        "severity": "high",
        "status": "new",
        "title": "Circumvention attempt from iPad 5",
        "summary": "vpn: freevpn.example",
        "device_id": "IPAD-5",
        "client_ip": "10.0.0.5",
        "first_seen": NOW,
        "last_seen": NOW,
        "trigger_count": 1,
    }
    values.update(fields)
    alert = Alert(**values)
    session.add(alert)
    session.flush()
    return alert


def test_case_lifecycle(session: Session, dsl: Actor, technician: Actor) -> None:
    alert = make_alert(session)
    with pytest.raises(Forbidden):
        alerts.add_note(session, site=SITE, now=NOW, actor=technician, alert_id=alert.id, text="hi")
    alerts.add_note(session, site=SITE, now=NOW, actor=dsl, alert_id=alert.id, text="Spoke to class teacher.")
    alerts.change_status(session, site=SITE, now=NOW, actor=dsl, alert_id=alert.id, status="in_review")
    with pytest.raises(InvalidInput):
        alerts.change_status(session, site=SITE, now=NOW, actor=dsl, alert_id=alert.id, status="resolved")
    with pytest.raises(InvalidInput, match="true or a false positive"):
        alerts.resolve_alert(session, site=SITE, now=NOW, actor=dsl, alert_id=alert.id, outcome="done")
    alerts.assess_alert(session, site=SITE, now=NOW, actor=dsl, alert_id=alert.id, assessment="true_positive")
    alerts.resolve_alert(
        session, site=SITE, now=NOW, actor=dsl, alert_id=alert.id, outcome="Pupil spoke with the DSL; parents informed."
    )
    assert alert.status == "resolved" and alert.assessment == "true_positive"
    with pytest.raises(InvalidTransition):
        alerts.resolve_alert(session, site=SITE, now=NOW, actor=dsl, alert_id=alert.id, outcome="again")
    with pytest.raises(InvalidTransition):
        alerts.change_status(session, site=SITE, now=NOW, actor=dsl, alert_id=alert.id, status="new")
    alerts.change_status(session, site=SITE, now=NOW, actor=dsl, alert_id=alert.id, status="in_review")
    history = [(h.action, h.actor) for h in alerts.history(session, SITE, alert.id)]
    assert history == [("note", "dsl"), ("status", "dsl"), ("assessment", "dsl"), ("status", "dsl"), ("status", "dsl")]
    actions = list(session.scalars(select(AuditEntry.action).order_by(AuditEntry.seq)))
    assert actions == ["alert.note", "alert.status", "alert.assess", "alert.resolve", "alert.status"]
    assert store_audit.verify(session, SITE).ok


def test_list_filters_and_order(session: Session) -> None:
    low = make_alert(session, severity="low", kind="out_of_hours", last_seen=NOW)
    critical = make_alert(
        session, severity="critical", kind="safeguarding_term", category="self-harm", last_seen=NOW - timedelta(hours=1)
    )
    done = make_alert(session, severity="critical", status="resolved", last_seen=NOW + timedelta(hours=1))
    other_site = make_alert(session, site="elsewhere")
    page = alerts.list_alerts(session, SITE)
    assert [a.id for a in page.items] == [critical.id, low.id, done.id] and page.total == 3
    assert other_site.id not in [a.id for a in page.items]
    open_only = alerts.list_alerts(session, SITE, alerts.AlertFilter(statuses=alerts.OPEN_STATUSES))
    assert [a.id for a in open_only.items] == [critical.id, low.id]
    assert alerts.list_alerts(session, SITE, alerts.AlertFilter(category="self-harm")).total == 1
    assert alerts.count_open_by_severity(session, SITE) == {"low": 1, "medium": 0, "high": 0, "critical": 1}
