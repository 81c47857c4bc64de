"""The network lab for end-to-end tests: one private lab per test module.

Each module gets its own namespace prefix (`sgt` + its serial and the PID), so the tests never touch a lab a
developer has running (`sg-…`). The lab is torn down after the module, pass or fail.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from schoolgate.lab.client import LabClient
from schoolgate.lab.lab import DEFAULT_CLOCK, Lab
from schoolgate.lab.topology import private_prefix
from schoolgate.store.db import make_engine, session_factory

_labs = itertools.count()


def _private_lab(
    tmp_path_factory: pytest.TempPathFactory, topology: str, policy: Callable[[Path], Path] | None = None
) -> Iterator[LabClient]:
    # sgt + this lab's serial and the PID in base 36: two runs on one box do not collide.
    prefix = private_prefix("sgt", next(_labs), os.getpid())
    state_root = tmp_path_factory.mktemp("lab")
    extra = {"policy": policy(tmp_path_factory.mktemp("lab-policy"))} if policy is not None else {}
    built = Lab(prefix, state_root=Path(state_root), topology=topology, **extra)
    built.down()  # leftovers of an earlier interrupted run with the same prefix
    built.up(clock=DEFAULT_CLOCK)
    engine = make_engine(built.database_url)
    try:
        yield LabClient(built, session_factory(engine))
    finally:
        engine.dispose()
        built.down()


@pytest.fixture(scope="module")
def lab(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabClient]:
    """The gateway topology: the appliance is the devices' router. A test module may run its lab
    on a policy of its own: a module-level `lab_policy(folder) -> Path` writes it."""
    yield from _private_lab(tmp_path_factory, "gateway", getattr(request.module, "lab_policy", None))


@pytest.fixture(scope="module")
def bridge_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabClient]:
    """The bridge topology: the appliance is a bridge between the school's router and switch."""
    yield from _private_lab(tmp_path_factory, "bridge")


@pytest.fixture(scope="module")
def dns_only_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabClient]:
    """The dns-only topology: the appliance is only the devices' DNS server."""
    yield from _private_lab(tmp_path_factory, "dns-only")
