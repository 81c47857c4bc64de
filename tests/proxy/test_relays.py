"""The relays' byte copying in C (proxy/_relay.c, `Relays`), through the splice poller that
owns them, on the proxy daemon's loop and on a plain asyncio loop (conftest.loop_kind).

Real TCP sockets on loopback: the test holds a device's end and a server's end, and the relay
in between holds the front door's side of the device's connection and its own dial to the
server, as the front door hands them over after a PASS."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import os
import select
import socket
import struct
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from schoolgate.proxy._relay import READ_SIZE
from schoolgate.proxy.relay import SplicePoller, SpliceSelector, new_event_loop

pytestmark = pytest.mark.usefixtures("loop_kind")
new_loop = new_event_loop  # the loop each test runs on (loop_kind sets it)
LOOPBACK = "127.0.0.1"
HELLO = b"\x16\x03\x01 a ClientHello stands in here"
DEVICE, SERVER = 0, 1


class Token:
    """What the front door's Relay is to Relays: told once, when the relay has ended."""

    def __init__(self) -> None:
        self.errors: list[int] = []

    def ended(self, error: int) -> None:
        self.errors.append(error)


@dataclasses.dataclass
class Splice:
    ends: tuple[socket.socket, socket.socket]  # the device's end and the server's end (the test's)
    device_fd: int  # the front door's side of the device's connection, now the relay's
    token: Token


Scenario = Callable[[SplicePoller, "Lab"], Awaitable[Any]]


@dataclasses.dataclass
class Lab:
    front: socket.socket  # where devices connect (the front door's listener)
    origin: socket.socket  # the server the relays dial

    async def splice(self, poller: SplicePoller, *, hello: bytes = HELLO) -> Splice:
        """A device connected, and its connection handed to the relays with a dial to the origin;
        returns once the origin has the ClientHello."""
        loop = asyncio.get_running_loop()
        device = socket.socket()
        device.setblocking(False)
        await loop.sock_connect(device, self.front.getsockname())
        front_side, _ = self.front.accept()  # queued already: the handshake is done
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        assert server.connect_ex(self.origin.getsockname()) in (0, errno.EINPROGRESS)
        token = Token()
        device_fd = front_side.fileno()
        poller.relays.add(front_side.detach(), server.detach(), hello, token)
        accepted, _ = await loop.sock_accept(self.origin)
        accepted.setblocking(False)
        assert await receive_exactly(accepted, len(hello)) == hello
        return Splice((device, accepted), device_fd, token)


def listener(receive_buffer: int | None = None) -> socket.socket:
    sock = socket.socket()
    if receive_buffer is not None:  # inherited by the accepted sockets (and no autotuning)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.bind((LOOPBACK, 0))
    sock.listen(64)
    return sock


def run(scenario: Scenario, *, origin_receive_buffer: int | None = None) -> Any:
    async def main() -> Any:
        poller = SplicePoller(asyncio.get_running_loop())
        with listener() as front, listener(origin_receive_buffer) as origin:
            origin.setblocking(False)
            try:
                return await asyncio.wait_for(scenario(poller, Lab(front, origin)), timeout=60)
            finally:
                poller.close()

    with asyncio.Runner(loop_factory=new_loop) as runner:
        return runner.run(main())


async def receive_exactly(sock: socket.socket, size: int) -> bytes:
    loop = asyncio.get_running_loop()
    data = bytearray()
    while len(data) < size:
        chunk = await loop.sock_recv(sock, size - len(data))
        assert chunk, f"ended after {len(data)} of {size} bytes"
        data += chunk
    return bytes(data)


async def receive_to_end(sock: socket.socket) -> tuple[bytes, bool]:
    """Everything until the peer's FIN: (the bytes, whether it ended with a reset instead)."""
    loop = asyncio.get_running_loop()
    data = bytearray()
    while True:
        try:
            chunk = await loop.sock_recv(sock, 1 << 20)
        except ConnectionResetError:
            return bytes(data), True
        if not chunk:
            return bytes(data), False
        data += chunk


