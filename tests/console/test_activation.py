"""The console on demand (schoolgate.console.activation): the sockets it is handed, the idle
setting, what keeps it awake, and a systemd-style start from LISTEN_FDS with a real socket."""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pyotp
import pytest
from console_testkit import write_config

from schoolgate.config import ConfigError, load_config
from schoolgate.console.accounts import TotpPurpose, TotpReplayGuard
from schoolgate.console.activation import (
    WORKER_LOOP_S,
    ActivationError,
    Sleep,
    inherited_sockets,
    listen_fds,
    listening_elsewhere,
    memory_to_keep,
)
from schoolgate.console.throttle import SignInThrottle, ThrottleSettings

NOW = datetime(2026, 11, 23, 10, 15, tzinfo=UTC)


@pytest.mark.parametrize(
    ("environ", "pid", "expected"),
    [
        ({}, 100, []),  # not socket-activated
        ({"LISTEN_PID": "100", "LISTEN_FDS": "0"}, 100, []),
        ({"LISTEN_PID": "100", "LISTEN_FDS": "1"}, 100, [3]),
        ({"LISTEN_PID": "100", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "a:b"}, 100, [3, 4]),
        ({"LISTEN_PID": "99", "LISTEN_FDS": "1"}, 100, []),  # meant for another process (a parent)
        ({"LISTEN_FDS": "1"}, 100, []),  # half the protocol: not for us
    ],
    ids=["absent", "none", "one", "two-named", "another-process", "no-pid"],
)
def test_listen_fds_reads_systemds_variables_and_removes_them(
    environ: dict[str, str], pid: int, expected: list[int]
) -> None:
    env = dict(environ)
    # Descriptors 3 and 4 open, as systemd's sockets would be; their flags put back after.
    devnull, borrowed, saved = os.open(os.devnull, os.O_RDONLY), [], {}
    for fd in (3, 4):
        try:
            saved[fd] = fcntl.fcntl(fd, fcntl.F_GETFD)
        except OSError:
            os.dup2(devnull, fd)
            borrowed.append(fd)
    try:
        assert listen_fds(env, pid=pid) == expected
        for fd in expected:
            assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC  # not inherited by what it runs
    finally:
        for fd, flags in saved.items():
            fcntl.fcntl(fd, fcntl.F_SETFD, flags)
        for fd in borrowed:
            os.close(fd)
        os.close(devnull)
    if "LISTEN_PID" in environ and "LISTEN_FDS" in environ:
        assert not {"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"} & set(env)


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"LISTEN_PID": "abc", "LISTEN_FDS": "1"}, "must be whole numbers"),
        ({"LISTEN_PID": "100", "LISTEN_FDS": "-1"}, "must be whole numbers"),
        ({"LISTEN_PID": "100", "LISTEN_FDS": "900"}, "is not open"),
    ],
)
def test_listen_fds_refuses_what_sd_listen_fds_would(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ActivationError, match=message):
        listen_fds(dict(environ), pid=100)


def test_the_supervisors_descriptors_come_before_systemds() -> None:
    env = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "1"}
    assert inherited_sockets([7], env) == [7]
    assert inherited_sockets([], {}) == []


@pytest.mark.parametrize(
    ("listen", "elsewhere"),
    [("127.0.0.1:{port}", False), ("127.0.0.1:1", True), ("10.41.0.2:{port}", True), ("garbage", True)],
)
def test_a_socket_not_where_the_configuration_says_is_named(listen: str, elsewhere: bool) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        found = listening_elsewhere([server.fileno()], listen.format(port=port))
    assert found == ([f"127.0.0.1:{port}"] if elsewhere else [])


@pytest.mark.parametrize(("minutes", "idle_s"), [(0, None), (10, 600.0), (0.05, 3.0), (1440, 86400.0)])
def test_idle_minutes_zero_is_always_on(minutes: float, idle_s: float | None) -> None:
    sleep = Sleep.from_minutes(minutes)
    assert (sleep.idle_s if sleep else None) == idle_s


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("idle_minutes = -1", "0 (always on) to 1440"),
        ("idle_minutes = 1441", "0 (always on) to 1440"),
        ("idle_minutes = nan", "0 (always on) to 1440"),
        ("idle_minutes = inf", "0 (always on) to 1440"),
        ('idle_minutes = "10"', "expected"),
        ("idle_minutes = true", "expected"),
    ],
)
def test_a_bad_idle_setting_names_the_file_field_and_line(tmp_path: Path, setting: str, message: str) -> None:
    config = write_config(tmp_path, extra=setting + "\n")
    line = config.read_text().splitlines().index(setting) + 1
    with pytest.raises(ConfigError) as raised:
        load_config(config)
    shown = str(raised.value)
    assert shown.startswith(f"{config.name}:{line}: console.idle_minutes: ") and message in shown, shown


