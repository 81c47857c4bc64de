"""Fixtures for the identity tests; the migrated SQLite database per test (db_path, engine,
sessions) comes from tests/fixtures_db.py."""

from __future__ import annotations

from pathlib import Path

import pytest

SITE = "testschool"

# The smallest policy a school could write: identity needs only its time zone (lease times).
POLICY = """
[school]
id = "testschool"
name = "Test Primary"
timezone = "Europe/London"
block_ipv4 = "10.99.0.1"

[document]
title = "Online Safety Policy"
review_by = 2027-09-01

[calendar]
terms = [{ name = "Autumn 2", start = 2026-11-02, end = 2026-12-18 }]

[[rules]]
id = "staff"
clause = "Online Safety Policy"
reason = "staff use the internet for their work"
action = "allow"
roles = ["staff"]

[default]
action = "allow"
clause = "Online Safety Policy"
reason = "not restricted"
"""


@pytest.fixture
def config_file(tmp_path: Path, db_path: Path) -> Path:
    (tmp_path / "policy.toml").write_text(POLICY, encoding="utf-8")
    path = tmp_path / "schoolgate.toml"
    path.write_text(
        f'policy = "policy.toml"\n\n[site]\nid = "{SITE}"\n\n[database]\nurl = "sqlite:///{db_path}"\n',
        encoding="utf-8",
    )
    return path
