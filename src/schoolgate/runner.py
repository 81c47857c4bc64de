"""`schoolgate run`: every daemon in one foreground process group, for development and demos.

On an appliance systemd runs each daemon as its own hardened service. Here the daemons are
children of one supervisor:

- a daemon that dies is started again at once, and within 2 s even when it keeps dying
  (the back-off of a crash loop is capped there);
- when a daemon ends without flushing (killed, or a crash), what it may have lost is worked
  out from the counters its event writer last reported in ``daemon_status`` and written
  where a technician sees it: this supervisor's own ``daemon_status`` row (name ``run``)
  and its log ("previous run ended without flushing; up to N events may be lost");
- Ctrl-C or SIGTERM stops them all, each flushing its events first. The children also get
  SIGTERM if the supervisor itself is killed (PR_SET_PDEATHSIG), so none is left behind;
- the console runs on demand (`OnDemand`): the supervisor holds its listening socket and
  starts it when a connection waits there; once idle it stops cleanly and is "asleep", which
  is not a crash (no restart, nothing counted) until the next connection wakes it.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import math
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

# The daemons in start order: name -> the `schoolgate` subcommand that runs it.
DAEMONS: dict[str, tuple[str, ...]] = {
    "dns": ("dns",),
    "proxy": ("proxy",),
    "console": ("console",),
    "scheduler": ("scheduler",),
    "watch": ("net", "watch"),
    "identity": ("identity", "serve"),
}
# The daemon_status rows each daemon's event writer keeps ("dns.1", "dns.2"... with workers).
STATUS_NAMES: dict[str, str] = {"dns": "dns", "proxy": "proxy", "watch": "gateway", "scheduler": "scheduler"}
SUPERVISOR_STATUS_NAME = "run"
# Delay before a restart, by the number of quick deaths in a row. A daemon that ran for a
# while is restarted at once; one that keeps dying at start-up is retried more slowly, but
# never later than 2 s after it died.
RESTART_DELAYS_S = (0.0, 0.25, 0.5, 1.0, 2.0)
STABLE_AFTER_S = 10.0  # a run this long resets the crash-loop back-off
POLL_S = 0.05
SAMPLE_S = 1.0  # how often the children's status rows are read for their event rates
# EventWriter's flush interval: a killed writer loses what it took since its last flush.
FLUSH_INTERVAL_S = 0.2
# Held back before the writer sees it: the kernel batches NFLOG messages for up to 0.1 s.
# (What the kernel logs while no watcher listens, between a death and the restart, is lost
# too; that gap is the restart time, reported in the log line.)
# The DNS daemon's event-writing process reads its workers' events in bursts two seconds apart
# (dns.daemon.WRITER_GATHER_S): until then they wait in the daemon's socket.
EXTRA_HOLD_S = {"gateway": 0.1, "dns.events": 2.0}
DEFAULT_GRACE_S = 12.0
PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15
ASLEEP = "asleep (wakes on connection)"


@dataclass
class ExitReport:
    """How a daemon ended, and what it may have lost."""

    status: int
    clean: bool
    maybe_lost: int | None  # None: the daemon keeps no event counters (or never reported)
    detail: str


class ForkedProcess:
    """A daemon forked from the supervisor (see `Preloaded`), with the Popen calls we use."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                self.returncode = -signal.SIGKILL  # reaped elsewhere: it is gone, how is unknown
                return self.returncode
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(["schoolgate", str(self.pid)], timeout or 0.0)
            time.sleep(0.02)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class Preloaded:
    """Starts daemons by forking the supervisor after it has imported what they use.

    A Python daemon spends most of its start-up importing (mitmproxy, Flask, SQLAlchemy,
    APScheduler...). Imported once here, a restarted daemon is a fork away from running its
    own start-up: that is what keeps a restart within 2 s on a small, busy box.
    The supervisor keeps no threads, so forking it is safe.
    """

    PACKAGES = ("policy", "store", "identity", "services", "dns", "proxy", "gateway", "scheduler", "console")
    THIRD_PARTY = (
        "mitmproxy.master", "mitmproxy.options", "mitmproxy.addons.proxyserver", "mitmproxy.addons.tlsconfig",
        "mitmproxy.addons.next_layer", "mitmproxy.addons.block", "mitmproxy.addons.core",
        "gunicorn.app.base", "gunicorn.arbiter", "gunicorn.workers.gthread",
        "apscheduler.schedulers.background", "apscheduler.triggers.cron", "apscheduler.triggers.interval",
    )
    # What only one daemon uses: a supervisor of some daemons (`--only`, as the proxy's unit
    # runs) leaves out the others' areas and libraries, which no child of its would share.
    OWN: ClassVar[dict[str, tuple[str, ...]]] = {
        "dns": ("schoolgate.dns",),
        "proxy": ("schoolgate.proxy", "mitmproxy"),
        "console": ("schoolgate.console", "gunicorn"),
        "scheduler": ("schoolgate.scheduler", "apscheduler"),
    }

    def __init__(
        self, before_fork_child: Callable[[], None] | None = None, daemons: Iterable[str] | None = None
    ) -> None:
        self.before_child = before_fork_child
        wanted = set(DAEMONS if daemons is None else daemons)
        self.left_out = tuple(prefix for daemon, own in self.OWN.items() if daemon not in wanted for prefix in own)
        self.failed: list[str] = []
        self.parser: argparse.ArgumentParser | None = None

    def load(self) -> None:
        import importlib
        import pkgutil

        names: list[str] = []
        for area in self.PACKAGES:
            package = f"schoolgate.{area}"
            if self._left_out(package):
                continue
            try:
                module = importlib.import_module(package)
            except Exception:  # an area missing from this build: its daemon imports it itself
                self.failed.append(package)
                continue
            names.extend(
                info.name
                for info in pkgutil.walk_packages(getattr(module, "__path__", []), prefix=package + ".")
                # Alembic's migration scripts act when imported; a __main__ runs a command.
                if "migrations" not in info.name and not info.name.endswith("__main__")
            )
        for name in (*names, *self.THIRD_PARTY):
            if self._left_out(name):
                continue
            try:
                importlib.import_module(name)
            except Exception:  # optional parts (a benchmark helper, a missing extra)
                self.failed.append(name)
        self._warm()

    def _left_out(self, module: str) -> bool:
        return any(module == prefix or module.startswith(prefix + ".") for prefix in self.left_out)

    def _warm(self) -> None:
        """Build here, once, what every daemon would otherwise build for itself after the fork.

        Work done in a forked daemon allocates into, and writes to, the pages it shares with
        the supervisor, copying them: measured per daemon, the ORM's mapper configuration cost
        about 12 MB, and building the command line's parser (which imports every area's commands)
        about 9 MB. Done before the fork, both stay shared; the daemons parse their arguments with
        this parser rather than building their own.
        """
        from schoolgate.cli import build_parser

        self.parser = build_parser()
        try:
            from sqlalchemy.orm import configure_mappers

            import schoolgate.store.models  # noqa: F401  (the mappers to configure)

            configure_mappers()
        except Exception:  # a broken model shows in the daemon that uses it, with its own error
            self.failed.append("sqlalchemy.orm.configure_mappers")

    def spawn(self, name: str, args: list[str], closes: tuple[int, ...] = ()) -> ForkedProcess:
        """Fork `schoolgate ARGS`; the child closes `closes` (the supervisor's descriptors that
        are not its own: a worker holding the event channel's reading end, say)."""
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            for fd in closes:
                with contextlib.suppress(OSError):
                    os.close(fd)
            _run_forked(name, args, parent, self.before_child, self.parser)
        return ForkedProcess(pid)


