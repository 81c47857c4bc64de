"""Fixtures for the identity tests; the migrated SQLite database per test (db_path, engine,
sessions) comes from tests/fixtures_db.py."""

from __future__ import annotations

from pathlib import Path

import pytest

SITE = "testschool"


@pytest.fixture
def config_file(tmp_path: Path, db_path: Path) -> Path:
    path = tmp_path / "schoolgate.toml"
    path.write_text(
        f'policy = "policy.toml"\n\n[site]\nid = "{SITE}"\n\n[database]\nurl = "sqlite:///{db_path}"\n',
        encoding="utf-8",
    )
    return path
