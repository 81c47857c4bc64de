"""The scheduler as a companion of `schoolgate run`'s event-writing process
(scheduler.runner.keep_scheduling): it reports in its own status row from that process, and
stops when the process asks, its jobs finished."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

from sqlalchemy.orm import Session, sessionmaker

from schoolgate.config import AppConfig
from schoolgate.scheduler import jobs
from schoolgate.scheduler.runner import keep_scheduling
from schoolgate.store.events import read_status

SITE = "testschool"
STARTING_S = 60.0  # generous: the scheduler's first heartbeat is written as it starts


def test_the_scheduler_in_a_thread_reports_as_itself_and_stops_when_asked(
    make_config: Callable[..., AppConfig], factory: sessionmaker[Session]
) -> None:
    stop = threading.Event()
    thread = threading.Thread(target=keep_scheduling, args=(make_config(), stop))
    thread.start()
    try:
        deadline = time.monotonic() + STARTING_S
        row = None
        while row is None and thread.is_alive() and time.monotonic() < deadline:
            with factory() as session:
                row = read_status(session, SITE).get(jobs.STATUS_NAME)
            stop.wait(0.05)
        assert row is not None, "no heartbeat from the scheduler"
        assert row["pid"] == os.getpid()  # the process it runs in: the supervisor restarts that
    finally:
        stop.set()
        thread.join(60)
    assert not thread.is_alive()
