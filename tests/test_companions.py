"""schoolgate.companions.keep_running: a companion that fails is started again after a back-off,
its status row saying why meanwhile, and it stops when asked. A real migrated SQLite database."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy.orm import Session, sessionmaker

from schoolgate.companions import keep_running
from schoolgate.store.events import read_status

SITE = "kingswood"
RETRY_S = (0.01, 0.02)


class Flaky:
    """Fails `failures` times, then runs until stopped (or returns at once if `returns`)."""

    def __init__(self, failures: int, *, returns: bool = False) -> None:
        self.failures, self.returns, self.calls = failures, returns, 0
        self.stops_seen: list[threading.Event] = []

    def __call__(self, stop: threading.Event) -> None:
        self.calls += 1
        self.stops_seen.append(stop)
        if self.calls <= self.failures:
            raise OSError(f"refused, attempt {self.calls}")
        if not self.returns:
            stop.wait(30)


def _config(db_path: Path) -> SimpleNamespace:
    return SimpleNamespace(database_url=f"sqlite:///{db_path}", site=SimpleNamespace(id=SITE))


@pytest.mark.parametrize(("failures", "calls"), [(0, 1), (1, 2), (3, 4)])
def test_a_companion_that_returns_is_not_started_again(
    db_path: Path, sessions: sessionmaker[Session], failures: int, calls: int
) -> None:
    work = Flaky(failures, returns=True)
    keep_running("probe", "probe", _config(db_path), work, threading.Event(), retry_s=RETRY_S)
    assert work.calls == calls
    with sessions() as session:
        row = read_status(session, SITE).get("probe")
    if failures:  # the last failure is what its row says, with the back-off it waited
        assert row is not None
        stats = row["stats"] if isinstance(row["stats"], dict) else json.loads(row["stats"])
        assert stats["error"] == f"OSError: refused, attempt {failures}"
        assert stats["failures_in_a_row"] == failures
        assert stats["retry_in_s"] == RETRY_S[min(failures, len(RETRY_S)) - 1]
    else:
        assert row is None


def test_a_failing_companion_is_retried_until_stopped_and_gets_the_stop_it_was_given(db_path: Path) -> None:
    stop = threading.Event()
    work = Flaky(failures=10**6)
    thread = threading.Thread(target=keep_running, args=("probe", "probe", _config(db_path), work, stop),
                              kwargs={"retry_s": RETRY_S})
    thread.start()
    while work.calls < 3 and thread.is_alive():
        stop.wait(0.01)
    stop.set()
    thread.join(30)
    assert not thread.is_alive() and work.calls >= 3
    assert all(seen is stop for seen in work.stops_seen)


def test_an_unwritable_status_row_does_not_stop_the_retries(tmp_path: Path) -> None:
    """The database may be what failed: the companion is started again all the same."""
    work = Flaky(failures=2, returns=True)
    broken = _config(tmp_path / "no-such-folder" / "schoolgate.db")
    keep_running("probe", "probe", broken, work, threading.Event(), retry_s=RETRY_S)
    assert work.calls == 3
