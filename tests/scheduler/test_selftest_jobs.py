"""When the scheduler runs the self-test: school mornings before the day, after a policy change, on request."""

from __future__ import annotations

import os
import time as clock_time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, time
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from schoolgate.config import AppConfig
from schoolgate.policy import load_policy
from schoolgate.scheduler import jobs
from schoolgate.scheduler.runner import SchedulerService, selftest_time, selftest_trigger

REPO = Path(__file__).resolve().parents[2]


class Clock:
    def __init__(self, now: datetime) -> None:
        self.instant = now

    def now(self) -> datetime:
        return self.instant


def test_the_morning_selftest_is_half_an_hour_before_the_school_day() -> None:
    policy = load_policy(REPO / "deploy" / "policy.example.toml")
    assert selftest_time(policy, "") == time(8, 15)  # school_hours from 08:45 on staff days
    assert selftest_time(policy, "07:40") == time(7, 40)
    assert selftest_time(None, "") == time(7, 0)
    with pytest.raises(ValueError, match="morning_time"):
        selftest_time(policy, "early")


@pytest.mark.parametrize(
    ("after", "expected"),
    [
        # The school's time (the policy's zone) across the clock changes: 08:15 BST = 07:15 UTC,
        # 08:15 GMT = 08:15 UTC.
        (datetime(2026, 10, 23, 8, 0, tzinfo=UTC), datetime(2026, 10, 26, 8, 15, tzinfo=UTC)),
        (datetime(2027, 3, 26, 9, 0, tzinfo=UTC), datetime(2027, 3, 29, 7, 15, tzinfo=UTC)),
    ],
)
def test_the_trigger_is_in_the_schools_time(after: datetime, expected: datetime) -> None:
    zone = jobs.school_zone(load_policy(REPO / "deploy" / "policy.example.toml"))
    assert selftest_trigger(time(8, 15), zone).get_next_fire_time(None, after) == expected


def test_no_morning_selftest_in_the_holidays(
    make_config: Callable[..., AppConfig], factory: sessionmaker[Session]
) -> None:
    service = SchedulerService(make_config(), factory, Clock(datetime(2026, 10, 28, 7, 0, tzinfo=UTC)))
    assert service.run_morning_selftest() is None  # half term


def test_a_policy_change_or_a_request_makes_the_next_round_run_it(
    make_config: Callable[..., AppConfig], factory: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    from schoolgate.services.common import advance_mark

    config = make_config()
    service = SchedulerService(config, factory, Clock(datetime(2026, 10, 6, 7, 0, tzinfo=UTC)))
    runs: list[str] = []
    monkeypatch.setattr(service, "run_selftest", lambda trigger="on_request": runs.append(trigger))
    assert service.watch_for_selftest() is None and runs == []  # the first round only learns the state
    assert service.watch_for_selftest() is None and runs == []
    text = config.policy.read_text() + "\n# a technician's edit\n"
    config.policy.write_text(text)
    stamp = clock_time.time() + 5
    os.utime(config.policy, (stamp, stamp))
    service.watch_for_selftest()
    assert runs == []  # the daemons reload first
    service.watch_for_selftest()
    assert runs == ["policy_change"]
    with factory() as session:
        advance_mark(session, config.site.id, "selftest_requested", datetime(2026, 10, 6, 7, 1, tzinfo=UTC))
        session.commit()
    service.watch_for_selftest()
    assert runs == ["policy_change", "on_request"]
    service.watch_for_selftest()
    assert runs == ["policy_change", "on_request"]


def test_a_database_held_by_a_hung_writer_does_not_stop_the_selftest_or_its_mail(
    make_config: Callable[..., AppConfig], db_path: Path, factory: sessionmaker[Session],
    mail_server: tuple[object, int],
) -> None:
    """Another process holds SQLite's write lock for the whole run (an event writer stuck in a
    transaction): the self-test still reads its policy and register, runs its checks and mails
    the technician, and the report says that the run could not be recorded, and why."""
    import sqlite3

    from schoolgate.config import DnsConfig
    from schoolgate.selftest.run import run_selftest
    from schoolgate.services.mailer import SmtpMailer
    from schoolgate.store.db import make_engine, session_factory
    from schoolgate.store.models import ConsoleUser, UserRole

    inbox, port = mail_server
    with factory() as session:
        session.add(ConsoleUser(site="testschool", username="tech", display_name="Tech", email="tech@school.example",
                                password_hash="x", roles=[UserRole(role="technician")]))
        session.commit()
    config = make_config(port)
    config = replace(config, dns=DnsConfig(upstreams=[f"127.0.0.1:{closed_udp_port()}"]))
    engine = make_engine(f"sqlite:///{db_path}", busy_timeout_ms=300)
    holder = sqlite3.connect(db_path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # the write lock, held until the end of the test
    try:
        report = run_selftest(config, session_factory(engine), datetime(2026, 10, 6, 7, 0, tzinfo=UTC),
                              trigger="morning", clock_source=Clock(datetime(2026, 10, 6, 7, 0, tzinfo=UTC)),
                              mailer=SmtpMailer(config.mail), vantages=[])
    finally:
        holder.rollback()
        holder.close()
        engine.dispose()
    logged = [r for r in report.failures if r.check == "log"]
    assert [(r.subject, r.message) for r in logged] == [
        ("check log", "this run could not be recorded: database is locked")]
    assert report.check_id is None and report.notified == ["tech@school.example"]
    assert {r.check for r in report.results} >= {"upstream", "clock", "daemon"}  # the checks ran, the heartbeats read
    ((recipients, message),) = inbox.wait(1, timeout=10)  # type: ignore[attr-defined]
    assert recipients == ["tech@school.example"]
    assert "this run could not be recorded: database is locked" in inbox.text(message)  # type: ignore[attr-defined]
    with factory() as session:  # and nothing is half-written
        from schoolgate.services import checklog

        assert checklog.last_selftest(session, "testschool") is None


def closed_udp_port() -> int:
    """A loopback UDP port nobody listens on (the upstream check is refused at once)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
