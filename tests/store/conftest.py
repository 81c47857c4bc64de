"""Fixtures for tests that need a real, migrated database (copy them freely).

Tests that take ``db_url`` (or ``engine``/``sessions`` built on it) run twice: against a
SQLite file and against a database on a real PostgreSQL server (``tests/postgres_fixture.py``).
A test that also takes ``db_path`` handles the SQLite file itself and runs on SQLite only.

The schema is migrated once per test session into a template (a file for SQLite, a template
database for PostgreSQL); each test gets its own copy, so a test costs a copy rather than a
full alembic upgrade.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from schoolgate.store.db import init_db, make_engine, session_factory

SITE = "testschool"
BACKENDS = ("sqlite", "postgresql")


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
postgres_server = _pg.postgres_server
postgres_template = _pg.postgres_template
postgres_url = _pg.postgres_url
postgres_empty_url = _pg.postgres_empty_url


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "db_backend" not in metafunc.fixturenames:
        return
    backends = ["sqlite"] if "db_path" in metafunc.fixturenames else list(BACKENDS)
    metafunc.parametrize("db_backend", backends, indirect=True)


@pytest.fixture
def db_backend(request: pytest.FixtureRequest) -> str:
    backend: str = getattr(request, "param", "sqlite")
    return backend


@pytest.fixture(scope="session")
def migrated_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("store-template") / "template.db"
    engine = init_db(f"sqlite:///{path}")
    engine.dispose()  # checkpoints the WAL: the file alone is the whole database
    return path


@pytest.fixture
def db_path(tmp_path: Path, migrated_template: Path) -> Path:
    path = tmp_path / "schoolgate.db"
    shutil.copyfile(migrated_template, path)
    return path


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
def sessions(engine: Engine) -> sessionmaker[Session]:
    return session_factory(engine)


@pytest.fixture
def config_file(tmp_path: Path, db_url: str) -> Path:
    """A schoolgate.toml pointing at the test database, for CLI tests."""
    path = tmp_path / "schoolgate.toml"
    path.write_text(
        f'policy = "policy.toml"\ndata_dir = "data"\n\n[site]\nid = "{SITE}"\n\n[database]\nurl = "{db_url}"\n',
        encoding="utf-8",
    )
    return path
