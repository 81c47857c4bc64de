"""The console on demand: it takes its listening sockets from whoever started it, and sleeps
when no one uses it.

The console is used a few times a day (a technician, the headteacher and the DSL on a phone),
so on a small appliance it need not hold its memory all day. Its service manager holds the
listening socket and starts the console when a connection waits on it, as cockpit does:
systemd through ``schoolgate-console.socket`` (the sockets arrive as ``LISTEN_FDS``, see
sd_listen_fds(3)), or ``schoolgate run`` (``--listen-fd``). The console serves, and after
``[console] idle_minutes`` without an open connection it stops cleanly, status 0: asleep. A
connection that arrives meanwhile waits in the socket, which outlives the console, and is
served by the next one.

What would be lost by sleeping keeps it awake: failed sign-ins that still slow a guesser down,
and second-factor codes that could still be replayed (both are kept in the console's memory).
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

SD_LISTEN_FDS_START = 3  # the first descriptor systemd passes (sd_listen_fds(3))
# gunicorn's threaded worker goes round its main loop at least this often (its poller's
# timeout): how late after the idle time the console notices it.
WORKER_LOOP_S = 1.0


class ActivationError(ValueError):
    """The service manager's variables are not what sd_listen_fds(3) describes."""


def listen_fds(environ: MutableMapping[str, str] | None = None, pid: int | None = None) -> list[int]:
    """The listening sockets systemd passed to this process (``LISTEN_PID``, ``LISTEN_FDS``),
    as sd_listen_fds(3) reads them: none when the variables are absent or meant for another
    process (a parent's, inherited). The variables are removed, so that nothing this process
    starts takes them for its own, and the descriptors are made close-on-exec."""
    env = os.environ if environ is None else environ
    listen_pid, count = env.get("LISTEN_PID"), env.get("LISTEN_FDS")
    if listen_pid is None or count is None:
        return []
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        env.pop(name, None)
    if not listen_pid.isdigit() or not count.isdigit():
        raise ActivationError(f"LISTEN_PID={listen_pid!r} and LISTEN_FDS={count!r} must be whole numbers")
    if int(listen_pid) != (os.getpid() if pid is None else pid):
        return []
    fds = list(range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + int(count)))
    for fd in fds:
        try:
            flags = fcntl.fcntl(fd, fcntl.F_GETFD)
        except OSError as err:
            raise ActivationError(f"LISTEN_FDS={count} but descriptor {fd} is not open") from err
        fcntl.fcntl(fd, fcntl.F_SETFD, flags | fcntl.FD_CLOEXEC)
    return fds


def inherited_sockets(given: list[int], environ: MutableMapping[str, str] | None = None) -> list[int]:
    """The console's listening sockets: ``--listen-fd`` (``schoolgate run``), else systemd's."""
    return list(given) if given else listen_fds(environ)


def listening_elsewhere(fds: list[int], listen: str) -> list[str]:
    """The addresses of the sockets handed over that are not `listen` ([console] listen): a
    socket unit left behind when the setting changed, say, whose address the console is then
    not reachable at where the configuration (and its certificate, and base_url) say."""
    import ipaddress
    import socket

    host, _, port = listen.rpartition(":")
    wanted = (host.strip("[]") or "0.0.0.0", int(port) if port.isdigit() else -1)
    elsewhere = []
    for fd in fds:
        with socket.socket(fileno=os.dup(fd)) as sock:
            address = sock.getsockname()
        if not isinstance(address, tuple):  # a Unix socket: no address to compare
            continue
        try:
            same = ipaddress.ip_address(address[0]) == ipaddress.ip_address(wanted[0]) and address[1] == wanted[1]
        except ValueError:
            same = False
        if not same:
            host_shown = f"[{address[0]}]" if ":" in address[0] else address[0]
            elsewhere.append(f"{host_shown}:{address[1]}")
    return elsewhere


def memory_to_keep(app: Any, now: datetime) -> str | None:
    """Why the console's application (schoolgate.console.app.create_app) must not sleep yet:
    what it holds in memory only and would forget. None when nothing."""
    extensions = getattr(app, "extensions", {})
    throttle = extensions.get("schoolgate.throttle")
    if throttle is not None and throttle.remembers_failures(now):
        return "it still counts recent failed sign-ins"
    guard = extensions.get("schoolgate.totp_guard")
    if guard is not None and guard.remembers_usable_codes(now):
        return "a second-factor code it accepted could still be replayed"
    return None


@dataclass(frozen=True)
class Sleep:
    """When the console sleeps: after `idle_s` with no open connection, unless `keep_awake`
    (asked then, with the served application and the time) gives a reason not to."""

    idle_s: float
    keep_awake: Callable[[Any, datetime], str | None] = memory_to_keep

    @classmethod
    def from_minutes(cls, minutes: float) -> Sleep | None:
        """None for 0 minutes: always on."""
        return cls(minutes * 60.0) if minutes > 0 else None


def sleeping_worker(base: type[Any], sleep: Sleep, clock: Callable[[], float] = time.monotonic) -> type[Any]:
    """gunicorn's threaded worker (`base`) that stops on its own once idle.

    Idle is measured from the last moment a connection was open (a request in flight, a
    kept-alive connection or one still sending its request all count), so a request in
    progress at the deadline always finishes. The check runs each time round the worker's main
    loop (`notify`, at least once a second). Stopping is gunicorn's own graceful stop, as on
    SIGTERM: the listening sockets are closed here but stay open in the service manager.
    """

    class SleepingWorker(base):  # type: ignore[misc]
        alive: bool  # gunicorn's: False once the worker is stopping
        nr_conns: int  # gunicorn's: connections open (in flight, kept alive, or still sending)
        last_open = 0.0

        def run(self) -> None:
            # From here, not from the fork: loading the application must not eat the idle time
            # before the connection that woke the console is even accepted.
            self.last_open = clock()
            super().run()

        def accept(self, listener: Any) -> None:
            self.last_open = clock()
            super().accept(listener)

        def notify(self) -> None:
            super().notify()
            now = clock()
            if self.nr_conns > 0:
                self.last_open = now
                return
            if not self.alive or now - self.last_open < sleep.idle_s:
                return
            reason = sleep.keep_awake(self.wsgi, datetime.now(UTC))
            if reason is not None:
                self.last_open = now  # asked again after another idle period
                self.log.info("Idle for %.0f s but staying awake: %s", sleep.idle_s, reason)
                return
            self.log.info("No connection for %.0f s: asleep until the next one (the socket stays open)",
                          sleep.idle_s)
            self.alive = False
            self.method_queue.defer(lambda: None)  # out of the poller's wait now, as on SIGTERM

    SleepingWorker.__name__ = SleepingWorker.__qualname__ = f"Sleeping{base.__name__}"
    return SleepingWorker
