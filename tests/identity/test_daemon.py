"""`schoolgate identity serve` with nothing to receive: it says so and ends cleanly at once.

Its unit restarts it on failure only, so a clean end is what keeps a school without lease files
or RADIUS from paying a process for it (schoolgate run does not start it then either).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from schoolgate.config import load_config
from schoolgate.identity.daemon import NOTHING_TO_RECEIVE, has_something_to_receive, run_identity_daemon
from schoolgate.store.events import read_status

from .conftest import SITE


@pytest.mark.parametrize(
    ("identity", "something"),
    [
        ("", False),
        ("[identity]\nlease_files = []\n", False),
        ('[identity]\nlease_files = ["windows:/srv/leases.csv"]\n', True),
        ('[identity]\nradius_listen = "0.0.0.0:1813"\nradius_clients = ["10.0.0.0/8"]\n'
         'radius_secret_file = "/etc/schoolgate/radius.secret"\n', True),
    ],
)
def test_what_counts_as_something_to_receive(config_file: Path, identity: str, something: bool) -> None:
    with config_file.open("a", encoding="utf-8") as config:
        config.write("\n" + identity)
    assert has_something_to_receive(load_config(config_file).identity) is something


def test_with_nothing_configured_it_ends_cleanly_without_touching_the_database(
    config_file: Path, sessions: sessionmaker[Session], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="schoolgate.identity")
    assert run_identity_daemon(load_config(config_file)) == 0
    assert NOTHING_TO_RECEIVE in caplog.text
    with sessions() as session:
        assert "identity" not in read_status(session, SITE)


def test_the_command_exits_zero_so_its_unit_leaves_it_stopped(config_file: Path) -> None:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "schoolgate", "identity", "serve", "--config", str(config_file)],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "nothing to receive" in done.stderr
    print(f"identity serve with nothing configured ended in {time.monotonic() - started:.2f} s")
