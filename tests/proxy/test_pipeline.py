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
    clock.now += 1.9
    assert clients.cached(PUPIL.ip) == PUPIL
    clock.now += 0.2
    assert clients.cached(PUPIL.ip) is None  # past its TTL

    clients.resolve(PUPIL.ip)
    registers.append(DeviceRegister.empty("testschool"))  # the register was reloaded
    assert clients.cached(PUPIL.ip) is None

    unknown = "10.20.9.9"
    assert clients.resolve(unknown) == Client(ip=unknown)
    clock.now += 0.4
    assert clients.cached(unknown) == Client(ip=unknown)
    clock.now += 0.2
    assert clients.cached(unknown) is None  # an unknown device is asked again sooner
    assert asked == [PUPIL.ip, PUPIL.ip, unknown]


def test_recent_clients_stay_bounded() -> None:
    register = object()
    clients = RecentClients(lambda ip: Client(ip=ip, device_id="d"), lambda: register, max_entries=3)
    for n in range(10):
        clients.resolve(f"10.0.0.{n}")
        assert len(clients) <= 3
    assert clients.cached("10.0.0.9") is not None


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
