"""Fixtures for the proxy tests: a small real policy, a migrated SQLite database, a school CA,
and the addons' Services wired to the real event writer."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from schoolgate.ca import init_ca
from schoolgate.policy.engine import CompiledPolicy, decide
from schoolgate.policy.explain import explain_text
from schoolgate.policy.loader import load_policy
from schoolgate.policy.types import Client, Decision, Target
from schoolgate.proxy.addons import Services
from schoolgate.proxy.addresses import AddressBook
from schoolgate.store.events import EventWriter

HERE = Path(__file__).resolve().parent
SITE = "testschool"
NOW = datetime(2026, 11, 18, 11, 0, tzinfo=UTC)  # a Wednesday in term, mid-morning


@pytest.fixture(scope="session")
def policy_file() -> Path:
    return HERE / "policy.toml"


@pytest.fixture(scope="session")
def policy(policy_file: Path) -> CompiledPolicy:
    return load_policy(policy_file)


@pytest.fixture(scope="session")
def school_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ca_dir = tmp_path_factory.mktemp("school-ca")
    init_ca(ca_dir, school_name="Test Primary")
    return ca_dir


# db_path and engine (a migrated SQLite database per test) come from tests/fixtures_db.py.


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)


@pytest.fixture
def known_clients() -> dict[str, Client]:
    """The device register the `services` fixture answers from (tests override it)."""
    return {}


@pytest.fixture
def writer(engine: Engine) -> EventWriter:
    return EventWriter(engine)  # not started: tests flush() from their own thread


class SettableClock:
    def __init__(self, now: datetime) -> None:
        self.instant = now

    def __call__(self) -> datetime:
        return self.instant


@pytest.fixture
def clock() -> SettableClock:
    return SettableClock(NOW)


@pytest.fixture
def book() -> AddressBook:
    book = AddressBook()
    book.learn("facebook.com", ["198.51.100.10", "2001:db8::10"], 3600)
    return book


@pytest.fixture
def services(
    policy: CompiledPolicy,
    writer: EventWriter,
    book: AddressBook,
    known_clients: dict[str, Client],
    clock: SettableClock,
) -> Services:
    def decide_now(client: Client, target: Target, now: datetime) -> Decision:
        return decide(policy, client, target, now)

    def identify(ip: str) -> Client:
        return known_clients.get(ip, Client(ip=ip))

    return Services(
        decide=decide_now,
        identify=identify,
        book=book,
        now=clock,
        site=SITE,
        submit_full=writer.submit,
        submit_allowed=writer.submit,  # the aggregator is the store's; here every event is a row
        explain=lambda decision, now: explain_text(decision, policy, now),
    )
