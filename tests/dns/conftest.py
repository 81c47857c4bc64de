"""Fixtures for the DNS daemon's tests: a local authoritative upstream, a database, and the real
`schoolgate dns` process on free loopback ports, with its clock in a file the test controls."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rdatatype
import pytest
from sqlalchemy.orm import Session

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from authority import Authority  # noqa: E402

from schoolgate.clock import set_clock_file  # noqa: E402

DATA = HERE / "data"
SCHOOLGATE = Path(sys.executable).with_name("schoolgate")
# Wednesday 18 November 2026, in term; London is on GMT, so UTC times read as school times.
SCHOOL_DAY = datetime(2026, 11, 18, 10, 0, tzinfo=UTC)
STAFF_DEVICE_IP = "127.0.0.3"


def free_port(hosts: tuple[str, ...] = ("127.0.0.1", "::1")) -> int:
    """A port free for UDP and TCP on every given host."""
    for _ in range(50):
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        ok = True
        for host in hosts:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                s = socket.socket(family, kind)
                try:
                    s.bind((host, port))
                except OSError:
                    ok = False
                finally:
                    s.close()
        if ok:
            return port
    raise RuntimeError("no free port")


def ask(
    port: int,
    name: str,
    rdtype: str = "A",
    *,
    server: str = "127.0.0.1",
    source: str | None = None,
    tcp: bool = False,
    timeout: float = 3.0,
    **make: Any,
) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype, **make)
    if tcp:
        return dns.query.tcp(query, server, port=port, timeout=timeout, source=source)
    return dns.query.udp(query, server, port=port, timeout=timeout, source=source, ignore_trailing=True)


def addresses(message: dns.message.Message) -> list[str]:
    return sorted(
        rd.address for rrset in message.answer for rd in rrset if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA)
    )


def ede(message: dns.message.Message) -> list[tuple[int, str]]:
    return [(opt.code, opt.text or "") for opt in message.options if opt.otype == 15]


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


class Daemon:
    """`schoolgate dns` as a subprocess, with its own copy of the config and policy."""

    def __init__(self, workdir: Path, upstreams: list[str], workers: int = 1, extra_listen: bool = True) -> None:
        self.workdir = workdir
        shutil.copy(DATA / "schoolgate.toml", workdir / "schoolgate.toml")
        if not (workdir / "policy.toml").exists():
            shutil.copy(DATA / "policy.toml", workdir / "policy.toml")
        self.port = free_port()
        self.clock = workdir / "clock"
        set_clock_file(self.clock, SCHOOL_DAY)
        self._time_set: datetime | None = SCHOOL_DAY
        self._time_set_at = time.monotonic()
        self.db_url = f"sqlite:///{workdir / 'var' / 'schoolgate.db'}"
        self.upstreams = upstreams
        self.workers = workers
        self.extra_listen = extra_listen
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / "daemon.log"
        self.command = [str(SCHOOLGATE)]  # what runs `schoolgate dns ...`

    def start(self) -> Daemon:
        args = [
            *self.command,
            "dns",
            "--config",
            str(self.workdir / "schoolgate.toml"),
            "--listen",
            f"127.0.0.1:{self.port}",
            "--clock-file",
            str(self.clock),
            "--workers",
            str(self.workers),
        ]
        if self.extra_listen:
            args += ["--listen", f"[::1]:{self.port}"]
        for upstream in self.upstreams:
            args += ["--upstream", upstream]
        self.proc = subprocess.Popen(args, cwd=self.workdir, stderr=self.log.open("wb"))
        wait_for(self._answers, timeout=20, interval=0.05)
        return self

    def _answers(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self.log.read_text()}")
        try:
            ask(self.port, "schoolgate.lan", timeout=0.3)
        except (dns.exception.Timeout, OSError):
            return False
        return True

    def set_time(self, instant: datetime) -> None:
        if self._time_set == instant and time.monotonic() - self._time_set_at < 30:
            return  # already there (give or take the seconds that have run on since)
        set_clock_file(self.clock, instant)
        self._time_set, self._time_set_at = instant, time.monotonic()
        # The daemon's FileClock re-reads the file at most every 0.2 s.
        time.sleep(0.3)

    def stop(self) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        code = self.proc.returncode
        self.proc = None
        return code

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def init_database(url: str) -> None:
    from schoolgate.store.db import init_db

    init_db(url)


def add_staff_device(url: str) -> None:
    from schoolgate.store.db import make_engine
    from schoolgate.store.models import Device, Person
    from schoolgate.store.overlay import bump_generation

    engine = make_engine(url)
    with Session(engine) as session, session.begin():
        person = Person(site="dnstest", external_id="t.jones", name="Tess Jones", role="staff")
        session.add(person)
        session.flush()
        session.add(
            Device(
                site="dnstest",
                device_id="LAPTOP-07",
                name="Staff laptop 7",
                mac="02:00:00:00:00:07",
                ip=STAFF_DEVICE_IP,
                kind="laptop",
                person_id=person.id,
            )
        )
        bump_generation(session, "dnstest")
    engine.dispose()


@pytest.fixture(scope="module")
def authority() -> Iterator[Authority]:
    server = Authority().start()
    yield server
    server.close()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, authority: Authority) -> Iterator[Daemon]:
    """One daemon shared by a module's read-only tests (each test sets the time it needs)."""
    workdir = tmp_path_factory.mktemp("dns")
    d = Daemon(workdir, [authority.address])
    (workdir / "var").mkdir()
    init_database(d.db_url)
    add_staff_device(d.db_url)
    d.start()
    yield d
    assert d.stop() == 0, d.log_text()


@pytest.fixture()
def fresh_daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """A factory for a daemon of a test's own (for tests that change its policy or upstream)."""
    started: list[Daemon] = []

    def make(upstreams: list[str], **kwargs: Any) -> Daemon:
        workdir = tmp_path / f"d{len(started)}"
        workdir.mkdir()
        (workdir / "var").mkdir()
        d = Daemon(workdir, upstreams, **kwargs)
        init_database(d.db_url)
        started.append(d)
        return d

    yield make
    for d in started:
        d.stop()


os.environ.setdefault("SCHOOLGATE_LOG_LEVEL", "INFO")
