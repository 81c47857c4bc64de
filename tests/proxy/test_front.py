"""The front door: real sockets on loopback, the real addons and policy, a real origin.

The gateway's redirect is stood in for by the `destination` the front door is given (on
loopback nothing was redirected, so SO_ORIGINAL_DST has no answer); everything else is what
runs in the appliance: the pipeline of schoolgate's addons, the policy's decisions, the event
writer and SQLite.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import logging
import select
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import pytest
from mitmproxy import connection, options
from mitmproxy.proxy.mode_specs import ProxyMode
from proxy_testkit import FACEBOOK_IP, PUPIL, STAFF, TRUSTED_PUPIL, client_hello_bytes, events
from sqlalchemy.orm import Session, sessionmaker

from schoolgate.policy.types import Client
from schoolgate.proxy import front as front_module
from schoolgate.proxy.addons import Pipeline, Services, build_addons
from schoolgate.proxy.front import FrontDoor, listen_sockets
from schoolgate.proxy.relay import new_event_loop
from schoolgate.store.events import EventWriter

LOOPBACK = "127.0.0.1"
MODE = ProxyMode.parse("transparent")
# Each test runs on the proxy daemon's loop and on a plain asyncio loop (conftest.loop_kind).
pytestmark = pytest.mark.usefixtures("loop_kind")
new_loop = new_event_loop  # the loop each test runs on (loop_kind sets it)


def run(main: Coroutine[Any, Any, Any]) -> Any:
    with asyncio.Runner(loop_factory=new_loop) as runner:
        return runner.run(main)


@pytest.fixture
def known_clients() -> dict[str, Client]:
    return {}


def as_loopback(who: Client) -> Client:
    return dataclasses.replace(who, ip=LOOPBACK)


class Origin:
    """A TCP server standing in for the real site: echoes what it gets, counts connections."""

    def __init__(self) -> None:
        self.connections = 0
        self.received = bytearray()
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, LOOPBACK, 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        while chunk := await reader.read(65536):
            self.received += chunk
            writer.write(chunk)
            await writer.drain()
        writer.close()  # the client half-closed: so do we, after echoing everything


Scenario = Callable[[FrontDoor, int, Origin], Awaitable[Any]]


def run_front(
    services: Services,
    destination: tuple[str, int] | None,
    scenario: Scenario,
    handed: list[tuple[bytes, Any]] | None = None,
) -> Any:
    """Start a front door (and an origin) on loopback, run `scenario`, stop both."""

    async def main() -> Any:
        origin = Origin()
        origin_port = await origin.start()
        pipeline = Pipeline(build_addons(services), services.connections)

        async def handover(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            # What mitmproxy is given: the bytes read so far come first.
            first = await reader.read(65536)
            peer = writer.get_extra_info("peername")
            client = connection.Client(peername=peer, sockname=("0.0.0.0", 0), timestamp_start=0.0)
            await pipeline.client_connected(client)  # mitmproxy tells the addons of it
            if handed is not None:
                handed.append((first, services.connections.get(client.id)))
            pipeline.client_disconnected(client)
            writer.close()

        target = destination or (LOOPBACK, origin_port)
        door = FrontDoor(pipeline, handover, options.Options(), MODE, destination=lambda _sock: target)
        door.start(listen_sockets(f"{LOOPBACK}:0", reuse_port=False))
        try:
            port = int(door.listen_addrs()[0][1])
            return await asyncio.wait_for(scenario(door, port, origin), timeout=30)
        finally:
            door.stop()
            assert origin.server is not None
            origin.server.close()

    return run(main())


async def send_hello(port: int, sni: str | None, then: bytes = b"") -> bytes:
    """Connect, send a ClientHello (and `then`), half-close, and read until the proxy closes."""
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    writer.write(client_hello_bytes(sni) + then)
    await writer.drain()
    writer.write_eof()
    try:
        return await reader.read()
    except ConnectionResetError:
        return b""
    finally:
        writer.close()


async def settled(condition: Callable[[], bool]) -> None:
    """Wait until the front door's side of a connection has finished (bounded by run_front)."""
    while not condition():
        await asyncio.sleep(0.01)


