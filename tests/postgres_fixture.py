"""A real PostgreSQL server for tests: Debian's binaries, a throw-away cluster, loopback only.

The server is ours alone: ``initdb`` into a fresh directory, ``postgres`` started as a child
process on 127.0.0.1 and a free port (never the Debian cluster on 5432, which is left alone),
stopped by its PID. When the tests run as root the cluster belongs to the ``postgres`` OS
user (PostgreSQL refuses to run as root).

Fixtures (load this module as a pytest plugin, or re-export them from a conftest.py):

- ``postgres_server`` (session): the running ``PostgresServer``.
- ``postgres_template`` (session): the name of a database migrated to the newest schema.
- ``postgres_url`` (function): a SQLAlchemy URL of a fresh copy of that template, dropped after.

Outside CI a machine without PostgreSQL skips these tests; under CI it is a failure.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

SUPERUSER = "schoolgate"
TEMPLATE_DB = "schoolgate_template"
START_TIMEOUT_S = 60.0
_IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def find_bin_dir() -> Path | None:
    """The newest /usr/lib/postgresql/<version>/bin with initdb and postgres in it."""
    candidates = []
    for path in Path("/usr/lib/postgresql").glob("*/bin"):
        if (path / "initdb").exists() and (path / "postgres").exists():
            with contextlib.suppress(ValueError):
                candidates.append((int(path.parent.name.split(".")[0]), path))
    return max(candidates)[1] if candidates else None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _as_owner(args: list[str], uid: int | None, gid: int | None) -> list[str]:
    """``args`` run by util-linux's setpriv: as the cluster's owner, and dying with pytest.

    setpriv changes the user first and sets the parent-death signal after (a change of user
    clears it), so an interrupted test run cannot leave a server behind.
    """
    prefix = ["setpriv", "--pdeathsig", "TERM"]
    if uid is not None and gid is not None:
        prefix += ["--reuid", str(uid), "--regid", str(gid), "--clear-groups"]
    return [*prefix, "--", *args]


class PostgresServer:
    """One throw-away cluster; ``start``/``stop`` may be repeated on the same data directory."""

    def __init__(self, bin_dir: Path, *, base: Path | None = None, port: int | None = None) -> None:
        self.bin_dir = bin_dir
        self.base = Path(tempfile.mkdtemp(prefix="schoolgate-pg-", dir=base))
        self.data_dir = self.base / "data"
        self.socket_dir = self.base / "sock"
        self.log_path = self.base / "postgres.log"
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._uid: int | None = None
        self._gid: int | None = None
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            self._uid, self._gid = owner.pw_uid, owner.pw_gid
        self._initdb()

    # -- lifecycle

    def _run_as_owner(self, args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            _as_owner(args, self._uid, self._gid), check=True, capture_output=True, start_new_session=True, **kwargs
        )

    def _initdb(self) -> None:
        self.socket_dir.mkdir()
        if self._uid is not None and self._gid is not None:
            for path in (self.base, self.socket_dir):
                os.chown(path, self._uid, self._gid)
        self._run_as_owner(
            [
                str(self.bin_dir / "initdb"),
                "-D", str(self.data_dir),
                "-U", SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
            ],
            timeout=120,
        )

    def start(self, *, fast: bool = True) -> None:
        """Start the server and wait until it accepts connections."""
        if self.process is not None and self.process.poll() is None:
            return
        args = [
            str(self.bin_dir / "postgres"),
            "-D", str(self.data_dir),
            "-k", str(self.socket_dir),
            "-p", str(self.port),
            "-c", "listen_addresses=127.0.0.1",
            "-c", "max_connections=200",
            "-c", "shared_buffers=32MB",
            "-c", "log_min_messages=warning",
            "-c", "timezone=Europe/London",  # not UTC: stored times must not depend on it
        ]
        if fast:
            # Test data is thrown away: durability would only cost time.
            args += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        log = open(self.log_path, "ab")  # noqa: SIM115 (handed to the child)
        try:
            # Its own session: a Ctrl-C in the terminal reaches pytest, which stops it in order.
            self.process = subprocess.Popen(
                _as_owner(args, self._uid, self._gid), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        finally:
            log.close()
        self.wait_ready()

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"postgres exited ({self.process.returncode}):\n{self.log_tail()}")
            try:
                with psycopg.connect(self.dsn("postgres"), connect_timeout=2) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"postgres not ready in {timeout}s:\n{self.log_tail()}") from None
                time.sleep(0.05)

    def stop(self, *, mode: str = "fast", timeout: float = 60.0) -> None:
        """Stop the server by its PID: SIGINT is a fast shutdown, SIGQUIT an immediate one."""
        proc = self.process
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGQUIT if mode == "immediate" else signal.SIGINT)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        self.process = None

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    # -- databases

    def dsn(self, database: str) -> str:
        return f"host=127.0.0.1 port={self.port} user={SUPERUSER} dbname={database}"

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def execute(self, sql: str) -> None:
        """One statement outside a transaction (CREATE/DROP DATABASE need that)."""
        import psycopg

        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            conn.execute(sql)  # type: ignore[arg-type]  # test-only DDL built from our own names

    def create_database(self, name: str, *, template: str | None = None) -> str:
        clause = f' TEMPLATE "{template}" STRATEGY FILE_COPY' if template else ""
        self.execute(f'CREATE DATABASE "{name}"{clause}')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


_server: PostgresServer | None = None
_templates: dict[str, PostgresServer] = {}
_counter = itertools.count(1)


def require_bin_dir() -> Path:
    """PostgreSQL's binaries and the psycopg driver, or skip the test (fail it under CI)."""
    bin_dir = find_bin_dir()
    missing = None
    if bin_dir is None:
        missing = "needs Debian's postgresql package (/usr/lib/postgresql/*/bin)"
    else:
        try:
            import psycopg  # noqa: F401
        except ImportError:
            missing = "needs psycopg (pip install 'psycopg[binary]')"
    if missing is not None or bin_dir is None:
        if _IN_CI:
            pytest.fail(missing or "")
        pytest.skip(missing or "")
    return bin_dir


