"""A migrated SQLite database per test, for any test folder (a pytest plugin: tests/conftest.py
loads it).

The schema is migrated once per test session into a template file; each test gets its own copy,
so a test costs a file copy rather than a full alembic upgrade. A folder that needs something
else (tests/store also runs on PostgreSQL) overrides these fixtures in its own conftest.py.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from schoolgate.store.db import init_db, make_engine, session_factory


@pytest.fixture(scope="session")
def migrated_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("db-template") / "template.db"
    init_db(f"sqlite:///{path}").dispose()  # disposing checkpoints the WAL: the file alone is the database
    return path


@pytest.fixture
def db_path(tmp_path: Path, migrated_template: Path) -> Path:
    path = tmp_path / "schoolgate.db"
    shutil.copyfile(migrated_template, path)
    return path


@pytest.fixture
def engine(db_path: Path) -> Iterator[Engine]:
    eng = make_engine(f"sqlite:///{db_path}")
    yield eng
    eng.dispose()


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    return session_factory(engine)
