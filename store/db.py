"""Engines, sessions and schema upgrades for any SQLAlchemy URL.

SQLite is the appliance's default. Several daemons write to one file at once, so every
SQLite connection runs in WAL mode with a busy timeout and foreign keys on, and every
transaction that may write starts with ``BEGIN IMMEDIATE``: it takes the write lock up
front, so it waits (up to the busy timeout) instead of failing half-way when another
process wrote first. Read-only work can ask for a deferred transaction instead (see
``read_only``), which never contends with the writers in WAL mode.

Everything SQLite-specific is in ``_setup_sqlite``; other URLs (PostgreSQL for a trust)
get a plain engine.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
DEFAULT_BUSY_TIMEOUT_MS = 10_000

# Execution option read by the SQLite ``begin`` hook: "IMMEDIATE" (default) or "DEFERRED".
BEGIN_MODE_OPTION = "schoolgate_begin"


def is_sqlite(bind: Engine | Connection) -> bool:
    return bind.dialect.name == "sqlite"


def make_engine(
    url: str | URL,
    *,
    busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS,
    echo: bool = False,
    sqlite_cache_kib: int | None = None,
    **kwargs: Any,
) -> Engine:
    """An engine for ``url``; SQLite gets WAL, a busy timeout, foreign keys, BEGIN IMMEDIATE.

    ``sqlite_cache_kib``: each SQLite connection's page cache (SQLite's default is 2,000 KiB),
    for a process that writes much (the event writer); other databases ignore it.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql":
        return _make_postgresql_engine(parsed, echo=echo, **kwargs)
    if parsed.get_backend_name() != "sqlite":
        kwargs.setdefault("pool_pre_ping", True)
        return create_engine(parsed, echo=echo, **kwargs)
    database = parsed.database or ""
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    connect_args = dict(kwargs.pop("connect_args", {}))
    # pysqlite's own timeout is the busy timeout for the lock taken by BEGIN IMMEDIATE.
    connect_args.setdefault("timeout", busy_timeout_ms / 1000)
    connect_args.setdefault("check_same_thread", False)
    engine = create_engine(parsed, echo=echo, connect_args=connect_args, **kwargs)
    _setup_sqlite(engine, busy_timeout_ms, sqlite_cache_kib)
    return engine


# libpq settings for a trust's central server, which may be far away or gone: give up on a
# connection attempt after a few seconds, drop a connection whose sent data goes unanswered
# for 20 s, and notice an idle one that died silently (a router that lost its state) within a
# minute, so that the event writer spools and the daemons carry on instead of hanging.
POSTGRESQL_CONNECT_ARGS = {
    "connect_timeout": 5,
    "tcp_user_timeout": 20_000,  # milliseconds
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}


def _make_postgresql_engine(parsed: URL, *, echo: bool, **kwargs: Any) -> Engine:
    if parsed.drivername == "postgresql":
        # SQLAlchemy's default driver is psycopg2; schoolgate ships psycopg (version 3).
        parsed = parsed.set(drivername="postgresql+psycopg")
    connect_args = dict(kwargs.pop("connect_args", {}))
    if parsed.get_driver_name() in ("psycopg", "psycopg2"):
        for key, value in POSTGRESQL_CONNECT_ARGS.items():
            if key not in parsed.query:
                connect_args.setdefault(key, value)
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(parsed, echo=echo, connect_args=connect_args, **kwargs)


# An adapter for None that gives None back, called in C: an empty dict's get finds nothing.
_NOTHING: dict[object, None] = {}


def bind_none_directly() -> None:
    """Have sqlite3 bind None as NULL without looking for a way to adapt it first.

    sqlite3 binds int, float and str as they are, but asks every other value, None included,
    how to adapt it: two attribute lookups whose failure makes and clears an exception, about
    0.2 us per None (a blocked query's row has three to eight of them: no URL, no search term,
    an unknown device's name and person). With an adapter registered for None, the lookup finds
    it at once, and None is bound as NULL as before. The registry is the process's own and the
    adapter changes no value, so every other user of sqlite3 in the process binds the same.
    """
    sqlite3.register_adapter(type(None), _NOTHING.get)


