"""Fixtures for the console tests: a real SQLite database, the example policy, console users
for every role (with TOTP where the role needs it), and helpers to sign in."""

from __future__ import annotations

import re
import shutil
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pyotp
import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.orm import Session, sessionmaker

from schoolgate.config import AppConfig, load_config
from schoolgate.console import accounts, create_app
from schoolgate.services.permissions import ROLES, ConsoleRole
from schoolgate.store.db import init_db, make_engine, session_factory

# tests/postgres_fixture.py, which tests/conftest.py loads as a plugin (its fixtures are everywhere).
_pg = sys.modules["schoolgate_tests_postgres_fixture"]

#: The databases the console's (non-browser) tests run against: a trust's central database
#: is PostgreSQL, a single appliance's is SQLite.
BACKENDS = ("sqlite", "postgresql")

# Tests import these helpers as `console_testkit` (pytest's importlib mode puts no test
# folder on sys.path, so `import conftest` would not work).
sys.modules.setdefault("console_testkit", sys.modules[__name__])

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_POLICY = REPO / "deploy" / "policy.example.toml"
SITE = "kingswood"
# Monday 23 November 2026, 10:35 in London (term time, during a lesson).
SCHOOL_MORNING = datetime(2026, 11, 23, 10, 35, tzinfo=UTC)
PASSWORD = "correct horse battery staple"
_HASHES: dict[str, str] = {}


def password_hash(password: str = PASSWORD) -> str:
    """The Argon2 hash of a test password, made once per test run (hashing is slow on purpose)."""
    if password not in _HASHES:
        _HASHES[password] = accounts.hash_password(password)
    return _HASHES[password]


class SpyHasher:
    """Stands in for the console's Argon2 hasher (schoolgate.console.accounts._HASHER): does the
    real work, and calls `before(kind)` first, so a test can look at the world during a hash."""

    def __init__(self, real: Any, before: Any = None) -> None:
        self.real = real
        self.before = before
        self.calls: list[str] = []
        self.seconds: list[float] = []  # how long each call took

    def _note(self, kind: str) -> None:
        self.calls.append(kind)
        if self.before is not None:
            self.before(kind)

    def verify(self, hashed: str, password: str) -> bool:
        self._note("verify")
        started = time.perf_counter()
        try:
            return bool(self.real.verify(hashed, password))
        finally:
            self.seconds.append(time.perf_counter() - started)

    def hash(self, password: str) -> str:
        self._note("hash")
        started = time.perf_counter()
        try:
            return str(self.real.hash(password))
        finally:
            self.seconds.append(time.perf_counter() - started)

    def check_needs_rehash(self, hashed: str) -> bool:
        return bool(self.real.check_needs_rehash(hashed))


CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


class FakeClock:
    def __init__(self, start: datetime) -> None:
        self.current = start

    def now(self) -> datetime:
        return self.current

    def advance(self, **delta: float) -> None:
        self.current += timedelta(**delta)


@dataclass
class Account:
    username: str
    roles: frozenset[ConsoleRole]
    totp_secret: str | None
    id: int = 0


#: One account per role in the permission table, named after the role: a role added to the
#: table gets an account, and every route-by-role test covers it.
ROLE_ACCOUNTS = {role.value: frozenset({role}) for role in ROLES}


def write_config(tmp: Path, *, plain_http: bool = True, listen: str = "127.0.0.1:8443", extra: str = "") -> Path:
    path = tmp / "schoolgate.toml"
    path.write_text(
        textwrap.dedent(f"""\
        policy = "{EXAMPLE_POLICY}"
        data_dir = "{tmp / "data"}"

        [site]
        id = "{SITE}"
        name = "Kingswood Primary School"

        [database]
        url = "sqlite:///{tmp / "data" / "schoolgate.db"}"

        [console]
        listen = "{listen}"
        base_url = "http://{listen}"
        plain_http = {"true" if plain_http else "false"}
        session_minutes = 30
        """)
        + extra,
        encoding="utf-8",
    )
    return path


def create_accounts(factory: sessionmaker[Session]) -> dict[str, Account]:
    made: dict[str, Account] = {}
    with factory() as session:
        for name, roles in ROLE_ACCOUNTS.items():
            user = accounts.create_user(
                session,
                username=name,
                display_name=f"{name.title()} Person",
                roles=roles,
                password_hash=password_hash(),
                site=None if any(ROLES[r].trust_wide for r in roles) else SITE,  # a trust's account: no one school
            )
            secret = None
            if accounts.totp_required(user):
                secret = pyotp.random_base32()
                user.totp_secret = secret
            session.flush()
            made[name] = Account(name, roles, secret, user.id)
        session.commit()
    return made