def _run_forked(
    name: str, args: list[str], parent: int, before: Callable[[], None] | None,
    parser: argparse.ArgumentParser | None,
) -> None:
    code = 1
    try:
        _die_with_parent()
        if os.getppid() != parent:  # the supervisor died before the line above
            os._exit(1)
        # `ps -o comm` and top show which daemon this is (its command line is the supervisor's).
        _LIBC.prctl(PR_SET_NAME, f"sg-{name}".encode()[:15], 0, 0, 0)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if before is not None:
            before()
        from schoolgate.cli import main

        sys.argv = ["schoolgate", *args]
        code = main(args, parser)
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    except KeyboardInterrupt:
        code = 130
    except BaseException:  # the daemon crashed: say why, and let the supervisor restart it
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


@dataclass
class OnDemand:
    """A daemon's listening sockets, held by the supervisor so that the daemon can sleep: a
    connection that arrives while it is asleep waits in them and wakes it, and is then served
    by it (the sockets outlive every run of the daemon, so nothing is refused meanwhile)."""

    sockets: list[socket.socket]
    listen: str

    @classmethod
    def bind(cls, listen: str) -> OnDemand:
        """A listening TCP socket on HOST:PORT, set up as gunicorn sets up its own."""
        from schoolgate.console.server import parse_listen

        host, port = parse_listen(listen)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((host, port))
            sock.listen(ON_DEMAND_BACKLOG)
        except OSError:
            sock.close()
            raise
        return cls([sock], listen)

    @property
    def fds(self) -> tuple[int, ...]:
        return tuple(sock.fileno() for sock in self.sockets if sock.fileno() >= 0)

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


ON_DEMAND_BACKLOG = 2048  # gunicorn's own default backlog


def console_on_demand(config: str, say: Callable[[str], None]) -> OnDemand | None:
    """The console's sockets for socket activation, or None to run it always on: `[console]
    idle_minutes = 0`, or a configuration or address the console will report itself."""
    from schoolgate.config import load_config
    from schoolgate.tomlpos import ConfigError

    try:
        console = load_config(config).console
    except ConfigError:
        return None
    if console.idle_minutes <= 0:
        return None
    try:
        return OnDemand.bind(console.listen)
    except (OSError, ValueError) as err:
        say(f"cannot hold the console's socket on {console.listen} ({err}); running it always on")
        return None