def test_idle_minutes_defaults_to_ten_and_takes_fractions(tmp_path: Path) -> None:
    assert load_config(write_config(tmp_path)).console.idle_minutes == 10
    assert load_config(write_config(tmp_path, extra="idle_minutes = 0.5\n")).console.idle_minutes == 0.5
    assert load_config(write_config(tmp_path, extra="idle_minutes = 0\n")).console.idle_minutes == 0


def _app(throttle: SignInThrottle, guard: TotpReplayGuard) -> SimpleNamespace:
    return SimpleNamespace(extensions={"schoolgate.throttle": throttle, "schoolgate.totp_guard": guard})


def test_what_the_console_holds_only_in_memory_keeps_it_awake() -> None:
    window = timedelta(minutes=15)
    throttle = SignInThrottle(ThrottleSettings(window=window, max_delay=window))
    guard = TotpReplayGuard()
    app = _app(throttle, guard)
    assert memory_to_keep(app, NOW) is None

    throttle.failure(source="10.41.20.15", account="jpatel", device=None, now=NOW)
    assert "failed sign-ins" in (memory_to_keep(app, NOW + window - timedelta(seconds=1)) or "")
    assert memory_to_keep(app, NOW + window) is None  # forgotten by the throttle too

    app = _app(SignInThrottle(), guard)  # no failures: only the codes now
    secret = pyotp.random_base32()
    code = pyotp.TOTP(secret).at(NOW)
    assert guard.verify(1, secret, code, NOW, TotpPurpose.SIGN_IN)
    assert "replayed" in (memory_to_keep(app, NOW + timedelta(seconds=30)) or "")
    # Two steps on, the code is outside the step either side that a check accepts.
    assert memory_to_keep(app, NOW + timedelta(seconds=90)) is None
    assert memory_to_keep(SimpleNamespace(), NOW) is None  # gunicorn's stand-in for a failed load


def test_a_console_started_by_systemd_serves_its_socket_and_sleeps_when_idle(tmp_path: Path) -> None:
    """As schoolgate-console.socket starts it: the listening socket as descriptor 3, LISTEN_PID
    the service's own PID. It answers the connection that started it, then exits 0 once idle."""
    idle_minutes = 0.05
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    config = write_config(tmp_path, listen=f"127.0.0.1:{port}", extra=f"idle_minutes = {idle_minutes}\n")
    subprocess.run([sys.executable, "-P", "-m", "schoolgate", "db", "upgrade", "--config", str(config)],
                   check=True, capture_output=True, timeout=120)
    client = socket.create_connection(("127.0.0.1", port))  # waiting before the service starts
    client.sendall(b"GET /login HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    log = tmp_path / "console.log"
    # The shell's PID is the service's: `exec` keeps it, as systemd's own start does.
    script = f'LISTEN_PID=$$ LISTEN_FDS=1 exec {sys.executable} -P -m schoolgate console --config "$1"'
    started = time.monotonic()
    with log.open("wb") as out:
        service = subprocess.Popen(["sh", "-c", script, "sh", str(config)], stdout=out, stderr=subprocess.STDOUT,
                                   pass_fds=(3,),  # kept open past the close of the rest
                                   preexec_fn=lambda: os.dup2(listener.fileno(), 3))  # noqa: PLW1509
    try:
        client.settimeout(60)
        answer = b""
        while chunk := client.recv(65536):
            answer += chunk
        answered = time.monotonic() - started
        assert answer.startswith(b"HTTP/1.1 200 OK"), log.read_text()
        # Exits by itself, status 0, once idle: after the idle time, within a worker loop and
        # the time it took to start and answer (ending takes less than loading did).
        status = service.wait(timeout=idle_minutes * 60 + WORKER_LOOP_S + answered + 5)
        assert status == 0, log.read_text()
        assert "asleep until the next one" in log.read_text()
        assert "not [console] listen" not in log.read_text()  # the socket is where the setting says
        # The socket is still listening (systemd's, here the test's): the next connection waits in it.
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
    finally:
        client.close()
        if service.poll() is None:
            service.send_signal(signal.SIGTERM)
            service.wait(timeout=30)
        listener.close()
