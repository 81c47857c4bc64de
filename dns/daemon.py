"""The DNS daemon: a supervisor, the worker processes it forks (listeners, resolver chain) on
one port with SO_REUSEPORT, and the one process that writes their events.

Writing an event costs several times what answering a blocked query does, so workers do not
write: they hand compact events in batches to the event-writing process over a socket pair
(schoolgate.store.events.channel), and that process alone writes them to the database. Each
worker still reports its own status row (what it holds in memory, for the loss estimate of a
killed worker); the writing process reports its ledger as ``dns.events``.

With one worker (`[dns] workers = 1`, the default) the daemon's own process is that worker:
it forks only the event writer, and whoever supervises the daemon (systemd, `schoolgate run`)
restarts it as a whole. A third process only to watch one worker cost the idle appliance about
6 MB (bench/memory.py).

Given the sending end of a channel someone else reads (`--events-fd`: `schoolgate run` with
the proxy beside it runs one event-writing process for both daemons, schoolgate.writers), the
daemon forks no writer: its workers hand their events to that channel, whose reading end the
supervisor holds, so what they send while that writer restarts waits in it. The settings the
events are written with (WRITER_SETTINGS) are the same either way.

A worker stops cleanly on SIGTERM or SIGINT: it stops listening, lets answers in flight finish
(briefly), hands the last folded log records over and sends what it holds to the writer. The
writing process stops once every worker has gone (the end of its socket's stream), or after
``WRITER_STOP_GRACE_S`` if its parent was killed and a worker hangs.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field, replace
from typing import Any

from schoolgate.config import AppConfig
from schoolgate.store.events.writing import WritingSettings

log = logging.getLogger("schoolgate.dns")

SHUTDOWN_GRACE_S = 1.0
NEIGHBOUR_REFRESH_S = 2.0
# How often the loop hands finished minutes of folded allowed queries to the event writer: a
# small slice often, so that the start of a minute does not stall answers for milliseconds.
EVENTS_TICK_S = 0.2


@dataclass
class DnsOptions:
    config: AppConfig
    listen: list[str] = field(default_factory=list)
    upstreams: list[str] = field(default_factory=list)
    workers: int = 1
    clock_file: str | None = None
    database_url: str | None = None
    # Compiled once by the supervisor before it forks: the workers share its memory pages.
    preloaded: Any = None
    worker_index: int = 0  # which of the supervisor's workers this is (names its status row)
    # The sending end of the event channel (schoolgate.store.events.channel), when a separate
    # process writes the events; None: the worker writes them itself (one process, in tests).
    # Given to the Supervisor (`--events-fd`), it is a channel another process reads, and the
    # daemon forks no event writer of its own.
    events_socket: socket.socket | None = None

    @property
    def listen_addresses(self) -> list[str]:
        return self.listen or list(self.config.dns.listen)

    @property
    def upstream_addresses(self) -> list[str]:
        # The illegal-content resolver, when configured, is the only way out: falling back to
        # another upstream would step round the IWF and CTIRU lists.
        return list(self.config.dns.illegal_content_upstream) or self.upstreams or list(self.config.dns.upstreams)


def status_name(options: DnsOptions) -> str:
    """The daemon_status row: "dns", or "dns.1", "dns.2"... for several workers."""
    return "dns" if options.workers <= 1 else f"dns.{options.worker_index + 1}"


WRITER_STATUS_NAME = "dns.events"  # the event writer's daemon_status row, whoever runs it


def writer_status_name(options: DnsOptions) -> str:
    """The event-writing process's daemon_status row: "dns.events"."""
    return WRITER_STATUS_NAME


WRITER_PROCESS_NAME = "sg-dns-events"  # its name in ps and /proc/PID/comm
WRITER_STOP_GRACE_S = 8.0  # after SIGTERM, how long it waits for the workers' last events


def worker_pids(supervisor: int) -> list[int]:
    """The processes answering for the DNS daemon `supervisor`, from /proc: its children but the
    event writer, or the daemon itself when it is its one worker (its only child is the event
    writer); empty if it has gone."""
    from pathlib import Path

    try:
        children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    except FileNotFoundError:
        return []
    workers = []
    for child in children:
        try:
            if Path(f"/proc/{child}/comm").read_text().strip() != WRITER_PROCESS_NAME:
                workers.append(int(child))
        except FileNotFoundError:  # it ended meanwhile
            continue
    # No worker child: the daemon is its one worker (beside its event writer, or alone when
    # another process writes its events).
    return workers or [supervisor]


