"""Passed-through connections: the front door's splices and the epoll that watches them.

A spliced connection's bytes are copied in C (proxy/_relay.c, `Relays`): the ClientHello sent
once the server's socket is writable, every read and send with its flow control, the peer's
last bytes and FIN taken in one wake-up, half-closes and errors. Python runs twice per spliced
connection: when the front door makes its `Relay` (its verdict PASS: the server dialled, both
sockets handed to `Relays`) and when it has ended (its token handed back: the front door tells
the addons). Copying from Python readiness callbacks, a passthrough cost more user CPU than
Squid's; per readiness that was a callback, a bytes object per read and a socket method per
system call.

The `SplicePoller` owns the `Relays` and the epoll they are in, and keeps Python readiness
callbacks (`add_reader` and its kin) for any other descriptor in it: the front door's listening
sockets. Where the proxy's loop runs on a `SpliceSelector` (the daemon's loop: `new_event_loop`),
that epoll is the loop's own and `Relays.wait` is the loop's one wait; on any other loop (tests,
a library caller) it is an epoll of the poller's own, which the loop watches as one reader: a
second epoll_wait, and a Handle run, for each wake-up.

Pure Linux: epoll, as the transparent proxy itself (SO_ORIGINAL_DST).
"""

from __future__ import annotations

import _socket
import asyncio
import contextlib
import errno
import logging
import math
import os
import select
import selectors
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mitmproxy import connection

from schoolgate.proxy._relay import READ_SIZE, Relays

if TYPE_CHECKING:
    from schoolgate.proxy.front import FrontDoor

log = logging.getLogger(__name__)

__all__ = ["READ_SIZE", "Relay", "SplicePoller", "SpliceSelector", "new_event_loop"]

_READABLE = select.EPOLLIN | select.EPOLLRDHUP
_WRITABLE = select.EPOLLOUT
Callback = tuple[Callable[..., None], tuple[Any, ...]]


class SpliceSelector(selectors.EpollSelector):
    """asyncio's epoll selector, whose one wait also serves the spliced connections: a
    `SplicePoller` on a loop built on it puts them in this epoll, and `select` waits through its
    `Relays`, which handle the relays' events themselves; the poller's own readers are run from
    `select` too, never reaching the loop as events (no second epoll_wait, no Handle).

    Everything the loop registered itself is returned as EpollSelector returns it."""

    def __init__(self) -> None:
        super().__init__()
        self.splices: SplicePoller | None = None  # the poller using this epoll, if any
        # The selector's fd -> key map (kept, never replaced, by selectors' base class).
        self._keys: dict[int, selectors.SelectorKey] = self._fd_to_key  # type: ignore[attr-defined]

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        splices = self.splices
        if splices is None:
            return super().select(timeout)
        if timeout is None:
            timeout_ms = -1
        elif timeout <= 0:
            timeout_ms = 0
        else:
            timeout_ms = math.ceil(timeout * 1e3)  # at least `timeout`, as EpollSelector waits
        ready: list[tuple[selectors.SelectorKey, int]] = []
        fd_event_list, ended = splices.relays.wait(timeout_ms, len(self._keys) + len(splices._callbacks))
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
        if spliced is not None:
            splices.run(spliced)
        if ended is not None:
            splices.ended(ended)
        return ready


def new_event_loop() -> asyncio.AbstractEventLoop:
    """The proxy daemon's event loop: asyncio's, on a SpliceSelector."""
    return asyncio.SelectorEventLoop(SpliceSelector())


class SplicePoller:
    """The spliced connections (`relays`: proxy/_relay.c) and the readiness of other descriptors
    in their epoll: `add_reader`, `remove_reader`, `add_writer` and `remove_writer` as the event
    loop's (level-triggered; an error or hang-up wakes both sides, as asyncio's selector does),
    on the loop's own epoll where the loop runs on a SpliceSelector, else on an epoll the loop
    watches as one reader.

    A callback that raises is logged; the others in the same wake-up still run. A relay that
    has ended is handed back to its `Relay` (`Relay.ended`).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._callbacks: dict[int, list[Callback | None]] = {}  # fd -> [on readable, on writable]
        # asyncio keeps its selector private; a loop built by new_event_loop has a SpliceSelector.
        selector = getattr(loop, "_selector", None)
        self._selector: SpliceSelector | None = None
        if isinstance(selector, SpliceSelector) and selector.splices is None:
            self._selector = selector
            self._epoll = selector._selector  # type: ignore[attr-defined]  # the loop's select.epoll
            self.relays = Relays(self._epoll.fileno())
            selector.splices = self
        else:
            self._epoll = select.epoll()
            self.relays = Relays(self._epoll.fileno())
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
        out of the epoll by itself (if its descriptor was never duplicated), so no system call
        is made for it here."""
        if self._callbacks.pop(fd, None) is not None and not closing:
            self._epoll.unregister(fd)

    def __len__(self) -> int:
        """The descriptors watched for callbacks (the relays' own are `len(relays)`)."""
        return len(self._callbacks)

    def close(self) -> None:
        """Close every relay (each handed back as ended) and stop watching."""
        self.ended([(relay, 0) for relay in self.relays.close_all()])
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
        others, ended = self.relays.wait(0, len(self._callbacks))
        if others:
            self.run(others)
        if ended is not None:
            self.ended(ended)

    def run(self, ready: list[tuple[int, int]]) -> None:
        """Run the callbacks of the ready descriptors: (fd, epoll events) each."""
        callbacks = self._callbacks
        for fd, events in ready:
            for side, wanted in ((0, events & ~_WRITABLE), (1, events & ~_READABLE)):
                slots = callbacks.get(fd)  # looked up again: the first callback may have ended it
                if not wanted or slots is None or (entry := slots[side]) is None:
                    continue
                function, args = entry
                try:
                    function(*args)
                except Exception:
                    log.exception("a callback of the splice poller failed")

    @staticmethod
    def ended(ended: list[tuple[Relay, int]]) -> None:
        """Hand the relays that ended (and the errno that ended each, 0 for both FINs) back."""
        for relay, error in ended:
            try:
                relay.ended(error)
            except Exception:
                log.exception("a spliced connection failed as it ended")


