"""The body of an event-writing process: the batches a daemon's workers hand over on its event
channel (``channel.receive_events``) into an ``EventWriter``, until every worker has gone.

One process may write for several daemons (``schoolgate run`` with both the DNS daemon and the
proxy runs one, not one each: a Python process costs the idle appliance 23-25 MB). Each daemon
is then a ``Source`` of its own: its own channel, read by a thread of its own into an
EventWriter of its own, with that daemon's settings (batch size, bursts, page cache) and its
own ``daemon_status`` row. So one daemon's burst never waits behind the other's, a full
socket of one never drops the other's events, and the console and the supervisor's loss
estimate still see each daemon's writing counters and backlog apart.
"""

from __future__ import annotations

import gc
import logging
import signal
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WritingSettings:
    """How one daemon's events are written."""

    status_name: str  # its daemon_status row ("dns.events", "proxy.events")
    batch_rows: int  # rows per transaction at most
    # After SIGTERM, how long it waits for the workers' last events (its parent may have been
    # killed while a worker hangs, holding the channel open).
    stop_grace_s: float = 8.0
    sqlite_cache_kib: int | None = None  # the SQLite page cache of its connections (None: SQLite's)
    # > 0: read the channel in bursts this far apart, one transaction each (receive_events); the
    # supervisor's loss estimate must count the wait (runner.EXTRA_HOLD_S).
    gather_s: float = 0.0


@dataclass(frozen=True)
class Source:
    """One daemon's channel into an event-writing process: its reading end and its settings."""

    reading: socket.socket
    settings: WritingSettings


# Work a writing process does beside its channels (net watch under `schoolgate run`): run in
# a thread of its own until the event is set (SIGTERM, a failed source, or every channel ended),
# then flush what it holds and return. It keeps itself going: an exception it lets out is a
# defect, which stops the whole process (the supervisor starts it again).
Companion = Callable[[threading.Event], None]


class _Stop:
    """When the sources must stop waiting for their senders: `grace` after SIGTERM or SIGINT,
    or at once when another source of the process failed (the supervisor starts the process
    again, and what is still in the channels waits there for it). `companions` is set at once."""

    def __init__(self) -> None:
        self.asked_at: float | None = None
        self.abort = False
        self.companions = threading.Event()

    def ask(self, signum: int, frame: Any) -> None:
        if self.asked_at is None:
            self.asked_at = time.monotonic()
        self.companions.set()

    def fail(self) -> None:
        self.abort = True
        self.companions.set()

    def deadline(self, grace: float) -> float | None:
        if self.abort:
            return time.monotonic()
        return None if self.asked_at is None else self.asked_at + grace


# The writing process's youngest generation is collected only once this many more container
# objects live than at the last collection: more than a full burst holds at once (a batch of
# WRITER_BATCH_ROWS events, each an event tuple, its flags and its row), so a burst's events are
# read, written and freed before a collection ever walks them. At Python's default (700) the
# collector walked each event two or three times: 0.12-1.05 us of the writer's CPU per blocked
# query in bench/dns_event_writer.py, for cycles the writer hardly makes. What a collection
# finds is bounded by the same count.
WRITING_GC_THRESHOLDS = (50_000, 20, 100)


def collect_for_writing() -> None:
    """Set the collector up for an event-writing process (its benchmarks call this too).

    The supervisor's heap (the compiled policy above all) is never this process's: it is kept
    out of the collector's sight (and so its pages are not copied) as the rows come and go."""
    gc.freeze()
    gc.set_threshold(*WRITING_GC_THRESHOLDS)


def run_writing_process(config: Any, database_url: str, reading: socket.socket, settings: WritingSettings) -> int:
    """One daemon's event-writing process (see run_writing_sources)."""
    return run_writing_sources(config, database_url, [Source(reading, settings)])