def switch_to_wal(execute: Callable[[str], object], busy_timeout_ms: int) -> None:
    """`PRAGMA journal_mode=WAL` on a new connection, retried while the file is locked, for up
    to the busy timeout.

    On a new database file (an appliance's first start, every daemon connecting at once) the
    switch takes a read lock and then asks for the file alone. If another connection, doing
    the same, already waits for that, SQLite answers "database is locked" at once rather than
    calling the busy handler: both waiting would be a deadlock. This connection's read lock
    goes with the failed statement, the other's switch then completes, and the retry finds
    the file in WAL mode already (a switch that has nothing to do takes no lock)."""
    deadline = time.monotonic() + busy_timeout_ms / 1000
    while True:
        try:
            execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) or time.monotonic() >= deadline:
                raise
        time.sleep(_WAL_RETRY_S)


_WAL_RETRY_S = 0.01


def _setup_sqlite(engine: Engine, busy_timeout_ms: int, cache_kib: int | None = None) -> None:
    in_memory = engine.url.database in (None, "", ":memory:")
    bind_none_directly()

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, connection_record: Any) -> None:
        # Take transaction control away from pysqlite (it would otherwise BEGIN lazily and
        # DEFERRED, just before the first write); the "begin" hook below emits BEGIN itself.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            if not in_memory:
                # Persistent in the file; switching needs a moment alone with it.
                switch_to_wal(cursor.execute, busy_timeout_ms)
            cursor.execute("PRAGMA foreign_keys=ON")
            # In WAL mode NORMAL is durable across application crashes; only an OS crash or
            # power cut can lose the last commits, never corrupt the file.
            cursor.execute("PRAGMA synchronous=NORMAL")
            if cache_kib is not None:
                cursor.execute(f"PRAGMA cache_size=-{int(cache_kib)}")  # negative: KiB, not pages
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get(BEGIN_MODE_OPTION, "IMMEDIATE")
        if mode not in ("IMMEDIATE", "DEFERRED", "EXCLUSIVE"):
            raise ValueError(f"unknown SQLite begin mode {mode!r}")
        conn.exec_driver_sql(f"BEGIN {mode}")


def read_only(engine: Engine) -> Engine:
    """The same engine and pool, but SQLite transactions start DEFERRED (for pure reads).

    A deferred transaction that later writes can fail with "database is locked" at once,
    whatever the busy timeout, so use this only where nothing is written.
    """
    if not is_sqlite(engine):
        return engine
    return engine.execution_options(**{BEGIN_MODE_OPTION: "DEFERRED"})


def reading_factory(writing: sessionmaker[Session]) -> sessionmaker[Session]:
    """Sessions for pure reads on the database of ``writing``: on SQLite their transactions
    start DEFERRED, so a writer holding the write lock (the event writer mid-batch, or one that
    hangs) never makes a read wait for it. Factories not bound to an Engine are returned as is."""
    bind = writing.kw.get("bind")
    if not isinstance(bind, Engine):
        return writing
    return sessionmaker(bind=read_only(bind), expire_on_commit=False)


def session_factory(engine: Engine, *, readonly: bool = False) -> sessionmaker[Session]:
    """Sessions bound to ``engine``; objects stay readable after commit (expire_on_commit off)."""
    bind = read_only(engine) if readonly else engine
    return sessionmaker(bind=bind, expire_on_commit=False)


def alembic_config(engine: Engine | None = None, url: str | URL | None = None) -> Any:
    """An alembic Config built in code: no alembic.ini is needed on the appliance."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        config.set_main_option("sqlalchemy.url", make_url(url).render_as_string(hide_password=False))
    if engine is not None:
        config.attributes["engine"] = engine
    return config


def _engine_of(url_or_engine: str | URL | Engine) -> tuple[Engine, bool]:
    if isinstance(url_or_engine, Engine):
        return url_or_engine, False
    return make_engine(url_or_engine), True


def init_db(url_or_engine: str | URL | Engine) -> Engine:
    """Bring the schema to the newest revision (alembic upgrade head); safe to repeat.

    Returns the engine (the given one, or a new one made from the URL).
    """
    from alembic import command

    engine, _ = _engine_of(url_or_engine)
    command.upgrade(alembic_config(engine), "head")
    return engine


def downgrade_db(url_or_engine: str | URL | Engine, revision: str) -> None:
    from alembic import command

    engine, made = _engine_of(url_or_engine)
    try:
        command.downgrade(alembic_config(engine), revision)
    finally:
        if made:
            engine.dispose()


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def schema_differences(engine: Engine) -> list[Any]:
    """What differs between the database and the models (alembic autogenerate's diff)."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from schoolgate.store.models import Base

    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diff: list[Any] = compare_metadata(context, Base.metadata)
        return diff