def _clock(options: DnsOptions) -> Any:
    from schoolgate.clock import FileClock, clock_from_env

    return FileClock(options.clock_file) if options.clock_file else clock_from_env()


def _watched_sets(config: AppConfig) -> Any:
    # In dns-only mode no connection passes the appliance: there is nothing to steer.
    if config.dns.nftables and config.network.mode != "dns-only":
        from schoolgate.gateway.nft import NftWatchedSets
        from schoolgate.gateway.sets import watched_family

        return NftWatchedSets(family=watched_family(config.network.mode))
    from schoolgate.gateway.sets import MemoryWatchedSets

    return MemoryWatchedSets()


class Worker:
    """Everything one worker process runs, built from the options."""

    def __init__(self, options: DnsOptions) -> None:
        from sqlalchemy.orm import sessionmaker

        from schoolgate.dns.cache import AnswerCache
        from schoolgate.dns.resolver import build_resolver
        from schoolgate.dns.stages.watch import WatchedFeeder
        from schoolgate.dns.upstream import UpstreamPool
        from schoolgate.identity.neighbours import NeighbourTable
        from schoolgate.identity.resolver import IdentityResolver, RegisterReloader
        from schoolgate.live import LivePolicy
        from schoolgate.store.db import make_engine
        from schoolgate.store.events import StatusTarget, make_event_writer
        from schoolgate.store.events.channel import BATCH_EVENTS, EventChannel

        config = options.config
        self.options = options
        self.started = time.monotonic()
        self.clock = _clock(options)
        site = config.site.id
        self.engine = make_engine(options.database_url or config.database_url)
        sessions = sessionmaker(self.engine)
        # The neighbour table is read in the watcher thread, never on the event loop: a netlink
        # dump takes milliseconds.
        self.neighbours = NeighbourTable(min_refresh=float("inf"))
        self.neighbours.refresh()
        self._neighbours_at = time.monotonic()
        self.identities = IdentityResolver(neighbours=self.neighbours, now=self.clock.now)
        self.register_reloader = RegisterReloader(sessions, site, self.identities)
        with contextlib.suppress(Exception):
            self.register_reloader.poll()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.cache = AnswerCache(config.dns.cache_size)
        if options.preloaded is not None:
            # Loaded by the supervisor before it forked (the workers share its pages); this
            # worker adds its database, clock and callbacks.
            self.policy = options.preloaded
            self.policy.sessions, self.policy.clock = sessions, self.clock
            self.policy.on_change, self.policy.also_poll = self._policy_changed, self._poll_register
        else:
            self.policy = LivePolicy.from_config(
                config, sessions=sessions, clock=self.clock, on_change=self._policy_changed,
                also_poll=self._poll_register,
            )
            self.policy.load()  # a broken policy at start-up is fatal: ConfigError propagates
        with contextlib.suppress(Exception):
            self.policy.check()  # the overlay, now that there is a database
        self.pool = UpstreamPool(options.upstream_addresses, timeout_s=config.dns.upstream_timeout_ms / 1000)
        # Every second, so a supervisor can tell how much a killed worker may have lost.
        status = StatusTarget(site=site, name=status_name(options), interval=1.0, extra=self.stats)
        self.writer: Any
        self._hand_over: Any = None
        if options.events_socket is not None:
            self.writer = EventChannel(options.events_socket, self.engine, status=status)
            self._hand_over = self.writer.flush
        else:
            self.writer = make_event_writer(self.engine, config, status=status)
        self.feeder = WatchedFeeder(_watched_sets(config), config.dns.watched_set_timeout_s)
        self.resolver = build_resolver(
            policy=self.policy,
            clock=self.clock,
            pool=self.pool,
            cache=self.cache,
            # The events stage folds allowed queries per client, name and minute itself, so
            # its records go straight to the writer.
            sink=self.writer,
            site=site,
            feeder=self.feeder,
            identities=self.identities,
            own_names=list(config.dns.names),
            own_ipv4=config.network.appliance_ipv4,
            own_ipv6=config.network.appliance_ipv6,
        )
        # Allowed queries folded per minute are held in the events stage until the minute is
        # over, and a device's repeated asks of a blocked name until the next tick (a batch's
        # worth at most, which the channel would have held as long): the status row says how
        # many, so a killed worker's loss is counted.
        self.resolver.events.fold_asks(BATCH_EVENTS)
        self.writer.count_held(self.resolver.events.held)
        self.listeners: list[Any] = []
        self.handler: Any = None
        self._audit_task: Any = None

    def _poll_register(self) -> None:
        self.register_reloader.poll()
        if time.monotonic() - self._neighbours_at >= NEIGHBOUR_REFRESH_S:
            self._neighbours_at = time.monotonic()
            self.neighbours.refresh()

    def _policy_changed(self) -> None:
        loop = self.loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._flush_policy_answers)

    def _flush_policy_answers(self) -> None:
        dropped = self.cache.flush_policy_dependent()
        log.info("policy changed: %d policy-dependent cached answers dropped", dropped)

    def stats(self) -> dict[str, Any]:
        counters = self.handler.counters.as_dict() if self.handler is not None else {}
        return {
            "dns": {
                **counters,
                "cache_entries": len(self.cache),
                "cache_hits": self.cache.hits,
                "cache_misses": self.cache.misses,
                "stale_served": self.cache.stale_served,
                "policy_reloads": self.policy.reloads,
                "policy_error": self.policy.last_error,
                "register_generation": self.register_reloader.generation,
                "upstreams": self.pool.health(),
                "watched_added": self.feeder.added,
            }
        }

    async def serve(self, stop: asyncio.Event) -> None:
        from schoolgate.dns.server import QueryHandler, TcpListener, UdpListener, bind_socket

        self.loop = asyncio.get_running_loop()
        await self.pool.start()
        self.writer.start()
        self.feeder.start()
        self.policy.start("schoolgate-dns-policy")
        fast = self.resolver.fast
        self.handler = QueryHandler(self.resolver.head, fast.answer, fast.drain)
        try:
            for address in self.options.listen_addresses:
                udp = UdpListener(bind_socket(address, socket.SOCK_DGRAM, reuse_port=True), self.handler)
                udp.start()
                self.listeners.append(udp)
                tcp = TcpListener(bind_socket(address, socket.SOCK_STREAM, reuse_port=True), self.handler)
                await tcp.start()
                self.listeners.append(tcp)
            if self.options.worker_index == 0:
                # Off the start-up path (a database round trip and the services' imports):
                # answering comes first, the audit entry a moment later.
                self._audit_task = asyncio.get_running_loop().run_in_executor(
                    None, record_illegal_content_upstream, self.options
                )
            log.info(
                "serving DNS on %s (upstreams %s), ready in %.2f s",
                ", ".join(self.options.listen_addresses),
                ", ".join(self.options.upstream_addresses),
                time.monotonic() - self.started,
            )
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=EVENTS_TICK_S)
                self.resolver.events.flush_due(self.clock.now())
                if self._hand_over is not None:
                    self._hand_over()
        finally:
            await self.shutdown()

    async def shutdown(self) -> None:
        if self._audit_task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._audit_task, timeout=5)
        for listener in self.listeners:
            listener.close()
        self.listeners.clear()
        if self.handler is not None and self.handler.tasks:
            await asyncio.wait(list(self.handler.tasks), timeout=SHUTDOWN_GRACE_S)
        self.resolver.events.flush()
        self.policy.stop()
        self.feeder.stop()
        stats = self.writer.stop()
        self.pool.close()
        log.info("stopped; events %s %s, dropped %s", "handed to the writer" if self._hand_over else "written",
                 stats.get("handed", stats.get("written")), stats.get("dropped"))
        self.engine.dispose()