@dataclass
class Child:
    name: str
    argv: list[str]
    process: subprocess.Popen[bytes] | ForkedProcess | None = None
    preloaded: Preloaded | None = None
    started_mono: float = 0.0
    started_wall: datetime | None = None
    quick_deaths: int = 0
    restarts: int = 0
    unclean_exits: int = 0
    events_maybe_lost: int = 0
    next_start: float | None = None
    died_mono: float | None = None
    last_exit: str = ""
    status_name: str | None = None  # one worker of several, or the proxy's event writer: its own row only
    # The rows an event-writing process of several daemons owns alone ("dns.events", "proxy.events",
    # and "gateway" when it runs net watch).
    status_names: tuple[str, ...] = ()
    # The daemons this child runs inside itself (the event-writing process: net watch), which
    # have no process of their own: the state file names them, so that their host can be found.
    runs: tuple[str, ...] = ()
    # Descriptors of the supervisor's that this child inherits (the proxy's event channel):
    # named in its argv. Every other child closes them (`closes`).
    fds: tuple[int, ...] = ()
    closes: tuple[int, ...] = ()
    # Started on demand (the console): asleep until a connection waits on these sockets.
    on_demand: OnDemand | None = None
    asleep: bool = False
    wakes: int = 0

    def wake_on(self, on_demand: OnDemand) -> None:
        """Run this child on demand: it serves `on_demand`'s sockets (`--listen-fd`)."""
        self.on_demand = on_demand
        self.fds = (*self.fds, *on_demand.fds)
        self.argv = [*self.argv, *(arg for fd in on_demand.fds for arg in ("--listen-fd", str(fd)))]

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def own_rows(self) -> tuple[str, ...]:
        """The status rows this child owns alone; none named: its daemon's (StatusBoard.rows_of)."""
        return self.status_names or ((self.status_name,) if self.status_name else ())

    def start(self) -> None:
        if self.preloaded is not None:
            self.process = self.preloaded.spawn(
                self.name, self.argv[self.argv.index("schoolgate") + 1:], self.closes
            )
        else:
            # The supervisor runs no threads, so preexec_fn is safe here. Only `fds` are
            # inherited (close_fds closes the rest).
            self.process = subprocess.Popen(self.argv, preexec_fn=_die_with_parent, pass_fds=self.fds)  # noqa: PLW1509
        self.started_mono = time.monotonic()
        self.started_wall = datetime.now(UTC)
        self.next_start = None

    def describe(self) -> dict[str, Any]:
        running = self.process is not None and self.process.poll() is None
        pid = self.pid if running else None
        state = "running" if running else ASLEEP if self.asleep else "restarting"
        return {
            "pid": pid,
            "state": state,
            "wakes": self.wakes,
            "start": _process_start_time(pid) if pid else None,
            "restarts": self.restarts,
            "unclean_exits": self.unclean_exits,
            "events_maybe_lost": self.events_maybe_lost,
            "last_exit": self.last_exit,
            "runs": list(self.runs),
        }


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "run",
        help="run every daemon in the foreground (development, demo)",
        description="Runs dns, proxy, console, scheduler and net watch as children, restarts any "
        "that dies within 2 s, and stops them all (each flushing its events) on Ctrl-C or SIGTERM.",
    )
    parser.add_argument("--config", required=True, help="appliance configuration (schoolgate.toml)")
    parser.add_argument(
        "--only", action="append", default=[], metavar="DAEMON", choices=sorted(DAEMONS),
        help="run only these daemons (repeatable): " + ", ".join(DAEMONS),
    )
    parser.add_argument(
        "--first-run", action="store_true", help="prepare the database and the first admin account if missing"
    )
    parser.add_argument(
        "--state-file", help="keep the children's PIDs and restart counts in this JSON file (the lab reads it)"
    )
    parser.add_argument(
        "--grace", type=float, default=DEFAULT_GRACE_S,
        help=f"seconds each daemon gets to flush and stop before it is killed (default {DEFAULT_GRACE_S:g})",
    )
    parser.add_argument(
        "--no-preload", action="store_true",
        help="start each daemon as a new Python process instead of forking a preloaded supervisor (slower restarts)",
    )
    parser.set_defaults(func=_run)


def supervisor_status_name(only: list[str]) -> str:
    """The supervisor's own daemon_status row: "run" for the whole appliance, "run.proxy" for
    a supervisor of some daemons (the proxy's systemd unit runs `schoolgate run --only proxy`
    for its workers and event writer), so that two supervisors never share a row."""
    return SUPERVISOR_STATUS_NAME if not only else ".".join([SUPERVISOR_STATUS_NAME, *sorted(set(only))])


def _schoolgate(*args: str) -> list[str]:
    # -P: never put the working directory on sys.path, where our dns/ folder would hide dnspython.
    return [sys.executable, "-P", "-m", "schoolgate", *args]


def child_argv(name: str, config: str) -> list[str]:
    return _schoolgate(*DAEMONS[name], "--config", config)


def proxy_workers(config: str) -> int:
    """`[proxy] workers` (1 if the configuration cannot be read: the proxy reports why)."""
    from schoolgate.config import load_config
    from schoolgate.tomlpos import ConfigError

    try:
        return max(1, load_config(config).proxy.workers)
    except ConfigError:
        return 1


