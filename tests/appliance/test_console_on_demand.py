"""The console on demand under `schoolgate run`: the supervisor holds its socket, a connection
wakes it and is served by it, it sleeps again once idle, and a kill is still a restart.

Real processes on loopback: the supervisor, the forked console, real HTTP and TLS clients.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from schoolgate.console.activation import WORKER_LOOP_S
from schoolgate.lab.console_demand import SCHOOLGATE, free_port, prepare
from schoolgate.runner import ASLEEP
from schoolgate.runner import POLL_S as SUPERVISOR_POLL_S
from schoolgate.store.db import make_engine, session_factory
from schoolgate.store.events import read_status

pytestmark = [pytest.mark.slow]

IDLE_MINUTES = 0.05  # 3 s: what these tests give the console as [console] idle_minutes
IDLE_S = IDLE_MINUTES * 60


class OnDemandConsole:
    """`schoolgate run --only console` with a console that sleeps after IDLE_S."""

    def __init__(self, tmp: Path, *, tls: bool) -> None:
        self.tmp = tmp
        self.tls = tls
        setup = prepare(tmp, port=free_port(), tls=tls, idle_minutes=IDLE_MINUTES)
        self.port, self.config, self.context, self.database = setup.port, setup.config, setup.context, setup.database
        self.state = tmp / "run.json"
        self.log = tmp / "run.log"
        self.process = subprocess.Popen(
            [*SCHOOLGATE, "run", "--config", str(self.config), "--only", "console", "--state-file", str(self.state)],
            stdout=self.log.open("wb"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,  # signals from this test only, not a terminal's
        )

    def child(self) -> dict[str, Any]:
        try:
            info: dict[str, Any] = json.loads(self.state.read_text())["children"]["console"]
        except (FileNotFoundError, ValueError, KeyError):
            return {}
        return info

    def connect(self) -> socket.socket:
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=30)
        if self.context is None:
            return raw
        return self.context.wrap_socket(raw, server_hostname="127.0.0.1")

    def get(self, path: str = "/login") -> str:
        """The first line of the answer to one request on a new connection."""
        with self.connect() as conn:
            conn.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
            return _read_all(conn).split(b"\r\n", 1)[0].decode("latin-1")

    def board_state(self) -> str:
        """The console's state in the supervisor's daemon_status row ("run.console")."""
        engine = make_engine(f"sqlite:///{self.database}")
        try:
            with session_factory(engine)() as session:
                row = read_status(session, "kingswood").get("run.console")
        finally:
            engine.dispose()
        return str(row["stats"]["children"]["console"]["state"]) if row else ""

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def _read_all(conn: socket.socket) -> bytes:
    chunks = []
    while chunk := conn.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _wait(condition: Callable[[], bool], timeout: float, what: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if condition():
            return time.monotonic() - started
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


@pytest.fixture(params=["http", "tls"])
def console(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[OnDemandConsole]:
    run = OnDemandConsole(tmp_path, tls=request.param == "tls")
    try:
        _wait(lambda: run.child().get("state") == ASLEEP, 60, "the supervisor to hold the console's socket")
        yield run
    finally:
        if run.process.poll() is None:
            run.process.send_signal(signal.SIGTERM)
            try:
                run.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                run.process.kill()
                run.process.wait()


def _asleep(run: OnDemandConsole) -> bool:
    return run.child().get("state") == ASLEEP


def test_asleep_at_idle_then_woken_by_a_connection_that_it_serves(console: OnDemandConsole) -> None:
    # Asleep from the start: no console process, yet the port takes connections.
    assert console.child()["pid"] is None and console.child()["wakes"] == 0
    # The supervisor's status row says so too (written just after its state file).
    _wait(lambda: console.board_state() == ASLEEP, 10, "the supervisor's status row")
    # The very first connection is answered by the console it wakes: not refused, not reset.
    assert console.get() == "HTTP/1.1 200 OK", console.log_text()
    info = console.child()
    assert info["state"] == "running" and info["wakes"] == 1 and info["pid"]
    _wait(lambda: console.board_state() == "running", 10, "the supervisor's status row")
    assert info["restarts"] == 0 and info["unclean_exits"] == 0
    assert "woke console" in console.log_text()


def test_sleeps_again_once_idle_and_wakes_again_without_counting_a_crash(console: OnDemandConsole) -> None:
    asked = time.monotonic()
    assert console.get() == "HTTP/1.1 200 OK"
    last_answer = time.monotonic()
    woke = last_answer - asked  # forked and loaded the application, then answered
    pid = console.child()["pid"]
    # Never before the idle time has passed since the last connection closed...
    while time.monotonic() - last_answer < IDLE_S - 0.2:
        assert console.child()["pid"] == pid, "asleep before [console] idle_minutes had passed"
        time.sleep(0.1)
    # ...and by then plus what the sleep waits for: the worker's next look (once a loop), its
    # graceful stop (nothing to finish) and the supervisor's poll. Its stop is bounded by its
    # wake as measured above: a process that forked and loaded the application in that time
    # ends sooner than that.
    slept_after = _wait(lambda: _asleep(console), IDLE_S + WORKER_LOOP_S + SUPERVISOR_POLL_S + woke, "sleep")
    assert not os.path.exists(f"/proc/{pid}") or _zombie(pid)
    # The supervisor records the state first, then logs it.
    _wait(lambda: f"console is {ASLEEP} after" in console.log_text(), 10, "the supervisor's log line")
    log = console.log_text()
    assert "Previous run ended without flushing" not in log and "restarting in" not in log, log
    info = console.child()
    assert info["restarts"] == 0 and info["unclean_exits"] == 0 and info["pid"] is None, info
    # Woken again, by the next connection, which it serves.
    assert console.get() == "HTTP/1.1 200 OK", console.log_text()
    assert console.child()["wakes"] == 2
    print(f"asleep {slept_after + IDLE_S - 0.2:.2f} s after the last answer (idle_minutes = {IDLE_MINUTES})")


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_a_request_in_flight_at_the_idle_deadline_finishes(console: OnDemandConsole) -> None:
    with console.connect() as conn:
        conn.sendall(b"GET /login HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # the request, not yet complete
        _wait(lambda: console.child().get("state") == "running", 30, "the console to wake")
        pid = console.child()["pid"]
        # Past the idle deadline, and a worker loop after it, with the request still open.
        time.sleep(IDLE_S + 2 * WORKER_LOOP_S)
        assert console.child()["pid"] == pid, "the console slept with a request in progress"
        conn.sendall(b"Connection: close\r\n\r\n")
        assert _read_all(conn).startswith(b"HTTP/1.1 200 OK")
    assert console.child()["unclean_exits"] == 0


def test_a_console_killed_while_awake_is_restarted_and_counted(console: OnDemandConsole) -> None:
    assert console.get() == "HTTP/1.1 200 OK"
    pid = console.child()["pid"]
    os.kill(pid, signal.SIGKILL)
    _wait(lambda: console.child().get("pid") not in (None, pid), 10, "the console's restart")
    info = console.child()
    assert info["restarts"] == 1 and info["unclean_exits"] == 1 and info["state"] == "running", info
    assert "console killed by SIGKILL" in console.log_text()
    assert console.get() == "HTTP/1.1 200 OK"


def test_sigterm_stops_the_supervisor_cleanly_with_the_console_asleep(console: OnDemandConsole) -> None:
    console.process.send_signal(signal.SIGTERM)
    assert console.process.wait(timeout=30) == 0, console.log_text()
    with pytest.raises(ConnectionRefusedError):  # the socket went with its holder
        socket.create_connection(("127.0.0.1", console.port), timeout=5).close()
