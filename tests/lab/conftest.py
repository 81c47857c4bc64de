"""The network lab for end-to-end tests: one private lab per test module.

Each module gets its own namespace prefix (`sgt` + its serial and the PID), so the tests never touch a lab a
developer has running (`sg-…`). The lab is torn down after the module, pass or fail.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from schoolgate.lab.client import LabClient
from schoolgate.lab.lab import DEFAULT_CLOCK, Lab
from schoolgate.lab.topology import private_prefix
from schoolgate.store.db import make_engine, session_factory

_labs = itertools.count()


@pytest.fixture(scope="module")
def lab(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabClient]:
    # sgt + this lab's serial and the PID in base 36: two runs on one box do not collide.
    prefix = private_prefix("sgt", next(_labs), os.getpid())
    state_root = tmp_path_factory.mktemp("lab")
    built = Lab(prefix, state_root=Path(state_root))
    built.down()  # leftovers of an earlier interrupted run with the same prefix
    built.up(clock=DEFAULT_CLOCK)
    engine = make_engine(built.database_url)
    try:
        yield LabClient(built, session_factory(engine))
    finally:
        engine.dispose()
        built.down()