def test_a_blocked_hello_is_killed_without_dialling_and_logged(
    services: Services, known_clients: dict[str, Client], sessions: sessionmaker[Session], writer: EventWriter
) -> None:
    known_clients[LOOPBACK] = as_loopback(PUPIL)

    async def scenario(door: FrontDoor, port: int, origin: Origin) -> bytes:
        answer = await send_hello(port, "www.facebook.com")
        await settled(lambda: len(services.connections) == 0)
        return answer

    assert run_front(services, (FACEBOOK_IP, 443), scenario) == b""
    counters = services.counters
    assert (counters.connections_seen, counters.tls_seen, counters.killed, counters.passed_through) == (1, 1, 1, 0)
    logged = events(sessions, writer)
    assert [(e.host, e.verdict, e.client_ip, e.device_id) for e in logged] == [
        ("www.facebook.com", "block", LOOPBACK, PUPIL.device_id)
    ]


@pytest.mark.parametrize(
    ("who", "sni", "verdict"), [(PUPIL, "www.facebook.com", "block"), (STAFF, "allowed.test", "allow")]
)
def test_the_verdict_is_carried_out_before_the_event_is_recorded(
    services: Services, known_clients: dict[str, Client], monkeypatch: pytest.MonkeyPatch,
    who: Client, sni: str, verdict: str,
) -> None:
    """The device has its kill (its socket closed), or the server its connection (dialled),
    before the event is built and handed over: neither waits for the record."""
    known_clients[LOOPBACK] = as_loopback(who)
    doors: list[FrontDoor] = []
    seen: list[tuple[str, bool]] = []  # (verdict, carried out by then)
    closed: set[int] = set()
    real_close = socket.socket.close

    def recording_close(sock: socket.socket) -> None:
        closed.add(id(sock))
        real_close(sock)

    monkeypatch.setattr(socket.socket, "close", recording_close)
    front_sockets: dict[str, socket.socket] = {}
    real_decide = FrontDoor._decide

    def remembering_decide(door: FrontDoor, hello: Any) -> None:
        front_sockets[hello.client.id] = hello.sock
        real_decide(door, hello)

    monkeypatch.setattr(FrontDoor, "_decide", remembering_decide)

    def recording(submit: Callable[[Any], bool]) -> Callable[[Any], bool]:
        def record(event: Any) -> bool:
            relays = list(doors[0]._relays.values())
            killed = any(id(sock) in closed for sock in front_sockets.values())
            dialled = any(relay.dialling for relay in relays)
            seen.append((event.verdict, killed if event.verdict == "block" else dialled))
            return submit(event)

        return record

    services.submit_full = recording(services.submit_full)
    services.submit_allowed = recording(services.submit_allowed)

    async def scenario(door: FrontDoor, port: int, origin: Origin) -> None:
        doors.append(door)
        await send_hello(port, sni)
        await settled(lambda: len(services.connections) == 0)

    run_front(services, None if verdict == "allow" else (FACEBOOK_IP, 443), scenario)
    assert seen == [(verdict, True)]


def test_an_allowed_hello_is_spliced_both_ways_with_flow_control(
    services: Services, known_clients: dict[str, Client], loop_kind: str
) -> None:
    known_clients[LOOPBACK] = as_loopback(STAFF)
    payload = bytes(range(256)) * 16_384  # 4 MiB: more than the relay's buffers hold

    async def scenario(door: FrontDoor, port: int, origin: Origin) -> tuple[bytes, dict[str, int]]:
        # On the daemon's loop the listener is served from the loop's one wait, not as its reader.
        loop_readers = asyncio.get_running_loop()._selector.get_map()  # type: ignore[attr-defined]
        assert (door._sockets[0].fileno() in loop_readers) is (loop_kind == "plain loop")
        answer = await send_hello(port, "allowed.test", payload)
        await settled(lambda: len(services.connections) == 0)
        return answer, door.snapshot()

    answer, snapshot = run_front(services, None, scenario)
    hello = client_hello_bytes("allowed.test")
    assert len(answer) == len(hello) + len(payload)
    assert answer[len(hello):] == payload  # the hello first, then every byte, in order, echoed back
    assert (snapshot["spliced"], snapshot["killed"], snapshot["splices_open"]) == (1, 0, 0)
    assert snapshot["splices_in_loop_wait"] == (loop_kind == "daemon's loop")
    assert (services.counters.passed_through, services.counters.upstream_refused) == (1, 0)


