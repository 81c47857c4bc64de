"""Fixtures for tests that need a real, migrated database (copy them freely).

Tests that take ``db_url`` (or ``engine``/``sessions`` built on it) run twice: against a
SQLite file and against a database on a real PostgreSQL server (``tests/postgres_fixture.py``).
A test that also takes ``db_path`` handles the SQLite file itself and runs on SQLite only.

The schema is migrated once per test session into a template (a file for SQLite, a template
database for PostgreSQL); each test gets its own copy, so a test costs a copy rather than a
full alembic upgrade.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from schoolgate.store.db import make_engine

SITE = "testschool"
BACKENDS = ("sqlite", "postgresql")


# The PostgreSQL fixtures (tests/postgres_fixture.py) and db_path, a copy of the migrated SQLite
# template (tests/fixtures_db.py), are plugins that tests/conftest.py loads.


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "db_backend" not in metafunc.fixturenames:
        return
    backends = ["sqlite"] if "db_path" in metafunc.fixturenames else list(BACKENDS)
    metafunc.parametrize("db_backend", backends, indirect=True)


@pytest.fixture
def db_backend(request: pytest.FixtureRequest) -> str:
    backend: str = getattr(request, "param", "sqlite")
    return backend


@pytest.fixture
def db_url(db_backend: str, request: pytest.FixtureRequest) -> str:
    if db_backend == "postgresql":
        url: str = request.getfixturevalue("postgres_url")
        return url
    path: Path = request.getfixturevalue("db_path")
    return f"sqlite:///{path}"


@pytest.fixture
def empty_db_url(db_backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database with no schema at all (for migration tests)."""
    if db_backend == "postgresql":
        url: str = request.getfixturevalue("postgres_empty_url")
        return url
    return f"sqlite:///{tmp_path / 'empty.db'}"


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = make_engine(db_url)
    yield eng
    eng.dispose()


@pytest.fixture
def config_file(tmp_path: Path, db_url: str) -> Path:
    """A schoolgate.toml pointing at the test database, for CLI tests."""
    path = tmp_path / "schoolgate.toml"
    path.write_text(
        f'policy = "policy.toml"\ndata_dir = "data"\n\n[site]\nid = "{SITE}"\n\n[database]\nurl = "{db_url}"\n',
        encoding="utf-8",
    )
    return path
