"""The headteacher hears of a lapsed authorisation by e-mail through a real SMTP server, once, and on
her dashboard (schoolgate.services.notices through schoolgate.services.notifications)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage

from sqlalchemy.orm import Session, sessionmaker

from schoolgate.config import AppConfig
from schoolgate.scheduler import jobs
from schoolgate.services import notices, register
from schoolgate.services.actor import Actor
from schoolgate.services.mailer import MailError, SmtpMailer
from schoolgate.store.models import ConsoleUser, UserRole

NOW = datetime(2026, 10, 6, 9, 0, tzinfo=UTC)


def _people(session: Session, site: str) -> tuple[Actor, Actor]:
    made = []
    for username, role, email in (("tech", "technician", "tech@school.example"),
                                  ("head", "headteacher", "head@school.example"),
                                  ("oldhead", "headteacher", None)):
        user = ConsoleUser(site=site, username=username, display_name=username.title(), email=email,
                           password_hash="x", roles=[UserRole(role=role)])
        session.add(user)
        session.flush()
        made.append(Actor.from_user(user))
    return made[0], made[1]


def _move_an_authorised_device(factory: sessionmaker[Session], site: str) -> None:
    with factory() as session:
        technician, headteacher = _people(session, site)
        device = register.create_device(session, site=site, now=NOW, actor=technician, form=register.DeviceForm(
            device_id="MKT-LAPTOP", name="Marketing laptop", mac="02:00:00:00:00:01"))
        register.set_device_authorised(session, site=site, now=NOW, actor=headteacher, device_pk=device.id,
                                       authorised=True, reason="The school's social media laptop")
        register.update_device(session, site=site, now=NOW, actor=technician, device_pk=device.id,
                               form=register.DeviceForm(device_id="MKT-LAPTOP", name="Marketing laptop",
                                                        mac="02:00:00:00:00:99", role="authorised"))
        session.commit()


def test_a_lapsed_authorisation_is_mailed_to_the_headteacher_once(
    mail_server: tuple[object, int], make_config: Callable[..., AppConfig], factory: sessionmaker[Session]
) -> None:
    inbox, port = mail_server
    config = make_config(port)
    _move_an_authorised_device(factory, config.site.id)
    mailer = SmtpMailer(config.mail)
    first = jobs.notifications_job(config, factory, NOW + timedelta(seconds=30), mailer=mailer)
    assert first.sent == 1 and first.mail_error is None
    (received,) = inbox.received  # type: ignore[attr-defined]
    recipients, message = received
    assert recipients == ["head@school.example"]  # not the technician who moved it
    assert "authorisation has lapsed" in message["Subject"]
    body = message.get_body(("plain",)).get_content()
    assert "tech changed device MKT-LAPTOP" in body and "02:00:00:00:00:01 -> 02:00:00:00:00:99" in body
    again = jobs.notifications_job(config, factory, NOW + timedelta(seconds=60), mailer=mailer)
    assert again.sent == 0 and len(inbox.received) == 1  # type: ignore[attr-defined]
    with factory() as session:
        shown = notices.recent(session, config.site.id, NOW + timedelta(days=1),
                               Actor("head", "Head", frozenset({"headteacher"})).permissions or frozenset())
        hidden = notices.recent(session, config.site.id, NOW + timedelta(days=1),
                                Actor("tech", "Tech", frozenset({"technician"})).permissions or frozenset())
    assert [n.kind for n in shown] == [register.AUTHORISATION_LAPSED] and hidden == []


def test_a_notice_that_could_not_be_sent_is_sent_on_the_next_run(
    mail_server: tuple[object, int], make_config: Callable[..., AppConfig], factory: sessionmaker[Session]
) -> None:
    inbox, port = mail_server
    config = make_config(port)
    _move_an_authorised_device(factory, config.site.id)

    class Down:
        def send(self, message: EmailMessage) -> None:
            raise MailError("connection refused")

    failed = jobs.notifications_job(config, factory, NOW, mailer=Down())
    assert failed.sent == 0 and failed.mail_error == "connection refused"
    retried = jobs.notifications_job(config, factory, NOW + timedelta(seconds=30), mailer=SmtpMailer(config.mail))
    assert retried.sent == 1 and len(inbox.received) == 1  # type: ignore[attr-defined]


def test_a_changed_address_is_mailed_to_the_old_address_and_the_new(
    mail_server: tuple[object, int], make_config: Callable[..., AppConfig], factory: sessionmaker[Session]
) -> None:
    from schoolgate.console.accounts import audit_user

    inbox, port = mail_server
    config = make_config(port)
    with factory() as session:
        _people(session, config.site.id)
        user = session.query(ConsoleUser).filter_by(username="tech").one()
        user.email = "tech.new@school.example"
        audit_user(session, site=config.site.id, actor="admin", action=notices.ADDRESS_CHANGED, user=user,
                   detail={"username": "tech", "email_before": "tech@school.example", "email": user.email}, now=NOW)
        session.commit()
    sent = jobs.notifications_job(config, factory, NOW + timedelta(seconds=30), mailer=SmtpMailer(config.mail))
    assert sent.sent == 1 and sent.mail_error is None
    ((recipients, message),) = inbox.received  # type: ignore[attr-defined]
    assert recipients == ["tech.new@school.example", "tech@school.example"]  # not the headteacher
    assert "e-mail address was changed" in message["Subject"]
    assert "from tech@school.example to tech.new@school.example" in message.get_body(("plain",)).get_content()
