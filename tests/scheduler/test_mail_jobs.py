"""The digest and immediate alerts, received by a real SMTP server, at the right London time."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from schoolgate.config import AppConfig
from schoolgate.policy import load_policy
from schoolgate.scheduler import jobs
from schoolgate.scheduler.runner import SchedulerService, digest_trigger
from schoolgate.services import public_limits, reports
from schoolgate.services.mailer import SmtpMailer
from schoolgate.store.models import AccessEvent, AccessRequest, Alert, ConsoleUser, UserRole

SITE = "testschool"
LONDON = ZoneInfo("Europe/London")
HOSTILE_HOST = '"><img src=x onerror=alert(1)>.evil.example'
HOSTILE_NAME = "<script>alert('pwned')</script>"


class FixedClock:
    def __init__(self, now: datetime) -> None:
        self.instant = now

    def now(self) -> datetime:
        return self.instant


@pytest.mark.parametrize(
    ("after", "expected_utc"),
    [
        # Autumn: BST until Sunday 2026-10-25 02:00, GMT after.
        (datetime(2026, 10, 22, 8, 0, tzinfo=UTC), datetime(2026, 10, 23, 6, 30, tzinfo=UTC)),  # Fri, BST
        (datetime(2026, 10, 23, 6, 31, tzinfo=UTC), datetime(2026, 10, 26, 7, 30, tzinfo=UTC)),  # Mon, GMT
        (datetime(2026, 10, 24, 12, 0, tzinfo=UTC), datetime(2026, 10, 26, 7, 30, tzinfo=UTC)),
        # Spring: GMT until Sunday 2027-03-28 01:00, BST after.
        (datetime(2027, 3, 25, 8, 0, tzinfo=UTC), datetime(2027, 3, 26, 7, 30, tzinfo=UTC)),  # Fri, GMT
        (datetime(2027, 3, 26, 7, 31, tzinfo=UTC), datetime(2027, 3, 29, 6, 30, tzinfo=UTC)),  # Mon, BST
        (datetime(2027, 3, 28, 0, 59, tzinfo=UTC), datetime(2027, 3, 29, 6, 30, tzinfo=UTC)),
    ],
)
def test_digest_fires_at_0730_london_across_clock_changes(after: datetime, expected_utc: datetime) -> None:
    fire = digest_trigger("07:30", LONDON).get_next_fire_time(None, after)
    assert fire is not None
    assert fire == expected_utc
    local = fire.astimezone(LONDON)
    assert (local.hour, local.minute) == (7, 30)


def test_the_scheduler_registers_the_digest_trigger(
    make_config: Callable[..., AppConfig], factory: sessionmaker[Session]
) -> None:
    service = SchedulerService(make_config(), factory, FixedClock(datetime(2026, 10, 23, 6, 0, tzinfo=UTC)))
    job = service.scheduler.get_job("digest")
    assert job is not None
    assert job.trigger.get_next_fire_time(None, datetime(2026, 10, 23, 6, 31, tzinfo=UTC)) == datetime(
        2026, 10, 26, 7, 30, tzinfo=UTC
    )
    assert {j.id for j in service.scheduler.get_jobs()} == {
        "alerts",
        "notify",
        "rollups",
        "expiry",
        "heartbeat",
        "digest",
        "retention",
        "lists",
        "policy",
        "selftest",
        "selftest-watch",
        "coverage",
    }
    with pytest.raises(ValueError, match="digest_time"):
        digest_trigger("half past seven", LONDON)



@pytest.mark.parametrize(
    ("job_id", "grace"),
    [("alerts", 60), ("digest", 7200), ("lists", 12 * 3600), ("retention", 6 * 3600), ("coverage", 120),
     ("selftest", 3600), ("selftest-watch", 60)],
)
def test_each_job_runs_alone_and_late_runs_start_within_its_grace(
    make_config: Callable[..., AppConfig], factory: sessionmaker[Session], job_id: str, grace: int
) -> None:
    """A digest or list update missed while the appliance rebooted still runs, once; a run
    never overlaps the one before it."""
    service = SchedulerService(make_config(), factory, FixedClock(datetime(2026, 10, 23, 6, 0, tzinfo=UTC)))
    job = service.scheduler.get_job(job_id)
    assert job is not None
    assert (job.misfire_grace_time, job.coalesce, job.max_instances) == (grace, True, 1)



def test_the_digest_fires_in_the_policys_time_zone(
    make_config: Callable[..., AppConfig], factory: sessionmaker[Session], policy_file: Path
) -> None:
    """The one time zone source is the policy's `[school] timezone`: a school abroad gets its
    digest at 07:30 on its own clock, not London's."""
    policy_file.write_text(policy_file.read_text().replace('timezone = "Europe/London"', 'timezone = "Europe/Berlin"'))
    service = SchedulerService(make_config(), factory, FixedClock(datetime(2026, 10, 23, 6, 0, tzinfo=UTC)))
    job = service.scheduler.get_job("digest")
    assert job is not None
    # Friday 23 October 2026, 05:00 UTC is 07:00 in Berlin (CEST, UTC+2): the digest is due at 05:30 UTC.
    fire = job.trigger.get_next_fire_time(None, datetime(2026, 10, 23, 5, 0, tzinfo=UTC))
    assert fire == datetime(2026, 10, 23, 5, 30, tzinfo=UTC)


