"""Daemon status rows: each daemon's heartbeat and counters, written every few seconds by every
daemon and read by the supervisor, doctor, the dashboard and /metrics (SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from schoolgate.store.events.status import read_status, write_status

SITE = "testschool"
STARTED = datetime(2026, 12, 7, 8, 0, tzinfo=UTC)


def test_a_row_is_written_then_replaced_and_read_back_per_site(engine: Engine) -> None:
    with Session(engine) as session:
        write_status(session, SITE, "dns", 100, STARTED, {"queries": 1})
        write_status(session, "othersite", "dns", 900, STARTED, {"queries": 9})
        session.commit()
    restarted = datetime(2026, 12, 7, 9, 30, tzinfo=UTC)
    with Session(engine) as session:
        write_status(session, SITE, "dns", 101, restarted, {"queries": 2, "at": restarted})
        write_status(session, SITE, "proxy.1", 200, STARTED, {})
        session.commit()
    with Session(engine) as session:
        rows = read_status(session, SITE)
    assert list(rows) == ["dns", "proxy.1"]
    assert rows["dns"]["pid"] == 101
    assert rows["dns"]["started_at"] == restarted
    assert rows["dns"]["stats"] == {"at": "2026-12-07 09:30:00+00:00", "queries": 2}
    assert rows["dns"]["heartbeat_at"].tzinfo is not None
    assert rows["proxy.1"]["stats"] == {}


def test_writing_a_status_holds_no_orm_objects_in_the_session(engine: Engine) -> None:
    """Every daemon writes its row each few seconds: plain statements, no unit of work (in a
    process forked from the supervisor the ORM's paths copy shared pages; see status.py)."""
    with Session(engine) as session:
        write_status(session, SITE, "scheduler", 1, STARTED, {"runs": 3})
        read_status(session, SITE)
        assert not session.new and not session.dirty and len(session.identity_map) == 0
        session.commit()


def test_a_status_row_with_unreadable_counters_reads_as_empty(engine: Engine) -> None:
    with Session(engine) as session:
        write_status(session, SITE, "watch", 1, STARTED, {})
        session.connection().exec_driver_sql("UPDATE daemon_status SET stats = 'not json' WHERE name = 'watch'")
        session.commit()
    with Session(engine) as session:
        assert read_status(session, SITE)["watch"]["stats"] == {}