def test_a_devices_last_bytes_and_its_fin_are_taken_in_one_wake_up(
    services: Services, known_clients: dict[str, Client]
) -> None:
    """A device sends its last bytes and closes at once (a TLS client's Finished, then its
    close): the splice reads both when it wakes for the bytes, not the FIN on a wake-up of its
    own, and still passes everything on and half-closes towards the server."""
    known_clients[LOOPBACK] = as_loopback(STAFF)
    device_reads: list[int] = []  # the relays' wake-ups that read a device, from the last bytes on
    hello = client_hello_bytes("allowed.test")

    async def scenario(door: FrontDoor, port: int, origin: Origin) -> bytes:
        loop = asyncio.get_running_loop()
        with socket.socket() as raw:
            raw.setblocking(False)
            await loop.sock_connect(raw, (LOOPBACK, port))
            await loop.sock_sendall(raw, hello)
            echoed = b""
            while len(echoed) < len(hello):  # spliced, and the device's side being read
                echoed += await loop.sock_recv(raw, 65536)
            reads_before = door.splices.relays.read_wakeups[0]
            raw.send(b"finished")  # the last bytes and the FIN, before the loop runs again
            raw.shutdown(socket.SHUT_WR)
            # Both in at the proxy's side before its loop runs again (a busy kernel may hand
            # loopback packets over a moment later): bounded by the kernel delivering the FIN.
            (relay,) = door._relays.values()
            arrived = select.poll()
            arrived.register(relay.device_fd, select.POLLRDHUP)
            assert arrived.poll(30_000)
            rest = b""
            while chunk := await loop.sock_recv(raw, 65536):  # echoed, then closed after our FIN
                rest += chunk
        await settled(lambda: len(services.connections) == 0)
        device_reads.append(door.splices.relays.read_wakeups[0] - reads_before)
        return echoed + rest

    assert run_front(services, None, scenario) == hello + b"finished"
    assert device_reads == [1]


@pytest.mark.parametrize(("who", "sni", "spliced"), [(PUPIL, "www.facebook.com", 0), (STAFF, "allowed.test", 1)])
def test_a_connection_killed_or_spliced_is_never_made_non_blocking(
    services: Services, known_clients: dict[str, Client], monkeypatch: pytest.MonkeyPatch,
    who: Client, sni: str, spliced: int,
) -> None:
    """The front door reads a connection's first bytes without making its socket non-blocking
    (MSG_DONTWAIT), and its relay reads and sends with MSG_DONTWAIT too: a killed connection
    and a spliced one both go their whole way with no ioctl of their own."""
    known_clients[LOOPBACK] = as_loopback(who)
    door_ports: list[int] = []
    calls: list[bool] = []  # setblocking's argument, for the sockets the front door accepted
    real_setblocking = socket.socket.setblocking

    def recording_setblocking(sock: socket.socket, flag: bool) -> None:
        if door_ports and sock.fileno() >= 0 and sock.getsockname()[1] == door_ports[0]:
            calls.append(flag)
        real_setblocking(sock, flag)

    monkeypatch.setattr(socket.socket, "setblocking", recording_setblocking)

    async def scenario(door: FrontDoor, port: int, origin: Origin) -> dict[str, int]:
        door_ports.append(port)
        await send_hello(port, sni)
        await settled(lambda: len(services.connections) == 0)
        return door.snapshot()

    snapshot = run_front(services, (FACEBOOK_IP, 443) if not spliced else None, scenario)
    assert (snapshot["killed"], snapshot["spliced"]) == (1 - spliced, spliced)
    assert calls == []


def test_a_splice_ended_by_both_fins_is_closed_without_unwatching_its_last_side(
    services: Services, known_clients: dict[str, Client]
) -> None:
    """A splice's epoll changes: the server watched for its connect, then for reading, the
    device watched for reading, the device unwatched at its FIN (the server may still answer);
    at the server's FIN the connection ends, and closing its sockets takes both out of the
    epoll: no change is made for that last side first."""
    known_clients[LOOPBACK] = as_loopback(STAFF)

    async def scenario(door: FrontDoor, port: int, origin: Origin) -> tuple[bytes, tuple[int, int, int]]:
        answer = await send_hello(port, "allowed.test", b"the device's last words")
        await settled(lambda: len(services.connections) == 0)
        return answer, door.splices.relays.epoll_changes

    answer, changes = run_front(services, None, scenario)
    assert answer.endswith(b"the device's last words")  # the hello and the rest echoed, then closed
    assert len(answer) == len(client_hello_bytes("allowed.test") + b"the device's last words")
    assert changes == (2, 1, 1)  # (register, modify, unregister): the server's two, the device's two