def settle_collector() -> None:
    """The garbage collector as a worker answers under it (the benchmarks measure it so too).

    Everything built before answering (the compiled policy above all) lives as long as the
    process: it moves out of the collector's sight, so a full collection does not walk a
    million-name policy in the middle of answering. A young collection's pause grows with the
    threshold while the share of time spent collecting does not, so the young threshold stays
    small (a pause of a fraction of a millisecond, not several: tail latency); older generations
    are collected rarely, since their objects are mostly the bounded caches."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(1000, 20, 100)


def run_worker(options: DnsOptions, writer_pid: int | None = None) -> int:
    """Answer until SIGTERM or SIGINT (0). `writer_pid`: the event writer this process forked
    itself (one worker, no supervisor between them); if it ends, so does this worker (1), since
    what it hands over would be lost, and the daemon's own supervisor starts both again."""
    # The event writer and policy watcher threads share the interpreter with the resolver loop;
    # a shorter switch interval bounds how long a query waits for them (tail latency).
    sys.setswitchinterval(0.001)
    worker = Worker(options)
    settle_collector()

    writer_ended: list[int] = []

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if writer_pid is not None:
            def check_writer() -> None:
                with contextlib.suppress(ChildProcessError):
                    pid, wait_status = os.waitpid(writer_pid, os.WNOHANG)
                    if pid:
                        writer_ended.append(os.waitstatus_to_exitcode(wait_status))
                        log.error("DNS event writer %d exited with %d; stopping, to be started again with it",
                                  writer_pid, writer_ended[0])
                        stop.set()

            loop.add_signal_handler(signal.SIGCHLD, check_writer)
            check_writer()  # it may have ended before the handler was in place
        await worker.serve(stop)

    asyncio.run(main())
    return 1 if writer_ended else 0


