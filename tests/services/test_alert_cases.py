"""The DSL's case work (notes, status, assessment, resolution) and device bans."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from schoolgate.policy import Client, CompiledPolicy, Role, Target, decide
from schoolgate.services import alerts, bans
from schoolgate.services.actor import Actor
from schoolgate.services.errors import Forbidden, InvalidInput, InvalidTransition
from schoolgate.store import audit as store_audit
from schoolgate.store.models import Alert, AuditEntry, Device
from schoolgate.store.overlay import load_overlay, read_generation

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


def test_ban_moves_device_to_supervised_until_lifted(
    session: Session, policy: CompiledPolicy, dsl: Actor, technician: Actor
) -> None:
    session.add(Device(site=SITE, device_id="IPAD-5", name="iPad 5", mac="3c:22:fb:01:02:05"))
    alert = make_alert(session)
    before = read_generation(session, SITE)
    with pytest.raises(Forbidden):
        bans.ban_device(
            session, site=SITE, now=NOW, actor=technician, device_id="IPAD-5", until=NOW + timedelta(days=7), reason="x"
        )
    ban = bans.ban_device(
        session,
        site=SITE,
        now=NOW,
        actor=dsl,
        device_id="IPAD-5",
        until=NOW + timedelta(days=7),
        reason="VPN use after a warning",
        alert_id=alert.id,
    )
    assert ban.mac == "3c:22:fb:01:02:05" and read_generation(session, SITE) == before + 1
    with pytest.raises(InvalidTransition, match="already banned"):
        bans.ban_device(
            session, site=SITE, now=NOW, actor=dsl, device_id="IPAD-5", until=NOW + timedelta(days=1), reason="again"
        )
    overlay = load_overlay(session, SITE, NOW)
    layered = policy.with_overlay(bans=overlay.bans)
    decision = decide(
        layered, Client(ip="10.0.0.5", device_id="IPAD-5", role=Role.PUPIL), Target(host="example.org"), NOW
    )
    assert decision.role is Role.SUPERVISED
    assert [h.action for h in alerts.history(session, SITE, alert.id)] == ["ban"]
    assert [b.id for b in bans.list_bans(session, SITE, now=NOW).items] == [ban.id]

    bans.lift_ban(session, site=SITE, now=NOW + timedelta(days=1), actor=dsl, ban_id=ban.id, reason="reviewed")
    assert read_generation(session, SITE) == before + 2
    assert load_overlay(session, SITE, NOW + timedelta(days=1)).bans == ()
    assert bans.list_bans(session, SITE, now=NOW).total == 0
    with pytest.raises(InvalidTransition):
        bans.lift_ban(session, site=SITE, now=NOW, actor=dsl, ban_id=ban.id, reason="again")
    actions = list(session.scalars(select(AuditEntry.action).order_by(AuditEntry.seq)))
    assert actions == ["ban.create", "ban.lift"]


@pytest.mark.parametrize(
    ("until", "message"),
    [
        (NOW - timedelta(minutes=1), "future"),
        (NOW + timedelta(days=400), "at most"),
        (datetime(2026, 12, 1), "time zone"),
    ],
)
def test_ban_validation(session: Session, dsl: Actor, until: datetime, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        bans.ban_device(session, site=SITE, now=NOW, actor=dsl, device_id="IPAD-5", until=until, reason="x")
