"""When the scheduler runs the self-test: school mornings before the day, after a policy change, on request."""

from __future__ import annotations

import os
import time as clock_time
from collections.abc import Callable
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
