"""Fixtures for tests that need a real, migrated SQLite database (copy them freely).

The schema is migrated once per test session into a template file; each test gets its own
copy, so a test costs a file copy rather than a full alembic upgrade.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from schoolgate.store.db import init_db, make_engine, session_factory

SITE = "testschool"


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
def db_url(db_path: Path) -> str:
    return f"sqlite:///{db_path}"


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
