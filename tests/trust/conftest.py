"""A multi-academy trust: several appliances and one central PostgreSQL database.

The PostgreSQL helpers come from tests/postgres_fixture.py. The trust tests stop and restart
the central server, so each gets a server of its own (``central_server``), not the shared one.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest


def load_postgres_fixture() -> ModuleType:
    """tests/postgres_fixture.py, imported once (tests are not a package under importlib mode)."""
    name = "schoolgate_tests_postgres_fixture"
    module = sys.modules.get(name)
    if module is None:
        path = Path(__file__).resolve().parent.parent / "postgres_fixture.py"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return module


_pg = load_postgres_fixture()


@pytest.fixture
def central_server() -> Iterator[object]:
    """A PostgreSQL server of the test's own, with durable settings (it will be stopped hard)."""
    server = _pg.PostgresServer(_pg.require_bin_dir())
    server.start(fast=False)
    yield server
    server.destroy()
