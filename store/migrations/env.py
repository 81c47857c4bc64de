"""Alembic environment: runs migrations on the engine handed over by schoolgate.store.db.

The config is built in code (``schoolgate.store.db.alembic_config``); ``config.attributes``
carries the engine, or ``sqlalchemy.url`` names the database.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, Engine

from schoolgate.store.db import make_engine
from schoolgate.store.models import Base

config = context.config
MIGRATION_LOCK_KEY = 0x5C601_6A7E  # any constant: one advisory lock for schoolgate's migrations
target_metadata = Base.metadata


def _engine() -> tuple[Engine, bool]:
    engine = config.attributes.get("engine")
    if isinstance(engine, Engine):
        return engine, False
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no database: pass an engine or set sqlalchemy.url")
    return make_engine(url), True


def run_migrations_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _sqlite_foreign_keys(connection: Connection, on: bool) -> None:
    # Must run outside a transaction (SQLite ignores it inside one), so on the raw
    # autocommit DBAPI connection. Off while migrating: batch mode drops and re-creates
    # tables, and with foreign keys on that would fire ON DELETE CASCADE / SET NULL.
    dbapi = connection.connection.driver_connection
    if dbapi is not None:
        dbapi.execute(f"PRAGMA foreign_keys={'ON' if on else 'OFF'}")


def run_migrations_online() -> None:
    engine, made = _engine()
    try:
        with engine.connect() as connection:
            sqlite = connection.dialect.name == "sqlite"
            if sqlite:
                _sqlite_foreign_keys(connection, on=False)
            try:
                context.configure(
                    connection=connection,
                    target_metadata=target_metadata,
                    # SQLite cannot ALTER most things: batch mode copies the table instead.
                    render_as_batch=sqlite,
                    compare_type=True,
                    # SQLite can roll DDL back, but alembic assumes it cannot and gives each
                    # migration a transaction of its own: the write lock was let go between
                    # steps, and a daemon starting at the same time could take it and run a step
                    # the first had planned too ("duplicate column"). One transaction instead.
                    transactional_ddl=True,
                )
                # One transaction (BEGIN IMMEDIATE on SQLite): two daemons starting at once
                # serialise here, and the second finds the schema already at head.
                with context.begin_transaction():
                    if connection.dialect.name == "postgresql":
                        # The PostgreSQL counterpart of SQLite's BEGIN IMMEDIATE: a trust's
                        # appliances starting at once queue here, and each reads the schema
                        # version only once it holds the lock (released at commit).
                        connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})")
                    context.run_migrations()
                    if sqlite:
                        problems = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                        if problems:
                            raise RuntimeError(f"migration left dangling foreign keys: {problems[:5]}")
            finally:
                if sqlite:
                    connection.rollback()  # nothing open; makes the PRAGMA below take effect
                    _sqlite_foreign_keys(connection, on=True)
    finally:
        if made:
            engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
