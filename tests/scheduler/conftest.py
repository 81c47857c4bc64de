"""Fixtures for the scheduler: a migrated SQLite file, a config for it and its policy."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from schoolgate.config import AlertsConfig, AppConfig, ConsoleConfig, DatabaseConfig, MailConfig, SiteConfig
from schoolgate.store.db import session_factory

SITE = "testschool"

POLICY = """
[school]
id = "testschool"
name = "Test Primary"
timezone = "Europe/London"
block_ipv4 = "10.99.0.1"

[document]
title = "Social Media Policy"
review_by = 2027-09-01

[calendar]
terms = [
  { name = "Autumn 1", start = 2026-09-03, end = 2026-10-23 },
  { name = "Autumn 2", start = 2026-11-02, end = 2026-12-18 },
  { name = "Spring 2", start = 2027-02-22, end = 2027-03-31 },
]
closures = [{ date = 2026-11-02, kind = "inset", reason = "INSET day" }]

[[networks]]
name = "loopback"
cidrs = ["127.0.0.0/8"]
role = "pupil"

[categories.social_media]
name = "Social media"

[services.facebook]
name = "Facebook"
category = "social_media"
domains = ["facebook.com"]

[[rules]]
id = "social-media"
clause = "Social Media Policy §9"
reason = "social media sites are not accessible on the school's network"
action = "block"
roles = ["pupil"]
categories = ["social_media"]

[default]
action = "allow"
clause = "Online Safety Policy"
reason = "not restricted"
"""


# mail_server (a real SMTP server on loopback) comes from tests/smtp_fixture.py;
# db_path and engine (a migrated SQLite database per test) come from tests/fixtures_db.py.


@pytest.fixture
def factory(engine: Engine) -> sessionmaker[Session]:
    return session_factory(engine)


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(POLICY, encoding="utf-8")
    return path


@pytest.fixture
def make_config(tmp_path: Path, db_path: Path, policy_file: Path) -> Callable[..., AppConfig]:
    """A configuration for this test's database; mail goes to `smtp_port` on loopback if given."""

    def build(smtp_port: int | None = None) -> AppConfig:
        return _config(tmp_path, db_path, policy_file, smtp_port)

    return build


def _config(tmp_path: Path, db_path: Path, policy_file: Path, smtp_port: int | None) -> AppConfig:
    mail = MailConfig(
        host="127.0.0.1" if smtp_port else "",
        port=smtp_port or 25,
        sender="schoolgate@school.example",
        digest_time="07:30",
        digest_recipients=["deputy.dsl@school.example"],
    )
    return AppConfig(
        source=tmp_path / "schoolgate.toml",
        policy=policy_file,
        data_dir=tmp_path,
        site=SiteConfig(id=SITE, name="Test Primary"),
        database=DatabaseConfig(url=f"sqlite:///{db_path}"),
        console=ConsoleConfig(base_url="https://console.school.example:8443"),
        mail=mail,
        alerts=AlertsConfig(repeated_blocks_threshold=3),
    )
