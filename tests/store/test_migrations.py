"""The alembic migrations produce exactly the models' schema, and SQLite is set up as designed."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, inspect, select, text

from schoolgate.cli import main
from schoolgate.store.coltypes import UTCDateTime
from schoolgate.store.db import (
    current_revision,
    downgrade_db,
    head_revision,
    init_db,
    make_engine,
    schema_differences,
    session_factory,
    switch_to_wal,
)
from schoolgate.store.models import AccessEvent, Base

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


def test_a_sqlite_upgrade_holds_the_write_lock_from_its_first_step_to_its_last(tmp_path: Path) -> None:
    # Alembic gave SQLite a transaction per migration: the lock was let go between steps, and a
    # daemon starting at the same moment could run a step the first had planned too (the race
    # the test below catches only now and then). The whole upgrade is one BEGIN IMMEDIATE.
    from sqlalchemy import event

    engine = make_engine(f"sqlite:///{tmp_path / 'one.db'}")
    statements: list[str] = []

    @event.listens_for(engine, "connect")
    def _trace(dbapi_connection: sqlite3.Connection, _record: object) -> None:
        dbapi_connection.set_trace_callback(statements.append)

    try:
        init_db(engine)
    finally:
        engine.dispose()
    ends = [s for s in statements if s.split()[0].upper() in ("COMMIT", "ROLLBACK")]
    begins = [s for s in statements if s.upper().startswith("BEGIN")]
    assert begins == ["BEGIN IMMEDIATE"]
    assert [s.upper() for s in ends] in (["COMMIT"], ["COMMIT", "ROLLBACK"])


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


# Times as the events table held them before 0016: SQLAlchemy's SQLite text of UTCDateTime (and
# one row written by hand in another ISO form, with an offset), on both sides of 1970.
OLD_EVENT_TIMES = (
    datetime(2026, 12, 1, 9, 0, tzinfo=UTC),
    datetime(2026, 6, 1, 8, 0, 0, 123456, tzinfo=UTC),
    datetime(2026, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    datetime(1969, 12, 31, 23, 59, 59, 500000, tzinfo=UTC),
    datetime(999, 1, 2, 3, 4, 5, 6, tzinfo=UTC),
)


def _insert_old_events(engine: Engine) -> None:
    """Rows as the code before 0016 stored them (UTCDateTime's own bind processing)."""
    column = UTCDateTime()
    processor = column.dialect_impl(engine.dialect).bind_processor(engine.dialect)
    with engine.begin() as connection:
        for n, ts in enumerate(OLD_EVENT_TIMES):
            connection.execute(
                text("INSERT INTO events (site, ts, source, client_ip, device_id, role, host, verdict, rule_id,"
                     " clause, flags, count, uid) VALUES ('s', :ts, 'dns', '10.0.0.5', 'dev', 'pupil', :host,"
                     " 'block', 'r', 'c', '', 1, :uid)"),
                {"ts": processor(ts) if processor else ts, "host": f"h{n}.example", "uid": f"u{n}"})
        if engine.dialect.name == "sqlite":  # by hand, in British summer time
            connection.execute(text(
                "INSERT INTO events (site, ts, source, client_ip, device_id, role, host, verdict, rule_id, clause,"
                " flags, count, uid) VALUES ('s', '2026-06-01T09:30:00.25+01:00', 'dns', '10.0.0.5', 'dev',"
                " 'pupil', 'by-hand.example', 'block', 'r', 'c', '', 1, 'u-hand')"))


def _event_times(engine: Engine) -> dict[str, datetime]:
    with session_factory(engine)() as session:
        return {event.host: event.ts for event in session.scalars(select(AccessEvent))}


def test_events_time_becomes_integer_microseconds_and_old_rows_read_back_identically(empty_db_url: str) -> None:
    from alembic import command

    from schoolgate.store.db import alembic_config

    engine = make_engine(empty_db_url)
    try:
        command.upgrade(alembic_config(engine), "0015_events_verdict_index")
        _insert_old_events(engine)
        expected = {f"h{n}.example": ts for n, ts in enumerate(OLD_EVENT_TIMES)}
        if engine.dialect.name == "sqlite":
            expected["by-hand.example"] = datetime(2026, 6, 1, 8, 30, 0, 250000, tzinfo=UTC)
            path = Path(engine.url.database or "")
            root = _events_root_page(path)
        with engine.connect() as connection:
            old_text = dict(connection.execute(text("SELECT uid, ts FROM events")).tuples().all())

        init_db(engine)
        assert schema_differences(engine) == [], HINT
        assert _event_times(engine) == expected
        with engine.connect() as connection:
            if engine.dialect.name == "sqlite":
                assert _events_root_page(path) == root  # rewritten in place, not copied
                kinds = connection.execute(text("SELECT DISTINCT typeof(ts) FROM events")).scalars().all()
                assert kinds == ["integer"]
                assert connection.execute(text("PRAGMA integrity_check")).scalar_one() == "ok"
        # The indexes over ts find rows by time as before (a range, through the ORM's binding).
        with session_factory(engine)() as session:
            june = select(AccessEvent.host).where(
                AccessEvent.site == "s", AccessEvent.device_id == "dev",
                AccessEvent.ts >= datetime(2026, 6, 1, tzinfo=UTC), AccessEvent.ts < datetime(2026, 7, 1, tzinfo=UTC))
            in_june = {host for host, ts in expected.items() if (ts.year, ts.month) == (2026, 6)}
            assert set(session.scalars(june)) == in_june
            newest = session.scalars(select(AccessEvent.host).order_by(AccessEvent.ts.desc()).limit(1)).one()
            assert newest == "h2.example"

        downgrade_db(engine, "0015_events_verdict_index")
        with engine.connect() as connection:
            back = dict(connection.execute(text("SELECT uid, ts FROM events")).tuples().all())
        if engine.dialect.name == "sqlite":
            # SQLAlchemy's text again, the same for every row it wrote; the hand-written row in UTC.
            assert back.pop("u-hand") == "2026-06-01 08:30:00.250000"
            old_text.pop("u-hand")
        assert back == old_text
        init_db(engine)
        assert schema_differences(engine) == [], HINT
        assert _event_times(engine) == expected
    finally:
        engine.dispose()


def test_a_connection_switching_to_wal_while_the_file_is_locked_tries_again(tmp_path: Path) -> None:
    """On a new file, a connection's switch to WAL can be refused at once ("database is
    locked") while another connection is switching it: SQLite does not wait there, since both
    waiting would deadlock. The switch is tried again until the file is free (here another
    connection's exclusive lock, released once the first try has been refused)."""
    import threading

    database = tmp_path / "new.db"
    holder = sqlite3.connect(database, isolation_level=None, check_same_thread=False)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN EXCLUSIVE")
    refused = threading.Event()
    released = threading.Thread(target=lambda: (refused.wait(), holder.execute("COMMIT")))
    released.start()
    switching = sqlite3.connect(database, isolation_level=None, timeout=0)  # no busy handler: refused at once
    tries: list[str] = []

    def execute(statement: str) -> object:
        tries.append(statement)
        try:
            return switching.execute(statement)
        except sqlite3.OperationalError:
            refused.set()
            raise

    try:
        switch_to_wal(execute, busy_timeout_ms=60_000)
        released.join()
        assert len(tries) >= 2
        assert switching.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        refused.set()
        released.join()
        switching.close()
        holder.close()


def test_a_switch_to_wal_gives_up_after_the_busy_timeout(tmp_path: Path) -> None:
    database = tmp_path / "held.db"
    holder = sqlite3.connect(database, isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN EXCLUSIVE")
    switching = sqlite3.connect(database, isolation_level=None, timeout=0)
    try:
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            switch_to_wal(switching.execute, busy_timeout_ms=50)
    finally:
        switching.close()
        holder.close()
