"""The alembic migrations produce exactly the models' schema, and SQLite is set up as designed."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import Engine, inspect, text

from schoolgate.cli import main
from schoolgate.store.db import (
    current_revision,
    downgrade_db,
    head_revision,
    init_db,
    make_engine,
    schema_differences,
    session_factory,
)
from schoolgate.store.models import Base

HINT = (
    "the models changed without a migration: add one with `schoolgate db revision -m MESSAGE` "
    "(before the first release: `schoolgate db revision --initial -m 'initial schema'`)"
)


def test_upgrade_of_an_empty_database_gives_the_models_schema(empty_db_url: str) -> None:
    engine = init_db(empty_db_url)
    try:
        assert current_revision(engine) == head_revision()
        assert schema_differences(engine) == [], HINT
        tables = set(inspect(engine).get_table_names())
        assert tables == set(Base.metadata.tables) | {"alembic_version"}
    finally:
        engine.dispose()


def test_init_db_is_idempotent(engine: Engine) -> None:
    before = current_revision(engine)
    init_db(engine)
    init_db(engine)
    assert current_revision(engine) == before == head_revision()
    assert schema_differences(engine) == []


def test_downgrade_to_base_and_upgrade_again(engine: Engine) -> None:
    downgrade_db(engine, "base")
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    assert current_revision(engine) is None
    init_db(engine)
    assert current_revision(engine) == head_revision()
    assert schema_differences(engine) == []


def test_two_processes_starting_at_once_both_upgrade_safely(empty_db_url: str) -> None:
    # Separate processes, as the daemons are (alembic's context is per process).
    # Each connects first, then all upgrade at the same instant (without the migration lock,
    # PostgreSQL fails most such races with a duplicate-table error).
    url = empty_db_url
    code = (
        "import sys, time; from schoolgate.store.db import init_db, make_engine; "
        "engine = make_engine(sys.argv[1]); engine.connect().close(); "
        "time.sleep(max(0.0, float(sys.argv[2]) - time.time())); init_db(engine).dispose()"
    )
    at = str(time.time() + 3)
    procs = [subprocess.Popen([sys.executable, "-c", code, url, at], stderr=subprocess.PIPE) for _ in range(4)]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
    engine = make_engine(url)
    try:
        assert current_revision(engine) == head_revision()
        assert schema_differences(engine) == []
    finally:
        engine.dispose()


def test_sqlite_connections_use_wal_busy_timeout_and_foreign_keys(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'p.db'}", busy_timeout_ms=1234)
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 1234
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    finally:
        engine.dispose()


def test_foreign_keys_are_enforced(sessions) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy.exc import IntegrityError

    from schoolgate.store.models import UserRole

    with pytest.raises(IntegrityError), sessions.begin() as session:
        session.add(UserRole(user_id=12345, role="dsl"))


def _try_write_lock(path: Path) -> bool:
    raw = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        raw.execute("BEGIN IMMEDIATE")
        raw.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError as err:
        assert "locked" in str(err)
        return False
    finally:
        raw.close()


def test_a_write_session_takes_the_write_lock_at_begin(engine: Engine, db_path: Path) -> None:
    with session_factory(engine)() as session:
        session.execute(text("SELECT 1"))  # only a read, yet the transaction holds the lock
        assert not _try_write_lock(db_path)
    assert _try_write_lock(db_path)


def test_a_read_only_session_does_not_block_writers(engine: Engine, db_path: Path) -> None:
    with session_factory(engine, readonly=True)() as session:
        session.execute(text("SELECT count(*) FROM events"))
        assert _try_write_lock(db_path)


def test_db_cli_upgrade_then_check(tmp_path: Path, empty_db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "schoolgate.toml"
    config.write_text(f'policy = "policy.toml"\n[database]\nurl = "{empty_db_url}"\n', encoding="utf-8")
    assert main(["db", "check", "--config", str(config)]) == 1
    assert "schoolgate db upgrade" in capsys.readouterr().err
    assert main(["db", "upgrade", "--config", str(config)]) == 0
    assert "upgraded from empty" in capsys.readouterr().out
    assert main(["db", "upgrade", "--config", str(config)]) == 0
    assert "already at" in capsys.readouterr().out
    assert main(["db", "check", "--config", str(config)]) == 0
    assert "matches the models" in capsys.readouterr().out


def test_db_check_notices_a_schema_that_drifted(config_file: Path, db_path: Path) -> None:
    raw = sqlite3.connect(db_path)
    raw.execute("ALTER TABLE events ADD COLUMN surprise TEXT")
    raw.commit()
    raw.close()
    assert main(["db", "check", "--config", str(config_file)]) == 1


def test_db_cli_reports_a_bad_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "schoolgate.toml"
    config.write_text('policy = "policy.toml"\n[database]\nurl = 5\n', encoding="utf-8")
    assert main(["db", "upgrade", "--config", str(config)]) == 2
    assert "database.url" in capsys.readouterr().err


def test_foreign_keys_are_back_on_after_migrating(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'fk.db'}", pool_size=1, max_overflow=0)
    try:
        init_db(engine)  # migrations run with foreign keys off on this (only) pooled connection
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    finally:
        engine.dispose()


@pytest.mark.parametrize("url", ["postgresql://schoolgate@localhost/schoolgate"])
def test_migrations_render_for_postgresql(url: str) -> None:
    """Nothing SQLite-only in the migrations: they render as PostgreSQL DDL (offline mode)."""
    import io

    from alembic import command

    from schoolgate.store.db import alembic_config

    buffer = io.StringIO()
    config = alembic_config(url=url)
    config.output_buffer = buffer
    command.upgrade(config, "head", sql=True)
    ddl = buffer.getvalue()
    for table in Base.metadata.tables:
        assert f"CREATE TABLE {table} (" in ddl
    assert "id BIGSERIAL NOT NULL" in ddl  # events
    assert "PRAGMA" not in ddl
    assert "TIMESTAMP WITHOUT TIME ZONE" in ddl  # UTCDateTime stores naive UTC everywhere
    buffer.seek(0)
    buffer.truncate()
    command.downgrade(config, "head:base", sql=True)
    assert "DROP TABLE events" in buffer.getvalue()


def _events_root_page(path: Path) -> int:
    with sqlite3.connect(path) as con:
        row = con.execute("SELECT rootpage FROM sqlite_master WHERE type = 'table' AND name = 'events'").fetchone()
        return int(row[0])


def test_widening_event_types_on_sqlite_keeps_the_table_where_it_is(tmp_path: Path) -> None:
    """0014 widens events.qtype by its declared type alone: a rebuild would copy every event a
    school has logged (10 s per million rows here, and the table's size again on disk)."""
    path = tmp_path / "widen.db"
    engine = make_engine(f"sqlite:///{path}")
    try:
        from alembic import command

        from schoolgate.store.db import alembic_config

        command.upgrade(alembic_config(engine), "0013_partial_event_indexes")
        with engine.begin() as connection:
            connection.execute(text(
                "INSERT INTO events (site, ts, source, client_ip, role, host, qtype, verdict, rule_id, clause,"
                " flags, count, uid) VALUES ('s', '2026-12-01 09:00:00', 'dns', '10.0.0.5', 'pupil',"
                " 'a.example', 'A,AAAA', 'block', 'r', 'c', '', 1, 'u1')"))
        root = _events_root_page(path)
        command.upgrade(alembic_config(engine), "0014_folded_qtypes")
        assert _events_root_page(path) == root  # not copied
        with engine.begin() as connection:
            connection.execute(text("UPDATE events SET qtype = 'A,AAAA,HTTPS' WHERE uid = 'u1'"))
        init_db(engine)
        assert schema_differences(engine) == [], HINT
        with engine.connect() as connection:
            assert connection.execute(text("SELECT qtype FROM events")).scalar_one() == "A,AAAA,HTTPS"
            names = {row[1] for row in connection.exec_driver_sql("PRAGMA index_list(events)")}
            assert {"ix_events_site_person_ts", "ix_events_site_service_ts"} <= names
        downgrade_db(engine, "0013_partial_event_indexes")
        assert _events_root_page(path) == root
        with engine.connect() as connection:
            assert connection.execute(text("SELECT qtype FROM events")).scalar_one() == "A"
        init_db(engine)
        assert schema_differences(engine) == [], HINT
    finally:
        engine.dispose()