def run_writing_sources(config: Any, database_url: str, sources: Sequence[Source],
                        companions: Sequence[tuple[str, Companion]] = ()) -> int:
    """Write what arrives on each source's channel until every sender of every channel has
    closed it, or each source's `stop_grace_s` after SIGTERM or SIGINT. `config` is the
    appliance's AppConfig. `companions` (name, work) run beside the sources, each in a thread,
    until then. Returns 0, or 1 if a source or companion failed (the others then stop too)."""
    if not sources:
        raise ValueError("an event-writing process needs at least one channel to read")
    names = [source.settings.status_name for source in sources]
    if len(set(names)) != len(names):
        raise ValueError(f"two sources of one event-writing process share a status row: {names}")
    stop = _Stop()
    collect_for_writing()
    signal.signal(signal.SIGTERM, stop.ask)
    signal.signal(signal.SIGINT, stop.ask)
    failed: list[str] = []

    def write(source: Source) -> None:
        name_os_thread(source.settings.status_name)
        try:
            _write_source(config, database_url, source, stop)
        except Exception:
            log.exception("%s: the event writer failed", source.settings.status_name)
            failed.append(source.settings.status_name)
            stop.fail()

    def accompany(name: str, work: Companion) -> None:
        name_os_thread(name)
        try:
            work(stop.companions)
        except Exception:
            log.exception("%s failed", name)
            failed.append(name)
            stop.fail()

    if len(sources) == 1 and not companions:
        write(sources[0])
        return 1 if failed else 0
    writers = [
        threading.Thread(target=write, args=(source,), name=f"schoolgate-{source.settings.status_name}")
        for source in sources
    ]
    beside = [threading.Thread(target=accompany, args=pair, name=f"schoolgate-{pair[0]}") for pair in companions]
    for thread in (*writers, *beside):
        thread.start()
    for thread in writers:
        while thread.is_alive():
            thread.join(0.2)  # in steps: the signal handlers run in this thread
    stop.companions.set()  # every channel has ended (or the process is stopping): so do they
    for thread in beside:
        while thread.is_alive():
            thread.join(0.2)
    return 1 if failed else 0


OS_THREAD_PREFIX = "sg-"


def name_os_thread(name: str) -> None:
    """Give the calling thread `sg-<name>` as its name in the kernel (`top -H`, and
    /proc/PID/task/TID/comm; 15 characters at most). The threads it starts inherit it, so each
    daemon's part of a shared process can be told apart, and its CPU time read, from outside:
    bench/proxy counts only the proxy's event writing of the process that also runs the DNS
    daemon's, net watch and the scheduler. Once, as a thread starts; the process's own name
    (its main thread's) is left as the supervisor set it."""
    if threading.current_thread() is threading.main_thread():
        return
    try:
        with open("/proc/thread-self/comm", "w", encoding="ascii", errors="replace") as comm:
            comm.write((OS_THREAD_PREFIX + name)[:15])
    except OSError:  # not Linux, or /proc not mounted: only the name is lost
        pass


def _write_source(config: Any, database_url: str, source: Source, stop: _Stop) -> None:
    from schoolgate.store.db import make_engine
    from schoolgate.store.events.channel import receive_events
    from schoolgate.store.events.writer import StatusTarget, make_event_writer

    settings = source.settings
    engine = make_engine(database_url, sqlite_cache_kib=settings.sqlite_cache_kib)
    writer = make_event_writer(
        engine, config, batch_size=settings.batch_rows,
        status=StatusTarget(site=config.site.id, name=settings.status_name, interval=1.0),
    )
    writer.start()
    log.info("%s: writing the workers' events", settings.status_name)
    bursts: dict[str, Any] = (
        {"gather": settings.gather_s, "gathered": writer.write_now, "max_gathered": settings.batch_rows}
        if settings.gather_s > 0 else {}
    )
    bursts["room"] = writer.wait_for_room  # a backlog waits in the socket, not beyond the writer's bound
    try:
        for _ in receive_events(source.reading, writer.submit_many,
                                stop_after=lambda: stop.deadline(settings.stop_grace_s), **bursts):
            pass
    finally:
        stats = writer.stop()
        log.info("%s: event writer stopped; events written %s, dropped %s", settings.status_name, stats.get("written"),
                 stats.get("dropped"))
        engine.dispose()