@dataclass
class Console:
    app: Flask
    config: AppConfig
    factory: sessionmaker[Session]
    clock: FakeClock
    accounts: dict[str, Account]
    tmp: Path
    extra: dict[str, Any] = field(default_factory=dict)

    def session(self) -> Session:
        return self.factory()

    def client(self) -> FlaskClient:
        return self.app.test_client()

    def login(self, role: str | None) -> FlaskClient:
        client = self.app.test_client()
        if role is None:
            return client
        account = self.accounts[role]
        sign_in(client, self.clock, account)
        return client


def csrf_from(html: str) -> str:
    match = CSRF_RE.search(html)
    assert match, "no CSRF token on the page"
    return match.group(1)


def totp_now(secret: str, clock: FakeClock) -> str:
    return pyotp.TOTP(secret).at(clock.now())


def sign_in(client: FlaskClient, clock: FakeClock, account: Account) -> None:
    page = client.get("/login")
    token = csrf_from(page.get_data(as_text=True))
    response = client.post("/login", data={"csrf_token": token, "username": account.username, "password": PASSWORD})
    assert response.status_code == 302, response.get_data(as_text=True)[:2000]
    if account.totp_secret:
        assert response.headers["Location"].endswith("/login/code")
        # Each code is accepted once; move to a fresh 30-second step for every sign-in.
        clock.advance(seconds=31)
        page = client.get("/login/code")
        token = csrf_from(page.get_data(as_text=True))
        response = client.post("/login/code", data={"csrf_token": token, "code": totp_now(account.totp_secret, clock)})
        assert response.status_code == 302, response.get_data(as_text=True)[:2000]
    # Signed in: to the dashboard, or to the page of a role's one power (a teacher's lesson page).
    assert "/login" not in response.headers["Location"], response.headers["Location"]


def build_console(
    tmp: Path,
    template: tuple[Path, dict[str, Account]] | None = None,
    extra_config: str = "",
    *,
    database_url: str | None = None,
    made: dict[str, Account] | None = None,
) -> Console:
    """A console app on a fresh database; from a prepared template file when given (faster:
    the schema is migrated and the accounts' passwords hashed once per test session), or on
    `database_url` (a PostgreSQL copy of a template with the accounts `made` in it)."""
    config = load_config(write_config(tmp, extra=extra_config))
    if database_url is not None:
        assert made is not None
        factory = session_factory(make_engine(database_url))
    elif template is None:
        engine = init_db(config.database_url)
        factory = session_factory(engine)
        made = create_accounts(factory)
    else:
        source, made = template
        target = tmp / "data" / "schoolgate.db"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        factory = session_factory(make_engine(config.database_url))
    clock = FakeClock(SCHOOL_MORNING)
    app = create_app(config, session_factory=factory, clock=clock)
    app.config["TESTING"] = True
    return Console(app=app, config=config, factory=factory, clock=clock, accounts=dict(made), tmp=tmp)


@pytest.fixture(scope="session")
def console_template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Account]]:
    tmp = tmp_path_factory.mktemp("console-template")
    config = load_config(write_config(tmp))
    engine = init_db(config.database_url)
    made = create_accounts(session_factory(engine))
    engine.dispose()  # closes the last connection: SQLite folds the WAL back into the file
    return Path(config.database_url.removeprefix("sqlite:///")), made