async def until(condition: Callable[[], bool]) -> None:
    """Let the loop run until `condition` holds (bounded by run's timeout)."""
    while not condition():
        await asyncio.sleep(0.001)


def payload(size: int, seed: int) -> bytes:
    """Bytes that differ from position to position and from payload to payload."""
    block = b"".join(struct.pack(">IH", seed, i) for i in range(4096))
    return (block * (size // len(block) + 1))[:size]


def reset(sock: socket.socket) -> None:
    """Close with a reset (RST), not a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@contextlib.contextmanager
def closing(splice: Splice) -> Iterator[Splice]:
    try:
        yield splice
    finally:
        for end in splice.ends:
            end.close()


@pytest.mark.parametrize("first", [DEVICE, SERVER], ids=["device finishes first", "server finishes first"])
def test_a_fin_is_passed_on_as_a_half_close_and_the_other_way_goes_on(first: int) -> None:
    async def scenario(poller: SplicePoller, lab: Lab) -> None:
        loop = asyncio.get_running_loop()
        with closing(await lab.splice(poller)) as splice:
            finisher, other = splice.ends[first], splice.ends[1 - first]
            await loop.sock_sendall(finisher, b"last words")
            finisher.shutdown(socket.SHUT_WR)
            assert await receive_to_end(other) == (b"last words", False)  # the FIN came through
            assert splice.token.errors == []  # half-closed, not ended
            await loop.sock_sendall(other, b"the answer after the FIN")
            assert await receive_exactly(finisher, 24) == b"the answer after the FIN"
            other.shutdown(socket.SHUT_WR)
            assert await receive_to_end(finisher) == (b"", False)
            await until(lambda: splice.token.errors != [])
            assert splice.token.errors == [0]  # both FINs, everything delivered: an orderly end
            assert len(poller.relays) == 0 and poller.relays.buffered == 0

    run(scenario)


@pytest.mark.parametrize("resetting", [DEVICE, SERVER], ids=["device resets", "server resets"])
def test_a_reset_either_side_ends_the_relay_and_closes_the_other_side(resetting: int) -> None:
    async def scenario(poller: SplicePoller, lab: Lab) -> None:
        with closing(await lab.splice(poller)) as splice:
            reset(splice.ends[resetting])
            await until(lambda: splice.token.errors != [])
            assert splice.token.errors == [errno.ECONNRESET]
            data, _reset = await receive_to_end(splice.ends[1 - resetting])
            assert data == b""  # closed at once (with a FIN or a reset)
            assert len(poller.relays) == 0

    run(scenario)


@pytest.mark.parametrize("closing_side", [DEVICE, SERVER], ids=["device closes", "server closes"])
@pytest.mark.parametrize("size", [100, 3 * READ_SIZE + 17], ids=["a few bytes", "several reads"])
def test_a_peer_that_closes_with_data_in_flight_has_it_all_delivered(closing_side: int, size: int) -> None:
    """The last bytes and the FIN are both in when the relay wakes (EPOLLRDHUP): it reads to the
    FIN in that one wake-up, delivers everything, and passes the FIN on."""

    async def scenario(poller: SplicePoller, lab: Lab) -> int:
        loop = asyncio.get_running_loop()
        with closing(await lab.splice(poller)) as splice:
            closer, other = splice.ends[closing_side], splice.ends[1 - closing_side]
            data = payload(size, seed=closing_side)
            reads_before = poller.relays.read_wakeups[closing_side]
            await loop.sock_sendall(closer, data)
            closer.close()
            if size < READ_SIZE:  # all of it and the FIN at the relay's socket before the loop runs again
                state = poller.relays.state(splice.device_fd, splice.token)
                assert state is not None
                front_side = splice.device_fd if closing_side == DEVICE else state["server_fd"]
                arrived = select.poll()
                arrived.register(front_side, select.POLLRDHUP)
                assert arrived.poll(30_000)
            assert await receive_to_end(other) == (data, False)
            other.close()
            await until(lambda: splice.token.errors != [])
            assert splice.token.errors == [0]
            return poller.relays.read_wakeups[closing_side] - reads_before

    wakeups = run(scenario)
    if size < READ_SIZE:
        assert wakeups == 1  # the bytes and the FIN in one wake-up, not one each


@pytest.mark.parametrize("slow", [DEVICE, SERVER], ids=["device reads slowly", "server reads slowly"])
def test_flow_control_holds_at_most_one_read_for_a_slow_reader(slow: int) -> None:
    """A reader that takes nothing for a while: the relay keeps what it could not send (one
    read at most), stops reading the sender, and the sender's own sends stall; once the reader
    reads again everything arrives, in order."""
    size = 48 * 1024 * 1024
    samples: list[tuple[int, int, int]] = []  # (bytes held, bytes waiting for the slow side, sender read)

    async def scenario(poller: SplicePoller, lab: Lab) -> bytes:
        loop = asyncio.get_running_loop()
        with closing(await lab.splice(poller)) as splice:
            reader, sender = splice.ends[slow], splice.ends[1 - slow]
            reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            data = payload(size, seed=7)
            sending = asyncio.ensure_future(loop.sock_sendall(sender, data))
            key = "waiting_for_device" if slow == DEVICE else "waiting_for_server"
            read_key = "server_read" if slow == DEVICE else "device_read"

            def state() -> dict[str, int]:
                current = poller.relays.state(splice.device_fd, splice.token)
                assert current is not None
                return current

            await until(lambda: state()[key] > 0)  # the slow side's buffers are full
            for _ in range(20):  # the loop runs on: nothing more is read meanwhile
                samples.append((poller.relays.buffered, state()[key], state()[read_key]))
                await asyncio.sleep(0.005)
            assert not sending.done()  # the sender is held back, not buffered for
            received = bytearray()
            while len(received) < size:
                received += await loop.sock_recv(reader, 1 << 20)
            await sending
            return bytes(received)

    assert run(scenario) == payload(size, seed=7)
    assert all(0 < held <= READ_SIZE and waiting == held and not read for held, waiting, read in samples)


def test_a_server_that_refuses_ends_the_relay_unspliced() -> None:
    async def scenario(poller: SplicePoller, lab: Lab) -> None:
        loop = asyncio.get_running_loop()
        with socket.socket() as closed:  # a port nothing listens on (bound, never listened)
            closed.bind((LOOPBACK, 0))
            device = socket.socket()
            device.setblocking(False)
            await loop.sock_connect(device, lab.front.getsockname())
            front_side, _ = lab.front.accept()
            server = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
            server.connect_ex(closed.getsockname())
            token = Token()
            poller.relays.add(front_side.detach(), server.detach(), HELLO, token)
            with device:
                await until(lambda: token.errors != [])
                assert token.errors == [errno.ECONNREFUSED]  # found by the ClientHello's send
                assert await receive_to_end(device) == (b"", False)
            assert (poller.relays.spliced, poller.relays.dialling, len(poller.relays)) == (0, 0, 0)

    run(scenario)


def test_a_dial_the_server_never_answers_is_closed_when_overdue() -> None:
    async def scenario(poller: SplicePoller, lab: Lab) -> None:
        loop = asyncio.get_running_loop()
        with socket.socket() as full:
            full.bind((LOOPBACK, 0))
            full.listen(0)
            # One connection fills the accept queue of a listener that never accepts: the kernel
            # drops the SYNs that follow, so a dial to it waits for an answer that never comes.
            with socket.create_connection(full.getsockname()):
                device = socket.socket()
                device.setblocking(False)
                await loop.sock_connect(device, lab.front.getsockname())
                front_side, _ = lab.front.accept()
                server = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
                server.connect_ex(full.getsockname())
                token = Token()
                poller.relays.add(front_side.detach(), server.detach(), HELLO, token)
                with device:
                    for _ in range(5):
                        await asyncio.sleep(0.01)
                    assert (poller.relays.dialling, poller.relays.close_overdue_dials(3600.0)) == (1, [])
                    assert poller.relays.close_overdue_dials(0.0) == [token]
                    assert (poller.relays.dialling, len(poller.relays), poller.relays.spliced) == (0, 0, 0)
                    assert await receive_to_end(device) == (b"", False)
        assert token.errors == []  # closed by the caller's check: handed to it, not back by the wait

    run(scenario)


def test_an_idle_relay_is_closed_by_the_idle_sweep_and_a_busy_one_is_not() -> None:
    async def scenario(poller: SplicePoller, lab: Lab) -> None:
        loop = asyncio.get_running_loop()
        with closing(await lab.splice(poller)) as splice:
            await loop.sock_sendall(splice.ends[DEVICE], b"x")
            assert await receive_exactly(splice.ends[SERVER], 1) == b"x"
            assert poller.relays.close_idle(3600.0) == []
            await asyncio.sleep(0.01)
            assert poller.relays.close_idle(0.0) == [splice.token]
            assert len(poller.relays) == 0
            for end in splice.ends:
                assert (await receive_to_end(end))[0] == b""

    run(scenario)


def test_a_relay_is_closed_by_its_device_descriptor_and_its_token_alone() -> None:
    async def scenario(poller: SplicePoller, lab: Lab) -> None:
        with closing(await lab.splice(poller)) as splice, closing(await lab.splice(poller)) as other:
            assert not poller.relays.close(splice.device_fd, Token())  # another relay's token
            assert not poller.relays.close(other.device_fd, splice.token)
            assert poller.relays.close(splice.device_fd, splice.token)
            assert not poller.relays.close(splice.device_fd, splice.token)  # closed already
            assert poller.relays.state(splice.device_fd, splice.token) is None
            for end in splice.ends:
                assert (await receive_to_end(end))[0] == b""
            assert len(poller.relays) == 1 and splice.token.errors == []  # the other one goes on
            loop = asyncio.get_running_loop()
            await loop.sock_sendall(other.ends[DEVICE], b"still here")
            assert await receive_exactly(other.ends[SERVER], 10) == b"still here"

    run(scenario)


def test_many_relays_at_once_copy_large_transfers_byte_for_byte() -> None:
    count, size = 12, 3 * 1024 * 1024 + 5

    async def scenario(poller: SplicePoller, lab: Lab) -> list[tuple[bytes, bytes]]:
        loop = asyncio.get_running_loop()
        splices = [await lab.splice(poller) for _ in range(count)]

        async def one(index: int, splice: Splice) -> tuple[bytes, bytes]:
            device, server = splice.ends
            up, down = payload(size, seed=2 * index), payload(size, seed=2 * index + 1)

            async def send_then_finish(sock: socket.socket, data: bytes) -> None:
                await loop.sock_sendall(sock, data)
                sock.shutdown(socket.SHUT_WR)

            sends = asyncio.gather(send_then_finish(device, up), send_then_finish(server, down))
            (at_server, _), (at_device, _) = await asyncio.gather(receive_to_end(server), receive_to_end(device))
            await sends
            return at_server, at_device

        try:
            results = await asyncio.gather(*(one(index, splice) for index, splice in enumerate(splices)))
            await until(lambda: all(splice.token.errors for splice in splices))
            assert [splice.token.errors for splice in splices] == [[0]] * count
            assert (len(poller.relays), poller.relays.buffered, poller.relays.spliced) == (0, 0, count)
            return results
        finally:
            for splice in splices:
                for end in splice.ends:
                    end.close()

    results = run(scenario)
    for index, (at_server, at_device) in enumerate(results):
        assert at_server == payload(size, seed=2 * index)
        assert at_device == payload(size, seed=2 * index + 1)


def test_no_python_callback_runs_for_a_relays_readiness(monkeypatch: pytest.MonkeyPatch) -> None:
    """The relays' own events are handled in C: the poller's Python dispatch (`run`) never sees
    a relay's descriptor, however many wake-ups its transfer takes."""
    dispatched: set[int] = set()
    real_run = SplicePoller.run

    def recording_run(poller: SplicePoller, ready: list[tuple[int, int]]) -> None:
        dispatched.update(fd for fd, _events in ready)
        real_run(poller, ready)

    monkeypatch.setattr(SplicePoller, "run", recording_run)

    async def scenario(poller: SplicePoller, lab: Lab) -> set[int]:
        loop = asyncio.get_running_loop()
        with closing(await lab.splice(poller)) as splice:
            state = poller.relays.state(splice.device_fd, splice.token)
            assert state is not None
            data = payload(4 * 1024 * 1024, seed=3)
            sending = asyncio.ensure_future(loop.sock_sendall(splice.ends[DEVICE], data))
            assert await receive_exactly(splice.ends[SERVER], len(data)) == data
            await sending
            assert sum(poller.relays.read_wakeups) > 1
            return {splice.device_fd, state["server_fd"]}

    relay_fds = run(scenario)
    assert not relay_fds & dispatched


def test_a_relays_descriptors_are_its_own_even_when_it_is_refused() -> None:
    """add takes both descriptors whatever happens: one that raises has closed them."""

    async def scenario(poller: SplicePoller, lab: Lab) -> None:
        fds = [os.dup(0) for _ in range(2)]
        with pytest.raises(ValueError, match="ClientHello"):
            poller.relays.add(fds[0], fds[1], b"", Token())
        for fd in fds:
            with pytest.raises(OSError):
                os.fstat(fd)
        assert len(poller.relays) == 0

    run(scenario)


def test_on_the_daemons_loop_a_wake_up_for_the_relays_alone_does_not_turn_the_loop(
    loop_kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ends are served by threads (blocking sockets): while they copy, the loop's epoll
    holds nothing but the relay's sockets, and on the daemon's loop the relays' wait handles
    every wake-up of the transfer itself, returning to the loop only when something is for it
    (here: the threads' end, through call_soon_threadsafe). On a plain loop each wake-up is a
    turn of the loop: its reader of the poller's epoll (`_dispatch`) runs."""
    turns: list[str] = []  # the loop's selects (daemon's loop), or the poller's dispatches (plain loop)
    real_select, real_dispatch = SpliceSelector.select, SplicePoller._dispatch

    def counting_select(selector: SpliceSelector, timeout: float | None = None) -> Any:
        turns.append("select")
        return real_select(selector, timeout)

    def counting_dispatch(poller: SplicePoller) -> None:
        turns.append("dispatch")
        real_dispatch(poller)

    monkeypatch.setattr(SpliceSelector, "select", counting_select)
    monkeypatch.setattr(SplicePoller, "_dispatch", counting_dispatch)
    size = 16 * 1024 * 1024

    async def scenario(poller: SplicePoller, lab: Lab) -> tuple[int, int]:
        loop = asyncio.get_running_loop()
        with closing(await lab.splice(poller)) as splice:
            device, server = splice.ends
            device.setblocking(True)
            server.setblocking(True)
            data = payload(size, seed=5)
            received = bytearray()
            done = loop.create_future()

            def copy() -> None:
                sender = threading.Thread(target=device.sendall, args=(data,))
                sender.start()
                while len(received) < size:
                    received.extend(server.recv(1 << 20))
                sender.join()
                loop.call_soon_threadsafe(done.set_result, None)

            reads_before, turns_before = poller.relays.read_wakeups[DEVICE], len(turns)
            copier = threading.Thread(target=copy)
            copier.start()
            await done
            copier.join()
            assert received == data
            return poller.relays.read_wakeups[DEVICE] - reads_before, len(turns) - turns_before

    wakeups, loop_turns = run(scenario)
    assert wakeups >= 16  # the transfer took many wake-ups (16 MiB, at most 256 KiB each)
    if loop_kind == "daemon's loop":
        assert loop_turns <= 3  # the threads' end, and the turns it schedules
    else:
        assert loop_turns >= wakeups