def _configure_logging() -> None:
    logging.basicConfig(
        stream=sys.stderr,
        level=os.environ.get("SCHOOLGATE_LOG_LEVEL", "INFO").upper(),
        format=f"%(asctime)s %(levelname)s [dns {os.getpid()}] %(name)s: %(message)s",
        force=True,
    )


def record_illegal_content_upstream(options: DnsOptions) -> None:
    """Put a changed `[dns] illegal_content_upstream` in the audit log, now it takes effect."""
    from schoolgate.clock import clock_from_env
    from schoolgate.services.illegal_content import record_if_changed, setting_of
    from schoolgate.store.db import make_engine, session_factory

    config = options.config
    setting = setting_of(config)
    if setting.configured:
        log.info("illegal content: every query goes through %s", setting.describe())
    else:
        log.warning("no illegal-content resolver ([dns] illegal_content_upstream): the IWF and CTIRU lists "
                    "are left to the ISP's own filtering")
    engine = make_engine(options.database_url or config.database_url)
    try:
        with session_factory(engine)() as session:
            if record_if_changed(session, site=config.site.id, config=config, now=clock_from_env().now()):
                log.info("the illegal-content resolver changed; recorded in the audit log")
            session.commit()
    except Exception as err:  # the database may be away: filtering starts regardless
        log.warning("could not record the illegal-content resolver in the audit log: %s", err)
    finally:
        engine.dispose()


# Rows per transaction in the event-writing process. It sees every worker's stream, so under
# load its batches fill: 2,000 rows a transaction cost its process 27-31 µs of CPU per event
# against 33-42 µs at the writer's default 500 (bench/dns_path.py, three runs each), the
# commit and the executemany's setup paid once for four times the rows. Read in bursts
# (WRITER_GATHER_S apart), a busy burst's events are one transaction of up to 10,000 rows:
# 20 µs per event against 29-30 µs at 2,000, with 300 devices' events (each transaction writes
# a page of the device and person indexes per device, whatever its rows). The queue's bound
# (50,000) is unchanged, so a burst still holds at most that many events in memory.
WRITER_BATCH_ROWS = 10_000
# The event-writing process's SQLite page cache (SQLite's default is 2,000 KiB). Every blocked
# query adds an entry to the indexes by device and by person, at as many places as there are
# devices asking: with the default cache those pages were read back from the file for each
# transaction. 4 MiB held them and cut the process's system time per event by a third in
# bench/dns_path.py's and a 300-device run; the process's memory grows by at most that.
WRITER_SQLITE_CACHE_KIB = 4096
# The event-writing process reads the workers' events in bursts two seconds apart and writes
# each burst at once (channel.receive_events' `gather`): at a school's rates (tens to hundreds of
# blocked queries a second) a transaction a fifth of a second wrote the same index pages for a
# fifth of the rows. Two seconds rather than one cost the process 16-21% less CPU per blocked
# query at a school's rates (bench/dns_event_writer.py, a phone's real mix, 300 devices, runs
# alternated: 6.3-6.5 µs against 7.5-8.3 at 1,000 queries a second, 11.2-11.5 against 13.8-14.2
# at 200); four seconds saved 0-15% more. Events wait in the socket, where a restarted writing
# process finds them; what the whole daemon would lose if killed is those seconds at most (the
# appliance's loss estimate counts them: runner.EXTRA_HOLD_S), and the console sees an attempt
# that much later.
WRITER_GATHER_S = 2.0


