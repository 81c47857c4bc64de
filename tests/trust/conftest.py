"""A multi-academy trust: several appliances and one central PostgreSQL database.

The PostgreSQL helpers come from tests/postgres_fixture.py. The trust tests stop and restart
the central server, so each gets a server of its own (``central_server``), not the shared one.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

# tests/postgres_fixture.py, which tests/conftest.py loads as a plugin (its fixtures are everywhere).
_pg = sys.modules["schoolgate_tests_postgres_fixture"]


@pytest.fixture
def central_server() -> Iterator[object]:
    """A PostgreSQL server of the test's own, with durable settings (it will be stopped hard)."""
    server = _pg.PostgresServer(_pg.require_bin_dir())
    server.start(fast=False)
    yield server
    server.destroy()