def children_of(
    name: str, config: str, workers: int, preloaded: Preloaded | None, events: EventChannels | None = None
) -> list[Child]:
    """The supervised processes of one daemon: the proxy's workers are each a child of their own
    ("proxy" is worker 1, then "proxy.2"...), so one that dies is restarted alone while the
    others keep serving the shared port. A daemon with a channel in `events` gets its sending
    end (`--events-fd`) and hands its events to the supervisor's event-writing process
    (`event_writer_child`), which alone writes them."""
    ends = events.ends.get(name) if events is not None else None
    sending = ("--events-fd", str(ends.sending.fileno())) if ends is not None else ()
    if name != "proxy":
        child = Child(name, [*child_argv(name, config), *sending], preloaded=preloaded)
        if events is not None and ends is not None:
            child.fds = (ends.sending.fileno(),)
            child.closes = events.others(child.fds)
        return [child]
    if workers <= 1:
        proxies = [Child(name, [*child_argv(name, config), *sending], preloaded=preloaded,
                         status_name="proxy" if ends is not None else None)]
    else:
        proxies = [
            Child(
                "proxy" if index == 1 else f"proxy.{index}",
                [*child_argv(name, config), "--worker", str(index), "--workers", str(workers), *sending],
                preloaded=preloaded,
                status_name=f"proxy.{index}",
            )
            for index in range(1, workers + 1)
        ]
    if events is None or ends is None:
        return proxies
    for child in proxies:
        child.fds = (ends.sending.fileno(),)
        child.closes = events.others(child.fds)
    return proxies


def event_writer_child(
    config: str, preloaded: Preloaded | None, events: EventChannels, companions: Iterable[str] = ()
) -> Child:
    """The supervisor's event-writing process (`schoolgate events`): the reading end of every
    channel in `events`, each daemon's events written with its own settings and status row,
    and the daemons in `companions` (see `writing_companions`) run in it, each with its row."""
    from schoolgate.writers import settings_of

    beside = tuple(companions)
    readings = tuple(ends.reading.fileno() for ends in events.ends.values())
    sources = [arg for daemon, ends in events.ends.items()
               for arg in ("--source", f"{daemon}={ends.reading.fileno()}")]
    return Child(
        events.writer_name,
        _schoolgate("events", "--config", config, *sources, *(COMPANIONS[daemon][0] for daemon in beside)),
        preloaded=preloaded,
        status_names=(*(settings_of(daemon).status_name for daemon in events.ends),
                      *(COMPANIONS[daemon][1] for daemon in beside)),
        fds=readings,
        closes=events.others(readings),
        runs=beside,
    )


# The supervisor's event-writing process, as a child: "proxy.events" when it writes the proxy's
# events alone (the proxy's systemd unit), "events" when it writes the DNS daemon's too.
PROXY_EVENTS = "proxy.events"
SHARED_EVENTS = "events"


def writing_daemons(present: Iterable[str]) -> list[str]:
    """The daemons whose events the supervisor's own event-writing process writes.

    The proxy's whenever it runs the proxy (its workers are the supervisor's children; its
    systemd unit is `schoolgate run --only proxy`), and the DNS daemon's too when it runs both
    (the appliance's `schoolgate run`, the lab): one writing process instead of one each, a
    Python process (23-25 MB) less. Without the proxy (the DNS daemon's systemd unit runs
    `schoolgate dns`; `--only dns`) the DNS daemon forks its own writer, as it does alone.
    """
    running = set(present)
    if "proxy" not in running:
        return []
    return [daemon for daemon in ("dns", "proxy") if daemon in running]


# What the supervisor's event-writing process can run in a thread of its own beside the
# channels: daemon -> (the `schoolgate events` option that asks for it, its status row).
COMPANIONS: dict[str, tuple[str, str]] = {
    "watch": ("--watch", STATUS_NAMES["watch"]),
    "scheduler": ("--scheduler", STATUS_NAMES["scheduler"]),
}


def writing_companions(present: Iterable[str]) -> list[str]:
    """The daemons the supervisor's event-writing process runs itself rather than as processes
    of their own: net watch and the scheduler, whenever the supervisor has that process
    (`writing_daemons`).

    The process that records what devices did: the watcher's NFLOG reads, set syncs and census
    are a thread there, and the scheduler's jobs (which wake a few times a minute) threads of
    their own; each a Python process (22-25 MB of its own, bench/memory.py) less for the idle
    appliance. A companion that fails is started again there by itself (schoolgate.companions);
    killing the process restarts all it runs. Without such a process (`--only watch`, `--only
    scheduler`, or their systemd units, `schoolgate net watch` and `schoolgate scheduler`) each
    runs as a process of its own, the same code (gateway.circumvention.run_watcher,
    scheduler.runner.SchedulerService) in its other shape.
    """
    running = set(present)
    if not writing_daemons(running):
        return []
    return [daemon for daemon in COMPANIONS if daemon in running]