def test_an_allowed_hello_to_a_server_that_refuses_is_ended_unspliced(
    services: Services, known_clients: dict[str, Client]
) -> None:
    """The server refuses the passthrough's connection: the first send says so, and the
    device's connection is ended with nothing left registered or counted as spliced."""
    known_clients[LOOPBACK] = as_loopback(STAFF)
    with socket.socket() as closed:  # a port nothing listens on (bound, never listened)
        closed.bind((LOOPBACK, 0))
        refusing = (LOOPBACK, int(closed.getsockname()[1]))

        async def scenario(door: FrontDoor, port: int, origin: Origin) -> tuple[bytes, dict[str, int]]:
            answer = await send_hello(port, "allowed.test")
            await settled(lambda: len(services.connections) == 0)
            return answer, door.snapshot()

        answer, snapshot = run_front(services, refusing, scenario)
    assert answer == b""
    assert (snapshot["spliced"], snapshot["splices_open"], snapshot["killed"]) == (0, 0, 0)
    assert services.counters.passed_through == 1  # judged and logged as allowed: the server said no


def test_passthroughs_whose_server_never_answers_are_closed_by_one_check_not_a_timer_each(
    services: Services, known_clients: dict[str, Client], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server drops the passthroughs' SYNs (its accept queue is full): each device's
    connection is closed once the connect timeout has passed, and the dials are watched by one
    periodic check while any is outstanding, not by a timer made (and cancelled) per dial."""
    monkeypatch.setattr(front_module, "CONNECT_TIMEOUT_S", 0.3)
    monkeypatch.setattr(front_module, "DIAL_CHECK_S", 0.05)
    known_clients[LOOPBACK] = as_loopback(STAFF)
    scheduled: list[str] = []  # what the front door and its relays asked the loop to call later

    with socket.socket() as full:
        full.bind((LOOPBACK, 0))
        full.listen(0)
        # One connection fills the accept queue of a listener that never accepts: the kernel
        # drops the SYNs that follow, so a dial to it waits for an answer that never comes.
        with socket.create_connection(full.getsockname()):

            async def scenario(door: FrontDoor, port: int, origin: Origin) -> tuple[list[bytes], dict[str, int]]:
                loop = asyncio.get_running_loop()
                real_call_later = loop.call_later

                def recording_call_later(delay: float, callback: Callable[..., Any], *args: Any) -> Any:
                    scheduled.append(getattr(callback, "__qualname__", repr(callback)))
                    return real_call_later(delay, callback, *args)

                monkeypatch.setattr(loop, "call_later", recording_call_later)
                answers = await asyncio.gather(*(send_hello(port, "allowed.test") for _ in range(3)))
                await settled(lambda: len(services.connections) == 0)
                return answers, door.snapshot()

            answers, snapshot = run_front(services, full.getsockname(), scenario)
    assert answers == [b""] * 3  # closed unanswered
    assert (snapshot["spliced"], snapshot["splices_open"]) == (0, 0)
    assert services.counters.passed_through == 3  # judged and logged as allowed; the server never answered
    assert scheduled and set(scheduled) == {"FrontDoor._check_dials"}  # no timer of a relay's own


def test_a_spliced_connection_can_be_closed_by_its_id(services: Services, known_clients: dict[str, Client]) -> None:
    """What Rejudge does when lunch ends: the daemon's close() reaches the front's splice."""
    known_clients[LOOPBACK] = as_loopback(STAFF)

    async def scenario(door: FrontDoor, port: int, origin: Origin) -> bytes:
        reader, writer = await asyncio.open_connection(LOOPBACK, port)
        writer.write(client_hello_bytes("allowed.test"))
        await reader.readexactly(len(client_hello_bytes("allowed.test")))  # echoed: spliced
        (conn_id,) = [conn_id for conn_id, _state in services.connections.items()]
        relay = door._relays[conn_id]
        state = relay.state()
        assert state is not None
        for fd in (relay.device_fd, state["server_fd"]):  # no Nagle delay either way, as asyncio's relays
            with socket.fromfd(fd, socket.AF_INET, socket.SOCK_STREAM) as sock:  # (a duplicate)
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        assert door.close(conn_id)
        assert not door.close("not-a-connection")
        try:
            rest = await reader.read()
        except ConnectionResetError:
            rest = b""
        writer.close()
        await settled(lambda: len(services.connections) == 0)
        return rest

    assert run_front(services, None, scenario) == b""


def test_an_idle_splice_is_closed(
    services: Services, known_clients: dict[str, Client], monkeypatch: pytest.MonkeyPatch
) -> None:
    """As mitmproxy closed an idle relay: a device gone without a FIN holds no sockets for ever."""
    known_clients[LOOPBACK] = as_loopback(STAFF)
    monkeypatch.setattr(front_module, "SPLICE_IDLE_S", 0.3)
    monkeypatch.setattr(front_module, "IDLE_SWEEP_S", 0.1)

    async def scenario(door: FrontDoor, port: int, origin: Origin) -> tuple[bytes, int]:
        reader, writer = await asyncio.open_connection(LOOPBACK, port)
        hello = client_hello_bytes("allowed.test")
        writer.write(hello)
        await reader.readexactly(len(hello))  # spliced, and the origin answered
        try:
            rest = await reader.read()  # then nothing either way: closed by the sweep
        except ConnectionResetError:
            rest = b""
        writer.close()
        await settled(lambda: len(services.connections) == 0)
        return rest, door.snapshot()["idle_closed"]

    assert run_front(services, None, scenario) == (b"", 1)


@pytest.mark.parametrize(
    ("who", "first_bytes", "judged"),
    [
        (TRUSTED_PUPIL, client_hello_bytes("www.facebook.com"), True),  # the block page: intercepted
        (PUPIL, b"GET / HTTP/1.1\r\nHost: www.facebook.com\r\n\r\n", False),  # plain HTTP
        (PUPIL, b"\x16\x03\x01\x00\x05hello", False),  # not a ClientHello mitmproxy could read
    ],
)
def test_what_must_be_intercepted_is_handed_to_mitmproxy_with_its_bytes(
    services: Services, known_clients: dict[str, Client], who: Client, first_bytes: bytes, judged: bool
) -> None:
    known_clients[LOOPBACK] = as_loopback(who)
    handed: list[tuple[bytes, Any]] = []

    async def scenario(door: FrontDoor, port: int, origin: Origin) -> dict[str, int]:
        reader, writer = await asyncio.open_connection(LOOPBACK, port)
        writer.write(first_bytes)
        await writer.drain()
        await reader.read()
        writer.close()
        await settled(lambda: len(handed) == 1 and len(services.connections) == 0)
        return door.snapshot()

    snapshot = run_front(services, (FACEBOOK_IP, 443), scenario, handed)
    ((given, state),) = handed
    assert given == first_bytes
    # mitmproxy's connection carries the front door's state: identified once, judged once.
    assert state is not None and state.client.device_id == who.device_id
    assert (state.judgement is not None) is judged
    assert services.counters.connections_seen == 1
    assert services.counters.intercepted == int(judged)
    assert (snapshot["handed_over"], snapshot["spliced"], snapshot["killed"]) == (1, 0, 0)


def test_a_silent_client_is_closed_unjudged(
    services: Services, known_clients: dict[str, Client], monkeypatch: pytest.MonkeyPatch
) -> None:
    known_clients[LOOPBACK] = as_loopback(PUPIL)
    monkeypatch.setattr(front_module, "HELLO_WAIT_S", 0.2)

    async def scenario(door: FrontDoor, port: int, origin: Origin) -> bytes:
        reader, writer = await asyncio.open_connection(LOOPBACK, port)
        answer = await reader.read()  # the front door closes it after HELLO_WAIT_S
        writer.close()
        await settled(lambda: len(services.connections) == 0)
        return answer

    assert run_front(services, (FACEBOOK_IP, 443), scenario) == b""
    assert (services.counters.killed, services.counters.events_submitted) == (0, 0)


def test_a_connection_without_an_original_destination_is_dropped(services: Services) -> None:
    """Someone dialled the proxy's port directly: no redirect, nothing to judge or relay."""

    async def main() -> bytes:
        pipeline = Pipeline(build_addons(services), services.connections)

        async def never(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            raise AssertionError("handed over")

        door = FrontDoor(pipeline, never, options.Options(), MODE)  # the real SO_ORIGINAL_DST
        door.start(listen_sockets(f"{LOOPBACK}:0", reuse_port=False))
        try:
            reader, writer = await asyncio.open_connection(LOOPBACK, int(door.listen_addrs()[0][1]))
            try:
                return await asyncio.wait_for(reader.read(), timeout=30)
            except ConnectionResetError:
                return b""
            finally:
                writer.close()
        finally:
            door.stop()

    assert run(main()) == b""
    assert services.counters.connections_seen == 0


def _two_records(hello: bytes) -> bytes:
    """The same ClientHello split over two TLS records (as a large one arrives)."""
    body = hello[5:]
    half = len(body) // 2
    return b"".join(
        hello[:3] + len(part).to_bytes(2, "big") + part for part in (body[:half], body[half:])
    )


HELLO = client_hello_bytes("www.facebook.com")


@pytest.mark.parametrize(
    ("data", "complete", "sni"),
    [
        (HELLO, True, "www.facebook.com"),  # all in: parsed once, here
        (HELLO[:100], False, None),  # more to come
        (_two_records(HELLO), True, "www.facebook.com"),
        (_two_records(HELLO)[:-10], False, None),
        (b"\x16", False, None),  # a record's first byte: wait for the rest
        (b"GET / HTTP/1.1\r\n", True, None),  # not TLS: for mitmproxy
        (b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00", True, None),  # a handshake, not a ClientHello
        (b"\x16" * front_module.MAX_HELLO, True, None),  # as much as the front reads: decide on it
    ],
    ids=["whole", "partial", "two-records", "two-records-partial", "one-byte", "http", "not-hello", "too-long"],
)
def test_hello_ready_says_when_to_decide_and_hands_on_the_parse(data: bytes, complete: bool, sni: str | None) -> None:
    ready, parsed = front_module.hello_ready(data)
    assert ready is complete
    assert (parsed.sni if parsed is not None else None) == sni


@pytest.mark.parametrize(("listen", "families"), [("127.0.0.1:0", {socket.AF_INET}), ("[::1]:0", {socket.AF_INET6})])
def test_listen_sockets_by_address(listen: str, families: set[int]) -> None:
    if ":" in listen.rpartition(":")[0] and not socket.has_ipv6:
        pytest.skip("no IPv6 here")
    sockets = listen_sockets(listen, reuse_port=True)
    try:
        assert {s.family for s in sockets} == families
        assert all(s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) for s in sockets)
        # Handed over once the first bytes are in: judged in the accept callback.
        assert all(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT) > 0 for s in sockets)
    finally:
        for s in sockets:
            s.close()


def test_the_front_doors_context_is_mitmproxys_with_the_original_destination(services: Services) -> None:
    """The front builds each connection's Context without Context.__init__ (which would make
    a server, with a uuid4, only to have its address replaced): it must hold exactly what
    mitmproxy's own holds, so an addon sees no difference."""
    from mitmproxy.proxy.context import Context

    async def main() -> None:
        pipeline = Pipeline(build_addons(services), services.connections)
        opts = options.Options()
        door = FrontDoor(pipeline, _never_handed, opts, MODE)
        first, first_context = door._connection(("10.0.0.7", 50123), (FACEBOOK_IP, 443))
        second, _ = door._connection(("10.0.0.7", 50124), (FACEBOOK_IP, 443))
        reference = Context(first, opts)
        assert set(vars(first_context)) == set(vars(reference))
        assert first_context.client is first and first_context.options is opts and first_context.layers == []
        assert first_context.server.address == (FACEBOOK_IP, 443)
        assert type(first_context.server) is type(reference.server)
        ids = {first.id, second.id, first_context.server.id}
        assert len(ids) == 3  # unique per connection, the server's apart from its client's
        assert (first.peername, first.sockname, first.proxy_mode) == (("10.0.0.7", 50123), (FACEBOOK_IP, 443), MODE)

    run(main())


async def _never_handed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    raise AssertionError("handed over")


def test_a_hello_in_with_the_connection_is_judged_in_the_accept_callback(
    services: Services, known_clients: dict[str, Client], sessions: sessionmaker[Session], writer: EventWriter
) -> None:
    """A client identified a moment ago whose ClientHello is in when it is accepted is killed
    (or spliced) without a task; one whose identity must be looked up waits for it."""
    known_clients[LOOPBACK] = as_loopback(PUPIL)
    from schoolgate.proxy.clients import RecentClients

    recent = RecentClients(services.identify, lambda: None, ttl=3600)
    services.identify, services.identify_cached = recent.resolve, recent.cached

    async def scenario(door: FrontDoor, port: int, origin: Origin) -> tuple[int, int]:
        for done in range(1, 4):
            # Connected and sent before the loop runs again: the hello is in when it accepts.
            with socket.create_connection((LOOPBACK, port)) as raw:
                raw.sendall(client_hello_bytes("www.facebook.com"))
                await settled(lambda done=done: door.snapshot()["killed"] == done)
        await settled(lambda: len(services.connections) == 0)
        return door.snapshot()["judged_at_accept"], door.snapshot()["killed"]

    judged_at_accept, killed = run_front(services, (FACEBOOK_IP, 443), scenario)
    # The first was looked up off the loop (a task); the next two were known already.
    assert (judged_at_accept, killed) == (2, 3)
    assert [e.verdict for e in events(sessions, writer)] == ["block"] * 3


def test_the_front_doors_server_is_the_one_mitmproxy_would_make() -> None:
    from schoolgate.proxy.front import new_server

    made = new_server((FACEBOOK_IP, 443), "front-7-server")
    reference = connection.Server(address=(FACEBOOK_IP, 443), id="front-7-server")
    assert type(made) is connection.Server
    assert vars(made) == vars(reference)
    made.error = "refused by the school's filtering policy"  # what UpstreamGate sets: its own, not shared
    assert new_server((FACEBOOK_IP, 443), "front-8-server").error is None


def test_out_of_descriptors_pauses_accepting_then_resumes(
    services: Services, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """EMFILE on accept: the listener is not watched for ACCEPT_PAUSE_S (the backlog keeps the
    connections), then watched again, and the connection waiting in it is served, on either loop."""
    monkeypatch.setattr(front_module, "ACCEPT_PAUSE_S", 0.2)
    failures = [errno.EMFILE]  # what accept_batch says when accept4 fails so (tests/proxy/test_accept.py)
    real_accept = front_module.accept_batch
    failed_at: list[float] = []
    accepted_at: list[float] = []

    def accept(fd: int, limit: int, read_max: int, want_destination: bool) -> tuple[list[Any], int, int]:
        if failures:
            failed_at.append(time.monotonic())
            return [], failures.pop(), 0
        accepted = real_accept(fd, limit, read_max, want_destination)
        if accepted[0]:
            accepted_at.append(time.monotonic())
        return accepted

    monkeypatch.setattr(front_module, "accept_batch", accept)

    async def main() -> tuple[int, int]:
        pipeline = Pipeline(build_addons(services), services.connections)
        door = FrontDoor(pipeline, _no_handover, options.Options(), MODE, destination=lambda _sock: (LOOPBACK, 9))
        door.start(listen_sockets(f"{LOOPBACK}:0", reuse_port=False))
        try:
            _reader, writer = await asyncio.open_connection(LOOPBACK, int(door.listen_addrs()[0][1]))
            writer.write(b"GET / HTTP/1.1\r\n")  # the kernel hands a connection over once it has spoken
            await settled(lambda: door.accept_errors == 1)
            await settled(lambda: door.accepted == 1)  # resumed after the pause: the waiting one taken
            writer.close()
            return door.accept_errors, door.accepted
        finally:
            door.stop()

    with caplog.at_level(logging.ERROR, logger="schoolgate.proxy.front"):
        assert run(asyncio.wait_for(main(), timeout=30)) == (1, 1)
    assert "cannot accept connections" in caplog.text
    assert accepted_at[0] - failed_at[0] >= 0.2  # not retried before the pause was over


async def _no_handover(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.close()
