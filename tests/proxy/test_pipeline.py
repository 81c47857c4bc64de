"""The per-connection fast paths: the addon pipeline and the recent-clients cache."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import pytest
from mitmproxy import connection
from mitmproxy.proxy import server_hooks
from mitmproxy.test import taddons, tflow

from schoolgate.identity.register import DeviceRegister
from schoolgate.policy.types import Client, Role
from schoolgate.proxy.addons import Pipeline, Services, build_addons
from schoolgate.proxy.clients import RecentClients
from schoolgate.proxy.daemon import quiet_mitmproxy_logging

PUPIL = Client(ip="10.20.1.5", mac="02:00:00:00:00:05", device_id="LAP-005", role=Role.PUPIL)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make_client(ip: str) -> connection.Client:
    client = tflow.tclient_conn()
    client.peername = (ip, 50123)
    client.sockname = ("203.0.113.7", 443)
    return client


def master_with(*addons: object) -> Any:
    return taddons.context(*addons)  # type: ignore[no-untyped-call]


def trigger(tctx: Any, hook: Any) -> None:
    tctx.master.event_loop.run_until_complete(tctx.master.addons.trigger_event(hook))


# ------------------------------------------------------------------------------ the pipeline


class Boom:
    """A member whose every hook fails."""

    def __init__(self) -> None:
        self.calls = 0

    def client_connected(self, client: connection.Client) -> None:
        self.calls += 1
        raise RuntimeError("boom")

    def client_disconnected(self, client: connection.Client) -> None:
        self.calls += 1
        raise RuntimeError("boom")


def test_one_members_error_does_not_stop_the_rest(services: Services, caplog: pytest.LogCaptureFixture) -> None:
    boom = Boom()
    members = build_addons(services)
    # First in line for both hooks: identification and Forget must still run after it.
    pipeline = Pipeline([boom, *members])
    with master_with(pipeline) as tctx:
        client = make_client("10.20.1.9")
        trigger(tctx, server_hooks.ClientConnectedHook(client))
        assert len(services.connections) == 1
        assert services.counters.connections_seen == 1
        trigger(tctx, server_hooks.ClientDisconnectedHook(client))
        assert len(services.connections) == 0
    assert boom.calls == 2
    assert caplog.text.count("failed in Boom") == 2


def test_a_member_hook_the_pipeline_does_not_pass_on_is_refused(services: Services) -> None:
    class WantsResponses:
        def response(self, flow: Any) -> None:
            pass

    with pytest.raises(TypeError, match="WantsResponses handles \\['response'\\]"):
        Pipeline([*build_addons(services), WantsResponses()])


def test_a_member_that_only_observes_must_follow_those_that_decide(services: Services) -> None:
    """judge_hello_first tells the observers after the verdict is carried out: that must not
    reorder the members, so an observer ordered before a deciding member is refused."""

    class Watcher:
        observes_only = True

        def tls_clienthello(self, data: Any) -> None:
            pass

    members = build_addons(services)
    Pipeline([*members, Watcher()])  # after every deciding member: fine
    with pytest.raises(TypeError, match="tls_clienthello: a member that only observes"):
        Pipeline([Watcher(), *members])


def test_the_pipeline_calls_members_in_order(services: Services) -> None:
    order: list[str] = []

    class Named:
        def __init__(self, name: str) -> None:
            self.name = name

        async def client_connected(self, client: connection.Client) -> None:
            order.append(self.name)

    pipeline = Pipeline([Named("first"), Named("second"), Named("third")])
    with master_with(pipeline) as tctx:
        trigger(tctx, server_hooks.ClientConnectedHook(make_client("10.20.1.9")))
    assert order == ["first", "second", "third"]


# -------------------------------------------------------------------- identifying on the loop


def test_a_recent_answer_is_used_without_a_thread_hop(services: Services) -> None:
    threads: list[str] = []

    def identify(ip: str) -> Client:
        threads.append(threading.current_thread().name)
        return PUPIL

    register = DeviceRegister.empty("testschool")
    clients = RecentClients(identify, lambda: register)
    services.identify = clients.resolve
    services.identify_cached = clients.cached
    with master_with(Pipeline(build_addons(services))) as tctx:
        first, second = make_client(PUPIL.ip), make_client(PUPIL.ip)
        trigger(tctx, server_hooks.ClientConnectedHook(first))
        trigger(tctx, server_hooks.ClientConnectedHook(second))
        for conn in (first, second):
            state = services.connections.get(conn.id)
            assert state is not None and state.client == PUPIL
    # Only the first connection asked the resolver, and not on the loop's thread.
    assert len(threads) == 1 and threads[0] != threading.current_thread().name
    assert (clients.hits, clients.misses) == (1, 1)


def test_recent_clients_expire_and_follow_the_register() -> None:
    clock = FakeClock()
    asked: list[str] = []
    registers = [DeviceRegister.empty("testschool")]

    def resolve(ip: str) -> Client:
        asked.append(ip)
        return PUPIL if ip == PUPIL.ip else Client(ip=ip)

    clients = RecentClients(resolve, lambda: registers[-1], ttl=2.0, unknown_ttl=0.5, clock=clock)
    assert clients.cached(PUPIL.ip) is None
    assert clients.resolve(PUPIL.ip) == PUPIL
    assert clients.cached(PUPIL.ip) == PUPIL
    clock.now += 0.9  # (not yet half its life: no refresh is started)
    assert clients.cached(PUPIL.ip) == PUPIL
    clock.now += 1.2
    assert clients.cached(PUPIL.ip) is None  # past its TTL

    clients.resolve(PUPIL.ip)
    registers.append(DeviceRegister.empty("testschool"))  # the register was reloaded
    assert clients.cached(PUPIL.ip) is None

    unknown = "10.20.9.9"
    assert clients.resolve(unknown) == Client(ip=unknown)
    clock.now += 0.2
    assert clients.cached(unknown) == Client(ip=unknown)
    clock.now += 0.4
    assert clients.cached(unknown) is None  # an unknown device is asked again sooner
    assert asked == [PUPIL.ip, PUPIL.ip, unknown]


def test_recent_clients_stay_bounded() -> None:
    register = object()
    clients = RecentClients(lambda ip: Client(ip=ip, device_id="d"), lambda: register, max_entries=3)
    for n in range(10):
        clients.resolve(f"10.0.0.{n}")
        assert len(clients) <= 3
    assert clients.cached("10.0.0.9") is not None


def test_a_used_answer_is_refreshed_before_it_expires_while_it_still_serves() -> None:
    clock = FakeClock()
    owner = {"device": "LAP-005"}  # who the neighbour table and register say is behind the address

    def resolve(ip: str) -> Client:
        return Client(ip=ip, device_id=owner["device"])

    async def scenario() -> None:
        clients = RecentClients(resolve, lambda: None, ttl=2.0, clock=clock)
        assert await asyncio.shield(clients.lookup(PUPIL.ip)) == Client(ip=PUPIL.ip, device_id="LAP-005")
        clock.now += 0.9  # before half its life: used as it is
        assert clients.cached(PUPIL.ip) is not None and clients.lookups == 1
        owner["device"] = "LAP-099"  # the laptop changed hands
        clock.now += 0.2  # past half its life: still served, and renewed off the loop meanwhile
        served = clients.cached(PUPIL.ip)
        assert served is not None and served.device_id == "LAP-005"
        assert (clients.lookups, clients.refreshes) == (2, 1)
        assert clients.cached(PUPIL.ip) is not None and clients.lookups == 2  # one refresh at a time
        await asyncio.shield(clients.lookup(PUPIL.ip))  # the refresh under way, not a new one
        assert clients.lookups == 2
        renewed = clients.cached(PUPIL.ip)
        assert renewed is not None and renewed.device_id == "LAP-099"
        assert clients.misses == 0  # the device never waited

    asyncio.run(scenario())


def test_an_answer_serves_at_most_its_ttl_from_when_its_lookup_started() -> None:
    clock = FakeClock()
    release = threading.Event()
    owner = {"device": "LAP-005"}

    def resolve(ip: str) -> Client:
        seen = owner["device"]  # what the neighbour table and register say when asked
        release.wait(timeout=10)
        return Client(ip=ip, device_id=seen)

    async def scenario() -> None:
        clients = RecentClients(resolve, lambda: None, ttl=2.0, clock=clock)
        future = clients.lookup(PUPIL.ip)  # asked at 100.0 ...
        await asyncio.sleep(0.01)
        owner["device"] = "LAP-099"  # ... the laptop changes hands at 100.1 ...
        clock.now = 101.5  # ... and the answer (the old owner) comes at 101.5
        release.set()
        await asyncio.shield(future)
        clock.now = 101.99
        assert clients.cached(PUPIL.ip) == Client(ip=PUPIL.ip, device_id="LAP-005")
        await _settle(clients)  # the refresh that use started
        clock.now = 102.0  # two seconds after the old owner's facts were read: never again
        served = clients.cached(PUPIL.ip)
        assert served == Client(ip=PUPIL.ip, device_id="LAP-099")

    asyncio.run(scenario())


@pytest.mark.parametrize("seed", range(6))
def test_a_connection_is_judged_by_facts_no_older_than_the_ttl(seed: int) -> None:
    """The freshness bound, whatever the refreshes do: a connection at time t is judged by
    facts that were current at some instant in (t - ttl, t]. The device connects at random
    moments, its facts change every 0.7 s and lookups take up to a second."""
    import random

    rng = random.Random(seed)
    clock = FakeClock()
    ttl, change_every = 2.0, 0.7
    release = threading.Event()

    def facts_at(now: float) -> int:
        return int((now - 100.0) // change_every)

    def resolve(ip: str) -> Client:
        facts = facts_at(clock.now)
        release.wait(timeout=10)
        return Client(ip=ip, device_id=f"facts-{facts}")

    async def scenario() -> int:
        clients = RecentClients(resolve, lambda: None, ttl=ttl, clock=clock)
        served_stale = waits = 0
        for _ in range(200):
            clock.now += rng.choice((0.05, 0.1, 0.3, 0.9))
            if rng.random() < 0.3:  # the lookups under way come back now
                release.set()
                await _settle(clients)
                release.clear()
            if rng.random() < 0.4:
                continue  # no connection at this moment
            client = clients.cached(PUPIL.ip)
            if client is None:
                waits += 1
                future = clients.lookup(PUPIL.ip)
                clock.now += rng.choice((0.0, 0.2, 0.6))  # the lookup takes its time
                release.set()
                client = await asyncio.shield(future)
                release.clear()
            facts = int((client.device_id or "").removeprefix("facts-"))
            if 100.0 + (facts + 1) * change_every <= clock.now - ttl:
                served_stale += 1
        release.set()
        await _settle(clients)
        assert served_stale == 0
        return int(clients.refreshes)

    assert asyncio.run(scenario()) > 0


async def _settle(clients: RecentClients) -> None:
    """Wait for every lookup under way to finish and be kept."""
    while clients._in_flight:
        await asyncio.gather(*map(asyncio.shield, list(clients._in_flight.values())), return_exceptions=True)
        await asyncio.sleep(0)  # their done callbacks


def test_connections_from_one_address_share_its_lookup(services: Services) -> None:
    calls: list[str] = []
    proceed = threading.Event()

    def identify(ip: str) -> Client:
        calls.append(ip)
        proceed.wait(timeout=10)
        return PUPIL

    clients = RecentClients(identify, lambda: None)
    services.identify, services.identify_cached, services.identify_shared = (
        clients.resolve, clients.cached, clients.lookup)
    pipeline = Pipeline(build_addons(services))

    async def scenario() -> None:
        conns = [make_client(PUPIL.ip) for _ in range(8)]
        waiting = [pipeline.begin_client(conn) for conn in conns]
        assert all(w is not None for w in waiting)
        proceed.set()
        await asyncio.gather(*waiting)
        for conn in conns:
            state = services.connections.get(conn.id)
            assert state is not None and state.client == PUPIL

    with master_with(pipeline) as tctx:
        tctx.master.event_loop.run_until_complete(scenario())
    assert calls == [PUPIL.ip]
    assert (clients.lookups, clients.shared) == (1, 7)


def test_a_failed_shared_lookup_leaves_each_connection_an_unknown_device(
    services: Services, caplog: pytest.LogCaptureFixture
) -> None:
    def identify(ip: str) -> Client:
        raise OSError("the register cannot be read")

    clients = RecentClients(identify, lambda: None)
    services.identify, services.identify_cached, services.identify_shared = (
        clients.resolve, clients.cached, clients.lookup)
    pipeline = Pipeline(build_addons(services))

    async def scenario() -> None:
        conns = [make_client(PUPIL.ip) for _ in range(3)]
        await asyncio.gather(*[pipeline.begin_client(conn) for conn in conns])
        for conn in conns:
            state = services.connections.get(conn.id)
            assert state is not None and state.client == Client(ip=PUPIL.ip)

    with master_with(pipeline) as tctx:
        tctx.master.event_loop.run_until_complete(scenario())
    assert services.counters.identity_errors == 3
    assert clients.lookups == 1 and len(clients) == 0


# ---------------------------------------------------------------------------------- logging


@pytest.mark.parametrize(("level", "server_level"), [(logging.INFO, logging.WARNING), (logging.DEBUG, logging.NOTSET)])
def test_mitmproxy_connection_chatter_is_kept_off_the_hot_path(level: int, server_level: int) -> None:
    from mitmproxy import log as mitm_log
    from mitmproxy import master as mitm_master
    from mitmproxy import options as mitm_options

    proxy_log, server_log = logging.getLogger("schoolgate.proxy"), logging.getLogger("mitmproxy.proxy.server")
    saved = proxy_log.level, server_log.level
    loop = asyncio.new_event_loop()
    try:
        proxy_log.setLevel(level)
        server_log.setLevel(logging.NOTSET)
        master = mitm_master.Master(mitm_options.Options(), event_loop=loop)
        assert any(isinstance(h, mitm_log.LegacyLogEvents) for h in logging.getLogger().handlers)
        quiet_mitmproxy_logging(master)
        # No add_log event (and loop wake-up) per log record, and no INFO line per connection
        # unless the proxy runs at DEBUG.
        assert not any(isinstance(h, mitm_log.LegacyLogEvents) for h in logging.getLogger().handlers)
        assert server_log.level == server_level
    finally:
        proxy_log.setLevel(saved[0])
        server_log.setLevel(saved[1])
        loop.close()