@dataclass
class EventChannelEnds:
    """One daemon's event channel (schoolgate.store.events.channel), made by the supervisor so
    that a restarted worker or writer gets the same socket: what the workers send while the
    writer restarts waits in it. The supervisor itself never reads or sends; it lets go of
    both ends when it stops the daemons, so the writer sees the end of the stream once the
    last worker has gone."""

    sending: socket.socket
    reading: socket.socket

    @classmethod
    def make(cls) -> EventChannelEnds:
        from schoolgate.store.events.channel import channel_pair

        sending, reading = channel_pair()
        return cls(sending, reading)

    @property
    def fds(self) -> tuple[int, ...]:
        return tuple(fd for fd in (self.sending.fileno(), self.reading.fileno()) if fd >= 0)

    def close(self) -> None:
        self.sending.close()
        self.reading.close()


@dataclass
class EventChannels:
    """A channel per daemon whose events the supervisor's event-writing process writes (see
    `writing_daemons`). One channel each rather than one the daemons share: the writing
    process then knows whose each event is without a tag on every event, writes each daemon's
    with that daemon's settings (the DNS daemon's second-long bursts are not the proxy's) into
    that daemon's own status row, and one daemon's backlog filling its socket never drops the
    other's events."""

    ends: dict[str, EventChannelEnds]

    @classmethod
    def make(cls, daemons: Iterable[str]) -> EventChannels:
        return cls({daemon: EventChannelEnds.make() for daemon in daemons})

    @property
    def writer_name(self) -> str:
        return PROXY_EVENTS if list(self.ends) == ["proxy"] else SHARED_EVENTS

    @property
    def fds(self) -> tuple[int, ...]:
        return tuple(fd for ends in self.ends.values() for fd in ends.fds)

    def others(self, own: tuple[int, ...]) -> tuple[int, ...]:
        """The channels' descriptors a child holding `own` must close: a sender holding a reading
        end, or the writer a sending end, would keep a stream from ever ending."""
        return tuple(fd for fd in self.fds if fd not in own)

    def close(self) -> None:
        for ends in self.ends.values():
            ends.close()


def _available_commands() -> set[str]:
    from schoolgate.cli import build_parser

    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return set(action.choices)
    return set()


def _first_run(config: str, commands: set[str]) -> None:
    if "db" in commands:
        subprocess.run(_schoolgate("db", "upgrade", "--config", config), check=True)
    if "users" in commands:
        listed = subprocess.run(
            _schoolgate("users", "list", "--config", config), capture_output=True, text=True, check=False
        )
        if listed.returncode == 0 and not listed.stdout.strip():
            # Prints the one-time password the first sign-in asks to change.
            subprocess.run(_schoolgate("users", "add", "admin", "--role", "admin", "--config", config), check=True)