def _mask(slots: list[Callback | None]) -> int:
    return (_READABLE if slots[0] is not None else 0) | (_WRITABLE if slots[1] is not None else 0)


class Relay:
    """A passed-through connection: the device's socket and the server's, each one's bytes sent
    on to the other by the splice poller's `Relays` (proxy/_relay.c), this object its token.

    Per wake-up, what a socket holds (up to READ_SIZE) is read and sent on at once; only what
    the other side will not take now is kept, and then that side is read no more until it is
    taken (flow control: nothing is buffered beyond one read). A FIN is passed on as a
    half-close; the connection ends when both sides have sent theirs and everything is
    delivered, or at once on an error either side.
    """

    __slots__ = ("_door", "_open", "client", "conn_id", "destination", "device", "device_fd")

    def __init__(
        self, door: FrontDoor, conn_id: str, device: socket.socket | int, client: connection.Client | None = None
    ) -> None:
        self._door = door
        self.conn_id = conn_id
        # mitmproxy's connection object, which the addons were told of; None for a pass carried
        # out at the front door (schoolgate.proxy.door_verdicts), which told them of nothing.
        self.client = client
        # The device's connection: its socket, or (a pass at the front door, for which no socket
        # object was made) its bare descriptor; the relay's until handed to Relays. It stays as
        # the front door accepted it, blocking: Relays, the one reader and writer of it, reads
        # and sends with MSG_DONTWAIT, so an ioctl to make it non-blocking would change nothing.
        self.device: socket.socket | int | None = device
        self.device_fd = device if isinstance(device, int) else device.fileno()
        self.destination: tuple[str, int] | None = None
        self._open = True

    def connect(self, destination: tuple[str, int], hello: bytes) -> bool:
        """Dial the original destination; the ClientHello goes first once connected. False if
        it failed at once (no socket, or the connect refused before any packet): the caller
        closes the relay."""
        self.destination = destination
        family = socket.AF_INET6 if ":" in destination[0] else socket.AF_INET
        try:
            # The compiled socket type itself: socket.socket's Python-level constructor and
            # detach were a tenth of the Python a passthrough runs, for a socket that is only
            # dialled and handed to Relays.
            server = _socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        except OSError as err:
            log.warning("passthrough to %s: no socket: %s", destination, err)
            return False
        code = server.connect_ex(destination)  # the SYN leaves now: nothing else comes before it
        if code not in (0, errno.EINPROGRESS):
            log.debug("passthrough to %s failed: %s", destination, errno.errorcode.get(code, code))
            server.close()
            return False
        # As asyncio's transports do: no Nagle delay on a relay (the device's socket has it
        # from the front door's listener, schoolgate.proxy.front.listen_sockets).
        try:  # noqa: SIM105 (contextlib.suppress is three Python calls more per passthrough)
            server.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass  # a relay with Nagle's delay still relays
        device = self.device
        assert device is not None
        self.device = None
        try:  # both descriptors are the relays' from here, even if add fails
            self._door.splices.relays.add(
                device if isinstance(device, int) else device.detach(), server.detach(), hello, self
            )
        except (OSError, ValueError, MemoryError) as err:
            log.warning("passthrough to %s: %s", destination, err)
            self.device_fd = -1
            return False
        return True

    @property
    def dialling(self) -> bool:
        """Whether the server has yet to answer the dial (the ClientHello waits for it)."""
        state = self.state()
        return state is not None and bool(state["dialling"])

    def state(self) -> dict[str, int] | None:
        """What Relays holds of this relay (None once it has ended): see proxy/_relay.pyi."""
        if self.device is not None or self.device_fd < 0 or not self._open:
            return None  # not (or no longer) in Relays
        return self._door.splices.relays.state(self.device_fd, self)

    def close(self) -> None:
        """End both sides now (what was not yet delivered is dropped)."""
        if not self._open:
            return
        device = self.device
        if device is not None:  # never handed to Relays
            self.device = None
            if isinstance(device, int):
                os.close(device)
            else:
                device.close()
        elif self.device_fd >= 0 and not self._door.splices.relays.close(self.device_fd, self):
            return  # already ended in Relays: handed back by its wait
        self.ended(0)

    def ended(self, error: int) -> None:
        """Relays has closed both sockets: `error` is the errno that ended it (0: both FINs, or
        closed on purpose)."""
        if not self._open:
            return
        self._open = False
        if error:
            log.debug("passthrough to %s failed: %s", self.destination, errno.errorcode.get(error, error))
        self._door._relay_closed(self)
