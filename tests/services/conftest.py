"""Fixtures for the services: a migrated SQLite file, a compiled policy, console users."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from schoolgate.policy import CompiledPolicy, load_policy
from schoolgate.services.actor import Actor
from schoolgate.store.db import session_factory
from schoolgate.store.models import ConsoleUser, UserRole

SITE = "testschool"
# A Tuesday in term, 10:00 in London (BST).
NOW = datetime(2026, 10, 6, 9, 0, tzinfo=UTC)

POLICY = """
[school]
id = "testschool"
name = "Test Primary"
timezone = "Europe/London"
block_ipv4 = "10.99.0.1"

[calendar]
terms = [
  { name = "Autumn 1", start = 2026-09-03, end = 2026-10-23 },
  { name = "Autumn 2", start = 2026-11-02, end = 2026-12-18 },
  { name = "Spring 1", start = 2027-01-05, end = 2027-02-12 },
  { name = "Spring 2", start = 2027-02-22, end = 2027-03-31 },
]
closures = [{ date = 2026-11-02, kind = "inset", reason = "INSET day" }]

[[networks]]
name = "loopback"
cidrs = ["127.0.0.0/8"]
role = "pupil"

[categories.social_media]
name = "Social media"

[categories.circumvention]
name = "Circumvention"
locked = true
flags = ["circumvention"]

[services.facebook]
name = "Facebook"
category = "social_media"
domains = ["facebook.com", "fbcdn.net"]

[services.freevpn]
name = "Free VPN"
category = "circumvention"
domains = ["freevpn.example"]

[[rules]]
id = "circumvention"
clause = "Social Media Policy §9"
reason = "attempts to get round the filter are not allowed"
action = "block"
roles = ["pupil", "staff", "authorised", "guest", "supervised"]
categories = ["circumvention"]

[[rules]]
id = "social-media"
clause = "Social Media Policy §9"
reason = "social media sites are not accessible on the school's network"
action = "block"
roles = ["pupil", "staff", "guest", "supervised"]
categories = ["social_media"]

[default]
action = "allow"
clause = "Online Safety Policy"
reason = "not restricted"
"""


@pytest.fixture(scope="session")
def policy_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("policy") / "policy.toml"
    path.write_text(POLICY, encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def policy(policy_file: Path) -> CompiledPolicy:
    return load_policy(policy_file)


# engine (a migrated SQLite database per test) comes from tests/fixtures_db.py.


@pytest.fixture
def factory(engine: Engine) -> sessionmaker[Session]:
    return session_factory(engine)


@pytest.fixture
def session(factory: sessionmaker[Session]) -> Iterator[Session]:
    with factory() as session:
        yield session


def _user(
    session: Session, username: str, name: str, roles: list[str], email: str | None = None, digest: bool = False
) -> Actor:
    user = ConsoleUser(
        site=SITE,
        username=username,
        display_name=name,
        email=email,
        password_hash="x",
        receives_digest=digest,
        roles=[UserRole(role=r) for r in roles],
    )
    session.add(user)
    session.flush()
    return Actor.from_user(user)


@pytest.fixture
def technician(session: Session) -> Actor:
    return _user(session, "tech", "Mr T Nguyen", ["technician"])


@pytest.fixture
def headteacher(session: Session) -> Actor:
    return _user(session, "head", "Mrs H Okafor", ["headteacher"])


@pytest.fixture
def dsl(session: Session) -> Actor:
    return _user(session, "dsl", "Ms D Shah", ["dsl"], email="dsl@school.example", digest=True)