@pytest.fixture(scope="session")
def console_postgres_template(postgres_server: Any, postgres_template: str) -> Iterator[tuple[str, dict[str, Account]]]:
    """A PostgreSQL database at the newest schema with the console accounts in it."""
    name = _pg.unique_name("console")
    url = postgres_server.create_database(name, template=postgres_template)
    engine = make_engine(url)
    made = create_accounts(session_factory(engine))
    engine.dispose()  # a template may have no open connections when it is copied
    yield name, made
    postgres_server.drop_database(name)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test that uses the `console` fixture runs on SQLite and on PostgreSQL."""
    if "console" in metafunc.fixturenames and "console_backend" in metafunc.fixturenames:
        metafunc.parametrize("console_backend", BACKENDS, indirect=True)


@pytest.fixture
def console_backend(request: pytest.FixtureRequest) -> str:
    backend: str = getattr(request, "param", "sqlite")
    return backend


@pytest.fixture
def console(tmp_path: Path, console_backend: str, request: pytest.FixtureRequest) -> Iterator[Console]:
    if console_backend == "postgresql":
        server = request.getfixturevalue("postgres_server")
        template_name, made = request.getfixturevalue("console_postgres_template")
        name = _pg.unique_name("c")
        url = server.create_database(name, template=template_name)
        built = build_console(tmp_path, database_url=url, made=made)
        built.extra["backend"] = console_backend
        yield built
        built.factory.kw["bind"].dispose()
        server.drop_database(name)
        return
    built = build_console(tmp_path, request.getfixturevalue("console_template"))
    built.extra["backend"] = console_backend
    yield built
    built.factory.kw["bind"].dispose()


class _HiddenFields(HTMLParser):
    """The hidden inputs of the form posting to `action` (what a browser would send along)."""

    def __init__(self, action: str) -> None:
        super().__init__()
        self.action = action
        self.inside = False
        self.fields: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "form":
            self.inside = values.get("action") == self.action
        elif tag == "input" and self.inside and values.get("type") == "hidden" and values.get("name"):
            self.fields[values["name"] or ""] = values.get("value") or ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self.inside = False


def hidden_fields(html: str, action: str) -> dict[str, str]:
    parser = _HiddenFields(action)
    parser.feed(html)
    return parser.fields


def post_form(client: FlaskClient, page_url: str, action: str, data: dict[str, Any]) -> Any:
    """Open a page and post `data` to `action` as its form would: with the form's hidden fields
    (the CSRF token, the proposal a decision is about) unless `data` gives them."""
    page = client.get(page_url)
    assert page.status_code == 200, (page_url, page.status_code)
    html = page.get_data(as_text=True)
    return client.post(action, data={"csrf_token": csrf_from(html), **hidden_fields(html, action), **data})


def add_event(session: Session, **fields: Any) -> Any:
    """Insert one access event with sensible defaults (a pupil's iPad blocked on Facebook)."""
    from schoolgate.store.models import AccessEvent

    values: dict[str, Any] = {
        "site": SITE,
        "ts": SCHOOL_MORNING - timedelta(minutes=5),
        "source": "proxy",
        "client_ip": "10.41.20.15",
        "mac": "02:00:00:00:20:15",
        "device_id": "KW-IPAD-12",
        "device_name": "Class iPad 12",
        "person_id": "P1042",
        "person_name": "Sam Pupil",
        "role": "pupil",
        "host": "www.facebook.com",
        "url": "https://www.facebook.com/",
        "verdict": "block",
        "rule_id": "pupils-no-social-media",
        "clause": "Social Media Policy §6 and §9",
        "service": "facebook",
        "category": "social_media",
        "flags": "",
        "count": 1,
    }
    values.update(fields)
    # As the event writer stores text: NUL and lone surrogates escaped (PostgreSQL holds neither),
    # and clipped to the column (PostgreSQL enforces VARCHAR lengths; SQLite does not).
    from schoolgate.store.events import storable_text

    stored: dict[str, Any] = {}
    for name, given in values.items():
        value = storable_text(given)
        length = getattr(AccessEvent.__table__.c[name].type, "length", None)
        stored[name] = value[:length] if isinstance(value, str) and length else value
    event = AccessEvent(**stored)
    session.add(event)
    session.flush()
    return event


def seed(console: Console) -> dict[str, int]:
    """One of everything, through the services where they exist, for pages that show a record."""
    from schoolgate.services import access_requests, bans, reports, site_blocks
    from schoolgate.services.actor import Actor
    from schoolgate.services.alert_rules import AlertEngine
    from schoolgate.services.register import DeviceForm, PersonForm, create_device, create_person
    from schoolgate.store.models import AlertHistory, ConsoleUser, PolicyExceptionRow

    now = console.clock.now()
    ids: dict[str, int] = {}
    with console.session() as session:
        users = {u.username: u for u in session.query(ConsoleUser)}
        tech = Actor.from_user(users["technician"])
        dsl = Actor.from_user(users["dsl"])
        person = create_person(
            session,
            site=SITE,
            now=now,
            actor=tech,
            form=PersonForm(external_id="P1042", name="Sam Pupil", role="pupil", year_group=6),
        )
        device = create_device(
            session,
            site=SITE,
            now=now,
            actor=tech,
            form=DeviceForm(
                device_id="KW-IPAD-12", name="Class iPad 12", ip="10.41.20.15", mac="02:00:00:00:20:15", owner="P1042"
            ),
        )
        ids["person"], ids["device"] = person.id, device.id
        submitted = access_requests.submit_request(
            session,
            site=SITE,
            now=now,
            policy=console.app.extensions["schoolgate.policy"].get(),
            form=access_requests.RequestForm(
                requester="Sam Pupil",
                url="https://www.facebook.com/kingswoodpta",
                reasons="PTA page for our Year 6 project",
                device_id="KW-IPAD-12",
                client_ip="10.41.20.15",
            ),
        )
        ids["request"] = submitted.request.id
        report = reports.submit_report(
            session,
            site=SITE,
            now=now,
            actor=tech,
            zone=console.app.extensions["schoolgate.policy"].get().school.zone,
            form=reports.ReportForm(
                submitter_name="Technician Person", urls="https://bad.example.org/page", nature="Violent images"
            ),
        )
        ids["report"] = report.id
        block = site_blocks.add_site_block(
            session, site=SITE, now=now, actor=tech, spec=site_blocks.BlockSpec(domain="bad.example.org"), reason="test"
        )
        ids["block"] = block.id
        exception = PolicyExceptionRow(
            site=SITE,
            scope="device",
            subject="KW-IPAD-12",
            domain="example.net",
            starts=now - timedelta(hours=1),
            expires=now + timedelta(days=5),
            reason="seed",
            created_by="technician",
        )
        session.add(exception)
        event = add_event(session)
        ids["event"] = event.id
        for minute in range(3):
            add_event(
                session,
                host="psiphon.ca",
                url=None,
                service=None,
                category="circumvention",
                rule_id="no-circumvention",
                flags="circumvention",
                ts=now - timedelta(minutes=10 - minute),
            )
        AlertEngine().scan(session, SITE, None, now)
        from schoolgate.store.models import Alert

        alert = session.query(Alert).order_by(Alert.id).first()
        assert alert is not None, "the alert engine raised no case for circumvention"
        ids["alert"] = alert.id
        session.add(AlertHistory(alert_id=alert.id, at=now, actor="dsl", action="note", detail="seed note"))
        ban = bans.ban_device(
            session,
            site=SITE,
            now=now,
            actor=dsl,
            device_id="02:00:00:00:03:03",  # a laptop the register does not know: banned by its MAC
            until=now + timedelta(days=7),
            reason="seed ban",
            supervisor="Mrs Khan",
            zone=ZoneInfo("Europe/London"),  # the example policy's [school] timezone
        )
        ids["ban"] = ban.id
        victim = accounts.create_user(
            session,
            username="victim",
            display_name="Victim",
            site=SITE,
            roles=frozenset({ConsoleRole.TECHNICIAN}),
            password_hash=password_hash(),
        )
        ids["user"] = victim.id
        from schoolgate.services import checklog

        check = checklog.record_manual_check(
            session, site=SITE, actor=tech, now=now,
            form=checklog.ManualCheckForm(device_type="Class iPad", location="Year 5", profile="pupil",
                                          tried="Tried a blocked social media site", result="fail",
                                          action="Told the ICT technician"),
        )
        ids["check"] = check.id
        from schoolgate.services import directory

        preview = directory.preview(
            session, site=SITE, now=now, actor=tech, filename="users.csv",
            data=b"MIS ID,Forename,Surname,Year\nM1,Eve,Pupil,Year 3\n",
        )
        ids["directory_import"] = preview.id
        session.flush()
        ids["exception"] = exception.id
        from schoolgate.store.models import LessonUnlock

        unlock = LessonUnlock(
            site=SITE, user_id=users["teacher"].id, username="teacher", teacher="Teacher Person", group="6B",
            host="www.youtube.com", url="https://www.youtube.com/watch?v=volcano", starts=now,
            ends=now + timedelta(minutes=15), ends_with="morning break starts", created_at=now,
        )
        session.add(unlock)
        session.flush()
        ids["unlock"] = unlock.id
        from schoolgate.store.models import SocialMediaAdmin, SocialMediaSite

        social = SocialMediaSite(
            site=SITE, status="submitted", platform="Facebook page", moderator="Ms Media",
            purpose="News for parents", aims="Fewer letters", content="Events and closures",
            administrators="Ms Media, Mr Deputy", vetting="Ms Media, marketing officer", host="Facebook",
            security="Comments off", requested_by="marketing", requested_by_name="Marketing Person", created_at=now,
            admins=[SocialMediaAdmin(person_external_id="S1", person_name="Ms Media"),
                    SocialMediaAdmin(person_external_id="S2", person_name="Mr Deputy")],
        )
        session.add(social)
        session.flush()
        ids["social"] = social.id
        session.commit()
    return ids
