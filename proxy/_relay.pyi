"""Passed-through connections, their bytes copied in C (proxy/_relay.c): the dial's ClientHello,
every read and send, flow control, half-closes and errors, from one epoll_wait."""

from typing import Any

READ_SIZE: int  # bytes read per wake-up of a spliced socket

class Relays:
    """The spliced connections whose sockets are in the epoll `epoll_fd` (not owned: it must
    outlive the object). Each relay is its two descriptors, owned and closed by it, and a token
    handed back once it has ended."""

    spliced: int  # relays whose ClientHello was sent to the server (counted, never decreases)
    dialling: int  # live relays whose server has not answered yet
    buffered: int  # bytes held for a socket that has not taken them yet (each at most one read)
    epoll_changes: tuple[int, int, int]  # epoll registrations added, modified, deleted
    read_wakeups: tuple[int, int]  # wake-ups that read a device's socket, a server's

    def __init__(self, epoll_fd: int) -> None: ...
    def __len__(self) -> int:
        """The live relays."""
    def add(self, device_fd: int, server_fd: int, hello: bytes, token: Any, /) -> None:
        """A relay of the device's connected socket and the server's socket, its non-blocking
        connect under way: the ClientHello `hello` is sent once the server's socket is
        writable (a send error ends the relay, not spliced). Both descriptors are the relay's
        from now on, even when this raises (OSError from epoll_ctl, ValueError, MemoryError)."""
    def wait(self, timeout_ms: int, maxevents: int, /) -> tuple[list[tuple[int, int]], list[tuple[Any, int]] | None]:
        """epoll_wait (timeout_ms: -1 for ever, 0 not at all; the GIL released while it blocks)
        for up to `maxevents` events besides the relays' own, the relays' events handled as
        they come, until there is something for the caller: another descriptor's event, a relay
        that has ended, or the timeout (a wake-up for the relays alone does not return). Then
        ([(fd, epoll events)] of every other descriptor, [(token, errno)] of the relays that
        ended since the last wait, or None): errno 0 for an orderly end (both FINs, everything
        delivered). Interrupted by a signal: returns (or raises the signal handler's exception)."""
    def close(self, device_fd: int, token: Any, /) -> bool:
        """Close the live relay of `device_fd` and `token` now (what waits is dropped); False
        if there is none. Its token is not handed back by `wait`."""
    def close_idle(self, seconds: float, /) -> list[Any]:
        """Close the relays with no byte read or delivered either way (nor dial) for `seconds`:
        their tokens."""
    def close_overdue_dials(self, seconds: float, /) -> list[Any]:
        """Close the relays whose server has not answered their dial in `seconds`: their tokens."""
    def close_all(self) -> list[Any]:
        """Close every live relay: their tokens."""
    def state(self, device_fd: int, token: Any, /) -> dict[str, int] | None:
        """The live relay's state (for tests and diagnostics): its server's descriptor, whether
        it is dialling, the bytes waiting for each side, each side's read wake-ups, FIN,
        whether it is read, and its epoll events; None if there is no such relay."""
