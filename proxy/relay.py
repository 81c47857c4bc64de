"""Passed-through connections: the front door's splices and the epoll that watches them.

A spliced connection (`Relay`) copies the device's bytes to the server and back from
readiness callbacks, kept by the front door's `SplicePoller`: one registration each way is one
dict entry and one epoll_ctl, and one ready socket is one callback. Through the loop's own
add_reader, each was a Handle, a selector key and a KeyError probe, and each readiness a
Handle queued and run in a context: about a tenth of a passed-through connection's CPU for
the six registrations and five readinesses a splice makes.

Where the proxy's loop runs on a `SpliceSelector` (the daemon's loop: `new_event_loop`), the
spliced sockets are in the loop's own epoll and their callbacks run from the loop's one wait;
on any other loop (tests, a library caller) they are in an epoll of the poller's own, which the
loop watches as one reader: a second epoll_wait, and a Handle run, for each wake-up.

Pure Linux: epoll, as the transparent proxy itself (SO_ORIGINAL_DST).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import math
import select
import selectors
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mitmproxy import connection

if TYPE_CHECKING:
    from schoolgate.proxy.front import FrontDoor

log = logging.getLogger(__name__)

READ_SIZE = 256 * 1024  # bytes read per wake-up of a spliced socket (asyncio's transports read as much)

# A reader also hears of the peer's FIN (EPOLLRDHUP): what it sent last and its FIN are then
# taken in one wake-up (see Relay._read).
_READABLE = select.EPOLLIN | select.EPOLLRDHUP
_PEER_CLOSED = select.EPOLLRDHUP | select.EPOLLHUP
_WRITABLE = select.EPOLLOUT
Callback = tuple[Callable[..., None], tuple[Any, ...]]


class SpliceSelector(selectors.EpollSelector):
    """asyncio's epoll selector, whose one wait also serves the spliced sockets: a `SplicePoller`
    on a loop built on it puts them in this epoll, and their readiness is dispatched to it from
    `select` itself, never reaching the loop as events (no second epoll_wait, no Handle).

    Everything the loop registered itself is returned as EpollSelector returns it."""

    def __init__(self) -> None:
        super().__init__()
        self.splices: SplicePoller | None = None  # the poller using this epoll, if any
        # The selector's fd -> key map (kept, never replaced, by selectors' base class).
        self._keys: dict[int, selectors.SelectorKey] = self._fd_to_key  # type: ignore[attr-defined]

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None:
            timeout = -1
        elif timeout <= 0:
            timeout = 0
        else:
            timeout = math.ceil(timeout * 1e3) * 1e-3  # at least `timeout`, as EpollSelector waits
        splices = self.splices
        max_ev = max(len(self._keys) + (len(splices._callbacks) if splices is not None else 0), 1)
        ready: list[tuple[selectors.SelectorKey, int]] = []
        try:
            fd_event_list = self._selector.poll(timeout, max_ev)  # type: ignore[attr-defined]
        except InterruptedError:
            return ready
        spliced = None
        key_from_fd = self._keys.get
        for fd, event in fd_event_list:
            key = key_from_fd(fd)
            if key is None:
                if spliced is None:
                    spliced = []
                spliced.append((fd, event))
                continue
            events = 0
            if event & ~select.EPOLLIN:
                events |= selectors.EVENT_WRITE
            if event & ~select.EPOLLOUT:
                events |= selectors.EVENT_READ
            ready.append((key, events & key.events))
        if spliced is not None and splices is not None:
            splices.run(spliced)
        return ready


def new_event_loop() -> asyncio.AbstractEventLoop:
    """The proxy daemon's event loop: asyncio's, on a SpliceSelector."""
    return asyncio.SelectorEventLoop(SpliceSelector())


class SplicePoller:
    """Readiness of the spliced sockets: `add_reader`, `remove_reader`, `add_writer` and
    `remove_writer` as the event loop's (level-triggered; an error or hang-up wakes both
    sides, as asyncio's selector does), on the loop's own epoll where the loop runs on a
    SpliceSelector, else on an epoll the loop watches as one reader.

    A callback that raises is logged and its relay closed; the others in the same wake-up
    still run.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._callbacks: dict[int, list[Callback | None]] = {}  # fd -> [on readable, on writable]
        # While a callback runs: whether its socket's peer has closed its side (its FIN is in).
        self.peer_closed = False
        # asyncio keeps its selector private; a loop built by new_event_loop has a SpliceSelector.
        selector = getattr(loop, "_selector", None)
        self._selector: SpliceSelector | None = None
        if isinstance(selector, SpliceSelector) and selector.splices is None:
            self._selector = selector
            self._epoll = selector._selector  # type: ignore[attr-defined]  # the loop's select.epoll
            selector.splices = self
        else:
            self._epoll = select.epoll()
            loop.add_reader(self._epoll.fileno(), self._dispatch)

    @property
    def shares_loop_wait(self) -> bool:
        """Whether the spliced sockets are in the loop's own epoll (one wait per wake-up)."""
        return self._selector is not None

    def add_reader(self, fd: int, callback: Callable[..., None], *args: Any) -> None:
        self._set(fd, 0, (callback, args))

    def remove_reader(self, fd: int) -> None:
        self._set(fd, 0, None)

    def add_writer(self, fd: int, callback: Callable[..., None], *args: Any) -> None:
        self._set(fd, 1, (callback, args))

    def remove_writer(self, fd: int) -> None:
        self._set(fd, 1, None)

    def watch(self, fd: int, on_readable: Callback | None, on_writable: Callback | None) -> None:
        """Set both sides of `fd` at once ((callback, args), or None): one epoll change at most."""
        slots = self._callbacks.get(fd)
        before = _mask(slots) if slots is not None else 0
        slots = [on_readable, on_writable]
        after = _mask(slots)
        if not after:
            self.forget(fd)
            return
        self._callbacks[fd] = slots
        if not before:
            self._epoll.register(fd, after)
        elif after != before:
            self._epoll.modify(fd, after)

    def forget(self, fd: int, *, closing: bool = False) -> None:
        """Stop watching `fd` either way. `closing`: the caller closes it next, which takes it
        out of the epoll by itself (the relays never duplicate a socket's descriptor), so no
        system call is made for it here."""
        if self._callbacks.pop(fd, None) is not None and not closing:
            self._epoll.unregister(fd)

    def __len__(self) -> int:
        return len(self._callbacks)

    def close(self) -> None:
        if self._selector is not None:  # the loop's epoll: its sockets out of it, the epoll kept
            for fd in self._callbacks:
                with contextlib.suppress(ValueError, OSError):
                    self._epoll.unregister(fd)
            self._selector.splices = None
        else:
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_reader(self._epoll.fileno())
            self._epoll.close()
        self._callbacks.clear()

    def _set(self, fd: int, side: int, callback: Callback | None) -> None:
        slots = self._callbacks.get(fd)
        if slots is None:
            if callback is None:
                return
            slots = self._callbacks[fd] = [None, None]
            slots[side] = callback
            self._epoll.register(fd, _READABLE if side == 0 else _WRITABLE)
            return
        before = _mask(slots)
        slots[side] = callback
        after = _mask(slots)
        if not after:
            del self._callbacks[fd]
            self._epoll.unregister(fd)
        elif after != before:
            self._epoll.modify(fd, after)

    def _dispatch(self) -> None:
        """The poller's own epoll is readable (on a loop that is not on a SpliceSelector)."""
        self.run(self._epoll.poll(0))

    def run(self, ready: list[tuple[int, int]]) -> None:
        """Run the callbacks of the ready sockets: (fd, epoll events) each."""
        callbacks = self._callbacks
        for fd, events in ready:
            for side, wanted in ((0, events & ~_WRITABLE), (1, events & ~_READABLE)):
                slots = callbacks.get(fd)  # looked up again: the first callback may have ended it
                if not wanted or slots is None or (entry := slots[side]) is None:
                    continue
                function, args = entry
                self.peer_closed = bool(events & _PEER_CLOSED)
                try:
                    function(*args)
                except Exception:
                    log.exception("a spliced connection failed")
                    owner = getattr(function, "__self__", None)
                    if isinstance(owner, Relay):
                        owner.close()


