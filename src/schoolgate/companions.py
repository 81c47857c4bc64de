"""A daemon run as a companion: a thread of a process that does other work, until told to stop.

`schoolgate run` runs net watch and the scheduler in its event-writing process (see
schoolgate.runner.writing_companions) rather than each in a Python process of its own: on the
idle appliance each such process costs 20-25 MB, mostly pages it copies from the supervisor by
running shared code. A companion that fails must not end that process, which would stop the
writing of the DNS daemon's and the proxy's events with it, over and over while the cause
lasts: `keep_running` starts it again after a back-off, and its status row says why meanwhile.
Under systemd each of these daemons is a process of its own, and its unit restarts it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger(__name__)

# The pauses before a failed companion is started again, by failures in a row: what it needs
# (the kernel's NFLOG group, the database, the mail relay) may come up later than it.
RETRY_S = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
STABLE_AFTER_S = 60.0  # a companion that ran this long before failing starts the back-off afresh


def keep_running(
    name: str,
    status_name: str,
    config: Any,
    work: Callable[[threading.Event], None],
    stop: threading.Event,
    *,
    retry_s: Sequence[float] = RETRY_S,
    stable_after_s: float = STABLE_AFTER_S,
) -> None:
    """Run `work(stop)` until it returns or `stop` is set; when it raises, write the failure
    into its `status_name` row of `config`'s database and start it again after a back-off."""
    from schoolgate.store.events.status import FAILING

    failures = 0
    while not stop.is_set():
        started = time.monotonic()
        try:
            work(stop)
            return
        except Exception as err:
            failures = 1 if time.monotonic() - started >= stable_after_s else failures + 1
            pause = retry_s[min(failures, len(retry_s)) - 1]
            log.error("%s failed (%s); starting it again in %g s", name, err, pause)
            failed = {FAILING: f"{type(err).__name__}: {err}", "failures_in_a_row": failures, "retry_in_s": pause}
            try:
                write_failing_status(config, status_name, failed)
            except Exception as status_err:  # the database may be what failed
                log.warning("%s's status row not written: %s", name, status_err)
            stop.wait(pause)


def write_failing_status(config: Any, status_name: str, stats: dict[str, Any]) -> None:
    from schoolgate.store.db import make_engine, session_factory
    from schoolgate.store.events import write_status

    engine = make_engine(config.database_url)
    try:
        with session_factory(engine)() as session, session.begin():
            write_status(session, config.site.id, status_name, os.getpid(), datetime.now(UTC), stats)
    finally:
        engine.dispose()