# How the DNS daemon's events are written, by its own event-writing process or by the one
# `schoolgate run` shares between the DNS daemon and the proxy (schoolgate.writers).
WRITER_SETTINGS = WritingSettings(
    status_name=WRITER_STATUS_NAME, batch_rows=WRITER_BATCH_ROWS, stop_grace_s=WRITER_STOP_GRACE_S,
    sqlite_cache_kib=WRITER_SQLITE_CACHE_KIB, gather_s=WRITER_GATHER_S,
)


def run_event_writer(options: DnsOptions, reading: socket.socket) -> int:
    """The event-writing process: the workers' batches into one EventWriter, until they have all
    gone (or WRITER_STOP_GRACE_S after SIGTERM, if the parent was killed and a worker hangs)."""
    from schoolgate.store.events.writing import run_writing_process

    config = options.config
    return run_writing_process(config, options.database_url or config.database_url, reading, WRITER_SETTINGS)


def run(options: DnsOptions) -> int:
    """Run in the foreground until SIGTERM: the supervisor, its workers and the event writer."""
    _configure_logging()
    return Supervisor(options).run()


_PR_SET_PDEATHSIG = 1
_PR_SET_NAME = 15
# Loaded before any fork: finding a library in the child could start a subprocess.
_LIBC = ctypes.CDLL(None, use_errno=True)