def _mask(slots: list[Callback | None]) -> int:
    return (_READABLE if slots[0] is not None else 0) | (_WRITABLE if slots[1] is not None else 0)


class Relay:
    """A passed-through connection: the device's socket and the server's, each one's bytes sent
    on to the other from the splice poller's readiness callbacks.

    Per wake-up, what the socket holds (up to READ_SIZE) is read and sent on at once; only what
    the other side will not take now is kept, and then that side is read no more until it is
    taken (flow control: nothing is buffered beyond one read). A FIN is passed on as a
    half-close; the connection ends when both sides have sent theirs and everything is
    delivered, or at once on an error either side.
    """

    __slots__ = ("_closed", "_door", "_eof", "_loop", "_poller", "client", "device", "dialling", "last_active",
                 "server", "waiting")

    def __init__(self, door: FrontDoor, client: connection.Client, device: socket.socket) -> None:
        self._door = door
        self._loop = door.loop
        self._poller = door.splices
        self.client = client
        # The front door leaves an accepted socket blocking (it reads the first bytes with
        # MSG_DONTWAIT); a relay's sends and reads must never block.
        device.setblocking(False)
        self.device = device
        self.server: socket.socket | None = None
        self.waiting: dict[socket.socket, bytes] = {}  # bytes a socket has not taken yet
        self._eof: set[socket.socket] = set()  # the sides that have sent their FIN
        self.last_active = self._loop.time()
        # From the dial until the server answers (or the relay ends): the front door closes a
        # relay whose server has not answered in time (FrontDoor._check_dials).
        self.dialling = False
        self._closed = False

    def connect(self, destination: tuple[str, int], hello: bytes) -> bool:
        """Dial the original destination; the ClientHello goes first once connected. False if
        it failed at once (no socket, or the connect refused before any packet): the caller
        closes the relay."""
        family = socket.AF_INET6 if ":" in destination[0] else socket.AF_INET
        try:
            server = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        except OSError as err:
            log.warning("passthrough to %s: no socket: %s", destination, err)
            return False
        self.server = server
        code = server.connect_ex(destination)  # the SYN leaves now: nothing else comes before it
        if code not in (0, errno.EINPROGRESS):
            log.debug("passthrough to %s failed: %s", destination, errno.errorcode.get(code, code))
            return False
        # As asyncio's transports do: no Nagle delay on a relay (the device's socket has it
        # from the front door's listener, schoolgate.proxy.front.listen_sockets).
        with contextlib.suppress(OSError):
            server.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.waiting[server] = hello
        self.dialling = True
        self._poller.add_writer(server.fileno(), self._connected, destination)
        return True

    def dial_timed_out(self) -> None:
        """The server has not answered the dial in time (the front door's deadline)."""
        log.debug("passthrough to %s: no answer in time", self.client.sockname)
        self.close()

    def _connected(self, destination: tuple[str, int]) -> None:
        """The server's socket is writable: connected, or the connection failed, which the
        first send reports (ECONNREFUSED and the like): no SO_ERROR read for it."""
        server = self.server
        assert server is not None
        self.dialling = False
        hello = self.waiting.pop(server)
        try:
            sent = server.send(hello)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as err:
            log.debug("passthrough to %s failed: %s", destination, errno.errorcode.get(err.errno or 0, err))
            self.close()
            return
        self._door.spliced += 1
        poller, reading = self._poller, (self._read, (server, self.device))
        if sent < len(hello):  # the rest waits, and the device is not read until it has gone
            self.waiting[server] = hello[sent:]
            poller.watch(server.fileno(), reading, (self._drain, (self.device, server)))
        else:
            poller.watch(server.fileno(), reading, None)
            poller.add_reader(self.device.fileno(), self._read, self.device, server)

    def _read(self, source: socket.socket, target: socket.socket) -> None:
        peer_closed = self._poller.peer_closed
        while True:
            try:
                data = source.recv(READ_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.close()
                return
            self.last_active = self._loop.time()
            if not data:
                break
            self._send(source, target, data)
            if not peer_closed or self._closed or target in self.waiting:
                return
            # The peer has said all it will: the rest of it and its FIN are in, so they are
            # taken now rather than on a wake-up of their own (a device sends its last bytes
            # and closes at once).
        self._eof.add(source)
        if len(self._eof) == 2 and not self.waiting:
            # The second FIN, everything delivered: the connection ends here, and closing the
            # sockets takes them out of the epoll (no epoll_ctl to stop reading this one first).
            self.close()
            return
        self._poller.remove_reader(source.fileno())
        if target not in self.waiting:
            self._pass_eof(target)

    def _send(self, source: socket.socket, target: socket.socket, data: bytes) -> None:
        """Send `data` from `source` on to `target`; what it will not take now waits, and
        `source` is not read until it has gone."""
        try:
            sent = target.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self.close()
            return
        if sent < len(data):
            self.waiting[target] = data[sent:]
            self._poller.remove_reader(source.fileno())
            self._poller.add_writer(target.fileno(), self._drain, source, target)

    def _drain(self, source: socket.socket, target: socket.socket) -> None:
        data = self.waiting[target]
        try:
            sent = target.send(data)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close()
            return
        if sent < len(data):
            self.waiting[target] = data[sent:]
            return
        del self.waiting[target]
        self._poller.remove_writer(target.fileno())
        self.last_active = self._loop.time()
        if source in self._eof:
            self._pass_eof(target)
        else:
            self._poller.add_reader(source.fileno(), self._read, source, target)

    def _pass_eof(self, target: socket.socket) -> None:
        """The other side has said all it will: half-close towards `target`, or end the
        connection if `target` has finished too."""
        if len(self._eof) == 2 and not self.waiting:
            self.close()
            return
        try:
            target.shutdown(socket.SHUT_WR)
        except OSError:
            self.close()

    def close(self) -> None:
        """End both sides now (what was not yet delivered is dropped)."""
        if self._closed:
            return
        self._closed = True
        self.dialling = False
        for sock in (self.device, self.server):
            if sock is None:
                continue
            fd = sock.fileno()
            if fd >= 0:
                self._poller.forget(fd, closing=True)
            sock.close()
        self.waiting.clear()
        self._door._relay_closed(self)
