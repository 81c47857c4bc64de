"""The whole appliance in the network lab, for the tests that kill its daemons.

Each module gets a private lab (prefix `sga` + its serial and the PID in base 36), torn down
after the module, pass or fail. The measurements the tests make (restart times, events
lost per kill) are printed at the end of the run.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from schoolgate.lab.client import LabClient
from schoolgate.lab.lab import DEFAULT_CLOCK, Lab
from schoolgate.lab.topology import private_prefix
from schoolgate.store.db import make_engine, session_factory

_labs = itertools.count()
MEASURED: list[str] = []


def lab_prefix(stem: str = "sga") -> str:
    return private_prefix(stem, next(_labs), os.getpid())


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabClient]:
    built = Lab(lab_prefix(), state_root=Path(tmp_path_factory.mktemp("appliance")))
    built.down()  # leftovers of an earlier interrupted run with the same prefix
    built.up(clock=DEFAULT_CLOCK)
    engine = make_engine(built.database_url)
    try:
        yield LabClient(built, session_factory(engine))
    finally:
        engine.dispose()
        built.down()


@pytest.fixture(scope="session")
def new_prefix() -> Callable[[str], str]:
    return lab_prefix


@pytest.fixture
def measured() -> list[str]:
    return MEASURED


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if MEASURED:
        terminalreporter.section("appliance measurements")
        for line in MEASURED:
            terminalreporter.write_line(line)