class Supervisor:
    """Forks the event writer and the workers, restarts one that dies, forwards SIGTERM/SIGINT to
    the workers and waits for all (the writer last: it stops once the workers have gone)."""

    RESTART_DELAY_S = 1.0
    MAX_QUICK_DEATHS = 3
    WRITER = -1  # the event writer's index among the children

    def __init__(self, options: DnsOptions) -> None:
        self.options = options
        self.children: dict[int, tuple[int, float]] = {}  # pid -> (worker index or WRITER, start time)
        self.stopping = False
        self.quick_deaths = 0
        self.sending: socket.socket | None = None
        self.reading: socket.socket | None = None

    def _fork(self, index: int, name: str, body: Any) -> None:
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            status = 1
            try:
                # A child must not outlive a killed supervisor: a worker would go on answering
                # on the shared port beside the restarted daemon's workers, unsupervised.
                _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
                if os.getppid() != parent:  # the supervisor died before prctl took effect
                    os._exit(0)
                if name:
                    _LIBC.prctl(_PR_SET_NAME, name.encode()[:15], 0, 0, 0)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                _configure_logging()
                status = body()
            except BaseException:
                logging.getLogger("schoolgate.dns").exception("%s failed", name or "worker")
            finally:
                logging.shutdown()
                os._exit(status)
        self.children[pid] = (index, time.monotonic())

    def _spawn(self, index: int) -> None:
        if index == self.WRITER:
            sending, reading = self.sending, self.reading
            assert sending is not None and reading is not None

            def write() -> int:
                sending.close()  # the writer's stream ends when the workers' (and ours) close
                return run_event_writer(self.options, reading)

            self._fork(index, WRITER_PROCESS_NAME, write)
            return
        self.options.worker_index = index
        self.options.events_socket = self.sending

        def work() -> int:
            if self.reading is not None:
                self.reading.close()
            return run_worker(self.options)

        self._fork(index, "", work)

    def _workers(self) -> list[int]:
        return [pid for pid, (index, _) in self.children.items() if index != self.WRITER]

    def _forward(self, signum: int, frame: Any) -> None:
        self.stopping = True
        for pid in self._workers():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        self._release_writer()

    def _release_writer(self) -> None:
        """Once the workers have gone, close our sending end: the writer then sees the end of
        its stream, writes what it has and stops."""
        if self.stopping and not self._workers() and self.sending is not None:
            self.sending.close()
            self.sending = None

    def _loss_of(self, index: int, pid: int) -> str:
        """What a worker that died may have lost, from its last status row (the events it had
        not handed over, and the allowed traffic it held folded), as the appliance's supervisor
        says it of a daemon."""
        from schoolgate.runner import RateTracker, estimate_loss
        from schoolgate.store.db import make_engine, session_factory
        from schoolgate.store.events import read_status

        name = status_name(replace(self.options, worker_index=index, events_socket=None, preloaded=None))
        engine = make_engine(self.options.database_url or self.options.config.database_url)
        try:
            with session_factory(engine)() as session:
                row = read_status(session, self.options.config.site.id).get(name)
        except Exception as err:  # the database may be what broke
            return f"; its counters are unreadable: {err}"
        finally:
            engine.dispose()
        if row is None or row["pid"] != pid:
            return "; it had not reported its counters yet"
        lost, detail = estimate_loss([{"name": name, **row}], RateTracker())
        return f"; up to {lost} events may be lost ({detail})"

    def preload(self) -> None:
        """Compile the policy (and import what workers use) once, before forking.

        A million-name blocklist then costs its compile time and memory once, not per worker:
        the forked workers share the pages until a reload replaces the policy in one of them.
        """
        # Everything a worker imports, imported here once: the modules' memory is then shared
        # by the workers too, and a worker is ready sooner.
        import schoolgate.dns.cache
        import schoolgate.dns.resolver
        import schoolgate.dns.server
        import schoolgate.dns.stages.watch
        import schoolgate.dns.upstream
        import schoolgate.identity.neighbours
        import schoolgate.identity.resolver
        import schoolgate.store.db
        import schoolgate.store.events
        import schoolgate.store.events.channel
        from schoolgate.live import LivePolicy

        if self.options.config.dns.nftables:
            import schoolgate.gateway.nft  # noqa: F401

        live = LivePolicy.from_config(self.options.config)
        live.load()
        self.options.preloaded = live
        gc.collect()
        gc.freeze()  # keep the collector from writing to (and so copying) the shared pages

    def _run_alone(self) -> int:
        """One worker: this process answers, beside the event writer it forks (forked before the
        worker starts any thread), or alone when another process reads its channel. When the
        worker stops, the writer sees the end of its stream (once every sender has gone), writes
        what it has and stops; this process waits for its own."""
        assert self.sending is not None
        writer: int | None = None
        if self.reading is not None:
            self._spawn(self.WRITER)
            (writer,) = self.children
            self.reading.close()  # the writer's alone: should it end, sending fails instead of filling up
            self.reading = None
            log.info("one DNS worker: answering in this process, its event writer is %d", writer)
        else:
            log.info("one DNS worker: answering in this process, its events written by the appliance's writer")
        self.options.worker_index = 0
        self.options.events_socket = self.sending
        try:
            status = run_worker(self.options, writer_pid=writer)
        finally:
            self.sending.close()
            self.sending = None
            if writer is not None:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(writer, 0)
        return status

    def run(self) -> int:
        from schoolgate.store.events.channel import channel_pair

        self.preload()
        if self.options.events_socket is not None:
            # Another process reads the channel (and its supervisor holds the reading end, where
            # events wait while that writer restarts): no writer of our own.
            self.sending, self.reading = self.options.events_socket, None
        else:
            self.sending, self.reading = channel_pair()
        if self.options.workers == 1:
            return self._run_alone()
        signal.signal(signal.SIGTERM, self._forward)
        signal.signal(signal.SIGINT, self._forward)
        if self.reading is not None:
            self._spawn(self.WRITER)
        for index in range(self.options.workers):
            self._spawn(index)
        log.info("supervising %d DNS workers%s: %s", self.options.workers,
                 " and their event writer" if self.reading is not None else "", sorted(self.children))
        status = 0
        while self.children:
            try:
                pid, wait_status = os.wait()
            except ChildProcessError:
                break
            except InterruptedError:
                continue
            child = self.children.pop(pid, None)
            if child is None:
                continue
            index, started = child
            code = os.waitstatus_to_exitcode(wait_status)
            if self.stopping:
                self._release_writer()
                continue
            if index == self.WRITER:
                log.error("DNS event writer %d exited with %d", pid, code)
            else:
                log.error("DNS worker %d exited with %d%s", pid, code, self._loss_of(index, pid))
            if time.monotonic() - started < 5.0:
                self.quick_deaths += 1
                if self.quick_deaths >= self.MAX_QUICK_DEATHS:
                    log.error("DNS workers keep failing at start-up; giving up")
                    self._forward(signal.SIGTERM, None)
                    status = 1
                    continue
            time.sleep(self.RESTART_DELAY_S)
            self._spawn(index)
        return status
