"""Events handed from the processes that answer to the one process that writes them.

Building a row and inserting it costs several times what answering a blocked query does, so a
DNS worker must not do it: it hands each event over as a compact event (record.CompactEvent, a
tuple of values it already holds; most of the DNS daemon's as an ask, record.Ask, whose shared
facts are written once per batch) to an ``EventChannel``, which gathers them and sends them in
batches (``marshal``, one message per batch) over a ``SOCK_SEQPACKET`` socket pair made before
the workers are forked. The daemon's event-writing process reads the other end
(``receive_events``) into its one ``EventWriter``, which owns the database.

Every worker holds the same sending end, so a restarted worker needs nothing new, and what is
sent while the writing process restarts waits in the socket. When every holder of the sending
end has closed it, the reading end sees the end of the stream: the writing process knows all
workers have handed over their last events.

Loss on the worker's side is counted in its ``stats`` (its ``daemon_status`` row): events not
yet sent when it was killed (``submitted - handed - dropped``, at most one tick's worth plus
what waited for a full socket), and batches dropped because the socket stayed full beyond
``max_waiting`` events (``dropped``). ``marshal`` is only ever read from our own socket pair.
"""

from __future__ import annotations

import logging
import marshal
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from schoolgate.store.events.record import ASK_LEN, Ask, CompactEvent, EventRecord, ask_facts_valid, compact
from schoolgate.store.events.status import write_status
from schoolgate.store.events.writer import HeldCounter, StatusTarget

log = logging.getLogger(__name__)

# A batch is one message: bounded so that it always fits the socket's send buffer (a compact
# event is a few hundred bytes at most; a larger message is split, see EventChannel._send).
BATCH_EVENTS = 128
MAX_MESSAGE = 256 * 1024
SOCKET_BUFFER = 4 * 1024 * 1024
DEFAULT_MAX_WAITING = 50_000  # events a worker keeps while the writer does not read
_SO_SNDBUFFORCE, _SO_RCVBUFFORCE = 32, 33  # Linux: beyond net.core.[wr]mem_max, for root


def channel_pair() -> tuple[socket.socket, socket.socket]:
    """(sending end, reading end): made once, before any worker or writer is forked."""
    sending, reading = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for sock, forced, option in ((sending, _SO_SNDBUFFORCE, socket.SO_SNDBUF),
                                 (reading, _SO_RCVBUFFORCE, socket.SO_RCVBUF)):
        try:  # root may go beyond the system's limit; anyone else gets that limit
            sock.setsockopt(socket.SOL_SOCKET, forced, SOCKET_BUFFER)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
    return sending, reading


