"""The splice poller: the spliced sockets' readiness in the proxy daemon's loop's own epoll (a
SpliceSelector), or on a plain asyncio loop in an epoll of the poller's own, watched by the loop
as one reader; every test runs on both. Real sockets (socket pairs) and a real asyncio loop."""

from __future__ import annotations

import asyncio
import logging
import select
import socket
from collections.abc import Callable

import pytest

from schoolgate.proxy.relay import SplicePoller, new_event_loop

# Each test runs on the proxy daemon's loop and on a plain asyncio loop (conftest.loop_kind).
pytestmark = pytest.mark.usefixtures("loop_kind")
new_loop = new_event_loop  # the loop each test runs on (loop_kind sets it)


def run_with_poller(scenario: Callable[[SplicePoller], object]) -> object:
    async def main() -> object:
        poller = SplicePoller(asyncio.get_running_loop())
        try:
            result = scenario(poller)
            if asyncio.iscoroutine(result):
                return await asyncio.wait_for(result, timeout=30)
            return result
        finally:
            poller.close()

    with asyncio.Runner(loop_factory=new_loop) as runner:
        return runner.run(main())


async def until(condition: Callable[[], bool]) -> None:
    """Let the loop run until `condition` holds (bounded by run_with_poller's timeout)."""
    while not condition():
        await asyncio.sleep(0.001)


async def settle() -> None:
    """A few loop turns: long enough for a ready descriptor to be reported, as the loop does it."""
    for _ in range(5):
        await asyncio.sleep(0)


def test_a_reader_is_called_while_data_waits_and_not_after_it_is_removed() -> None:
    left, right = socket.socketpair()
    calls: list[bytes] = []

    async def scenario(poller: SplicePoller) -> None:
        def on_readable(sock: socket.socket) -> None:
            calls.append(sock.recv(10))

        poller.add_reader(left.fileno(), on_readable, left)
        right.send(b"hello")
        await until(lambda: calls == [b"hello"])
        poller.remove_reader(left.fileno())
        assert len(poller) == 0
        right.send(b"more")
        await settle()
        assert calls == [b"hello"]  # no longer watched

    with left, right:
        run_with_poller(scenario)


def test_a_descriptor_watched_both_ways_gets_both_and_keeps_one_when_the_other_goes() -> None:
    left, right = socket.socketpair()
    seen: list[str] = []

    async def scenario(poller: SplicePoller) -> None:
        fd = left.fileno()

        def on_readable() -> None:
            seen.append("readable")
            left.recv(10)

        poller.add_writer(fd, seen.append, "writable")  # a socket pair is writable at once
        poller.add_reader(fd, on_readable)
        right.send(b"x")
        await until(lambda: "readable" in seen and "writable" in seen)
        poller.remove_writer(fd)
        seen.clear()
        right.send(b"y")
        await until(lambda: "readable" in seen)
        assert "writable" not in seen
        assert len(poller) == 1
        poller.forget(fd)
        poller.forget(fd)  # forgetting twice is harmless
        assert len(poller) == 0

    with left, right:
        run_with_poller(scenario)


def test_watch_sets_both_sides_at_once() -> None:
    left, right = socket.socketpair()
    seen: list[str] = []

    async def scenario(poller: SplicePoller) -> None:
        fd = left.fileno()

        def on_readable() -> None:
            seen.append("readable")
            left.recv(10)

        poller.watch(fd, (on_readable, ()), (seen.append, ("writable",)))
        right.send(b"x")
        await until(lambda: "readable" in seen and "writable" in seen)
        poller.watch(fd, (on_readable, ()), None)  # the writer goes, the reader stays
        seen.clear()
        right.send(b"y")
        await until(lambda: "readable" in seen)
        assert "writable" not in seen
        poller.watch(fd, None, None)
        assert len(poller) == 0

    with left, right:
        run_with_poller(scenario)