def shared_server() -> PostgresServer:
    """The one server every test module shares (started on first use, stopped at exit)."""
    global _server
    if _server is None or not _server.running:
        server = PostgresServer(require_bin_dir())
        server.start()
        _server = server
    return _server


def stop_shared_server() -> None:
    global _server
    _templates.clear()
    if _server is not None:
        _server.destroy()
        _server = None


def unique_name(prefix: str = "t") -> str:
    return f"{prefix}_{os.getpid()}_{next(_counter)}_{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = shared_server()
    yield server
    stop_shared_server()


@pytest.fixture(scope="session")
def postgres_template(postgres_server: PostgresServer) -> str:
    """A database at the newest schema; copying it is much cheaper than migrating."""
    from schoolgate.store.db import init_db

    # Several conftest.py files may re-export these fixtures: migrate once per server.
    if _templates.get(TEMPLATE_DB) is not postgres_server:
        postgres_server.drop_database(TEMPLATE_DB)
        url = postgres_server.create_database(TEMPLATE_DB)
        init_db(url).dispose()  # no connection may stay open to a template that is copied
        _templates[TEMPLATE_DB] = postgres_server
    return TEMPLATE_DB


@pytest.fixture
def postgres_url(postgres_server: PostgresServer, postgres_template: str) -> Iterator[str]:
    name = unique_name()
    url = postgres_server.create_database(name, template=postgres_template)
    yield url
    postgres_server.drop_database(name)


@pytest.fixture
def postgres_empty_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A URL of a fresh, empty database (no schema), dropped after the test."""
    name = unique_name("e")
    url = postgres_server.create_database(name)
    yield url
    postgres_server.drop_database(name)
