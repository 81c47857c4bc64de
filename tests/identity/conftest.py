"""A migrated SQLite database per test (same pattern as tests/store/conftest.py)."""

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
    path = tmp_path_factory.mktemp("identity-template") / "template.db"
    init_db(f"sqlite:///{path}").dispose()
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


@pytest.fixture
def config_file(tmp_path: Path, db_path: Path) -> Path:
    path = tmp_path / "schoolgate.toml"
    path.write_text(
        f'policy = "policy.toml"\n\n[site]\nid = "{SITE}"\n\n[database]\nurl = "sqlite:///{db_path}"\n',
        encoding="utf-8",
    )
    return path
