"""The coverage job: a device found not filtered is e-mailed to the technician once."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy.orm import Session, sessionmaker

from schoolgate.config import AppConfig
from schoolgate.gateway.census import Census, Forwarding
from schoolgate.policy import load_policy
from schoolgate.scheduler import jobs
from schoolgate.services import coverage
from schoolgate.services.mailer import SmtpMailer
from schoolgate.store.models import ConsoleUser, UserRole

T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)


def test_a_device_that_bypasses_dns_is_mailed_to_the_technician_once(
    mail_server: tuple[object, int], make_config: Callable[..., AppConfig], factory: sessionmaker[Session]
) -> None:
    inbox, port = mail_server
    config = make_config(port)
    now = T0 + timedelta(hours=3)
    with factory() as session:
        for username, role in (("tech", "technician"), ("dsl", "dsl")):
            session.add(ConsoleUser(site=config.site.id, username=username, display_name=username,
                                    email=f"{username}@school.example", password_hash="x",
                                    roles=[UserRole(role=role)]))
        coverage.record_census(session, config.site.id, Census(
            at=now, forwarding=[Forwarding("127.0.9.9", "02:00:00:00:09:09", 12, now)],
            neighbours={"127.0.9.9": "02:00:00:00:09:09"}, vpn=[]))
        coverage.record_census(session, config.site.id, Census(
            at=T0, forwarding=[Forwarding("127.0.9.9", "02:00:00:00:09:09", 1, T0)], neighbours={}, vpn=[]))
        session.commit()
    mailer = SmtpMailer(config.mail)
    policy = load_policy(config.policy)
    first = jobs.coverage_job(config, factory, now, mailer=mailer, policy=policy)
    assert first.not_filtered == ["127.0.9.9"] and first.notified == ["tech@school.example"]
    ((recipients, message),) = inbox.wait(1, timeout=10)  # type: ignore[attr-defined]
    assert recipients == ["tech@school.example"]
    assert message["Subject"] == "schoolgate: 1 device(s) at Test Primary are not filtered"
    text = inbox.text(message)  # type: ignore[attr-defined]
    assert "127.0.9.9 (02:00:00:00:09:09)" in text and "never asked schoolgate's DNS" in text
    assert "https://console.school.example:8443/coverage" in text
    again = jobs.coverage_job(config, factory, now + timedelta(minutes=1), mailer=mailer, policy=policy)
    assert again.not_filtered == [] and len(inbox.received) == 1  # type: ignore[attr-defined]