def test_a_descriptor_forgotten_as_it_is_closed_leaves_the_epoll_with_the_close() -> None:
    """`forget(closing=True)` makes no epoll call: the close takes the socket out, so a new
    socket given the same descriptor number is watched afresh, and only for its own events."""
    seen: list[str] = []

    async def scenario(poller: SplicePoller) -> None:
        left, right = socket.socketpair()
        fd = left.fileno()
        poller.add_reader(fd, seen.append, "old")
        poller.forget(fd, closing=True)
        left.close()
        again, other = socket.socketpair()
        try:
            assert again.fileno() == fd or other.fileno() == fd  # the number is reused at once
            reused = again if again.fileno() == fd else other
            peer = other if reused is again else again
            poller.add_reader(fd, lambda: (seen.append("new"), reused.recv(10)))  # no "already registered"
            await settle()
            assert seen == []
            peer.send(b"y")
            await until(lambda: seen == ["new"])
            poller.forget(fd)
        finally:
            again.close()
            other.close()
            right.close()

    run_with_poller(scenario)


def test_a_hang_up_wakes_a_writer_as_the_loops_selector_would() -> None:
    """An error or hang-up is reported to both sides: a relay waiting to write learns of it."""
    left, right = socket.socketpair()
    woken: list[str] = []

    async def scenario(poller: SplicePoller) -> None:
        left.setblocking(False)
        while True:  # fill the buffer: not writable any more
            try:
                left.send(b"\0" * 65536)
            except BlockingIOError:
                break
        poller.add_writer(left.fileno(), woken.append, "writer")
        await settle()
        assert woken == []
        right.close()
        await until(lambda: woken != [])
        poller.forget(left.fileno())

    with left:
        run_with_poller(scenario)


def test_a_callback_that_raises_is_logged_and_the_others_still_run(caplog: pytest.LogCaptureFixture) -> None:
    pairs = [socket.socketpair() for _ in range(3)]
    ran: list[int] = []

    async def scenario(poller: SplicePoller) -> None:
        def on_readable(index: int, sock: socket.socket) -> None:
            sock.recv(10)
            ran.append(index)
            if index == 1:
                poller.forget(sock.fileno())
                raise RuntimeError("a relay bug")

        for index, (left, _right) in enumerate(pairs):
            poller.add_reader(left.fileno(), on_readable, index, left)
        for _left, right in pairs:
            right.send(b"x")
        await until(lambda: sorted(ran) == [0, 1, 2])

    with caplog.at_level(logging.ERROR, logger="schoolgate.proxy.relay"):
        run_with_poller(scenario)
    assert "a callback of the splice poller failed" in caplog.text
    for left, right in pairs:
        left.close()
        right.close()


def test_on_the_daemons_loop_spliced_sockets_share_the_loops_one_wait(loop_kind: str) -> None:
    """On a SpliceSelector the poller adds no reader of its own to the loop (so a wake-up is one
    epoll_wait, not two) and its sockets are served by the loop's wait; once the poller is closed
    its sockets are out of the loop's epoll and the loop goes on serving its own."""
    left, right = socket.socketpair()
    calls: list[bytes] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        selector = loop._selector  # type: ignore[attr-defined]
        watched_before = len(selector.get_map())
        poller = SplicePoller(loop)
        assert poller.shares_loop_wait is (loop_kind == "daemon's loop")
        assert len(selector.get_map()) == watched_before + (0 if poller.shares_loop_wait else 1)
        poller.add_reader(left.fileno(), lambda: calls.append(left.recv(10)))
        right.send(b"hello")
        await asyncio.wait_for(until(lambda: calls == [b"hello"]), timeout=30)
        poller.close()
        right.send(b"more")
        await settle()
        assert calls == [b"hello"]  # out of the loop's epoll with the poller
        if poller.shares_loop_wait:  # not left in it either (a ready socket nobody reads would spin the loop)
            selector._selector.register(left.fileno(), select.EPOLLIN)
            selector._selector.unregister(left.fileno())
        woke = loop.create_future()
        loop.call_soon(woke.set_result, True)  # the loop's own work goes on
        assert await asyncio.wait_for(woke, timeout=30)

    with left, right, asyncio.Runner(loop_factory=new_loop) as runner:
        runner.run(main())
