"""Fixtures for the proxy tests: a small real policy, a migrated SQLite database, a school CA,
and the addons' Services wired to the real event writer."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from mitmproxy import connection, http, tls
from mitmproxy.proxy import context, layer, server_hooks
from mitmproxy.proxy import events as proxy_events
from mitmproxy.proxy.layers import modes
from mitmproxy.proxy.layers.http import HttpRequestHook
from mitmproxy.proxy.layers.tls import TlsClienthelloHook, parse_client_hello
from mitmproxy.test import taddons, tflow
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from schoolgate.ca import init_ca
from schoolgate.lab.hello import client_hello
from schoolgate.policy.engine import CompiledPolicy, decide
from schoolgate.policy.explain import explain_text
from schoolgate.policy.loader import load_policy
from schoolgate.policy.types import Client, Decision, Role, Target
from schoolgate.proxy.addons import Pipeline, Services, build_addons
from schoolgate.proxy.addresses import AddressBook
from schoolgate.proxy.relay import new_event_loop
from schoolgate.proxy.upset import UpsetSigner
from schoolgate.store.events import EventWriter
from schoolgate.store.models import AccessEvent

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
        category=lambda category_id: _category(policy, category_id),
        upset=UpsetSigner(b"test key for the upset button"),
        operator_of=lambda sid: policy.service_by_id[sid].operator_id,
        refusal_clause=lambda: policy.dynamic.circumvention,
    )


def _category(policy: CompiledPolicy, category_id: str) -> tuple[str, str] | None:
    found = policy.category_by_id.get(category_id)
    return (found.name, found.description) if found is not None and found.description else None


# -- the addons' harness: mitmproxy's test master driving the pipeline (tests import these
# as `proxy_testkit`: pytest's importlib mode puts no test folder on sys.path)

PUPIL = Client(
    ip="10.20.1.5",
    mac="02:00:00:00:00:05",
    device_id="LAP-005",
    device_name="Laptop 5",
    person_id="p5",
    person_name="Pupil Five",
    role=Role.PUPIL,
    trusts_school_ca=False,
)
TRUSTED_PUPIL = Client(
    ip="10.20.1.6",
    mac="02:00:00:00:00:06",
    device_id="LAP-006",
    device_name="Laptop 6",
    person_id="p6",
    person_name="Pupil Six",
    role=Role.PUPIL,
    trusts_school_ca=True,
)
STAFF = Client(
    ip="10.20.1.7",
    mac="02:00:00:00:00:07",
    device_id="LAP-007",
    device_name="Staff laptop",
    person_id="s7",
    person_name="Staff Seven",
    role=Role.STAFF,
    trusts_school_ca=True,
)
FACEBOOK_IP = "198.51.100.10"  # learnt as facebook.com's in the `book` fixture
OTHER_IP = "203.0.113.7"


client_hello_bytes = client_hello  # the name these tests know it by


def make_client(who: Client, dialled: str, port: int = 443) -> connection.Client:
    client = tflow.tclient_conn()
    client.peername = (who.ip, 50123)
    client.sockname = (dialled, port)
    client.tls = False
    client.sni = None
    return client


class Harness:
    def __init__(self, tctx: Any, services: Services) -> None:
        self.tctx = tctx
        self.services = services

    def trigger(self, hook: Any) -> None:
        self.tctx.master.event_loop.run_until_complete(self.tctx.master.addons.trigger_event(hook))

    def connect(self, who: Client, dialled: str, port: int = 443) -> context.Context:
        client = make_client(who, dialled, port)
        self.trigger(server_hooks.ClientConnectedHook(client))
        ctx = context.Context(client, self.tctx.options)
        ctx.server.address = (dialled, port)  # transparent mode: the original destination
        return ctx

    def hello(self, ctx: context.Context, sni: str | None) -> tls.ClientHelloData:
        parsed = parse_client_hello(client_hello_bytes(sni))
        assert parsed is not None
        data = tls.ClientHelloData(ctx, parsed)
        self.trigger(TlsClienthelloHook(data))
        return data

    def next_layer(self, ctx: context.Context, data: bytes) -> layer.NextLayer:
        """The transparent proxy asking which layer comes next, `data` from the client so far."""
        if not ctx.layers:
            modes.TransparentProxy(ctx)  # the top of mitmproxy's stack in transparent mode
        nextlayer = layer.NextLayer(ctx)
        nextlayer.events.append(proxy_events.DataReceived(ctx.client, data))
        self.trigger(layer.NextLayerHook(nextlayer))
        return nextlayer

    def server_connect(self, ctx: context.Context) -> connection.Server:
        server = connection.Server(address=ctx.server.address)
        data = server_hooks.ServerConnectionHookData(server=server, client=ctx.client)
        self.trigger(server_hooks.ServerConnectHook(data))
        return server

    def request(self, ctx: context.Context, url: str, host_header: str | None = None) -> http.HTTPFlow:
        flow = tflow.tflow(client_conn=ctx.client)
        flow.server_conn.address = ctx.server.address
        flow.request = http.Request.make("GET", url)
        if host_header is not None:
            flow.request.headers["Host"] = host_header
        self.trigger(HttpRequestHook(flow))
        return flow

    def disconnect(self, ctx: context.Context) -> None:
        self.trigger(server_hooks.ClientDisconnectedHook(ctx.client))


@pytest.fixture
def harness(services: Services) -> Any:
    # As the daemon adds them: all of schoolgate's addons behind one pipeline entry.
    with taddons.context(Pipeline(build_addons(services))) as tctx:
        tctx.options.update(schoolgate_school_name="Test Primary", schoolgate_console_url="https://console.test:8443")
        yield Harness(tctx, services)


def events(sessions: sessionmaker[Session], writer: EventWriter) -> list[AccessEvent]:
    assert writer.flush()
    with sessions() as session:
        return list(session.scalars(select(AccessEvent).order_by(AccessEvent.id)))


sys.modules.setdefault("proxy_testkit", sys.modules[__name__])


# The proxy daemon's loop (spliced sockets in the loop's own epoll: relay.SpliceSelector) and a
# plain asyncio loop (spliced sockets in an epoll of the splice poller's own).
LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "daemon's loop": new_event_loop,
    "plain loop": asyncio.new_event_loop,
}


@pytest.fixture(params=list(LOOPS))
def loop_kind(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test on each kind of loop: sets the requesting module's ``new_loop`` (a module
    opts in with ``pytestmark = pytest.mark.usefixtures("loop_kind")``)."""
    monkeypatch.setattr(request.module, "new_loop", LOOPS[request.param])
    return str(request.param)