def seed(session: Session) -> dict[str, int]:
    dsl = ConsoleUser(
        site=SITE,
        username="dsl",
        display_name="Ms D Shah",
        email="dsl@school.example",
        password_hash="x",
        receives_digest=True,
        roles=[UserRole(role="dsl")],
    )
    deputy_off = ConsoleUser(
        site=SITE,
        username="dep",
        display_name="Mr Off",
        email="off@school.example",
        password_hash="x",
        receives_digest=False,
        roles=[UserRole(role="dsl")],
    )
    tech = ConsoleUser(
        site=SITE,
        username="tech",
        display_name="Tech",
        email="tech@school.example",
        password_hash="x",
        receives_digest=True,
        roles=[UserRole(role="technician")],
    )
    session.add_all([dsl, deputy_off, tech])
    t = datetime(2026, 10, 22, 13, 0, tzinfo=UTC)
    high = Alert(
        site=SITE,
        kind="circumvention",
        rule_id="circumvention",
        severity="high",
        status="new",
        title=f"Circumvention attempt from {HOSTILE_NAME}",
        summary=f"vpn: {HOSTILE_HOST}",
        device_id="IPAD-5",
        first_seen=t,
        last_seen=t,
        trigger_count=3,
        created_at=t,
    )
    low = Alert(
        site=SITE,
        kind="out_of_hours",
        rule_id="out_of_hours",
        severity="low",
        status="in_review",
        title="Out-of-hours activity from iPad 9",
        summary="x",
        device_id="IPAD-9",
        first_seen=t,
        last_seen=t,
        trigger_count=1,
        created_at=t,
    )
    session.add_all([high, low])
    events = [
        AccessEvent(
            site=SITE,
            ts=t + timedelta(minutes=i),
            source="dns",
            client_ip="10.0.0.5",
            device_id="IPAD-5",
            device_name=HOSTILE_NAME,
            role="pupil",
            host=HOSTILE_HOST,
            verdict="block",
            rule_id="r",
            service=None,
            flags="circumvention" if i < 2 else "",
            category="circumvention" if i < 2 else None,
            count=1,
        )
        for i in range(4)
    ]
    events.append(
        AccessEvent(
            site=SITE,
            ts=t,
            source="dns",
            client_ip="10.0.0.6",
            device_id="IPAD-6",
            role="pupil",
            host="www.facebook.com",
            verdict="block",
            rule_id="social-media",
            service="facebook",
            flags="",
            count=1,
        )
    )
    session.add_all(events)
    request = AccessRequest(
        site=SITE,
        status="forwarded",
        requester="Amira & <b>friends</b>",
        request_date=t.date(),
        url="https://www.bbc.co.uk/bitesize",
        host="www.bbc.co.uk",
        triaged_at=t,
    )
    session.add(request)
    session.commit()
    return {"high": high.id, "low": low.id, "request": request.id}


def parts(message: EmailMessage) -> tuple[str, str]:
    text = message.get_body(preferencelist=("plain",))
    html = message.get_body(preferencelist=("html",))
    assert text is not None and html is not None
    return text.get_content(), html.get_content()