# Loaded here, not in the forked child: finding a library may start a subprocess.
_LIBC = ctypes.CDLL(None, use_errno=True)


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM (and flush) if the supervisor is killed."""
    _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _process_start_time(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def _exit_text(status: int) -> str:
    if status < 0:
        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    return f"exited with status {status}"


def restart_delay(quick_deaths: int) -> float:
    return RESTART_DELAYS_S[min(quick_deaths, len(RESTART_DELAYS_S) - 1)]


@dataclass
class RateTracker:
    """The fastest recent rate at which each status row's writer took events (per second).

    Sampled from ``daemon_status`` while the daemons run, because a dead process cannot be
    asked how much it had taken since its last heartbeat.
    """

    window_s: float = 120.0
    _last: dict[str, tuple[datetime, int]] = field(default_factory=dict)
    _rates: dict[str, list[tuple[datetime, float]]] = field(default_factory=dict)

    def observe(self, name: str, heartbeat: datetime, submitted: int) -> None:
        last = self._last.get(name)
        self._last[name] = (heartbeat, submitted)
        if last is None or heartbeat <= last[0] or submitted < last[1]:
            return  # the first sight of the row, the same heartbeat again, or a new process
        rate = (submitted - last[1]) / (heartbeat - last[0]).total_seconds()
        rates = self._rates.setdefault(name, [])
        rates.append((heartbeat, rate))
        while rates and (heartbeat - rates[0][0]).total_seconds() > self.window_s:
            rates.pop(0)

    def peak(self, name: str) -> float:
        return max((rate for _, rate in self._rates.get(name, [])), default=0.0)


def estimate_loss(rows: list[dict[str, Any]], rates: RateTracker,
                  flush_interval: float = FLUSH_INTERVAL_S) -> tuple[int | None, str]:
    """Events a daemon that ended without flushing may have lost, from its status rows.

    A row's ``events`` counters are its EventWriter's at the last heartbeat: what had been
    submitted but was neither written, spooled nor dropped was waiting in memory (a backlog
    held while the database was busy), and ``held`` rows of allowed traffic were still being
    folded per minute, not yet submitted (``held_queries`` queries in them). On top of that,
    what it took since its last flush is lost: at most one flush interval at the fastest rate
    seen lately. An upper estimate, not an exact count.
    """
    rows = [row for row in rows if "events" in row["stats"]]
    if not rows:
        return None, "it keeps no event counters, or had not reported them yet"
    total = 0
    parts: list[str] = []
    for row in rows:
        counters = row["stats"]["events"]
        submitted = int(counters.get("submitted", 0))
        # "handed": what a DNS worker sent on to its daemon's event writer (whose own row counts it).
        settled = sum(int(counters.get(key, 0)) for key in ("written", "folded", "dropped", "spooled", "handed"))
        waiting = max(0, submitted - settled)
        held = int(counters.get("held", 0))
        peak = rates.peak(row["name"])
        window = flush_interval + EXTRA_HOLD_S.get(row["name"], 0.0)
        unflushed = math.ceil(peak * window)
        total += waiting + held + unflushed
        parts.append(
            f"{row['name']}: {waiting} waiting at its last heartbeat, {held} rows of allowed traffic "
            f"folded in memory ({int(counters.get('held_queries', 0))} queries), up to {unflushed} taken "
            f"since its last flush (at most {window:g} s at {peak:.1f}/s)"
        )
    return total, "; ".join(parts)


class StatusBoard:
    """Reads the children's ``daemon_status`` rows and writes the supervisor's own row."""

    def __init__(self, config_path: str, status_name: str = SUPERVISOR_STATUS_NAME) -> None:
        from schoolgate.config import load_config
        from schoolgate.store.db import make_engine, session_factory

        self.status_name = status_name
        self.config = load_config(config_path)
        self.engine = make_engine(self.config.database_url)
        self.sessions = session_factory(self.engine)
        self.started_at = datetime.now(UTC)
        self.rates = RateTracker()

    def _read(self) -> dict[str, dict[str, Any]]:
        from schoolgate.store.events import read_status

        with self.sessions() as session:
            rows = read_status(session, self.config.site.id)
        for name, row in rows.items():
            counters = row["stats"].get("events")
            if isinstance(counters, dict):
                self.rates.observe(name, row["heartbeat_at"], int(counters.get("submitted", 0)))
        return rows

    def sample(self) -> None:
        self._read()

    def rows_of(self, child: Child, owned_elsewhere: Iterable[str] = ()) -> list[dict[str, Any]]:
        """`child`'s status rows from this run. `owned_elsewhere`: rows other children own alone
        (the supervisor's event writer's "dns.events" is not the DNS daemon's)."""
        own = child.own_rows
        status_name = own[0] if own else STATUS_NAMES.get(child.name)
        if status_name is None or child.started_wall is None:
            return []
        others = set(owned_elsewhere)
        rows = self._read()
        found = []
        for name, row in rows.items():
            # A child that names its rows owns those rows alone ("proxy" beside "proxy.events");
            # otherwise a daemon's rows are its name's and its workers' ("dns", "dns.1"...).
            if own and name not in own:
                continue
            if not own and (name in others or (name != status_name and not name.startswith(status_name + "."))):
                continue
            # Only this run's rows: the ones from before it started belong to an earlier run.
            if row["heartbeat_at"] < child.started_wall:
                continue
            found.append({"name": name, **row})
        return found

    def publish(self, children: list[Child]) -> None:
        from schoolgate.store.events import write_status

        stats = {"children": {c.name: c.describe() for c in children}}
        with self.sessions() as session, session.begin():
            write_status(session, self.config.site.id, self.status_name, os.getpid(), self.started_at, stats)

    def close(self) -> None:
        self.engine.dispose()


class Supervisor:
    """Starts the children, restarts the ones that die, stops them all when asked."""

    def __init__(
        self,
        children: list[Child],
        *,
        board: StatusBoard | None,
        state_file: Path | None,
        grace: float,
        say: Callable[[str], None],
        events: EventChannels | None = None,
    ) -> None:
        self.children = children
        self.events = events
        self.board = board
        self.state_file = state_file
        self.grace = grace
        self.say = say
        self.stop_signal: int | None = None

    def request_stop(self, signum: int, _frame: object) -> None:
        self.stop_signal = signum

    def run(self) -> None:
        for child in self.children:
            if child.on_demand is not None:
                child.asleep = True
                self.say(f"{child.name} is {ASLEEP} on {child.on_demand.listen}")
                continue
            self.say(f"starting {child.name}")
            child.start()
        self._changed()
        next_sample = time.monotonic() + SAMPLE_S
        try:
            while self.stop_signal is None:
                self._wait(POLL_S)
                self._tend()
                if self.board is not None and time.monotonic() >= next_sample:
                    next_sample = time.monotonic() + SAMPLE_S
                    try:
                        self.board.sample()
                    except Exception as err:  # a busy database must not stop the supervision
                        self.say(f"could not read the daemons' status: {err}")
        finally:
            self.stop_all()

    def _wait(self, timeout: float) -> None:
        """Sleep for `timeout`, or less to wake a sleeping daemon whose socket has a connection
        waiting: the connection is served by the daemon it wakes."""
        sleepers = {
            sock: child for child in self.children if child.asleep and child.on_demand is not None
            for sock in child.on_demand.sockets
        }
        if not sleepers:
            time.sleep(timeout)
            return
        readable, _, _ = select.select(list(sleepers), [], [], timeout)
        for child in [c for c in self.children if any(sleepers.get(sock) is c for sock in readable)]:
            child.asleep = False
            child.start()
            child.wakes += 1
            self._changed()
            self.say(f"woke {child.name} (pid {child.pid}) for a connection")

    def _tend(self) -> None:
        now = time.monotonic()
        for child in self.children:
            if child.process is None:
                if child.next_start is not None and now >= child.next_start:
                    child.start()
                    child.restarts += 1
                    took = now - (child.died_mono or now)
                    # The status board first: whoever reads the log line can then read the board.
                    self._changed()
                    self.say(f"restarted {child.name} (pid {child.pid}) {took:.2f} s after it ended")
                continue
            status = child.process.poll()
            if status is None:
                continue
            self._ended(child, status, now)

    def _ended(self, child: Child, status: int, now: float) -> None:
        ran = now - child.started_mono
        if child.on_demand is not None and status == 0 and self.stop_signal is None:
            self._fell_asleep(child, ran)
            return
        child.quick_deaths = 0 if ran >= STABLE_AFTER_S else child.quick_deaths + 1
        delay = restart_delay(child.quick_deaths if ran < STABLE_AFTER_S else 0)
        report = self._report(child, status)
        child.process = None
        child.died_mono = now
        child.next_start = now + delay
        child.last_exit = f"{datetime.now(UTC).isoformat(timespec='seconds')}: {report.detail}"
        message = f"{child.name} {_exit_text(status)} after {ran:.1f} s; restarting in {delay:g} s"
        if not report.clean:
            child.unclean_exits += 1
            if report.maybe_lost is not None:
                child.events_maybe_lost += report.maybe_lost
                message += (
                    f". Previous run ended without flushing; up to {report.maybe_lost} events may be lost "
                    f"({report.detail})"
                )
            else:
                message += f". Previous run ended without flushing ({report.detail})"
        # The status board first, so the board already counts what the log line reports.
        self._changed()
        self.say(message)

    def _fell_asleep(self, child: Child, ran: float) -> None:
        """An on-demand daemon that stopped cleanly by itself was idle: it sleeps until the next
        connection. Not a death: no restart, no back-off, nothing counted as lost."""
        child.process = None
        child.asleep = True
        child.next_start = None
        child.quick_deaths = 0
        child.last_exit = f"{datetime.now(UTC).isoformat(timespec='seconds')}: idle, asleep"
        self._changed()
        self.say(f"{child.name} is {ASLEEP} after {ran:.1f} s awake")

    def _report(self, child: Child, status: int) -> ExitReport:
        # A daemon that stops on its own with status 0 has flushed (its writer's stop() ran).
        if status == 0:
            return ExitReport(status, True, 0, "stopped cleanly")
        if self.board is None:
            return ExitReport(status, False, None, _exit_text(status))
        try:
            owned_elsewhere = [name for other in self.children if other is not child for name in other.own_rows]
            rows = self.board.rows_of(child, owned_elsewhere)
        except Exception as err:  # the database may be what broke; keep supervising
            return ExitReport(status, False, None, f"{_exit_text(status)}; its counters are unreadable: {err}")
        maybe_lost, detail = estimate_loss(rows, self.board.rates)
        return ExitReport(status, False, maybe_lost, f"{_exit_text(status)}; {detail}")

    def _changed(self) -> None:
        if self.state_file is not None:
            state = {
                "supervisor": {"pid": os.getpid(), "start": _process_start_time(os.getpid())},
                "children": {c.name: c.describe() for c in self.children},
            }
            tmp = self.state_file.with_name(self.state_file.name + ".tmp")
            tmp.write_text(json.dumps(state, indent=2))
            os.replace(tmp, self.state_file)
        if self.board is not None:
            try:
                self.board.publish(self.children)
            except Exception as err:  # a busy database must not stop the supervision
                self.say(f"could not record the daemons' status: {err}")

    def stop_all(self) -> None:
        running = [c for c in self.children if c.process is not None and c.process.poll() is None]
        # A Ctrl-C in a terminal already reached every child (one foreground process group):
        # a second signal could cut a daemon's flush short, so only the others get SIGTERM.
        delivered_by_terminal = self.stop_signal == signal.SIGINT and _in_foreground()
        if not delivered_by_terminal:
            for child in running:
                assert child.process is not None
                with contextlib.suppress(ProcessLookupError):
                    child.process.send_signal(signal.SIGTERM)
        if self.events is not None:
            # The event writer reads until every sender has gone: the daemons' workers, as they
            # stop, and this copy now.
            self.events.close()
        deadline = time.monotonic() + self.grace
        for child in running:
            assert child.process is not None
            try:
                status = child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.say(f"{child.name} did not stop within {self.grace:g} s; killing it")
                child.process.kill()
                status = child.process.wait()
            self.say(f"{child.name} {_exit_text(status)}")
        for child in self.children:
            child.process = None
            if child.on_demand is not None:
                child.on_demand.close()
        if self.state_file is not None:
            with contextlib.suppress(FileNotFoundError):
                self.state_file.unlink()


def _in_foreground() -> bool:
    try:
        return os.tcgetpgrp(sys.stdin.fileno()) == os.getpgrp()
    except OSError:
        return False


def _not_needed(config: str, wanted: list[str]) -> dict[str, str]:
    """Daemons the configuration gives nothing to do, and why (the config is checked again later)."""
    from schoolgate.config import load_config
    from schoolgate.identity.daemon import has_something_to_receive
    from schoolgate.tomlpos import ConfigError

    try:
        loaded = load_config(config)
    except ConfigError:
        return {}  # each daemon reports the mistake itself
    skipped = {}
    if loaded.network.mode == "dns-only" and "watch" in wanted:
        skipped["watch"] = "in dns-only mode the kernel refuses nothing, so there are no attempts to read"
    if "identity" in wanted and not has_something_to_receive(loaded.identity):
        # As doctor and the console's network page expect no identity service then. Its Python
        # process would cost the idle appliance about 24 MB (bench/memory.py) to wait for nothing.
        skipped["identity"] = "no [identity] lease_files or radius_listen is set, so there is nothing to receive"
    return skipped


def _run(args: argparse.Namespace) -> int:
    config = str(Path(args.config).resolve())
    commands = _available_commands()
    wanted = [name for name in DAEMONS if not args.only or name in args.only]
    if not args.only and os.geteuid() != 0:
        # Reading the kernel's NFLOG group needs CAP_NET_ADMIN: without it net watch would
        # only die and be restarted, over and over.
        print("schoolgate run: not root, so net watch is not started (ask for it with --only watch)",
              file=sys.stderr)
        wanted.remove("watch")
    skipped = _not_needed(config, wanted) if not args.only else {}
    for name, why in skipped.items():
        print(f"schoolgate run: {name} is not started: {why}", file=sys.stderr)
        wanted.remove(name)
    present = [name for name in wanted if DAEMONS[name][0] in commands]
    for name in wanted:
        if name not in present:
            print(f"schoolgate run: the {name} daemon is not part of this build; not started", file=sys.stderr)
    if not present:
        print("schoolgate run: nothing to run", file=sys.stderr)
        return 1
    if args.first_run:
        _first_run(config, commands)
    workers = proxy_workers(config) if "proxy" in present else 1

    def say(message: str) -> None:
        stamp = datetime.now(UTC).strftime("%H:%M:%S.%f")[:-3]
        print(f"{stamp} schoolgate run: {message}", file=sys.stderr, flush=True)

    board: StatusBoard | None = None
    try:
        board = StatusBoard(config, supervisor_status_name(args.only))
    except Exception as err:  # supervise anyway; the daemons will say what is wrong
        say(f"daemon status is not recorded: {err}")
    preloaded: Preloaded | None = None
    if not args.no_preload:
        started = time.monotonic()
        # A forked daemon must not touch the supervisor's database connections.
        preloaded = Preloaded(
            before_fork_child=(lambda: board.engine.dispose(close=False)) if board else None, daemons=present
        )
        preloaded.load()
        if board is not None:
            from schoolgate.live import LivePolicy, preload

            # The policy compiled once for every daemon's first load (each checks it is current).
            with contextlib.suppress(Exception):  # a broken policy: each daemon reports it itself
                preload(LivePolicy.from_config(board.config))
            # A first read of the status rows imports and builds the database layer's lazy parts
            # (the SQLite dialect, statement caches) here, once, rather than in every daemon.
            with contextlib.suppress(Exception):  # a busy database: the supervision loop says so later
                board.sample()
        # What was imported lives as long as every daemon: out of the collector's sight, so that
        # a daemon's collections neither walk it (a forked DNS worker's first collection did,
        # before its first answer) nor write to its pages and so copy what the forks share.
        gc.collect()
        gc.freeze()
        say(f"preloaded the daemons' modules in {time.monotonic() - started:.1f} s"
            + (f" (not available: {', '.join(preloaded.failed)})" if preloaded.failed else ""))
    # The proxy's workers (and the DNS daemon's, beside them) hand their events to one writing
    # process over channels made here.
    # net watch runs in that process too (writing_companions).
    writing, companions = writing_daemons(present), writing_companions(present)
    events = EventChannels.make(writing) if writing else None
    children = [child for name in present if name not in companions
                for child in children_of(name, config, workers, preloaded, events)]
    if events is not None:
        children.append(event_writer_child(config, preloaded, events, companions))
        for child in children:
            if not child.fds:  # not a writing daemon's: it must not hold a channel (nor keep it open)
                child.closes = events.fds
    on_demand = console_on_demand(config, say) if "console" in present else None
    if on_demand is not None:
        for child in children:
            if child.name == "console":
                child.wake_on(on_demand)
            else:  # only the console serves (and so holds) its socket
                child.closes = (*child.closes, *on_demand.fds)
    supervisor = Supervisor(
        children,
        board=board,
        state_file=Path(args.state_file) if args.state_file else None,
        grace=args.grace,
        say=say,
        events=events,
    )
    signal.signal(signal.SIGTERM, supervisor.request_stop)
    signal.signal(signal.SIGINT, supervisor.request_stop)
    try:
        supervisor.run()
    finally:
        if board is not None:
            board.close()
    return 0
