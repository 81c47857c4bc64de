"""The policy's history and upkeep, as the scheduler keeps them: one history row and one audit
entry per changed version (with what changed and who installed it), and one e-mail to the
technicians per upkeep warning, received by a real SMTP server."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from schoolgate.config import AppConfig
from schoolgate.policy import load_policy
from schoolgate.scheduler import jobs
from schoolgate.scheduler.runner import SchedulerService, file_facts
from schoolgate.services import policy_history
from schoolgate.services.mailer import SmtpMailer
from schoolgate.store.audit import verify
from schoolgate.store.models import AuditEntry, ConsoleUser, PolicyVersion, UserRole

SITE = "testschool"
NOW = datetime(2026, 12, 6, 9, 41, tzinfo=UTC)


class FixedClock:
    def __init__(self, now: datetime) -> None:
        self.instant = now

    def now(self) -> datetime:
        return self.instant


def history(factory: sessionmaker[Session]) -> list[PolicyVersion]:
    with factory() as session:
        return list(session.scalars(select(PolicyVersion).order_by(PolicyVersion.id)))


def audit_entries(factory: sessionmaker[Session], action: str) -> list[AuditEntry]:
    with factory() as session:
        return list(session.scalars(select(AuditEntry).where(AuditEntry.action == action).order_by(AuditEntry.seq)))


def run(service: SchedulerService) -> jobs.PolicyOutcome:
    return service.run_policy()


def test_each_changed_version_is_recorded_once_with_what_changed(
    make_config: Callable[..., AppConfig], factory: sessionmaker[Session], policy_file: Path
) -> None:
    service = SchedulerService(make_config(), factory, FixedClock(NOW))
    first = run(service)
    assert first.recorded is not None
    assert run(service).recorded is None  # the same version: nothing to record
    (row,) = history(factory)
    assert row.summary == "The first version recorded on this appliance."
    owner = file_facts(policy_file)
    assert owner is not None and row.installed_by == f"the file on disk changed (owner: {owner.owner})"

    # The technician edits the file: a rule changes, one is added, the calendar grows a term.
    text = policy_file.read_text(encoding="utf-8")
    text = text.replace('reason = "social media sites are not accessible on the school\'s network"',
                        'reason = "social media is not for pupils"')
    summer = '  { name = "Summer 1", start = 2027-04-12, end = 2027-05-28 },\n]\n'
    text = text.replace("closures = [", summer + "closures = [")
    text = text.replace('  { name = "Spring 2", start = 2027-02-22, end = 2027-03-31 },\n]',
                        '  { name = "Spring 2", start = 2027-02-22, end = 2027-03-31 },')
    text += '\n[[rules]]\nid = "guests"\nclause = "c"\nreason = "r"\nroles = ["guest"]\naction = "block"\n'
    policy_file.write_text(text, encoding="utf-8")
    service.clock.instant = NOW.replace(hour=10)  # type: ignore[attr-defined]
    changed = run(service)
    assert changed.recorded is not None
    rows = history(factory)
    assert len(rows) == 2 and rows[1].fingerprint != rows[0].fingerprint
    summary = rows[1].summary
    assert "Rules added: guests." in summary and "Rule social-media changed: reason." in summary
    assert "Term dates changed (4 terms, the last ending 2027-05-28" in summary
    # The audit entry says the same, in the hash chain.
    loads = audit_entries(factory, policy_history.LOAD_ACTION)
    assert [e.object_id for e in loads] == [r.fingerprint for r in rows]
    detail = json.loads(loads[1].detail)
    assert detail["previous"] == rows[0].fingerprint and detail["installed_by"].startswith("the file on disk changed")
    assert detail["changes"]["rules"]["added"] == ["guests"]
    with factory() as session:
        assert verify(session, SITE).ok

    # A comment-only edit is a new version too (the file changed), with nothing to report.
    policy_file.write_text(text + "\n# reviewed by the head, no change\n", encoding="utf-8")
    run(service)
    assert history(factory)[-1].summary == "No setting changed (comments or layout only)."


def test_a_broken_edit_is_not_recorded(
    make_config: Callable[..., AppConfig], factory: sessionmaker[Session], policy_file: Path
) -> None:
    service = SchedulerService(make_config(), factory, FixedClock(NOW))
    run(service)
    policy_file.write_text(policy_file.read_text(encoding="utf-8") + "\n[[rules]]\nid = 'x'\n", encoding="utf-8")
    run(service)  # the last good version stays in force, and in the history
    assert len(history(factory)) == 1


def add_technician(factory: sessionmaker[Session], email: str | None = "ict@school.example") -> None:
    with factory() as session:
        session.add(ConsoleUser(site=SITE, username=f"tech-{email}", display_name="ICT", email=email,
                                password_hash="x", roles=[UserRole(role="technician")]))
        session.add(ConsoleUser(site=SITE, username="dsl", display_name="DSL", email="dsl@school.example",
                                password_hash="x", roles=[UserRole(role="dsl")]))
        session.commit()


@pytest.mark.parametrize(
    ("now", "subject_words"),
    [
        # The test policy's last term ends on Wednesday 31 March 2027: 30 days before, a warning.
        (datetime(2027, 3, 1, 8, 0, tzinfo=UTC), "run out on Wednesday 31 March 2027 (in 30 days)"),
        (datetime(2027, 4, 6, 8, 0, tzinfo=UTC), "ended on Wednesday 31 March 2027"),
    ],
)
def test_the_technicians_are_emailed_once_per_warning(
    make_config: Callable[..., AppConfig],
    factory: sessionmaker[Session],
    mail_server: tuple[object, int],
    now: datetime,
    subject_words: str,
) -> None:
    inbox, port = mail_server
    config = make_config(port)
    add_technician(factory)
    policy = load_policy(config.policy)
    mailer = SmtpMailer(config.mail)
    before = jobs.policy_job(config, factory, datetime(2027, 2, 27, 8, tzinfo=UTC), policy=policy, facts=None,
                             mailer=mailer)
    assert before.notified == []
    first = jobs.policy_job(config, factory, now, policy=policy, facts=None, mailer=mailer)
    again = jobs.policy_job(config, factory, now, policy=policy, facts=None, mailer=mailer)
    assert len(first.notified) >= 1 and again.notified == []
    received = inbox.received  # type: ignore[attr-defined]
    calendar = [(to, m) for to, m in received if subject_words in m.get_body(("plain",)).get_content()]
    assert len(calendar) == 1
    recipients, message = calendar[0]
    assert recipients == ["ict@school.example"]  # the technicians, not the DSL
    assert message["Subject"] == "Test Primary: the filtering policy needs attention"
    assert "https://console.school.example:8443/policy" in message.get_body(("plain",)).get_content()
    notices = audit_entries(factory, policy_history.UPKEEP_ACTION)
    assert next(n.object_id for n in notices).startswith("calendar:2027-03-31")


def test_no_technician_email_means_no_notice_yet(
    make_config: Callable[..., AppConfig], factory: sessionmaker[Session], mail_server: tuple[object, int]
) -> None:
    """Nobody to tell is not "told": the notice goes out once a technician has an address."""
    inbox, port = mail_server
    config = make_config(port)
    policy = load_policy(config.policy)
    now = datetime(2027, 4, 6, 8, tzinfo=UTC)
    nobody = jobs.policy_job(config, factory, now, policy=policy, facts=None, mailer=SmtpMailer(config.mail))
    assert nobody.notified == []
    add_technician(factory)
    sent = jobs.policy_job(config, factory, now, policy=policy, facts=None, mailer=SmtpMailer(config.mail))
    assert sent.notified and inbox.received  # type: ignore[attr-defined]