def test_digest_is_received_with_escaped_content(
    mail_server: tuple[object, int], make_config: Callable[..., AppConfig], factory: sessionmaker[Session]
) -> None:
    inbox, port = mail_server
    config = make_config(port)
    with factory() as session:
        ids = seed(session)
    policy = load_policy(config.policy)
    mailer = SmtpMailer(config.mail)
    # Friday 23 October 2026, 07:30 BST = 06:30 UTC: a school day.
    now = datetime(2026, 10, 23, 6, 30, tzinfo=UTC)
    outcome = jobs.digest_job(config, factory, now, mailer=mailer, policy=policy)
    assert outcome == jobs.DigestOutcome(True, "sent")
    (received,) = inbox.received  # type: ignore[attr-defined]
    recipients, message = received
    assert sorted(recipients) == ["deputy.dsl@school.example", "dsl@school.example"]
    assert message["From"] == "schoolgate@school.example"
    assert message["Subject"] == "schoolgate daily summary for Test Primary: Friday 23 October 2026"
    text, html = parts(message)
    base = "https://console.school.example:8443"
    assert "Open alerts: 2 (critical 0, high 1, medium 0, low 1)" in text
    assert f"{base}/alerts/{ids['high']}" in text and f"{base}/requests/{ids['request']}" in text
    assert "Access requests awaiting the headteacher: 1" in text
    assert "Circumvention attempts:" in text and "2 attempt(s)" in text
    assert "facebook" in text
    # The HTML echoes attacker-controlled text only escaped.
    assert "<script" not in html and "<img" not in html and "<b>friends" not in html
    assert "&lt;script&gt;alert(&#39;pwned&#39;)&lt;/script&gt;" in html
    assert "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;.evil.example" in html
    assert "Amira &amp; &lt;b&gt;friends&lt;/b&gt;" in html
    assert f'<a href="{base}/alerts/{ids["high"]}">' in html

    # Once a day: a second run the same morning sends nothing.
    again = jobs.digest_job(config, factory, now + timedelta(minutes=5), mailer=mailer, policy=policy)
    assert again.sent is False and "already" in again.reason
    assert len(inbox.received) == 1  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("now", "sent", "reason"),
    [
        (datetime(2026, 10, 26, 7, 30, tzinfo=UTC), False, "not a school day"),  # half term, GMT
        (datetime(2026, 10, 24, 6, 30, tzinfo=UTC), False, "not a school day"),  # Saturday
        (datetime(2026, 11, 2, 7, 30, tzinfo=UTC), False, "not a school day"),  # INSET day
        (datetime(2026, 11, 3, 7, 30, tzinfo=UTC), True, "sent"),  # first day back, GMT
        (datetime(2027, 3, 29, 6, 30, tzinfo=UTC), True, "sent"),  # after the spring change, BST
    ],
)
def test_digest_only_on_school_days(
    mail_server: tuple[object, int],
    make_config: Callable[..., AppConfig],
    factory: sessionmaker[Session],
    now: datetime,
    sent: bool,
    reason: str,
) -> None:
    inbox, port = mail_server
    config = make_config(port)
    with factory() as session:
        seed(session)
    outcome = jobs.digest_job(config, factory, now, mailer=SmtpMailer(config.mail), policy=load_policy(config.policy))
    assert (outcome.sent, outcome.reason.endswith(reason)) == (sent, True)
    assert len(inbox.received) == (1 if sent else 0)  # type: ignore[attr-defined]
    if sent:
        _, message = inbox.received[0]  # type: ignore[attr-defined]
        local_day = now.astimezone(LONDON)
        # "Tuesday 3 November 2026", in words as every time schoolgate shows a person
        assert message["Subject"].endswith(f"{local_day:%A} {local_day.day} {local_day:%B %Y}")


def test_scheduler_runs_the_digest_with_its_clock(
    mail_server: tuple[object, int], make_config: Callable[..., AppConfig], factory: sessionmaker[Session]
) -> None:
    inbox, port = mail_server
    config = make_config(port)
    with factory() as session:
        seed(session)
    clock = FixedClock(datetime(2027, 3, 29, 6, 30, tzinfo=UTC))
    service = SchedulerService(config, factory, clock)
    assert service.run_digest().sent
    assert len(inbox.received) == 1  # type: ignore[attr-defined]


