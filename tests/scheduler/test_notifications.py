"""Who the scheduler e-mails, through a real SMTP server: the technicians a new report, the DSL and
then the headteacher a request that waits for them, and each concern about a person to the one
seed 001 §8 names, never to the person it is about."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy.orm import Session, sessionmaker

from schoolgate.config import AppConfig
from schoolgate.scheduler import jobs
from schoolgate.services import access_requests as ar
from schoolgate.services import public_limits, reports
from schoolgate.services.actor import Actor
from schoolgate.services.mailer import SmtpMailer
from schoolgate.store.models import AccessRequest, Alert, ConsoleUser, ContentReport, Person, UserRole

SITE = "testschool"
NOW = datetime(2026, 10, 6, 9, 0, tzinfo=UTC)


def add_user(session: Session, username: str, roles: list[str], email: str | None, person: str | None = None,
             digest: bool = False) -> ConsoleUser:
    user = ConsoleUser(site=SITE, username=username, display_name=username.title(), email=email, password_hash="x",
                       receives_digest=digest, person_external_id=person, roles=[UserRole(role=r) for r in roles])
    session.add(user)
    session.flush()
    return user


@pytest.fixture
def staffed(factory: sessionmaker[Session]) -> sessionmaker[Session]:
    with factory() as session:
        session.add_all([
            Person(site=SITE, external_id="S-HEAD", name="Mrs Head", role="staff"),
            Person(site=SITE, external_id="S-DSL", name="Ms Dee", role="staff"),
            Person(site=SITE, external_id="S-TA", name="Mr Tay", role="staff"),
            Person(site=SITE, external_id="P-1", name="Ada", role="pupil", year_group=6, groups="6B"),
        ])
        add_user(session, "tech", ["technician"], "tech@school.example")
        add_user(session, "tech2", ["technician"], None)  # no address: nothing to send to
        add_user(session, "head", ["headteacher"], "head@school.example", person="S-HEAD")
        add_user(session, "dsl", ["dsl"], "dsl@school.example", person="S-DSL", digest=True)
        session.commit()
    return factory


def run(config: AppConfig, factory: sessionmaker[Session], now: datetime = NOW) -> jobs.NotificationsOutcome:
    return jobs.notifications_job(config, factory, now, mailer=SmtpMailer(config.mail, timeout=10))


def test_a_report_from_a_device_without_an_account_reaches_the_technicians(
    staffed: sessionmaker[Session], make_config: Callable[..., AppConfig], mail_server: tuple[Any, int]
) -> None:
    inbox, port = mail_server
    config = make_config(port)
    with staffed() as session:
        submitted = reports.submit_public_report(
            session, site=SITE, now=NOW,
            form=reports.ReportForm(submitter_name="Mr Tay (TA, 6B)", urls="https://scary.example.org/video\n",
                                    nature="A frightening video came up in a search", accessed_by="a pupil in 6B"),
            filer=public_limits.Filer("KW-IPAD-12", "10.41.20.15", "pupil"), zone=ZoneInfo("Europe/London"),
        )
        session.commit()
    assert run(config, staffed).sent == 1
    ((recipients, message),) = inbox.received
    assert recipients == ["tech@school.example"]
    assert message["Subject"] == f"Inappropriate content reported at Test Primary: {submitted.reference}"
    text = message.get_body(("plain",)).get_content()
    assert "Mr Tay (TA, 6B) reported inappropriate content (1 address on scary.example.org)" in text
    assert "from the device KW-IPAD-12" in text
    assert f"https://console.school.example:8443/reports/{submitted.report.id}" in text
    assert "frightening" not in text and "a pupil in 6B" not in text  # the details stay in the console
    assert run(config, staffed).sent == 0  # once
    with staffed() as session:
        report = session.get(ContentReport, submitted.report.id)
        assert report is not None and report.technicians_notified_at == NOW


def test_a_request_for_pupils_waits_for_the_dsl_then_the_headteacher(
    staffed: sessionmaker[Session],
    make_config: Callable[..., AppConfig],
    mail_server: tuple[Any, int],
    policy_file: Any,
) -> None:
    from schoolgate.policy import load_policy

    policy = load_policy(policy_file)
    inbox, port = mail_server
    config = make_config(port)
    with staffed() as session:
        tech = Actor.from_user(session.query(ConsoleUser).filter_by(username="tech").one())
        dsl = Actor.from_user(session.query(ConsoleUser).filter_by(username="dsl").one())
        request_id = ar.submit_request(session, site=SITE, now=NOW, policy=policy, form=ar.RequestForm(
            requester="Ada (6B)", url="https://www.facebook.com/groups/eco", reasons="Eco club",
            device_id="IPAD-1", client_ip="10.0.0.1")).request.id
        ar.triage_request(session, site=SITE, now=NOW, actor=tech, request_id=request_id, policy=policy,
                          form=ar.TriageForm(technician_notes="Closed group", risks_and_controls="Supervised",
                                             target="domain", value="facebook.com", scope="group", subject="6B",
                                             starts=NOW, expires=NOW + timedelta(days=7)))
        session.commit()
    assert run(config, staffed).sent == 1
    ((recipients, message),) = inbox.received
    assert recipients == ["dsl@school.example"]
    assert message["Subject"].startswith("Safeguarding check needed: access request AR-")
    assert "Ada (6B) asks to use www.facebook.com; the ICT technician recommends opening the whole of facebook.com " \
           "for class 6B" in message.get_body(("plain",)).get_content()
    assert run(config, staffed).sent == 0
    with staffed() as session:
        ar.review_safeguarding(session, site=SITE, now=NOW, actor=dsl, request_id=request_id, notes="Closed group.")
        session.commit()
    assert run(config, staffed).sent == 1
    recipients, message = inbox.received[-1]
    assert recipients == ["head@school.example"]
    assert message["Subject"].startswith("Your decision: access request AR-")
    assert f"Decide from your phone: https://console.school.example:8443/requests/{request_id}" in (
        message.get_body(("plain",)).get_content())
    with staffed() as session:
        request = session.get(AccessRequest, request_id)
        assert request is not None and request.headteacher_notified_at == NOW


def concern(session: Session, person_id: str | None, severity: str = "low", title: str = "A concern") -> int:
    alert = Alert(site=SITE, kind="circumvention", rule_id="circumvention", severity=severity, status="new",
                  title=title, summary="Evidence", device_id="D1", person_id=person_id, client_ip="10.0.0.9",
                  first_seen=NOW, last_seen=NOW, created_at=NOW, updated_at=NOW)
    session.add(alert)
    session.flush()
    return alert.id


@pytest.mark.parametrize(
    ("person", "severity", "chair", "to"),
    [
        ("P-1", "high", "", ["deputy.dsl@school.example", "dsl@school.example"]),  # a pupil: the DSL
        ("P-1", "low", "", []),  # low for a pupil: the digest, as before
        (None, "high", "", ["deputy.dsl@school.example", "dsl@school.example"]),  # nobody known
        ("S-TA", "low", "", ["head@school.example"]),  # staff: the headteacher, whatever the severity
        ("S-DSL", "high", "", ["head@school.example"]),  # the DSL herself: the headteacher
        ("S-HEAD", "medium", "chair@governors.example", ["chair@governors.example"]),  # the head: the chair
        ("S-HEAD", "high", "", ["deputy.dsl@school.example", "dsl@school.example"]),  # no chair set: not the head
    ],
)
def test_concerns_go_where_the_policy_says_and_never_to_the_person_concerned(
    staffed: sessionmaker[Session], make_config: Callable[..., AppConfig], mail_server: tuple[Any, int],
    person: str | None, severity: str, chair: str, to: list[str],
) -> None:
    inbox, port = mail_server
    base = make_config(port)
    config = dataclasses.replace(base, mail=dataclasses.replace(base.mail, chair_of_governors=chair))
    with staffed() as session:
        concern(session, person, severity)
        session.commit()
    outcome = jobs.alerts_job(config, staffed, NOW, mailer=SmtpMailer(config.mail, timeout=10))
    assert outcome.mail_error is None
    assert [sorted(recipients) for recipients, _ in inbox.received] == ([sorted(to)] if to else [])


def test_the_dsls_digest_leaves_out_concerns_about_staff(staffed: sessionmaker[Session]) -> None:
    from schoolgate.services.digest import compose_digest

    with staffed() as session:
        concern(session, "S-DSL", title="Circumvention attempt from the DSL's laptop")
        concern(session, "P-1", title="Circumvention attempt from Ada's iPad")
        session.commit()
        content = compose_digest(session, site=SITE, site_name="Test Primary", now=NOW + timedelta(minutes=1), zone=UTC)
    assert [line.title for line in content.alerts] == ["Circumvention attempt from Ada's iPad"]