def inherited_end(fd: int, given_as: str) -> socket.socket:
    """The end of an event channel this process inherited as descriptor `fd`; `given_as` is how
    its command line named it ("--events-fd 7"), for the error."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError as err:
        raise ValueError(f"{given_as}: not an open socket ({err.strerror})") from err
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_SEQPACKET:
        sock.detach()
        raise ValueError(f"{given_as}: not the event channel (a Unix SOCK_SEQPACKET socket)")
    return sock


def encode(events: list[CompactEvent]) -> bytes:
    return marshal.dumps(events)


def decode(message: bytes) -> list[CompactEvent]:
    """A batch's compact events and asks (record.Ask, the DNS daemon's), as they were sent: the
    writer builds an ask's row straight from it. ValueError if an ask is not one (the batch is
    then lost, and logged, before any of it is queued)."""
    events = marshal.loads(message)  # noqa: S302 (our own socket pair, never the network)
    if not isinstance(events, list):
        raise ValueError(f"an event batch is a list, not {type(events).__name__}")
    checked = None
    for event in events:
        if len(event) == ASK_LEN and event[4] is not checked:  # a batch's asks share few facts
            checked = ask_facts_valid(event)
    return events


class EventChannel:
    """The answering process's side: what the events stage hands over, sent in batches.

    Used from one thread (the worker's event loop): ``submit`` appends to the batch, which is
    sent when it is full and on every ``flush`` (the worker's tick, a few times a second). A
    batch the socket will not take now waits (up to ``max_waiting`` events) and is sent at the
    next flush. ``start`` begins reporting the worker's status row once a ``status.interval``
    from a thread of its own (a database write a second, off the event loop).
    """

    def __init__(
        self,
        sock: socket.socket,
        engine: Engine | None = None,
        *,
        status: StatusTarget | None = None,
        batch_events: int = BATCH_EVENTS,
        max_waiting: int = DEFAULT_MAX_WAITING,
    ) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._engine = engine
        self._status = status
        self.batch_events = batch_events
        self.max_waiting = max_waiting
        self._batch: list[CompactEvent] = []
        self._waiting: deque[tuple[bytes, int]] = deque()  # (message, events in it)
        self._waiting_events = 0
        self._held: list[HeldCounter] = []
        self.submitted = 0
        self.handed = 0  # sent to the writing process
        self.dropped = 0  # lost: the socket stayed full, or the writing side had gone
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def count_held(self, counter: HeldCounter) -> None:
        """Report what `counter` says the worker holds before submitting (allowed traffic)."""
        self._held.append(counter)

    def submit(self, event: CompactEvent | EventRecord) -> bool:
        self.submitted += 1
        batch = self._batch
        batch.append(compact(event) if isinstance(event, EventRecord) else event)
        if len(batch) >= self.batch_events:
            self.flush()
        return True

    submit_compact = submit

    def submit_ask(self, ask: Ask) -> bool:
        """`submit` for an ask (record.Ask): the DNS events stage's events, sent as they are."""
        self.submitted += 1
        batch = self._batch
        batch.append(ask)
        if len(batch) >= self.batch_events:
            self.flush()
        return True

    def flush(self) -> None:
        """Send what waits and the batch gathered so far (never blocks)."""
        batch = self._batch
        if batch:
            self._batch = []
            self._queue(batch)
        waiting = self._waiting
        while waiting:
            message, count = waiting[0]
            if not self._send(message, count):
                return
            waiting.popleft()
            self._waiting_events -= count

    def _queue(self, events: list[CompactEvent]) -> None:
        if self._waiting_events + len(events) > self.max_waiting:
            self.dropped += len(events)
            return
        message = encode(events)
        if len(message) > MAX_MESSAGE and len(events) > 1:  # more than the reader takes at once
            half = len(events) // 2
            self._queue(events[:half])
            self._queue(events[half:])
            return
        self._waiting.append((message, len(events)))
        self._waiting_events += len(events)

    def _send(self, message: bytes, count: int) -> bool:
        """True if the message went (or was lost for good and counted); False: try later."""
        try:
            self._sock.send(message)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as err:  # the reading end is gone for good (the whole daemon is ending)
            log.error("event batch of %d events lost: %s", count, err)
            self.dropped += count
            return True
        self.handed += count
        return True

    def stats(self) -> dict[str, Any]:
        """The counters of the worker's status row: ``submitted - handed - dropped`` events were
        still in this process (read from the status thread: lengths and ints only)."""
        held_rows = held_queries = 0
        for counter in self._held:
            rows, queries = counter()
            held_rows += rows
            held_queries += queries
        return {
            "submitted": self.submitted,
            "handed": self.handed,
            "dropped": self.dropped,
            "queued": len(self._batch) + self._waiting_events,
            "held": held_rows,
            "held_queries": held_queries,
        }

    # -- the status row

    def start(self) -> None:
        if self._status is not None and self._engine is not None and self._thread is None:
            self._thread = threading.Thread(target=self._report_loop, name="schoolgate-event-status", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> dict[str, Any]:
        """Send the rest (waiting up to `timeout` for the writing process to read), report."""
        deadline = time.monotonic() + timeout
        self.flush()
        while self._waiting and time.monotonic() < deadline:
            time.sleep(0.01)
            self.flush()
        self.dropped += self._waiting_events
        self._waiting.clear()
        self._waiting_events = 0
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self._report_status()
        return self.stats()

    def _report_loop(self) -> None:
        assert self._status is not None
        # At once, then every interval: the row is how a supervisor sees this worker running.
        self._report_status()
        while not self._stop.wait(self._status.interval):
            self._report_status()

    def _report_status(self) -> None:
        target = self._status
        if target is None or self._engine is None:
            return
        stats: dict[str, Any] = {"events": self.stats()}
        try:
            if target.extra is not None:
                stats.update(target.extra())
            with Session(self._engine) as session, session.begin():
                write_status(session, target.site, target.name, target.pid, target.started_at, stats)
        except SQLAlchemyError as err:
            log.debug("could not write daemon status: %s", err)
        except Exception:  # a counter callback must not end the reporting
            log.exception("daemon status report failed")


def receive_events(
    sock: socket.socket,
    submit: Callable[[list[CompactEvent]], object],
    *,
    stop_after: Callable[[], float | None],
    gather: float = 0.0,
    gathered: Callable[[], object] | None = None,
    max_gathered: int = 100_000,
    room: Callable[[int], bool] | None = None,
) -> Iterator[int]:
    """Read batches from the reading end into `submit` until every sender has gone.

    Yields after each wait (at most 0.2 s), with the number of events read since the last
    yield, so the caller can do its periodic work. `stop_after()` returns None while running,
    or the monotonic time by which to give up waiting for the senders (the process was asked
    to stop and its parent may still hold the sending end).

    With `gather` > 0 the events are read in bursts: once a batch arrives, the rest of them
    stay in the socket for `gather` seconds (where a restarted writing process still finds
    them), then everything waiting is read at once, up to `max_gathered` events, handed to
    `submit` in one call, and `gathered()` is called (the writer writes the burst now). One
    transaction then holds a second's events instead of a fifth's: at a school's rates of
    blocked queries the indexes' pages are written once for several times the rows. When
    `max_gathered` events are waiting already, they are taken without waiting, so a backlog
    drains at the writer's pace.

    `room(n)` (the writer's ``wait_for_room``) is asked before each burst (or, without `gather`,
    each message) is read whether the writer can queue that many more, waiting a moment
    (False: not yet). Until it can, the
    events stay in the socket (and in the senders' own bounded queues behind it) rather than
    overflow the writer's queue: a backlog larger than that queue is written whole, late.
    """
    sock.settimeout(0.2)
    read = 0
    while True:
        deadline = stop_after()
        if deadline is not None and time.monotonic() >= deadline:
            return
        # A burst stops after the message that reached its bound: one message more at most.
        if room is not None and not room((max_gathered if gather > 0 else 0) + BATCH_EVENTS):
            yield read
            read = 0
            continue
        try:
            message = sock.recv(MAX_MESSAGE)
        except TimeoutError:
            yield read
            read = 0
            continue
        except InterruptedError:
            continue
        if not message:  # every worker and the parent have closed the sending end
            yield read
            return
        events = _decoded(message)
        if gather <= 0:
            if events:
                submit(events)
                read += len(events)
            if read >= 4096:
                yield read
                read = 0
            continue
        ended, backlog = _read_waiting(sock, events, max_gathered)
        if not ended and not backlog:
            _wait_for_more(gather, stop_after)
            ended, backlog = _read_waiting(sock, events, max_gathered)
        if events:
            submit(events)
            read += len(events)
        if gathered is not None:
            gathered()
        yield read
        read = 0
        if ended:
            return


def _decoded(message: bytes) -> list[CompactEvent]:
    try:
        return decode(message)
    except (ValueError, EOFError, TypeError) as err:
        log.error("an unreadable event batch (%d bytes) was lost: %s", len(message), err)
        return []


def _wait_for_more(gather: float, stop_after: Callable[[], float | None]) -> None:
    """Let `gather` seconds' events collect in the socket, unless asked to stop meanwhile."""
    until = time.monotonic() + gather
    while stop_after() is None:
        left = until - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(left, 0.2))


def _read_waiting(sock: socket.socket, into: list[CompactEvent], limit: int) -> tuple[bool, bool]:
    """Read every batch waiting in the socket into `into`, without waiting, up to `limit`
    events. Returns (the senders have all gone, events are still waiting)."""
    sock.settimeout(0.0)
    try:
        while len(into) < limit:
            try:
                message = sock.recv(MAX_MESSAGE)
            except BlockingIOError:
                return False, False
            if not message:
                return True, False
            into.extend(_decoded(message))
        return False, True
    finally:
        sock.settimeout(0.2)