def test_immediate_alerts_are_sent_once(
    mail_server: tuple[object, int], make_config: Callable[..., AppConfig], factory: sessionmaker[Session]
) -> None:
    inbox, port = mail_server
    config = make_config(port)
    with factory() as session:
        ids = seed(session)
    now = datetime(2026, 10, 22, 13, 5, tzinfo=UTC)
    mailer = SmtpMailer(config.mail)
    first = jobs.alerts_job(config, factory, now, mailer=mailer)
    assert first.notified == [ids["high"]] and first.mail_error is None
    (received,) = inbox.received  # type: ignore[attr-defined]
    recipients, message = received
    assert sorted(recipients) == ["deputy.dsl@school.example", "dsl@school.example"]
    assert message["Subject"] == f"schoolgate high alert at Test Primary (case {ids['high']})"
    text, html = parts(message)
    assert f"https://console.school.example:8443/alerts/{ids['high']}" in text
    assert "<script" not in html and "<img" not in html
    # The scan of the seeded events raised a new high case (circumvention on IPAD-5 folds into
    # the seeded one); nothing is sent twice.
    second = jobs.alerts_job(config, factory, now + timedelta(seconds=30), mailer=mailer)
    assert second.notified == []
    assert len(inbox.received) == 1  # type: ignore[attr-defined]
    with factory() as session:
        alert = session.get(Alert, ids["high"])
        assert alert is not None and alert.notified_at == now
        assert alert.trigger_count == 3 + 2  # two flagged events folded into the open case
        low = session.get(Alert, ids["low"])
        assert low is not None and low.notified_at is None


def test_failed_send_is_retried(
    mail_server: tuple[object, int], make_config: Callable[..., AppConfig], factory: sessionmaker[Session]
) -> None:
    from schoolgate.services.mailer import MailError

    inbox, port = mail_server
    config = make_config(port)
    with factory() as session:
        ids = seed(session)
    now = datetime(2026, 10, 22, 13, 5, tzinfo=UTC)

    class Down:
        def send(self, message: EmailMessage) -> None:
            raise MailError("connection refused")

    failed = jobs.alerts_job(config, factory, now, mailer=Down())
    assert failed.notified == [] and failed.mail_error == "connection refused"
    with factory() as session:
        assert session.scalar(select(Alert.notified_at).where(Alert.id == ids["high"])) is None
    retried = jobs.alerts_job(config, factory, now + timedelta(seconds=30), mailer=SmtpMailer(config.mail))
    assert retried.notified == [ids["high"]]
    assert len(inbox.received) == 1  # type: ignore[attr-defined]


class WritesWhileSending:
    """A mail server that answers only after another writer has used the database: the
    DNS and proxy event writers must never wait on a job that is talking to the mail server."""

    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path
        self.sent: list[EmailMessage] = []

    def send(self, message: EmailMessage) -> None:
        other = sqlite3.connect(self.db_path, timeout=0.2, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")  # "database is locked" if the job holds the lock
            other.execute("ROLLBACK")
        finally:
            other.close()
        self.sent.append(message)


@pytest.mark.parametrize("job", ["alerts", "digest", "notifications"])
def test_no_database_lock_is_held_while_mail_is_sent(
    make_config: Callable[..., AppConfig], factory: sessionmaker[Session], db_path: Path, job: str
) -> None:
    config = make_config(2525)  # any port: the mailer here is the fake one
    with factory() as session:
        ids = seed(session)
    mailer = WritesWhileSending(db_path)
    if job == "alerts":
        outcome = jobs.alerts_job(config, factory, datetime(2026, 10, 22, 13, 5, tzinfo=UTC), mailer=mailer)
        assert outcome.mail_error is None and outcome.notified == [ids["high"]]
        again = jobs.alerts_job(config, factory, datetime(2026, 10, 22, 13, 6, tzinfo=UTC), mailer=mailer)
        assert again.notified == []  # marked after sending, once
    elif job == "digest":
        now = datetime(2026, 10, 23, 6, 30, tzinfo=UTC)
        policy = load_policy(config.policy)
        assert jobs.digest_job(config, factory, now, mailer=mailer, policy=policy).sent
        assert not jobs.digest_job(config, factory, now + timedelta(minutes=5), mailer=mailer, policy=policy).sent
    else:
        # Two reports for the technicians: the lock must be free for the second send as for the first.
        now = datetime(2026, 10, 22, 13, 5, tzinfo=UTC)
        with factory() as session:
            for number in (1, 2):
                reports.submit_public_report(
                    session, site=SITE, now=now,
                    form=reports.ReportForm(submitter_name=f"Teacher {number}", urls=f"https://bad{number}.example/\n",
                                            nature="Upsetting pictures", accessed_by="a pupil"),
                    filer=public_limits.Filer(f"IPAD-{number}", f"10.0.0.{number}", "pupil"), zone=LONDON,
                )
            session.commit()
        outcome = jobs.notifications_job(config, factory, now, mailer=mailer)
        assert outcome.mail_error is None and outcome.sent == 2
        assert jobs.notifications_job(config, factory, now, mailer=mailer).sent == 0  # marked after sending, once
        assert len(mailer.sent) == 2
        return
    assert len(mailer.sent) == 1
